"""Implicit NTK: NTK-vector products `Θ·e = J(x1) (J(x2)ᵀ e)`, a jvp of a vjp (docs/definitions.md §1).

The Jacobian `J(x1)` is never formed. For a basis vector `e_(j,b)` of the output space of `x2`,
`J(x2)ᵀ e_(j,b)` involves example `j` only, so it is the vjp of `f(·, x_j)` with cotangent
`e_b`; the result is pushed forward through all of `x1` with one jvp. Blocks of basis vectors
(`block_size` examples × O logits) are vmapped together. With per-parameter weights `w` the
tangents are multiplied by `w` before the jvp: `Θ_w·e = J(x1) diag(w) J(x2)ᵀ e`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._common import MATMUL_PRECISION, block_len, check_weights, out_size, split, tiled, weigh


def vjp_tangents(params, f, xb: Array, o: int, dtype):
    """`J(x_j)ᵀ e_b` for every example `j` of the block and logit `b`: leaves `(b2, O, *shape)`."""
    eye = jnp.eye(o, dtype=dtype)

    def one(x):
        _, pullback = jax.vjp(lambda p: f(p, x), params)
        return jax.vmap(lambda e: pullback(e)[0])(eye)

    return jax.vmap(one)(xb)


def jvp_tile(params, f, xb1: Array, tangents) -> Float[Array, "b2 b1 o o"]:
    """`Θ[(i,a),(j,b)] = <g_ia, t_jb>` in the layout `[j, i, b, a]`, by pushing every tangent
    through the batch `xb1` with one (vmapped) jvp."""
    fb = lambda p: jax.vmap(f, in_axes=(None, 0))(p, xb1)
    push = lambda t: jax.jvp(fb, (params,), (t,))[1]  # (b1, O)
    out = jax.vmap(jax.vmap(push))(tangents)  # (b2, O, b1, O): [j, b, i, a]
    return jnp.transpose(out, (0, 2, 1, 3))


def ntk_implicit(
    model, x1: Array, x2: Array | None = None, block_size: int | None = None, weights=None
) -> Float[Array, "n1 n2 o o"]:
    """Empirical NTK from NTK-vector products; with `block_size`, one block of x2 at a time.

    Memory: the tangents of one block of basis vectors, `b2·O·P` floats, and the jvp activations
    of `b2·O` tangents on `b1` examples (`b = block_size`, or all examples when None). `weights`
    (see `ntkbench.kernels.ntk`) multiply the tangents.
    """
    params, f = split(model)
    weights = check_weights(params, weights)
    o, dtype = out_size(f, params, x1)
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    n1, n2 = x1.shape[0], x2.shape[0]
    # Rows of the tiling are blocks of x2 (their tangents are prepared once per block), columns
    # blocks of x1, so the kernel is built as Θ(x2, x1) and transposed at the end (for x2=None it
    # is symmetric and no transpose is needed).
    k = tiled(
        lambda xb2: weigh(vjp_tangents(params, f, xb2, o, dtype), weights),
        lambda t, _, xb1: jvp_tile(params, f, xb1, t),
        x2,
        x1,
        block_len(n2, block_size),
        block_len(n1, block_size),
        jax.ShapeDtypeStruct((n2, n1, o, o), dtype),
        symmetric=symmetric,
    )
    return k if symmetric else jnp.transpose(k, (1, 0, 3, 2))


def ntk_vp_fn(
    model, x: Array, *, weights=None
) -> Callable[[Float[Array, "n o"]], Float[Array, "n o"]]:
    """`v ↦ Θ(x, x) v`, matrix-free; the forward pass is linearized once and reused.

    Example:
        >>> from ntkbench.models import MLP
        >>> model = MLP(8, 3, width=16, depth=2, key=jax.random.key(0))
        >>> w = jax.tree.map(lambda p: 0.5, eqx.filter(model, eqx.is_inexact_array))
        >>> ntk_vp_fn(model, jnp.ones((4, 8)), weights=w)(jnp.ones((4, 3))).shape
        (4, 3)

    Args:
        model: maps one example to `(O,)` logits.
        x: `(n, ...)` examples.
        weights: per-parameter weights (see `ntkbench.kernels.ntk`), or None: then `Θ v` is
            `J (w ⊙ Jᵀ v)`, the product with the weighted kernel `J diag(w) Jᵀ`.

    Returns:
        A linear function of `v` `(n, O)` returning `Θ v` `(n, O)`, where
        `(Θ v)[i, a] = Σ_{j,b} Θ[(i,a),(j,b)] v[j, b]`: one jvp and one transposed jvp (vjp).
    """
    params, f = split(model)
    weights = check_weights(params, weights)

    def fb(p):
        return jax.vmap(f, in_axes=(None, 0))(p, x)

    with jax.default_matmul_precision(MATMUL_PRECISION):
        _, jvp_fn = jax.linearize(fb, params)
        vjp_fn = jax.linear_transpose(jvp_fn, params)

    def vp(v):
        with jax.default_matmul_precision(MATMUL_PRECISION):
            return jvp_fn(weigh(vjp_fn(v)[0], weights))

    return vp
