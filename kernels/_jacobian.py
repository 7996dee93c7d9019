"""Jacobian-contraction NTK: `J(x1) J(x2)ᵀ` from per-example `jax.jacrev` (docs/definitions.md §1).

With per-parameter weights `w` the kernel is `J(x1) diag(w) J(x2)ᵀ`: one side's Jacobian rows are
multiplied by `w` (the same as scaling both by `sqrt(w)`, without the square root and its rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._common import (
    block_len,
    check_weights,
    gram,
    map_examples,
    out_size,
    sample_major,
    split,
    tiled,
    weigh,
)


def jacobian_rows(params, f, x: Array):
    """Per-example Jacobians: a pytree like `params` with leaves `(n, O, *leaf.shape)`."""
    return jax.vmap(jax.jacrev(f), in_axes=(None, 0))(params, x)


def contract(j1, j2) -> Float[Array, "n1 n2 o o"]:
    """`Σ_p J1[i, a, p] J2[j, b, p]` over every parameter leaf, in the `(i, j, a, b)` layout."""
    acc = None
    for l1, l2 in zip(jax.tree.leaves(j1), jax.tree.leaves(j2)):
        g = gram(l1, l2, free=2)  # (n1, O, n2, O)
        acc = g if acc is None else acc + g
    return sample_major(acc)


def ntk_jacobian(
    model, x1: Array, x2: Array | None = None, block_size: int | None = None, weights=None
) -> Float[Array, "n1 n2 o o"]:
    """Empirical NTK by Jacobian contraction; with `block_size`, one row block at a time.

    Memory: `(n1 + n2)·O·P` floats unblocked; with blocks, two blocks of Jacobian rows
    `2·block_size·O·P` plus the output. Blocked, the column Jacobians are recomputed for every row
    block (`n1 / block_size` times the Jacobian cost, halved for the symmetric kernel, where only
    the tiles on and above the diagonal are computed), the price of bounded memory. `weights`
    (see `ntkbench.kernels.ntk`) multiply the row side's Jacobian rows (unblocked and symmetric,
    the weighted rows are one more `n1·O·P` array).
    """
    params, f = split(model)
    weights = check_weights(params, weights)
    o, dtype = out_size(f, params, x1)
    rows = lambda x: jacobian_rows(params, f, x)
    n1 = x1.shape[0]
    symmetric = x2 is None
    if symmetric and block_size is None:
        j = rows(x1)
        return contract(weigh(j, weights), j)
    x2 = x1 if symmetric else x2
    n2 = x2.shape[0]
    out_like = jax.ShapeDtypeStruct((n1, n2, o, o), dtype)
    return tiled(
        rows if weights is None else (lambda x: weigh(rows(x), weights)),
        lambda j1, _, xb2: contract(j1, rows(xb2)),
        x1,
        x2,
        block_len(n1, block_size),
        block_len(n2, block_size),
        out_like,
        symmetric=symmetric,
    )


def diagonal_jacobian(
    model, x: Array, block_size: int | None = None, weights=None
) -> Float[Array, "n o"]:
    """`Θ[(i,a),(i,a)] = |g_ia|²` (weighted: `Σ_p w_p g_iap²`) from per-example Jacobians,
    `block_size` examples at a time."""
    params, f = split(model)
    weights = check_weights(params, weights)
    out_size(f, params, x)

    def sq_norms(xi):
        j = jax.jacrev(f)(params, xi)  # leaves (O, *shape)
        if weights is not None:
            return sum(
                jnp.sum(leaf * leaf * w, axis=tuple(range(1, leaf.ndim)))
                for leaf, w in zip(jax.tree.leaves(j), jax.tree.leaves(weights))
            )
        return sum(
            jnp.sum(leaf * leaf, axis=tuple(range(1, leaf.ndim))) for leaf in jax.tree.leaves(j)
        )

    return map_examples(sq_norms, x, block_len(x.shape[0], block_size))
