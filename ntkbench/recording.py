"""The NTK record step run inside a pack's training program (SPEC.md §2-8).

At every NTK epoch each member's empirical NTK on the fixed test set is computed with
`ntkbench.kernels.ntk` (the structured kernel for MLPs), turned into the matrix form, and reduced
by ONE eigendecomposition (`ntkbench.observables.spectral_record`) to its trace, entropy,
effective rank, both label alignments and the eigenvector misalignment against the previous
record. Everything stays on device and is vmapped over the pack.

The carry keeps what later records need: the previous record's eigenvectors and effective rank,
and, with `ntk_snapshots`, the NTK at the best test loss among NTK records so far (the first one
on ties, so it is the NTK at `k*`). The carry is checkpointed, so it holds nothing that can be
computed outside the training program: the snapshots at initialization and at the end are
computed by `make_snapshot_fn` before and after training.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ntkbench import kernels, observables
from ntkbench._config import SweepConfig

#: Names of the per-record NTK quantities, as stored in the results.
RECORD_NAMES = {
    "trace": "ntk_trace",
    "entropy": "ntk_entropy",
    "erank": "ntk_erank",
    "label_alignment": "label_alignment",
    "label_alignment_traced": "label_alignment_traced",
    "eigvec_misalignment": "eigvec_misalignment",
}


class RecordCarry(eqx.Module):
    """Per-member state of the record step (stacked over the pack); `d` = `ntk_test_draws`."""

    eigvecs: Float[Array, "d m m"]
    erank: Float[Array, " d"]
    best_loss: Float[Array, ""]
    started: Bool[Array, ""]
    best_ntk: Any  # (m, m) or None without snapshots


#: Per-layer quantities (dimension `layer`, dense layers in forward order), with `layer_ntks`.
LAYER_NAMES = ("layer_ntk_trace", "layer_ntk_erank", "layer_ck_trace", "layer_ck_erank")


def _layer_record(model, x) -> dict:
    """Trace and effective rank of every layer's NTK part and conjugate kernel (Appendix B.2)."""
    parts = kernels.layer_ntks(model, x)
    ntks = jax.vmap(kernels.as_matrix)(parts.ntks)
    m = ntks.shape[-1]
    # The conjugate kernels stay a tuple: layer 0's does not depend on the member, so stacking
    # it with member-dependent ones fails on meshes with explicit axis types.
    cks = parts.conjugate_kernels
    return {
        "layer_ntk_trace": jnp.trace(ntks, axis1=1, axis2=2) / m,
        "layer_ntk_erank": jax.vmap(observables.effective_rank)(ntks),
        "layer_ck_trace": jnp.stack([jnp.trace(ck) / ck.shape[-1] for ck in cks]),
        "layer_ck_erank": jnp.stack([observables.effective_rank(ck) for ck in cks]),
    }


def make_record(config: SweepConfig, num_classes: int):
    """`(record_fn, record_init)` for `PackProgram` (see `ntkbench._training`)."""
    snapshots = config.ntk_snapshots
    size = config.n_test * num_classes
    method = config.ntk_method

    draws = config.ntk_test_draws

    def record_init(model, _) -> RecordCarry:
        del model
        z = jnp.zeros((size, size), jnp.float32)
        return RecordCarry(
            eigvecs=jnp.zeros((draws, size, size), jnp.float32),
            erank=jnp.full((draws,), jnp.nan, jnp.float32),
            best_loss=jnp.asarray(jnp.inf, jnp.float32), started=jnp.asarray(False),
            best_ntk=z if snapshots else None)

    def one_draw(model, x, y, eigvecs, erank):
        k = kernels.as_matrix(kernels.ntk(model, x, method=method))
        y_onehot = jax.nn.one_hot(y, num_classes, dtype=k.dtype)
        return k, observables.spectral_record(k, y_onehot, eigvecs, erank)

    def record_fn(model, x, y, carry: RecordCarry, test_loss) -> tuple[dict, RecordCarry]:
        # The test set is `draws` disjoint draws of n_test samples; every NTK quantity is the mean
        # over the draws (SPEC.md §10 noise scaling: 3 draws of 400), snapshots are of draw 0.
        xs = x.reshape((draws, -1) + x.shape[1:])
        ys = y.reshape(draws, -1)
        ks, recs = jax.vmap(one_draw, in_axes=(None, 0, 0, 0, 0))(model, xs, ys, carry.eigvecs,
                                                                    carry.erank)
        k = ks[0]
        rec = {name: (v if name == "eigvecs" else jnp.mean(v, axis=0)) for name, v in recs.items()}
        rec["erank_per_draw"] = recs["erank"]
        better = test_loss < carry.best_loss
        new = RecordCarry(
            eigvecs=rec["eigvecs"], erank=rec["erank_per_draw"],
            best_loss=jnp.where(better, test_loss, carry.best_loss),
            started=jnp.asarray(True),
            best_ntk=jnp.where(better, k, carry.best_ntk) if snapshots else None,
        )
        out = {RECORD_NAMES[name]: rec[name] for name in RECORD_NAMES}
        if config.layer_ntks:
            out.update(_layer_record(model, xs[0]))
        return out, new

    return record_fn, record_init


def make_snapshot_fn(config: SweepConfig):
    """`fn(stacked_model, x_test) -> (m, M, M)`: every member's matrix-form NTK on the first
    test draw (the init and final snapshots)."""
    n = config.n_test
    method = config.ntk_method

    @eqx.filter_jit
    def fn(models, x):
        one = lambda m: kernels.as_matrix(kernels.ntk(m, x[:n], method=method))
        return eqx.filter_vmap(one)(models)

    return fn
