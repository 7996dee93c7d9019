"""The spectral step of an NTK record: all eigenvalues and the top eigenvectors of `Θ̃`.

A record needs ALL eigenvalues of the cosine-normalized NTK `Θ̃` (entropy and effective rank,
docs/definitions.md §3) but eigenvectors only for the misalignment (§8): the top `n = round(erank)` of this
record and of the previous one, `n` far below `M`. `cosine_spectrum` returns exactly that, the
eigenvalues and the top `num_vectors` eigenvectors (`num_vectors = n_max`, a config value), and
`top_misalignment` computes the misalignment from two such blocks. The carry of the record step
then holds `(M, n_max)` vectors per member instead of `(M, M)`.

Methods (`Eigensolver`; measured numbers and commands in `docs/spectrum.md`):

- `HOST_LAPACK` (the CPU default): ONE Householder tridiagonalization `sytrd` on the host (a
  host call, see below), then all eigenvalues from the tridiagonal matrix (`sterf`, `O(M²)`),
  its top `num_vectors` eigenvectors by MRRR (`stemr`, `O(M·n_max)`), both in float64, and the
  back-transformation by the Householder reflectors in blocks (`2·M²·n_max` flops). `sytrd` is
  the cost floor of any exact dense eigensolver (eigenvalues alone, LAPACK `syevd` with
  JOBZ='N', cost the same), so this gives exact LAPACK eigenpairs at about the eigenvalues-only
  cost, where `eigh` computes and back-transforms all `M` eigenvectors.
- `SUBSPACE`: the eigenvalues from the same host path without vectors, the top vectors by a
  Chebyshev-filtered block subspace iteration ON DEVICE started from the previous record's
  vectors (the filter interval comes from the exact eigenvalues), stopped by a residual test, and
  a full `eigh` fallback when it does not converge within `max_iterations` (or has no usable
  start). It never beats `HOST_LAPACK` on CPU: each filter step is a `(M, M) @ (M, n_max)`
  product, and the host part alone is already the floor.
- `EIGH`: the full on-device `eigh` of today's record (for GPU and TPU, where a host round
  trip per record is wrong), its top columns kept.
- `AUTO`: resolved from the explicit `platform` argument: `"cpu"` gives `HOST_LAPACK`, any other
  platform `EIGH`.

The host path is in `ntkbench._record.host_lapack` (called from jit through `ntkbench._record.host_ffi`), the
device solvers of `EIGH` and `SUBSPACE` in `ntkbench._record.subspace`; this module chooses between
them and assembles the `Spectrum`.

Batching (`vmap` over members). No method ever issues a batched LAPACK call on CPU: a batched
`eigh` (or `qr`) inside a program running on several CPU devices of one process can deadlock,
because jaxlib's LAPACK kernels hand the batch elements to XLA's intra-op thread pool and block
the calling worker. `HOST_LAPACK` gets the whole batch in one host call (an XLA FFI handler on
CPU, see `ntkbench._record.host_ffi`) and loops over it in Python; the call is batch-partitionable, so under
`jit` with the member axis sharded (GSPMD), and inside `shard_map`, each device runs it on its
own members.
`EIGH` and `SUBSPACE` run the members one after the other (a `lax.map`, via
`jax.custom_batching.sequential_vmap`) when `platform` is None or `"cpu"`, and batched on other
platforms (the GPU/TPU eigensolvers batch safely). A `lax.map` over a member axis that GSPMD
shards is not what you want: on CPU use `HOST_LAPACK`, or `shard_map`.

Precision. `dtype` is the precision of the spectral step. The NTK may stay float32: with
`dtype=jnp.float64`, `HOST_LAPACK` normalizes and factorizes a float64 copy on the host (no
`jax_enable_x64` needed; the results are rounded to float32 unless x64 is enabled). The other
methods compute on device and need x64 for float64.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ntkbench._config import Eigensolver
from ntkbench._record.host_ffi import host_call
from ntkbench._record.subspace import device_cosine, eigh_top, subspace_top
from ntkbench.observables import entropy_from_eigenvalues as _entropy_from_eigenvalues

_HIGHEST = lax.Precision.HIGHEST


class Spectrum(NamedTuple):
    """Result of `cosine_spectrum` for one member (a leading member axis under `vmap`).

    Attributes:
        eigenvalues: all `M` eigenvalues of `Θ̃`, ascending (not clipped).
        vectors: `(M, num_vectors)`, the top eigenvectors, columns in DESCENDING eigenvalue
            order (column 0 belongs to the largest eigenvalue); signs are arbitrary.
        entropy: `H = −Σ p ln p` of the clipped spectrum (docs/definitions.md §3).
        erank: `exp(H)`.
        iterations: subspace iterations run (0 for the direct methods).
        residual: `SUBSPACE`: the largest `‖Θ̃v − θv‖ / λ_max` over the tested columns; NaN for
            the direct methods (they are exact to LAPACK accuracy).
        fallback: True where the vectors did not come from the method's main path (`SUBSPACE`:
            full `eigh`; `HOST_LAPACK`: MRRR failed and a full `syevd` was used).
    """

    eigenvalues: Float[Array, " m"]
    vectors: Float[Array, "m k"]
    entropy: Float[Array, ""]
    erank: Float[Array, ""]
    iterations: Int[Array, ""]
    residual: Float[Array, ""]
    fallback: Bool[Array, ""]


def resolve_spectrum_method(method: str | Eigensolver, platform: str | None) -> Eigensolver:
    """The concrete method `cosine_spectrum(..., method=method, platform=platform)` runs.

    Example:
        >>> resolve_spectrum_method("auto", "cpu")
        <Eigensolver.HOST_LAPACK: 'host_lapack'>
        >>> resolve_spectrum_method("auto", "gpu")
        <Eigensolver.EIGH: 'eigh'>

    Args:
        method: a `Eigensolver` or its value.
        platform: the platform the record step runs on (`"cpu"`, `"gpu"`, `"cuda"`, `"tpu"`,
            ...), e.g. `jax.default_backend()` or the mesh's `devices.flat[0].platform`; only
            needed for `AUTO`.

    Returns:
        A `Eigensolver` other than `AUTO`.
    """
    try:
        method = Eigensolver(method)
    except ValueError:
        raise ValueError(
            f"Unknown spectrum method {method!r}; choose one of "
            f"{[m.value for m in Eigensolver]}."
        ) from None
    if method is not Eigensolver.AUTO:
        return method
    if platform is None:
        raise ValueError(
            "method='auto' needs the platform the record runs on: pass platform='cpu' (or "
            "jax.default_backend(), or the mesh devices' .platform), or choose a method."
        )
    return Eigensolver.HOST_LAPACK if platform.lower() == "cpu" else Eigensolver.EIGH


def _device_spectrum(K, prev_vectors, prev_erank, *, k, method, dt, out_dt, tol, max_iterations,
                     degree):
    """`EIGH` and `SUBSPACE` for one member (or a batch, under a plain vmap)."""
    nan = jnp.full((), jnp.nan, out_dt)
    theta = device_cosine(K, out_dt)
    if method is Eigensolver.EIGH:
        lam, vecs = eigh_top(theta, k)
        h = _entropy_from_eigenvalues(lam)
        return Spectrum(lam, vecs, h, jnp.exp(h), jnp.zeros((), jnp.int32), nan,
                        jnp.zeros((), jnp.bool_))
    lam, _, _ = host_call(K, 0, dt, out_dt)
    h = _entropy_from_eigenvalues(lam)
    if prev_vectors is None:
        vecs = eigh_top(theta, k)[1]
        return Spectrum(lam, vecs, h, jnp.exp(h), jnp.zeros((), jnp.int32), nan,
                        jnp.ones((), jnp.bool_))
    start = prev_vectors.astype(out_dt)
    needed = jnp.round(jnp.exp(h))
    if prev_erank is not None:
        prev_n = jnp.round(jnp.asarray(prev_erank, out_dt))
        needed = jnp.maximum(needed, jnp.where(jnp.isfinite(prev_n), prev_n, 0.0))
    needed = jnp.clip(needed, 1, k)
    usable = (jnp.all(jnp.isfinite(start)) & jnp.all(jnp.isfinite(lam))
              & (jnp.min(jnp.linalg.norm(start, axis=0)) > 0.5))

    # An unusable start runs no iteration and falls back; no constant-valued lax.cond branches
    # (inside shard_map both branches must vary over the mesh alike).
    start = jnp.where(usable, start, theta[:, :k])
    cap = jnp.where(usable, max_iterations, 0)
    x, it, res, ok = subspace_top(theta, lam, start, needed, k, tol, cap, degree)
    ok = ok & usable
    vecs = lax.cond(ok, lambda: x, lambda: eigh_top(theta, k)[1])
    res, fallback = jnp.where(usable, res, jnp.nan), ~ok
    return Spectrum(lam, vecs, h, jnp.exp(h), it, res.astype(out_dt), fallback)


def cosine_spectrum(
    K: Float[Array, "m m"],
    num_vectors: int,
    *,
    method: str | Eigensolver = Eigensolver.AUTO,
    platform: str | None = None,
    prev_vectors: Float[Array, "m k"] | None = None,
    prev_erank: Float[ArrayLike, ""] | None = None,
    dtype=jnp.float32,
    tol: float | None = None,
    max_iterations: int = 8,
    degree: int = 6,
) -> Spectrum:
    r"""All eigenvalues and the top `num_vectors` eigenvectors of `Θ̃ = cosine_normalize(K)`.

    One member per call: `jax.vmap` it (see the module docstring for how each method batches)
    or `lax.map` it over members; it works under `jit`, inside `lax.cond`/`lax.scan` and in
    `jax.shard_map`. Pair it with `top_misalignment`, carrying `(vectors, erank)` per member
    (`(M, k)` and a scalar).

    Args:
        K: raw NTK in matrix form `(M, M)` (cosine-normalized and symmetrized here).
        num_vectors: `k = n_max`, how many top eigenvectors to return, `1 <= k <= M`.
        method: a `Eigensolver` (or its value); `AUTO` needs `platform`.
        platform: the platform the step runs on (`jax.default_backend()`, or the mesh devices'
            `.platform`): resolves `AUTO`; for `EIGH`/`SUBSPACE`, None or `"cpu"` runs vmapped
            members one at a time, any other platform batches them.
        prev_vectors: `SUBSPACE` only: the previous record's `vectors (M, k)`, the warm start.
            None, or a block that is not finite or has a column of norm < 0.5 (e.g. a carry
            initialized with zeros or NaN), runs the full `eigh` (`fallback=True`).
        prev_erank: `SUBSPACE` only: the previous record's erank. The residual test covers the
            first `clip(max(round(erank), round(prev_erank)), 1, k)` columns (the ones this
            record's and the next record's misalignments read); the rest are only as accurate
            as the iteration made them. The direct methods return all `k` columns exact.
        dtype: precision of the step, `jnp.float32` or `jnp.float64`. Results have
            `jax.dtypes.canonicalize_dtype(dtype)` (float32 unless x64 is enabled). float64 on
            device (`EIGH`, `SUBSPACE`) needs x64; `HOST_LAPACK` computes in float64 on the
            host regardless.
        tol: `SUBSPACE` residual tolerance `‖Θ̃v − θv‖ ≤ tol·λ_max` per tested column; None:
            `2e-6` (float32) or `1e-12` (float64), about 10x LAPACK's own residuals.
        max_iterations: `SUBSPACE` cap on filter iterations before the `eigh` fallback.
        degree: `SUBSPACE` Chebyshev degree per iteration (`degree` products `(M,M)@(M,k)`
            per iteration, plus one for the Rayleigh-Ritz projection).

    Returns:
        `Spectrum(eigenvalues (M,) ascending, vectors (M, k) descending, entropy, erank,
        iterations, residual, fallback)`.

    Example:
        >>> K = jnp.diag(jnp.array([4.0, 1.0, 9.0])) + 0.1
        >>> s = cosine_spectrum(K, 1, method="host_lapack")
        >>> s.vectors.shape, round(float(s.eigenvalues.sum()), 4)  # trace of Θ̃ = M
        ((3, 1), 3.0)
    """
    method = resolve_spectrum_method(method, platform)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(
            f"K must be one NTK in matrix form (M, M), got shape {K.shape}; vmap or lax.map "
            "cosine_spectrum over members for a stacked pack."
        )
    m = K.shape[0]
    k = int(num_vectors)
    if not 1 <= k <= m:
        raise ValueError(f"num_vectors={num_vectors} must be in [1, M={m}] (n_max of the config).")
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be jnp.float32 or jnp.float64, got {dtype}.")
    out_dt = jax.dtypes.canonicalize_dtype(dt)
    if method is not Eigensolver.HOST_LAPACK and out_dt != dt:
        raise ValueError(
            f"dtype=float64 with method {method.value!r} computes on device and needs "
            "jax.enable_x64(True); method='host_lapack' computes in float64 on the host "
            "without it."
        )
    if tol is None:
        tol = 2e-6 if dt == np.dtype(np.float32) else 1e-12
    if prev_vectors is not None and prev_vectors.shape != (m, k):
        raise ValueError(
            f"prev_vectors must be the previous record's vectors ({m}, {k}), got "
            f"{prev_vectors.shape}."
        )
    if method is Eigensolver.HOST_LAPACK:
        lam, vecs, fallback = host_call(K, k, dt, out_dt)
        h = _entropy_from_eigenvalues(lam)
        return Spectrum(lam, vecs, h, jnp.exp(h), jnp.zeros((), jnp.int32),
                        jnp.full((), jnp.nan, out_dt), fallback)
    fn = functools.partial(
        _device_spectrum, k=k, method=method, dt=dt, out_dt=out_dt, tol=float(tol),
        max_iterations=int(max_iterations), degree=max(int(degree), 1))
    args = [K]
    if method is Eigensolver.SUBSPACE and prev_vectors is not None:
        args.append(prev_vectors)
        if prev_erank is not None:
            args.append(jnp.asarray(prev_erank))

    def one(*args):
        return fn(args[0], args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else None)

    if platform is None or platform.lower() == "cpu":
        one = jax.custom_batching.sequential_vmap(one)
    return one(*args)


def top_misalignment(
    prev_vectors: Float[Array, "m k"],
    prev_erank: Float[ArrayLike, ""],
    vectors: Float[Array, "m k"],
) -> Float[Array, ""]:
    r"""Eigenvector misalignment `m = 1 − ‖U_nᵀ U'_n‖_F² / n`, `n = round(prev_erank)` (§8).

    `U_n`, `U'_n` are the first `n` columns of `prev_vectors` and `vectors` (top eigenvectors in
    descending order, as `cosine_spectrum` returns them). Evaluated without cancellation as
    `‖U_n − U'_n (U'_nᵀ U_n)‖_F² / n`; invariant to signs and to rotations inside the subspaces.
    `n` may be traced (masks, not slices). Cost `O(M·k²)`.

    NaN conventions: NaN where `prev_erank` is NaN (first record), and NaN where
    `round(prev_erank) > k` (the carry holds too few vectors; the caller records the flag
    `jnp.round(prev_erank) > k`). `n` is clipped below at 1.

    Args:
        prev_vectors: the previous record's `vectors (M, k)`.
        prev_erank: the previous record's effective rank (scalar, may be NaN).
        vectors: this record's `vectors (M, k)`.

    Returns:
        Scalar `m` in `[0, 1]` (or NaN, see above).

    Example:
        >>> u = jnp.eye(4)[:, :2]
        >>> float(top_misalignment(u, 2.0, u[:, ::-1])), float(top_misalignment(u, 1.0, u[:, ::-1]))
        (0.0, 1.0)
    """
    if prev_vectors.ndim != 2 or prev_vectors.shape != vectors.shape:
        raise ValueError(
            f"prev_vectors {prev_vectors.shape} and vectors {vectors.shape} must both be one "
            "member's (M, k) top eigenvectors; vmap over members."
        )
    dt = jnp.result_type(prev_vectors.dtype, vectors.dtype)
    k = vectors.shape[-1]
    prev_erank = jnp.asarray(prev_erank, dt)
    n = jnp.round(jnp.where(jnp.isfinite(prev_erank), prev_erank, 1.0))
    valid = jnp.isfinite(prev_erank) & (n <= k)
    n = jnp.clip(n, 1, k)
    mask = (jnp.arange(k) < n).astype(dt)
    u = prev_vectors.astype(dt) * mask
    w = vectors.astype(dt) * mask
    r = u - jnp.dot(w, jnp.dot(w.T, u, precision=_HIGHEST), precision=_HIGHEST)
    return jnp.where(valid, jnp.clip(jnp.sum(r * r) / n, 0.0, 1.0), jnp.nan)
