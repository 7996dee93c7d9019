"""NTK observables of docs/definitions.md §2-8: trace, cosine normalization, entropy, effective rank, trace
ratio, adaptation rate, label alignment and eigenvector misalignment.

Every function is pure `jax.numpy`, jittable and vmappable over a leading member axis. A matrix
argument is the NTK in matrix form `(M, M)`, `M = N·O`, row index `i·O + a` (docs/definitions.md §1), unless
its name says otherwise (`K4` is the rank-4 form `(N, N, O, O)`).

Precision. The training program runs in float32 and the eigendecomposition runs in the dtype of
its input (LAPACK `syevd` on CPU, cuSOLVER on GPU). `benchmarks/bench_record.py` measures the
float32 record against a float64 one on ReLU-MLP NTKs (M = 1280, widths 8 to 1024, at init and
trained): relative error of the effective rank 1e-7 (wide) to 1e-5 (width 8, whose NTK has ~900
near-zero eigenvalues; a zero eigenvalue perturbed by δ adds -δ ln δ to H), of which 2e-6 comes
from rounding the NTK to float32 alone; label alignment 1e-7; eigenvector misalignment absolute
error <= 7e-9 against per-epoch values of 5e-7 to 7e-4. These are far below the seed-to-seed
spread, so float32 is the default. The misalignment is computed without cancellation (see
`_misalignment_from_eigvecs`); the textbook `1 - ‖U_nᵀU'_n‖²/n` has a float32 floor of ~1e-7,
as large as the signal for wide nets late in training. If misalignments below ~1e-8 matter, run
the record on a float64 copy of the float32 NTK (`with jax.enable_x64(True)`, its own jit): that
cuts the misalignment error to ~3e-10 for ~2x the eigensolver time on CPU; the NTK may stay
float32.

The observables live in three private modules, all re-exported here: `_obs_spectral` (trace,
cosine normalization, entropy, effective rank), `_obs_alignment` (label alignment, kernel
distance, eigenvector misalignment) and `_obs_adaptation` (trace ratio, adaptation rate).
`spectral_record` computes all of one record from one eigendecomposition.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ntkbench._obs_adaptation import adaptation_rate as adaptation_rate
from ntkbench._obs_adaptation import trace_ratio as trace_ratio
from ntkbench._obs_alignment import _misalignment_from_eigvecs, _subspace_size, _traced_alignment
from ntkbench._obs_alignment import eigvec_misalignment as eigvec_misalignment
from ntkbench._obs_alignment import kernel_distance as kernel_distance
from ntkbench._obs_alignment import label_alignment as label_alignment
from ntkbench._obs_alignment import label_alignment_traced as label_alignment_traced
from ntkbench._obs_spectral import EIGENVALUE_FLOOR as EIGENVALUE_FLOOR
from ntkbench._obs_spectral import _check_square, _cosine_eigh
from ntkbench._obs_spectral import cosine_normalize as cosine_normalize
from ntkbench._obs_spectral import effective_rank as effective_rank
from ntkbench._obs_spectral import entropy as entropy
from ntkbench._obs_spectral import entropy_from_eigenvalues as entropy_from_eigenvalues
from ntkbench._obs_spectral import ntk_trace as ntk_trace


def spectral_record(
    K: Float[Array, "m m"],
    y_onehot: Float[ArrayLike, "n o"],
    prev_eigvecs: Float[Array, "m m"] | None = None,
    prev_erank: Float[ArrayLike, ""] | None = None,
    *,
    implementation: jax.lax.linalg.EighImplementation | None = None,
) -> dict[str, Array]:
    r"""All NTK observables of one record from ONE eigendecomposition of `Θ̃`.

    Computes `trace` (§2), `entropy` and `erank` (§3), `label_alignment` and
    `label_alignment_traced` (§8) and the `eigvec_misalignment` against the previous record
    (§8), with `n = round(prev_erank)`. It returns the eigenvectors so that the caller can carry
    `(eigvecs, erank)` to the next record. `vmap` it over members (`in_axes=(0, None, 0, 0)`):
    `n` differs between members, so the top-`n` subspace is selected with masks, not slices.

    Cost: one `(M, M)` `eigh` with eigenvectors (the dominant `O(M³)` term, on CPU and GPU
    alike) plus one `(M, M) @ (M, M)` overlap product for the misalignment, in the dtype of `K`.
    float32 is accurate enough (see the module docstring).

    Args:
        K: NTK in matrix form `(M, M)`.
        y_onehot: labels of the NTK inputs `(N, O)`, `N·O = M`.
        prev_eigvecs: eigenvectors returned by the previous record `(M, M)`, or None (first record).
        prev_erank: effective rank returned by the previous record, scalar; None or NaN for the
            first record. The misalignment is NaN whenever it is NaN.
        implementation: `jax.lax.linalg.EighImplementation` for the eigensolver; None is the
            platform default (LAPACK `syevd` on CPU, cuSOLVER on GPU, QDWH on TPU).

    Returns:
        dict with scalars `trace`, `entropy`, `erank`, `label_alignment`,
        `label_alignment_traced`, `eigvec_misalignment`, and `eigvecs` `(M, M)` (ascending
        eigenvalue order, columns).

    Example:
        >>> y = jax.nn.one_hot(jnp.arange(4) % 2, 2)
        >>> r0 = spectral_record(jnp.eye(8), y)
        >>> r1 = spectral_record(jnp.eye(8), y, r0["eigvecs"], r0["erank"])
        >>> round(float(r0["erank"]), 4), bool(jnp.isnan(r0["eigvec_misalignment"]))
        (8.0, True)
    """
    _check_square(K)
    m = K.shape[0]
    eigvals, eigvecs = _cosine_eigh(K, implementation)
    h = entropy_from_eigenvalues(eigvals)
    y = jnp.asarray(y_onehot, K.dtype)
    if y.ndim != 2 or y.shape[0] * y.shape[1] != m:
        raise ValueError(
            f"y_onehot must be the (N, O) one-hot labels with N·O = {m}, got shape {y.shape}."
        )
    num_samples, num_outputs = y.shape
    k_tr = jnp.einsum("iaja->ij", K.reshape(num_samples, num_outputs, num_samples, num_outputs))
    if prev_eigvecs is None or prev_erank is None:
        misalignment = jnp.full((), jnp.nan, K.dtype)
    else:
        prev_erank = jnp.asarray(prev_erank, K.dtype)
        n = _subspace_size(jnp.where(jnp.isfinite(prev_erank), prev_erank, 1.0), m)
        misalignment = jnp.where(
            jnp.isfinite(prev_erank),
            _misalignment_from_eigvecs(prev_eigvecs.astype(K.dtype), eigvecs, n),
            jnp.nan,
        )
    return dict(
        trace=jnp.trace(K) / m,
        entropy=h,
        erank=jnp.exp(h),
        label_alignment=label_alignment(K, y),
        label_alignment_traced=_traced_alignment(k_tr, y),
        eigvec_misalignment=misalignment,
        eigvecs=eigvecs,
    )
