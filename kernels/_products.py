"""The NTK diagonal and NTK-vector products `v ↦ Θ v`, without forming `Θ`.

For dense networks (the `StructuredModel` protocol) both come from one pass over the examples
that yields the layer inputs `h_l` and backprop signals `δ_l`; every product is then four
matmuls per layer. Any other model gets the diagonal from per-example gradients and the products
from one linearization (a jvp and a vjp over the batch per product).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._common import HIGHEST, MATMUL_PRECISION
from ._implicit import ntk_vp_fn
from ._ntk import ntk_diagonal
from ._protocol import check_structured, supports_structured
from ._structured import Features, features

Matvec = Callable[[Float[Array, "n o"]], Float[Array, "n o"]]


def structured_vp_fn(feats: Features, layout) -> Matvec:
    """`v ↦ Θ v` of a dense network from its layer inputs `h_l` and signals `δ_l`.

    `Θ v [i, a] = Σ_l δ_iaₗᵀ (G_l h_il + [has_bias] g_l)` with `u_l[j] = Σ_b v[j, b] δ_jbₗ`,
    `G_l = Σ_j u_l[j] h_jlᵀ` and `g_l = Σ_j u_l[j]` (the weight and bias parts of `Jᵀ v`):
    four matmuls per layer, no `N × N` Gram and no chain through the layers.

    Args:
        feats: `Features` of the N examples (`inputs[l]` `(N, in_l)`, `deltas[l]` `(N, O, out_l)`).
        layout: the model's `structured_layout()`.

    Returns:
        The linear map `(N, O) -> (N, O)`.
    """

    def vp(v: Float[Array, "n o"]) -> Float[Array, "n o"]:
        out = None
        for h, d, (_, _, has_bias) in zip(feats.inputs, feats.deltas, layout):
            u = jnp.einsum("nao,na->no", d, v, precision=HIGHEST)
            g = jnp.matmul(u.T, h, precision=HIGHEST)  # (out_l, in_l)
            gh = jnp.matmul(h, g.T, precision=HIGHEST)  # (N, out_l)
            if has_bias:
                gh = gh + jnp.sum(u, axis=0)
            term = jnp.einsum("nao,no->na", d, gh, precision=HIGHEST)
            out = term if out is None else out + term
        return out

    return vp


def _structured_diagonal(feats: Features, layout) -> Float[Array, "n o"]:
    out = None
    for h, d, (_, _, has_bias) in zip(feats.inputs, feats.deltas, layout):
        hh = jnp.sum(h * h, axis=-1) + (1.0 if has_bias else 0.0)
        term = hh[:, None] * jnp.sum(d * d, axis=-1)
        out = term if out is None else out + term
    return out


def ntk_diagonal_and_vp(
    model, x: Float[Array, "n ..."], *, method: str = "auto", block_size: int | None = None
) -> tuple[Float[Array, "n o"], Matvec]:
    """The NTK diagonal `D` `(N, O)` and the product `v ↦ Θ v`, sharing one pass where possible.

    Example:
        >>> import equinox as eqx
        >>> mlp = eqx.nn.MLP(8, 3, 16, 2, key=jax.random.key(0))
        >>> d, vp = ntk_diagonal_and_vp(mlp, jnp.ones((4, 8)), method="implicit")
        >>> d.shape, vp(jnp.ones((4, 3))).shape
        ((4, 3), (4, 3))

    Args:
        model: maps ONE example to `(O,)` logits.
        x: `(N, ...)` examples.
        method: `"structured"` (features `h_l`, `δ_l` computed once give both the diagonal and
            the products; `StructuredModel`s only), `"implicit"` (diagonal from per-example
            gradients, products by jvp + vjp of one linearization), or `"auto"` (structured when
            the model supports it).
        block_size: examples per block for the per-example passes (bounds their memory).

    Returns:
        `(D, vp)`.
    """
    if method not in ("auto", "structured", "implicit"):
        raise ValueError(f"method must be 'auto', 'structured' or 'implicit', got {method!r}.")
    structured = method == "structured" or (method == "auto" and supports_structured(model))
    with jax.default_matmul_precision(MATMUL_PRECISION):
        if structured:
            layout = check_structured(model)
            feats = features(model, layout, x, block_size)
            return _structured_diagonal(feats, layout), structured_vp_fn(feats, layout)
        d = ntk_diagonal(model, x, method="jacobian", block_size=block_size)
        return d, ntk_vp_fn(model, x)
