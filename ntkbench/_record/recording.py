"""The NTK record step run inside a pack's training program (docs/definitions.md).

At every NTK epoch each member's empirical NTK on the fixed NTK samples is reduced to its trace,
spectral entropy and effective rank, both label alignments, the eigenvector misalignment against
the previous record, the kernel distance from initialization and (optionally) the kernel velocity.

Two modes (`ntk_spectrum`):
- exact: the `(M, M)` NTK is formed (`ntkbench.kernels.ntk`) and one spectral step
  (`ntkbench._record.spectrum.cosine_spectrum`) gives all eigenvalues of the cosine-normalized NTK and
  its top `ntk_num_vectors` eigenvectors;
- slq: nothing of size `M²` is formed; trace exactly, entropy, effective rank, label alignment and
  kernel distance by stochastic estimates with standard errors (`ntkbench._record.matrix_free`); the
  quantities that need eigenvectors are NaN.

The carry holds only what the next record needs: the top `ntk_num_vectors` eigenvectors and the
effective rank of every test draw (and, for the kernel velocity, the previous NTK). The NTK at
initialization, which the kernel distance compares against, never changes: it is computed once
per pack from the initial members (`prepare`) and passed in as data, never checkpointed.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ntkbench import kernels, observables
from ntkbench._config import (
    BEST_SOURCES,
    NTK_EXACT,
    NTK_RECORD_KEYS,
    NTK_STDERR,
    NTK_VELOCITY,
    SweepConfig,
)
from ntkbench._record.matrix_free import matrix_free_record
from ntkbench._record.spectrum import cosine_spectrum, top_misalignment



class RecordCarry(eqx.Module):
    """Per-member state of the record step; `d` = `ntk_test_draws`, `v` = `ntk_num_vectors`."""

    vectors: Float[Array, "d m v"] | None  # top eigenvectors of the previous record
    erank: Float[Array, " d"]
    prev_ntk: Float[Array, "d m m"] | None  # the previous NTK (kernel velocity only)
    prev_epoch: Array


class RecordInputs(eqx.Module):
    """Per-member constants of the record step (data, not state)."""

    key: PRNGKeyArray  # probes of the matrix-free estimates
    ntk0: Float[Array, "d m m"] | None  # the NTK at initialization (exact mode)
    init_params: Any  # the trainable parameters at initialization (matrix-free mode)


def _rank4(k: Float[Array, "m m"], o: int) -> Float[Array, "n n o o"]:
    n = k.shape[0] // o
    return k.reshape(n, o, n, o).transpose(0, 2, 1, 3)


def _layer_record(model, x, weights=None) -> dict:
    """Trace and effective rank of every layer's NTK part and conjugate kernel."""
    parts = kernels.layer_ntks(model, x, weights=weights)
    ntks = jax.vmap(kernels.as_matrix)(parts.ntks)
    m = ntks.shape[-1]
    # The conjugate kernels stay a tuple: layer 0's does not depend on the member.
    cks = parts.conjugate_kernels
    return {
        "layer_ntk_trace": jnp.trace(ntks, axis1=1, axis2=2) / m,
        "layer_ntk_erank": jax.vmap(observables.effective_rank)(ntks),
        "layer_ck_trace": jnp.stack([jnp.trace(ck) / ck.shape[-1] for ck in cks]),
        "layer_ck_erank": jnp.stack([observables.effective_rank(ck) for ck in cks]),
    }


class Recorder:
    """The record step of a sweep: what a record computes and what it carries.

    Args:
        config: the sweep.
        num_classes: logits per example `O` (`M = n_test·O`).
        platform: the devices' platform ("cpu", "gpu", "tpu"), which picks the eigensolver.
    """

    def __init__(self, config: SweepConfig, num_classes: int, *, platform: str = "cpu"):
        self.config = config
        self.num_classes = num_classes
        self.size = config.n_test * num_classes
        self.draws = config.ntk_test_draws
        self.mode = config.spectrum(num_classes)
        self.num_vectors = min(config.ntk_num_vectors, self.size)
        self.platform = platform
        self.velocity = config.kernel_velocity and self.mode == "exact"
        self.snapshots = config.ntk_snapshots and self.mode == "exact"
        self.names = (NTK_EXACT + (NTK_VELOCITY if self.velocity else ())
                      + (NTK_STDERR if self.mode == "slq" else ()))

    # ------------------------------------------------------------------ constants and carry
    def _split(self, x, y=None):
        xs = x.reshape((self.draws, -1) + x.shape[1:])
        return xs if y is None else (xs, y.reshape(self.draws, -1))

    def weights(self, model):
        """The per-parameter weights of the recorded kernel for one member: its learning-rate
        multipliers under a non-standard parametrization with `ntk_kernel="lr_weighted"`
        (`Σ_l (η_l/η) J_l J_lᵀ`, the kernel of the training dynamics), else None (the plain
        parameter-space NTK, computed exactly as without weights)."""
        if (self.config.ntk_kernel != "lr_weighted"
                or getattr(model, "parametrization", "standard") == "standard"):
            return None
        return model.lr_multipliers(self.config.optimizer)

    def _ntk(self, model, x) -> Float[Array, "m m"]:
        return kernels.as_matrix(kernels.ntk(model, x, method=self.config.ntk_method,
                                             weights=self.weights(model)))

    def prepare(self, models, x: Array, keys: PRNGKeyArray, *, sequential: bool) -> RecordInputs:
        """The per-member constants of a pack, from its members at initialization."""
        if self.mode == "exact":
            ntk0 = kernels.pack_map(lambda m, xs: jax.vmap(lambda a: self._ntk(m, a))(xs),
                                    models, self._split(x), sequential=sequential)
            return RecordInputs(keys, ntk0, None)
        return RecordInputs(keys, None, eqx.filter(models, eqx.is_inexact_array))

    def init_carry(self, inputs: RecordInputs) -> RecordCarry:
        del inputs  # per member (vmapped): the shapes are the same for all
        d, m = self.draws, self.size
        vectors = (jnp.zeros((d, m, self.num_vectors), jnp.float32)
                   if self.mode == "exact" else None)
        prev = jnp.zeros((d, m, m), jnp.float32) if self.velocity else None
        return RecordCarry(vectors, jnp.full((d,), jnp.nan, jnp.float32), prev,
                           jnp.asarray(-1, jnp.int32))

    # ------------------------------------------------------------------ one member
    def _exact_draw(self, model, x, y, vectors, erank, ntk0, prev_ntk):
        k = self._ntk(model, x)
        y1 = jax.nn.one_hot(y, self.num_classes, dtype=k.dtype)
        spec = cosine_spectrum(k, self.num_vectors, method=self.config.ntk_eigensolver,
                               platform=self.platform, prev_vectors=vectors, prev_erank=erank,
                               dtype=jnp.float64 if self.config.ntk_float64 else jnp.float32)
        h = spec.entropy.astype(k.dtype)
        n = jnp.round(jnp.where(jnp.isfinite(erank), erank, 1.0))
        rec = {  # record keys (`NTK_RECORD_KEYS`), as the observables name them
            "trace": jnp.trace(k) / k.shape[0],
            "entropy": h,
            "erank": jnp.exp(h),
            "label_alignment": observables.label_alignment(k, y1),
            "label_alignment_traced": observables.label_alignment_traced(
                _rank4(k, self.num_classes), y1),
            "eigvec_misalignment": top_misalignment(vectors, erank, spec.vectors).astype(k.dtype),
            "misalignment_clipped": jnp.where(jnp.isfinite(erank),
                                              (n > self.num_vectors).astype(k.dtype), jnp.nan),
            "kernel_distance": observables.kernel_distance(k, ntk0),
        }
        if self.velocity:
            rec["kernel_velocity"] = observables.kernel_distance(k, prev_ntk)
        return self._stored(rec), spec.vectors.astype(jnp.float32), jnp.exp(h), k

    def record(self, model, x, y, carry: RecordCarry, inputs: RecordInputs, epoch
               ) -> tuple[dict[str, Array], RecordCarry]:
        """The NTK quantities of one member (means over the test draws) and the new carry."""
        if self.mode == "slq":
            return self._slq(model, x, y, inputs, epoch), carry
        xs, ys = self._split(x, y)
        prev = carry.prev_ntk if self.velocity else jnp.zeros((self.draws, 1, 1))
        per, vectors, erank, ks = jax.lax.map(
            lambda a: self._exact_draw(model, *a), (xs, ys, carry.vectors, carry.erank,
                                                    inputs.ntk0, prev))
        out = {name: jnp.mean(v) for name, v in per.items()}
        if self.velocity:
            gap = (epoch - carry.prev_epoch).astype(jnp.float32)
            out["kernel_velocity"] = jnp.where(carry.prev_epoch >= 0,
                                               out["kernel_velocity"] / gap, jnp.nan)
        if self.config.layer_ntks:
            out.update(_layer_record(model, xs[0], self.weights(model)))
        new = RecordCarry(vectors, erank, ks if self.velocity else None,
                          jnp.asarray(epoch, jnp.int32))
        return out, new

    def _slq(self, model, x, y, inputs: RecordInputs, epoch) -> dict[str, Array]:
        """A matrix-free record: estimates (means over the test draws) with standard errors."""
        xs, ys = self._split(x, y)
        static = eqx.filter(model, eqx.is_inexact_array, inverse=True)
        reference = eqx.combine(inputs.init_params, static)
        key = jax.random.fold_in(inputs.key, epoch)
        c = self.config

        def one(a):
            xd, yd, kd = a
            y1 = jax.nn.one_hot(yd, self.num_classes, dtype=jnp.float32)
            return matrix_free_record(
                model, xd, y1, key=kd, num_probes=c.slq_probes, num_steps=c.slq_steps,
                num_deflate=c.slq_deflate, num_frobenius_probes=c.slq_frobenius_probes,
                reference=reference, method=c.ntk_method, weights=self.weights(model))

        per = self._stored(jax.lax.map(one, (xs, ys, jax.random.split(key, self.draws))))
        # Independent draws: the error of the mean is sqrt(sum se²) / draws.
        return {name: (jnp.sqrt(jnp.sum(v**2)) / self.draws if name.endswith("_stderr")
                       else jnp.mean(v)) for name, v in per.items()}

    def _stored(self, rec: dict[str, Array]) -> dict[str, Array]:
        """A record's quantities under their stored names (`NTK_RECORD_KEYS`); those the
        record path does not compute (a matrix-free record has no eigenvectors) are NaN."""
        nan = jnp.full((), jnp.nan, jnp.float32)
        return {name: rec.get(NTK_RECORD_KEYS[name], nan) for name in self.names}

    def measure(self, model, x, y, inputs: RecordInputs) -> dict[str, Array]:
        """The NTK quantities of a state that needs no carry (the state at `k*`)."""
        carry = self.init_carry(inputs)
        out, _ = self.record(model, x, y, carry, inputs, jnp.asarray(0, jnp.int32))
        return {k: out[k] for k in BEST_SOURCES if k in out}

    def snapshot(self, model, x) -> Float[Array, "m m"]:
        """The matrix-form NTK of one member on the first test draw."""
        return self._ntk(model, x[: self.config.n_test])

    # ------------------------------------------------------------------ a pack
    # (`kernels.pack_map` maps over every stacked tree passed as its pack)
    def record_pack(self, models, x, y, carry, inputs, epoch, *, sequential: bool):
        return kernels.pack_map(lambda t: self.record(*t[:1], x, y, *t[1:], epoch),
                                (models, carry, inputs), sequential=sequential)

    def measure_pack(self, models, x, y, inputs, *, sequential: bool):
        return kernels.pack_map(lambda t: self.measure(t[0], x, y, t[1]), (models, inputs),
                                sequential=sequential)

    def snapshot_pack(self, models, x, *, sequential: bool):
        return kernels.pack_map(self.snapshot, models, x, sequential=sequential)
