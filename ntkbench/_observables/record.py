"""`spectral_record`: every NTK observable of one record from one eigendecomposition of `Θ̃`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ntkbench._observables.alignment import (
    label_alignment,
    misalignment_from_eigvecs,
    subspace_size,
    traced_alignment,
)
from ntkbench._observables.spectral import check_square, cosine_eigh, entropy_from_eigenvalues


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
    check_square(K)
    m = K.shape[0]
    eigvals, eigvecs = cosine_eigh(K, implementation)
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
        n = subspace_size(jnp.where(jnp.isfinite(prev_erank), prev_erank, 1.0), m)
        misalignment = jnp.where(
            jnp.isfinite(prev_erank),
            misalignment_from_eigvecs(prev_eigvecs.astype(K.dtype), eigvecs, n),
            jnp.nan,
        )
    return dict(
        trace=jnp.trace(K) / m,
        entropy=h,
        erank=jnp.exp(h),
        label_alignment=label_alignment(K, y),
        label_alignment_traced=traced_alignment(k_tr, y),
        eigvec_misalignment=misalignment,
        eigvecs=eigvecs,
    )
