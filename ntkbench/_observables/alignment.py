"""NTK alignment observables (docs/definitions.md §8, §12): label alignment (full and
output-traced), the kernel distance between two NTKs, and the eigenvector misalignment of two
records' top subspaces.

Pure `jax.numpy`; re-exported by `ntkbench.observables`, whose docstring gives the conventions
and the precision (including why the misalignment avoids cancellation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ntkbench._observables.spectral import check_square, cosine_eigh, entropy_from_eigenvalues

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: these contractions feed small differences



def kernel_distance(K: Float[Array, "m m"], K_ref: Float[Array, "m m"]) -> Float[Array, ""]:
    r"""Kernel distance `S(Θ, Θ') = 1 − <Θ, Θ'>_F / (‖Θ‖_F ‖Θ'‖_F)` (docs/definitions.md §12).

    On the raw (not cosine-normalized) NTKs in matrix form; in `[0, 1]` for PSD kernels, 0 when
    one is a positive multiple of the other (Fort et al. 2020).

    Example:
        >>> float(kernel_distance(jnp.eye(3), 2.0 * jnp.eye(3)))
        0.0
        >>> round(float(kernel_distance(jnp.diag(jnp.array([1.0, 0.0])),
        ...                             jnp.diag(jnp.array([0.0, 1.0])))), 4)
        1.0
    """
    check_square(K)
    check_square(K_ref, "K_ref")
    inner = jnp.sum(K * K_ref)
    return 1.0 - inner / (jnp.linalg.norm(K) * jnp.linalg.norm(K_ref))



def label_alignment(K: Float[Array, "m m"], y_onehot: Float[ArrayLike, "n o"]) -> Float[Array, ""]:
    r"""Label alignment `A = <Θ, L>_F / (‖Θ‖_F ‖L‖_F)`, `L = y yᵀ` (paper Eq. 16, docs/definitions.md §8).

    `y` is the one-hot label matrix flattened in the NTK's `i·O + a` order (uncentered), so
    `A = yᵀ Θ y / (‖Θ‖_F ‖y‖²)`. Uses the raw (not cosine-normalized) NTK.

    Args:
        K: NTK in matrix form `(M, M)`, `M = N·O`.
        y_onehot: labels `(N, O)`.

    Returns:
        Scalar `A ∈ [−1, 1]` (in `[0, 1]` for a PSD `Θ`).

    Example:
        >>> y = jax.nn.one_hot(jnp.array([0, 1, 1]), 2)
        >>> v = y.reshape(-1)
        >>> round(float(label_alignment(jnp.outer(v, v), y)), 4)
        1.0
    """
    check_square(K)
    y = jnp.asarray(y_onehot, K.dtype).reshape(-1)
    if y.shape[0] != K.shape[0]:
        raise ValueError(
            f"y_onehot has {y.shape[0]} entries but K is {K.shape}; pass the (N, O) one-hot labels "
            "of the N inputs the NTK was measured on (N·O must equal M)."
        )
    return jnp.dot(y, jnp.dot(K, y, precision=_HIGHEST)) / (jnp.linalg.norm(K) * jnp.dot(y, y))


def label_alignment_traced(
    K4: Float[Array, "n n o o"], y_onehot: Float[ArrayLike, "n o"]
) -> Float[Array, ""]:
    r"""Output-traced label alignment `<Θ_tr, Y Yᵀ>_F / (‖Θ_tr‖_F ‖Y Yᵀ‖_F)` (docs/definitions.md §8).

    `Θ_tr[i, j] = Σ_a Θ[(i, a), (j, a)]` (`N × N`) against the `N × N` label kernel `Y Yᵀ`: the
    classic kernel-target alignment. Differs from `label_alignment`, which aligns the full
    `(N·O) × (N·O)` kernel with `y yᵀ`.

    Args:
        K4: NTK in rank-4 form `(N, N, O, O)` (sample axes first).
        y_onehot: labels `(N, O)`.

    Returns:
        Scalar alignment.

    Example:
        >>> y = jax.nn.one_hot(jnp.array([0, 1, 1]), 2)
        >>> K4 = jnp.einsum("ij,ab->ijab", y @ y.T, jnp.eye(2))
        >>> round(float(label_alignment_traced(K4, y)), 4)
        1.0
    """
    if K4.ndim != 4 or K4.shape[0] != K4.shape[1] or K4.shape[2] != K4.shape[3]:
        raise ValueError(
            f"K4 must be a rank-4 NTK (N, N, O, O), got shape {K4.shape}; for the matrix form "
            "(N·O, N·O) use K.reshape(N, O, N, O).transpose(0, 2, 1, 3)."
        )
    return traced_alignment(jnp.einsum("ijaa->ij", K4), y_onehot)


def traced_alignment(k_tr: Array, y_onehot: ArrayLike) -> Array:
    y = jnp.asarray(y_onehot, k_tr.dtype)
    if y.shape[0] != k_tr.shape[0]:
        raise ValueError(
            f"y_onehot has {y.shape[0]} rows but the NTK has {k_tr.shape[0]} samples; pass the "
            "(N, O) one-hot labels of the inputs the NTK was measured on."
        )
    yy = jnp.dot(y, y.T, precision=_HIGHEST)
    return jnp.sum(k_tr * yy) / (jnp.linalg.norm(k_tr) * jnp.linalg.norm(yy))


def misalignment_from_eigvecs(u_before: Array, u_after: Array, n: Array) -> Array:
    """`1 − ‖U_nᵀ U'_n‖_F² / n`, evaluated as `‖U_nᵀ U'_⊥‖_F² / n` (no cancellation).

    Columns are eigenvectors in ascending eigenvalue order; `n` may be traced (masks, not slices).
    Since `U'` is orthogonal, `‖U_nᵀ U'_n‖² + ‖U_nᵀ U'_⊥‖² = n`, with `U'_⊥` the other `M − n`
    eigenvectors after. Summing the small cross terms directly keeps a small `m` accurate to
    ~eigenvector error, where `1 − (sum of n terms near 1) / n` would bottom out at the rounding
    error of the sum (~1e-7 in float32).
    """
    m = u_before.shape[-1]
    top = (jnp.arange(m) >= m - n).astype(u_before.dtype)  # the n largest eigenvalues' columns
    overlap = jnp.dot(u_before.T, u_after, precision=_HIGHEST) * top[:, None] * (1.0 - top)[None, :]
    return jnp.clip(jnp.sum(overlap**2) / n, 0.0, 1.0)


def subspace_size(erank: Array, m: int) -> Array:
    return jnp.clip(jnp.round(erank), 1, m)


def eigvec_misalignment(
    K_before: Float[Array, "m m"], K_after: Float[Array, "m m"], n: int | Array | None = None
) -> Float[Array, ""]:
    r"""Top-`n` eigenvector misalignment `m = 1 − ‖U_nᵀ U'_n‖_F² / n` (paper Eq. 17, docs/definitions.md §8).

    `U_n`, `U'_n` are the `(M, n)` top-`n` eigenvectors of the cosine-normalized NTKs before and
    after; `n = round(erank(K_before))` by default. `m ∈ [0, 1]`: 0 when the two top-`n`
    subspaces coincide (whatever the signs or rotations of the vectors inside them), 1 when they
    are orthogonal. If eigenvalue `n` is degenerate with eigenvalue `n + 1` the subspace, and `m`,
    is not unique.

    Args:
        K_before: NTK at the earlier record, `(M, M)`.
        K_after: NTK at the later record, `(M, M)`.
        n: subspace size, an int or a scalar array (may be traced; clipped to `[1, M]`).

    Returns:
        Scalar `m`.

    Example:
        >>> K = jnp.diag(jnp.array([3.0, 2.0, 1.0, 1e-3]))
        >>> float(eigvec_misalignment(K, K, n=2))
        0.0
    """
    check_square(K_before, "K_before")
    check_square(K_after, "K_after")
    lam, u_before = cosine_eigh(K_before)
    _, u_after = cosine_eigh(K_after)
    m = K_before.shape[0]
    if n is None:
        n = jnp.exp(entropy_from_eigenvalues(lam))
    return misalignment_from_eigvecs(u_before, u_after, subspace_size(jnp.asarray(n), m))

