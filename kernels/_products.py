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
from ._structured import Features, features, model_layer_weights, weighted_diagonal
from ._structured import layer_weights as layer_weights_

Matvec = Callable[[Float[Array, "n o"]], Float[Array, "n o"]]


def structured_vp_fn(feats: Features, layout, layer_weights=None) -> Matvec:
    """`v ↦ Θ v` of a dense network from its layer inputs `h_l` and signals `δ_l`.

    `Θ v [i, a] = Σ_l δ_iaₗᵀ (G_l h_il + [has_bias] g_l)` with `u_l[j] = Σ_b v[j, b] δ_jbₗ`,
    `G_l = Σ_j u_l[j] h_jlᵀ` and `g_l = Σ_j u_l[j]` (the weight and bias parts of `Jᵀ v`):
    four matmuls per layer, no `N × N` Gram and no chain through the layers. With weights,
    `G_l` and `g_l` are multiplied by the weights of `W_l` and `b_l` (`J diag(w) Jᵀ v`).

    Example:
        >>> from ntkbench.models import MLP
        >>> from ntkbench.kernels._structured import features
        >>> mlp = MLP(8, 3, width=16, depth=2, key=jax.random.key(0))
        >>> layout = mlp.structured_layout()
        >>> feats = features(mlp, layout, jnp.ones((4, 8)))
        >>> vp = structured_vp_fn(feats, layout, [(0.5, 2.0), (1.0, 1.0), (1 / 16, 0.0)])
        >>> vp(jnp.ones((4, 3))).shape
        (4, 3)

    Args:
        feats: `Features` of the N examples (`inputs[l]` `(N, in_l)`, `deltas[l]` `(N, O, out_l)`).
        layout: the model's `structured_layout()`.
        layer_weights: None (the plain NTK), or one `(w_W, w_b)` pair per dense layer, arrays
            broadcastable to `(out_l, in_l)` and `(out_l,)` that are scalars or vary along one
            axis of `W_l` only (`model.structured_leaves(weights)` of a `StructuredModel` gives
            them; see `ntkbench.kernels.ntk`). Named apart from `weights` because it is per
            layer, not a parameter-shaped pytree.

    Returns:
        The linear map `(N, O) -> (N, O)`.
    """
    lw = layer_weights_(layer_weights, layout)

    def vp(v: Float[Array, "n o"]) -> Float[Array, "n o"]:
        out = None
        for l, (h, d, (_, _, has_bias)) in enumerate(zip(feats.inputs, feats.deltas, layout)):
            u = jnp.einsum("nao,na->no", d, v, precision=HIGHEST)
            g = jnp.matmul(u.T, h, precision=HIGHEST)  # (out_l, in_l)
            if lw is not None:
                w = lw[l]
                g = g * (w.out[:, None] if w.out.ndim else w.out)
                g = g if w.inp is None else g * w.inp
            gh = jnp.matmul(h, g.T, precision=HIGHEST)  # (N, out_l)
            if has_bias:
                gb = jnp.sum(u, axis=0)
                gh = gh + (gb if lw is None else gb * lw[l].bias)
            term = jnp.einsum("nao,no->na", d, gh, precision=HIGHEST)
            out = term if out is None else out + term
        return out

    return vp


def _structured_diagonal(feats: Features, layout, lw=None) -> Float[Array, "n o"]:
    out = None
    for l, (h, d, (_, _, has_bias)) in enumerate(zip(feats.inputs, feats.deltas, layout)):
        if lw is not None:
            term = weighted_diagonal(h, d, lw[l])
        else:
            hh = jnp.sum(h * h, axis=-1) + (1.0 if has_bias else 0.0)
            term = hh[:, None] * jnp.sum(d * d, axis=-1)
        out = term if out is None else out + term
    return out


def ntk_diagonal_and_vp(
    model,
    x: Float[Array, "n ..."],
    *,
    method: str = "auto",
    block_size: int | None = None,
    weights=None,
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
        weights: per-parameter weights (see `ntkbench.kernels.ntk`): both are then those of the
            weighted kernel `J diag(w) Jᵀ`. None: the plain NTK.

    Returns:
        `(D, vp)`.
    """
    if method not in ("auto", "structured", "implicit"):
        raise ValueError(f"method must be 'auto', 'structured' or 'implicit', got {method!r}.")
    structured = method == "structured" or (method == "auto" and supports_structured(model))
    with jax.default_matmul_precision(MATMUL_PRECISION):
        if structured:
            layout = check_structured(model)
            lw = model_layer_weights(model, layout, weights)
            feats = features(model, layout, x, block_size)
            return _structured_diagonal(feats, layout, lw), structured_vp_fn(feats, layout, lw)
        d = ntk_diagonal(model, x, method="jacobian", block_size=block_size, weights=weights)
        return d, ntk_vp_fn(model, x, weights=weights)
