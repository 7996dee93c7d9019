"""Every name of a sweep's results, in one place: axes, variables, snapshots and summaries.

The results store, the training program's records, the analysis and the report all take their
names from here (docs/definitions.md defines the quantities, docs/results.md the layout).

Groups of stored variables, by the dimensions they have after the sweep axes `AXES`:

- `EPOCH`: `(epoch,)`, one value per record `k = 0..E` (record `k` is the state after `k`
  epochs). Losses every epoch; test metrics every `eval_every` epochs; NaN where not measured.
- `NTK`: `(epoch,)`, the NTK quantities, NaN except at NTK records.
- `LAYER`: `(epoch, layer)`, per-layer NTK and conjugate-kernel quantities (`layer_ntks=True`).
- `BEST`: per member, the NTK quantities of the state at `k*` (the first epoch with the minimum
  test loss), computed when the pack ends: `best_<name>` for every NTK quantity.
- `MEMBER`: per member: `k_star`, `min_test_loss`, `diverged`, and `last_record`, the index
  of the last committed record (-1: none; `E`: the member is complete).
- `SNAPSHOT`: `(snapshot, row, col)`, the matrix-form NTK at `SNAPSHOTS`.
- `SETTING`: per member, what the config sets for it (its learning rate `lr`), written when the
  store is opened: a function of the config, never of training.
- `SUMMARY`: per member (and `adaptation_rate` over `epoch`), the summaries of
  `ntkbench.summarize` that are not stored already (`STORED_SUMMARIES`), written when a sweep
  is complete; derived, so `ntkbench.load` computes them afresh.

`ATTRS` describes every stored variable and coordinate for a reader of the store alone (CF
conventions: `long_name`, `units`, with "1" for dimensionless numbers and counts, and a
`description` naming the section of docs/definitions.md that defines it).
"""

from __future__ import annotations

import enum

#: Sweep axes in storage order; every results array starts with these dimensions (length 1 when
#: a sweep does not vary the axis).
AXES = ("parametrization", "depth", "width", "n_train", "noise", "data_draw", "seed")
#: Axes whose members are statistical replicates: fits average over them and resample them.
REPLICATE_AXES = ("data_draw", "seed")


class Group(enum.Enum):
    EPOCH = "epoch"
    NTK = "ntk"
    LAYER = "layer"
    BEST = "best"
    MEMBER = "member"
    SNAPSHOT = "snapshot"
    SETTING = "setting"
    SUMMARY = "summary"


LOSSES = ("train_loss", "train_accuracy")
TEST_METRICS = ("test_loss", "test_accuracy")
#: Linearized-model metrics (`linearized=True`), every epoch (test ones every `eval_every`).
LINEARIZED = ("lin_train_loss", "lin_test_loss", "lin_output_gap")
EPOCH_VARIABLES = LOSSES + TEST_METRICS + LINEARIZED

#: NTK quantities of an exact record (one eigendecomposition of the cosine-normalized NTK).
NTK_EXACT = ("ntk_trace", "ntk_entropy", "ntk_erank", "label_alignment",
             "label_alignment_traced", "eigvec_misalignment", "misalignment_clipped",
             "kernel_distance_init")
#: Between consecutive NTK records (`kernel_velocity=True`).
NTK_VELOCITY = ("kernel_velocity",)
#: Standard errors of the matrix-free (`ntk_spectrum="slq"`) estimates.
NTK_STDERR = ("ntk_entropy_stderr", "ntk_erank_stderr", "label_alignment_stderr",
              "kernel_distance_init_stderr")
#: Curvature records (`curvature_every > 0`; docs/definitions.md §16): the top eigenvalue of the
#: training-loss Hessian (the sharpness), of Adam's preconditioned Hessian `λ D⁻¹ H` (Adam only),
#: and of the training-set NTK `J Jᵀ / n`, each with its Lanczos residual. Stored with the NTK
#: quantities (`(epoch,)`, NaN except at curvature records).
CURVATURE = ("sharpness", "sharpness_residual", "train_ntk_top", "train_ntk_top_residual")
CURVATURE_ADAM = ("precond_sharpness", "precond_sharpness_residual")
NTK_VARIABLES = NTK_EXACT + NTK_VELOCITY + NTK_STDERR + CURVATURE + CURVATURE_ADAM
#: What an NTK record holds, in one table for both record paths: each stored name and the key
#: under which the record step computes it (the observables' own names, as
#: `ntkbench.observables.spectral_record` and the matrix-free record return them).
NTK_RECORD_KEYS = {
    "ntk_trace": "trace", "ntk_entropy": "entropy", "ntk_erank": "erank",
    "label_alignment": "label_alignment", "label_alignment_traced": "label_alignment_traced",
    "eigvec_misalignment": "eigvec_misalignment", "misalignment_clipped": "misalignment_clipped",
    "kernel_distance_init": "kernel_distance", "kernel_velocity": "kernel_velocity",
    "ntk_entropy_stderr": "entropy_stderr", "ntk_erank_stderr": "erank_stderr",
    "label_alignment_stderr": "label_alignment_stderr",
    "kernel_distance_init_stderr": "kernel_distance_stderr",
}
#: Quantities only an exact record has (they need the formed kernel or its eigenvectors); a
#: matrix-free record stores NaN for them.
NTK_EXACT_ONLY = ("label_alignment_traced", "eigvec_misalignment", "misalignment_clipped",
                  "kernel_velocity")

LAYER_VARIABLES = ("layer_ntk_trace", "layer_ntk_erank", "layer_ck_trace", "layer_ck_erank")
#: NTK quantities recomputed at the state of `k*` when a pack ends (stored as `best_<name>`).
BEST_SOURCES = ("ntk_trace", "ntk_entropy", "ntk_erank", "label_alignment",
                "label_alignment_traced", "kernel_distance_init", "lin_output_gap")
BEST_VARIABLES = tuple(f"best_{n}" for n in BEST_SOURCES)
MEMBER_VARIABLES = ("k_star", "min_test_loss", "diverged", "last_record")
#: Per member, set by the config (`SETTING`): the learning rate of its sweep point.
SETTING_VARIABLES = ("lr",)
#: Snapshot order along the `snapshot` dimension (stored without a coordinate array).
SNAPSHOTS = ("init", "best", "final")

#: Summaries `ntkbench.summarize` adds per member (docs/definitions.md, "points of reference").
SUMMARY_VARIABLES = ("T0", "k_star", "T_star", "trace_ratio", "erank_star", "alpha_star",
                     "alpha_star_at_edge", "min_test_loss", "kernel_distance_star",
                     "lin_output_gap_star")
#: Per-record series `ntkbench.summarize` adds over `(*axes, epoch)`.
SUMMARY_SERIES = ("adaptation_rate",)
#: Summaries written to the store when a sweep is complete (`SUMMARY`): those not stored anyway.
STORED_SUMMARIES = tuple(n for n in SUMMARY_VARIABLES if n not in MEMBER_VARIABLES
                         ) + SUMMARY_SERIES


def _a(long_name: str, description: str, units: str = "1") -> dict[str, str]:
    return {"long_name": long_name, "units": units, "description": description}


#: CF attributes (`long_name`, `units`, `description`) of every stored variable and coordinate,
#: written into each array's metadata; `ntkbench.load` and `xarray.open_zarr` show them.
ATTRS: dict[str, dict[str, str]] = {
    # coordinates
    "parametrization": _a("parametrization", "how widths scale the member's initialization, "
                          "multipliers and learning rates: standard, ntk or mup "
                          "(docs/definitions.md §15)"),
    "depth": _a("depth", "number of hidden layers of the member's model"),
    "width": _a("width", "hidden units (channels for the CNN) of the member's model"),
    "n_train": _a("training set size", "training samples of the member"),
    "noise": _a("label noise fraction", "fraction of training samples replaced by noise"),
    "data_draw": _a("data draw", "index of the training-subset draw (a replicate)"),
    "seed": _a("seed", "index of the initialization seed (a replicate)"),
    "epoch": _a("record index", "record k holds the state after k epochs (0: initialization)"),
    "row": _a("NTK row", "index (sample i, logit a) -> i*O + a of the NTK snapshot's rows"),
    "col": _a("NTK column", "index (sample j, logit b) -> j*O + b of the NTK snapshot's columns"),
    # EPOCH
    "train_loss": _a("training loss", "loss (config.loss; cross-entropy in nats) on the "
                     "member's training set, every record (docs/definitions.md §4)"),
    "train_accuracy": _a("training accuracy", "fraction of training samples classified "
                         "correctly, every record"),
    "test_loss": _a("test loss", "loss on the evaluation split, at evaluation records "
                    "(every eval_every epochs; NaN elsewhere)"),
    "test_accuracy": _a("test accuracy", "fraction of the evaluation split classified "
                        "correctly, at evaluation records"),
    "lin_train_loss": _a("linearized-model training loss", "training loss of the model "
                         "linearized at initialization, trained beside it (docs/definitions.md §12)"),
    "lin_test_loss": _a("linearized-model test loss", "test loss of the linearized model, at "
                        "evaluation records (docs/definitions.md §12)"),
    "lin_output_gap": _a("linearized-model output gap", "relative squared distance between "
                         "the outputs of the model and of its linearization on the NTK samples "
                         "(docs/definitions.md §12)"),
    # NTK
    "ntk_trace": _a("NTK trace T", "tr(Theta)/M: mean squared gradient norm per (sample, "
                    "logit) pair, at NTK records (docs/definitions.md §2)"),
    "ntk_entropy": _a("NTK spectral entropy", "entropy (nats) of the normalized spectrum of "
                      "the cosine-normalized NTK (docs/definitions.md §3)"),
    "ntk_erank": _a("NTK effective rank", "exp(entropy) of the cosine-normalized NTK's "
                    "spectrum, in [1, M] (docs/definitions.md §3)"),
    "label_alignment": _a("label alignment", "<Theta, yy^T>_F / (|Theta|_F |yy^T|_F) of the "
                          "full NTK, uncentred, in [0, 1] (docs/definitions.md §8)"),
    "label_alignment_traced": _a("output-traced label alignment", "kernel-target alignment "
                                 "of the NTK traced over logits with YY^T, in [0, 1] "
                                 "(docs/definitions.md §8)"),
    "eigvec_misalignment": _a("top-eigenvector misalignment", "1 - |U_n^T U'_n|_F^2 / n "
                              "between this NTK record and the previous one, in [0, 1] "
                              "(docs/definitions.md §8)"),
    "misalignment_clipped": _a("misalignment subspace clipped", "1 where n = round(erank) "
                               "exceeded the eigenvectors a record keeps (docs/definitions.md §14)"),
    "kernel_distance_init": _a("kernel distance from initialization", "1 - <Theta_0, "
                               "Theta_k>_F / (|Theta_0|_F |Theta_k|_F), in [0, 1] "
                               "(docs/definitions.md §12)"),
    "kernel_velocity": _a("kernel velocity", "kernel distance between consecutive NTK "
                          "records, per epoch between them (docs/definitions.md §12)"),
    "ntk_entropy_stderr": _a("standard error of ntk_entropy", "of the matrix-free estimate "
                             "(docs/definitions.md §4)"),
    "ntk_erank_stderr": _a("standard error of ntk_erank", "of the matrix-free estimate "
                           "(docs/definitions.md §4)"),
    "label_alignment_stderr": _a("standard error of label_alignment", "of the matrix-free "
                                 "estimate (docs/definitions.md §4)"),
    "kernel_distance_init_stderr": _a("standard error of kernel_distance_init", "of the "
                                      "matrix-free estimate (docs/definitions.md §4)"),
    # NTK: curvature (curvature_every > 0)
    "sharpness": _a("sharpness", "largest eigenvalue of the Hessian of the member's full-batch "
                    "training loss, by Lanczos, at curvature records (docs/definitions.md §16)"),
    "train_ntk_top": _a("top eigenvalue of the training-set NTK", "largest eigenvalue of "
                        "J J^T / n over the member's training samples, at curvature records "
                        "(docs/definitions.md §16)"),
    "precond_sharpness": _a("preconditioned sharpness", "largest eigenvalue of Adam's "
                            "preconditioned Hessian lambda D^-1 H; NaN at record 0 "
                            "(docs/definitions.md §16)"),
    # LAYER
    "layer_ntk_trace": _a("per-layer NTK trace", "trace of the NTK of one layer's parameters, "
                          "per layer (docs/definitions.md §3)"),
    "layer_ntk_erank": _a("per-layer NTK effective rank", "effective rank of one layer's "
                          "cosine-normalized NTK (docs/definitions.md §3)"),
    "layer_ck_trace": _a("per-layer conjugate-kernel trace", "trace of the kernel of one "
                         "layer's features (docs/definitions.md §3)"),
    "layer_ck_erank": _a("per-layer conjugate-kernel effective rank", "effective rank of one "
                         "layer's cosine-normalized feature kernel (docs/definitions.md §3)"),
    # MEMBER, SETTING, SNAPSHOT
    "k_star": _a("k*: epoch of the minimum test loss", "first evaluation record with the "
                 "lowest test loss; -1 until the member is complete (docs/definitions.md §5)"),
    "min_test_loss": _a("minimum test loss", "the test loss at k* (docs/definitions.md §5)"),
    "diverged": _a("diverged", "1 when the member's loss became non-finite (its later "
                   "values are not meaningful)"),
    "last_record": _a("last committed record", "index of the member's last completely "
                      "written record; -1 none, E complete (results.md, crash safety)"),
    "lr": _a("learning rate", "the member's learning rate (lr, or its entry of lr_table)"),
    "ntk_snapshot": _a("NTK snapshot", "the matrix-form NTK of the first draw at init, at k* "
                       "and at the end (along `snapshot`, in that order; docs/definitions.md §4)"),
    # SUMMARY
    "T0": _a("T0: NTK trace at initialization", "ntk_trace at record 0 (docs/definitions.md §5)"),
    "T_star": _a("T*: NTK trace at k*", "from best_ntk_trace (docs/definitions.md §5)"),
    "trace_ratio": _a("trace ratio", "(T* - T0) / T0 (docs/definitions.md §6)"),
    "erank_star": _a("erank*: NTK effective rank at k*", "from best_ntk_erank (docs/definitions.md §5)"),
    "alpha_star": _a("alpha*: adaptation rate at k*", "adaptation_rate interpolated at k*; "
                     "NaN when k* is in a half-window at either end (docs/definitions.md §7)"),
    "alpha_star_at_edge": _a("alpha* at a window edge", "True when k* lies outside the records "
                             "where the adaptation rate is defined (docs/definitions.md §7)"),
    "kernel_distance_star": _a("kernel distance from initialization at k*", "from "
                               "best_kernel_distance_init (docs/definitions.md §12)"),
    "lin_output_gap_star": _a("linearized-model output gap at k*", "from best_lin_output_gap "
                              "(docs/definitions.md §12)"),
    "adaptation_rate": _a("trace adaptation rate alpha", "-dT/d ln L_train over a running "
                          "window of 20 epochs, at NTK records (docs/definitions.md §7)"),
}
for _name in ("sharpness", "train_ntk_top", "precond_sharpness"):
    ATTRS[f"{_name}_residual"] = _a(f"Lanczos residual of {_name}", "|A y - theta y| of the "
                                    "top Ritz pair: an eigenvalue lies within it of the "
                                    "estimate (docs/definitions.md §16)")
for _name in BEST_SOURCES:  # the NTK quantities of the state at k*
    ATTRS[f"best_{_name}"] = _a(ATTRS[_name]["long_name"] + " at k*",
                                f"{_name} of the state at k* (docs/definitions.md §5)", ATTRS[_name]["units"])


def group_of(name: str) -> Group:
    """The group a stored variable belongs to."""
    for group, names in ((Group.EPOCH, EPOCH_VARIABLES), (Group.NTK, NTK_VARIABLES),
                         (Group.LAYER, LAYER_VARIABLES), (Group.BEST, BEST_VARIABLES),
                         (Group.MEMBER, MEMBER_VARIABLES)):
        if name in names:
            return group
    if name == "ntk_snapshot":
        return Group.SNAPSHOT
    if name in SETTING_VARIABLES:
        return Group.SETTING
    if name in STORED_SUMMARIES:
        return Group.SUMMARY
    raise KeyError(f"{name!r} is not a stored ntkbench variable.")


def stored_variables(config, num_classes: int) -> dict[Group, tuple[str, ...]]:
    """The variables a sweep of `config` stores, by group (what its options switch on).

    `num_classes` resolves `ntk_spectrum="auto"` (matrix-free records when `M` is large).
    """
    ntk = config.ntk_every > 0
    slq = ntk and config.spectrum(num_classes) == "slq"
    epoch = LOSSES + TEST_METRICS + (LINEARIZED if config.linearized else ())
    record = ()
    if ntk:
        record = NTK_EXACT + (NTK_VELOCITY if config.kernel_velocity and not slq else ())
        record += NTK_STDERR if slq else ()
    best = tuple(f"best_{n}" for n in BEST_SOURCES
                 if (n in record) or (n == "lin_output_gap" and config.linearized))
    if config.curvature_every > 0:
        record += CURVATURE + (CURVATURE_ADAM if config.optimizer == "adam" else ())
    return {
        Group.EPOCH: epoch,
        Group.NTK: record,
        Group.LAYER: LAYER_VARIABLES if (ntk and config.layer_ntks) else (),
        Group.BEST: best,
        Group.MEMBER: MEMBER_VARIABLES,
        Group.SNAPSHOT: ("ntk_snapshot",) if (ntk and config.ntk_snapshots and not slq) else (),
    }
