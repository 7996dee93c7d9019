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
