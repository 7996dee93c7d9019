"""Spectral NTK observables (docs/definitions.md §2-3): the normalized trace, the cosine
normalization, and the entropy and effective rank of the cosine-normalized NTK's spectrum.

Pure `jax.numpy`; re-exported by `ntkbench.observables`, whose docstring gives the conventions
and the precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy
from jaxtyping import Array, Float

EIGENVALUE_FLOOR = 1e-14
"""Absolute floor below which eigenvalues of the cosine-normalized NTK are clipped (docs/definitions.md §3)."""


def check_square(K: Array, name: str = "K") -> None:
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(
            f"{name} must be one NTK in matrix form (M, M), got shape {K.shape}. Reshape a rank-4 "
            "(N, N, O, O) kernel with K4.transpose(0, 2, 1, 3).reshape(N*O, N*O), and wrap batched "
            "kernels in jax.vmap."
        )


def ntk_trace(K: Float[Array, "m m"]) -> Float[Array, ""]:
    r"""Normalized trace `T = tr(Θ) / M`, the mean squared gradient norm per (sample, logit).

    docs/definitions.md §2: this is the authors' `NTKTrace(normalize=True)`; the plain sum is `M·T`.

    Args:
        K: NTK in matrix form `(M, M)`.

    Returns:
        Scalar `T`.

    Example:
        >>> float(ntk_trace(2.0 * jnp.eye(4)))
        2.0
    """
    check_square(K)
    return jnp.trace(K) / K.shape[0]


def cosine_normalize(K: Float[Array, "m m"]) -> Float[Array, "m m"]:
    r"""Cosine-normalized NTK `Θ̃ = D^{-1/2} Θ D^{-1/2}`, `D = diag(Θ)` (docs/definitions.md §3).

    `Θ̃[i, j] = Θ[i, j] / sqrt(Θ[i, i] Θ[j, j])`, the NTK of unit-length gradients; entries with
    `Θ[i, i]·Θ[j, j] = 0` (a zero gradient) are set to 0.

    Args:
        K: NTK in matrix form `(M, M)`.

    Returns:
        `Θ̃`, shape `(M, M)`, unit diagonal wherever the gradient is nonzero.

    Example:
        >>> cosine_normalize(jnp.array([[4.0, 2.0], [2.0, 1.0]])).tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """
    check_square(K)
    d = jnp.diagonal(K)
    positive = d > 0
    inv_sqrt = jnp.where(positive, 1.0 / jnp.sqrt(jnp.where(positive, d, 1.0)), 0.0)
    return K * inv_sqrt[:, None] * inv_sqrt[None, :]


def entropy_from_eigenvalues(eigenvalues: Float[Array, " m"]) -> Float[Array, ""]:
    r"""Spectral entropy `H = −Σ p_k ln p_k` of a spectrum (docs/definitions.md §3).

    The eigenvalues are clipped below at `EIGENVALUE_FLOOR` and normalized, `p_k = λ_k / Σ λ`.

    Example:
        >>> round(float(entropy_from_eigenvalues(jnp.ones(4))), 4)  # ln 4
        1.3863
    """
    lam = jnp.maximum(eigenvalues, EIGENVALUE_FLOOR)
    p = lam / jnp.sum(lam)
    return -jnp.sum(xlogy(p, p))



def cosine_eigh(K: Array, implementation=None) -> tuple[Array, Array]:
    """Ascending eigenvalues `(M,)` and eigenvectors `(M, M)` (columns) of `Θ̃`."""
    eigvecs, eigvals = jax.lax.linalg.eigh(cosine_normalize(K), implementation=implementation)
    return eigvals, eigvecs


def entropy(K: Float[Array, "m m"]) -> Float[Array, ""]:
    r"""Spectral entropy `H = −Σ_k p_k ln p_k` of the cosine-normalized NTK (docs/definitions.md §3).

    `λ_k` are the eigenvalues of `Θ̃ = cosine_normalize(K)`, clipped below at `1e-14`, and
    `p_k = λ_k / Σ λ`; natural logarithm. `0 ≤ H ≤ ln M`.

    Args:
        K: NTK in matrix form `(M, M)`.

    Returns:
        Scalar `H`.

    Example:
        >>> round(float(entropy(jnp.eye(4))), 4)  # ln 4
        1.3863
    """
    check_square(K)
    return entropy_from_eigenvalues(jnp.linalg.eigvalsh(cosine_normalize(K)))


def effective_rank(K: Float[Array, "m m"]) -> Float[Array, ""]:
    r"""Roy-Vetterli effective rank `erank = exp(H)` of the cosine-normalized NTK (docs/definitions.md §3).

    `H` is `entropy(K)`; `1 ≤ erank ≤ M`. Not the participation ratio `tr(Θ)² / ‖Θ‖_F²`.

    Args:
        K: NTK in matrix form `(M, M)`.

    Returns:
        Scalar `erank`.

    Example:
        >>> round(float(effective_rank(jnp.eye(5))), 4)
        5.0
        >>> v = jnp.arange(1.0, 5.0)
        >>> round(float(effective_rank(jnp.outer(v, v))), 4)  # rank one
        1.0
    """
    return jnp.exp(entropy(K))
