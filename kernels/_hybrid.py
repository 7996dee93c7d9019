"""Hybrid NTK of users' own Equinox models: the dense-layer identity wherever it applies.

The NTK is a sum over parameter groups, `Θ = Σ_l Θ_l + Θ_rest`. Every `equinox.nn.Linear`
`u = W h + b` that the model *provably* uses as a plain dense layer contributes (docs/definitions.md §1)

    Θ_l[(i,a),(j,b)] = (<h_i, h_j> + [has_bias]) · <δ_ia, δ_jb>,   δ = ∂f/∂u,

obtained as in the structured kernel: a zero perturbation `eps_l` is added to the layer's output
and the `δ_l` are the `jacrev` of the logits w.r.t. `eps_l`; the inputs `h_l` come out of the same
forward pass as its aux output. Every other trainable parameter (LayerNorm scales, convolutions,
embeddings, Linears applied per token under a vmap, anything else) forms `Θ_rest`, computed either
from its Jacobian rows (which the same reverse passes produce) or by NTK-vector products, whichever
`_cost.hybrid_costs` says is cheaper. The sum is the full NTK, exactly.

With per-parameter weights (`ntk(..., weights=...)`) every recognized Linear's term is weighted as
in the structured kernel (scalars, or weights varying along one axis of `W`) and the other
parameters' Jacobian rows or tangents are multiplied by theirs: `J diag(w) Jᵀ`, exactly.

Which Linears qualify (called once per example, at the top level of the forward pass, weights not
read directly) is decided by `analyze_linears` in `_linears.py`, whose docstring gives the rules
and how the model is probed.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _cost
from ._common import (
    block_len,
    check_inputs,
    check_weights,
    gram,
    map_examples,
    out_size,
    sample_major,
    split,
    tiled,
    weigh,
)
from ._implicit import jvp_tile, vjp_tangents
from ._linears import (
    HybridPlan,
    example_spec,
    _is_linear,
    _Log,
    _Stand,
    analyze_linears,
    rest_partition,
    rest_spec,
)
from ._protocol import num_trainable
from ._structured import Features, layer_terms, layer_weights, weighted_diagonal

REST_MODES = ("jacobian", "implicit")


def _tapped_call(model, plan: HybridPlan, eps, xi):
    """Logits of one example with `eps[l]` added to recognized Linear `l`, and its inputs."""
    leaves, treedef = jax.tree_util.tree_flatten(model, is_leaf=_is_linear)
    log = _Log(len(plan.structured))
    for idx, info in enumerate(plan.structured):
        leaves[info.position] = _Stand(leaves[info.position], eps[idx], idx, log)
    logits = jax.tree_util.tree_unflatten(treedef, leaves)(xi)
    inputs = []
    for idx, info in enumerate(plan.structured):
        got = log.inputs[idx]
        if len(got) != 1:
            raise RuntimeError(
                f"Linear {info.name} was called once when the model was probed but {len(got)} "
                "times when the NTK was traced, so the hybrid kernel cannot be used for this "
                "model; pass method='jacobian' or 'implicit'."
            )
        inputs.append(got[0])
    return logits, tuple(inputs)


def _rows_fn(model, plan: HybridPlan, with_rest: bool):
    """`one(xi) -> (Features, rest Jacobian rows or None)` of ONE example (one forward and O
    reverse passes), plus the `(rest, frozen)` partition."""
    rest, frozen = rest_partition(model, plan)
    leaves = jax.tree_util.tree_flatten(model, is_leaf=_is_linear)[0]
    # One zero perturbation per recognized Linear, in the dtype of its output.
    eps = tuple(
        jnp.zeros((info.out_features,), leaves[info.position].weight.dtype)
        for info in plan.structured
    )

    def fwd(e, r, xi):
        return _tapped_call(eqx.combine(r, frozen), plan, e, xi)

    def one(xi):
        if not eps:  # no recognized Linear: only the rest (if asked for)
            logits = lambda r: eqx.combine(r, frozen)(xi)
            return Features((), ()), (jax.jacrev(logits)(rest) if with_rest else None)
        if with_rest:
            (deltas, jrest), inputs = jax.jacrev(fwd, argnums=(0, 1), has_aux=True)(eps, rest, xi)
        else:
            deltas, inputs = jax.jacrev(fwd, has_aux=True)(eps, rest, xi)
            jrest = None
        return Features(inputs, tuple(deltas)), jrest

    return one, rest, frozen


def _split_weights(model, plan: HybridPlan, weights):
    """`(LayerWeights of the recognized Linears, weights of the other parameters shaped like
    rest_partition's rest)` from parameter-shaped `weights`; `(None, None)` for None."""
    if weights is None:
        return None, None
    params, static = eqx.partition(model, eqx.is_inexact_array)
    full = eqx.combine(check_weights(params, weights), static)  # model-shaped
    leaves = jax.tree_util.tree_flatten(full, is_leaf=_is_linear)[0]
    pairs = [(leaves[i.position].weight, leaves[i.position].bias) for i in plan.structured]
    return layer_weights(pairs, plan.layout, "hybrid"), eqx.filter(full, rest_spec(model, plan))


def _weigh_rows(r, rest_w):
    """Rows `(Features, rest Jacobian rows)` with the rest rows multiplied by their weights."""
    feats, jrest = r
    return feats, (None if jrest is None else weigh(jrest, rest_w))


def _struct_acc(f1: Features, f2: Features, layout, acc=None, lw=None):
    """`Σ_l K_l ⊙ G_l` in the `(i, a, j, b)` layout added to `acc` (None: no term yet);
    weighted by the `LayerWeights` `lw` when given."""
    for term in layer_terms(f1, f2, layout, lw):
        acc = term if acc is None else acc + term
    return acc


def _jac_tile(r1, r2, layout, lw=None) -> Float[Array, "n1 n2 o o"]:
    (f1, j1), (f2, j2) = r1, r2
    acc = _struct_acc(f1, f2, layout, lw=lw)
    if j1 is not None:
        for l1, l2 in zip(jax.tree.leaves(j1), jax.tree.leaves(j2)):
            g = gram(l1, l2, free=2)
            acc = g if acc is None else acc + g
    return sample_major(acc)


def choose_rest(
    model, x1: Array, x2: Array | None, plan: HybridPlan, flops: float | None = None
) -> tuple[str, dict]:
    """The cheaper way (`"jacobian"` or `"implicit"`) to handle the parameters outside the
    recognized Linears, and both FLOP estimates (`_cost.hybrid_costs`; `flops`: of one forward
    pass, counted here when not given)."""
    params, f = split(model)
    o, _ = out_size(f, params, x1)
    flops = _cost.forward_flops(f, params, x1[0]) if flops is None else flops
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    p_rest = num_trainable(model) - plan.num_structured
    costs = _cost.hybrid_costs(n1, n2, o, plan.layout, p_rest, flops, symmetric=x2 is None)
    return ("jacobian" if costs["jacobian"] <= costs["implicit"] else "implicit"), costs



def ntk_hybrid(
    model,
    x1: Array,
    x2: Array | None = None,
    block_size: int | None = None,
    *,
    plan: HybridPlan | None = None,
    rest: str = "auto",
    weights=None,
) -> Float[Array, "n1 n2 o o"]:
    """Hybrid NTK (see the module docstring): exact, for any model; `ntk(..., method="hybrid")`.

    Memory: the per-layer features `n·(Σ in_l + O·Σ out_l)` plus, for the other `P_rest`
    parameters, what the Jacobian (`~2·b·O·P_rest` with blocks of `b` examples) or implicit
    (`b·O·P_rest` tangents) kernel needs for them, plus the output.

    Example:
        >>> mlp = eqx.nn.MLP(4, 2, 8, depth=2, key=jax.random.key(0))
        >>> ntk_hybrid(mlp, jnp.ones((5, 4)), jnp.ones((3, 4)), block_size=2).shape
        (5, 3, 2, 2)

    Args:
        model: maps ONE example to `(O,)` logits.
        x1, x2: `(n1, ...)`, `(n2, ...)` examples (`x2=None`: the symmetric kernel of `x1`).
        block_size: examples per block (tile-by-tile assembly, as for the other methods).
        plan: `analyze_linears(model, ...)` if already computed.
        rest: how the parameters outside the recognized Linears are handled: `"jacobian"` (their
            Jacobian rows come from the same reverse passes as the signals `δ`; with
            `block_size`, recomputed for every tile like `method="jacobian"`), `"implicit"`
            (NTK-vector products) or `"auto"` (the cheaper by `_cost.hybrid_costs`).
        weights: per-parameter weights (see `ntkbench.kernels.ntk`), or None.

    Returns:
        `(n1, n2, O, O)`.
    """
    check_inputs(x1, x2)
    plan = analyze_linears(model, example_spec(x1)) if plan is None else plan
    if rest == "auto":
        rest, _ = choose_rest(model, x1, x2, plan)
    if rest not in REST_MODES:
        raise ValueError(f"rest must be 'auto' or one of {REST_MODES}, got {rest!r}.")
    params, f = split(model)
    o, dtype = out_size(f, params, x1)
    layout = plan.layout
    lw, rest_w = _split_weights(model, plan, weights)
    p_rest = num_trainable(model) - plan.num_structured
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    n1, n2 = x1.shape[0], x2.shape[0]
    b1, b2 = block_len(n1, block_size), block_len(n2, block_size)
    if not layout and p_rest == 0:
        return jnp.zeros((n1, n2, o, o), dtype)

    if rest == "jacobian" or p_rest == 0:
        one, _, _ = _rows_fn(model, plan, with_rest=p_rest > 0)
        like = jax.ShapeDtypeStruct((n1, n2, o, o), dtype)
        if p_rest == 0:  # structured only: features of every example once (they are small)
            r1 = map_examples(one, x1, b1)
            r2 = r1 if symmetric else map_examples(one, x2, b2)
            return tiled(
                lambda r: r, lambda r, _, c: _jac_tile(r, c, layout, lw), r1, r2, b1, b2, like,
                symmetric=symmetric,
            )  # fmt: skip
        rows = jax.vmap(one)
        if symmetric and block_size is None:
            r = rows(x1)
            return _jac_tile(r if rest_w is None else _weigh_rows(r, rest_w), r, layout, lw)
        row_fn = rows if rest_w is None else (lambda xb1: _weigh_rows(rows(xb1), rest_w))
        return tiled(
            row_fn, lambda r, _, xb2: _jac_tile(r, rows(xb2), layout, lw), x1, x2, b1, b2, like,
            symmetric=symmetric,
        )  # fmt: skip

    # rest == "implicit": structured features of every example once; for each block of x2 the
    # tangents J_rest(x_j)ᵀ e_b, pushed through each block of x1 with one jvp. Built as Θ(x2, x1)
    # (layout [j, i, b, a]) like the implicit kernel, transposed at the end.
    one, rest_params, frozen = _rows_fn(model, plan, with_rest=False)
    feats = lambda x, b: map_examples(lambda xi: one(xi)[0], x, b)
    f1 = feats(x1, b1)
    f2 = f1 if symmetric else feats(x2, b2)

    def f_rest(p, xi):
        return eqx.combine(p, frozen)(xi)

    def row_fn(t2):
        xb2, fb2 = t2
        return fb2, weigh(vjp_tangents(rest_params, f_rest, xb2, o, dtype), rest_w)

    def tile_fn(row, _, t1):
        fb2, tangents = row
        xb1, fb1 = t1
        out = jvp_tile(rest_params, f_rest, xb1, tangents)
        acc = _struct_acc(fb2, fb1, layout, lw=lw)
        return out if acc is None else out + sample_major(acc)

    k = tiled(
        row_fn, tile_fn, (x2, f2), (x1, f1), b2, b1, jax.ShapeDtypeStruct((n2, n1, o, o), dtype),
        symmetric=symmetric,
    )  # fmt: skip
    return k if symmetric else jnp.transpose(k, (1, 0, 3, 2))


def diagonal_hybrid(
    model,
    x: Array,
    block_size: int | None = None,
    *,
    plan: HybridPlan | None = None,
    weights=None,
) -> Float[Array, "n o"]:
    """`Θ[(i,a),(i,a)] = Σ_l (|h_il|² + [has_bias]) |δ_ial|² + |J_rest,ia|²` (weighted with
    `weights`) from one forward and O reverse passes per example, `block_size` examples at a
    time."""
    check_inputs(x, None)
    plan = analyze_linears(model, example_spec(x)) if plan is None else plan
    params, f = split(model)
    o, dtype = out_size(f, params, x)
    lw, rest_w = _split_weights(model, plan, weights)
    p_rest = num_trainable(model) - plan.num_structured
    one, _, _ = _rows_fn(model, plan, with_rest=p_rest > 0)

    def diag(xi):
        feats, jrest = one(xi)
        out = jnp.zeros((o,), dtype)
        for l, (h, d, (_, _, has_bias)) in enumerate(zip(feats.inputs, feats.deltas, plan.layout)):
            if lw is not None:
                out = out + weighted_diagonal(h, d, lw[l])
                continue
            out = out + (jnp.sum(h * h) + (1.0 if has_bias else 0.0)) * jnp.sum(d * d, axis=-1)
        if rest_w is not None and jrest is not None:
            for leaf, w in zip(jax.tree.leaves(jrest), jax.tree.leaves(rest_w)):
                out = out + jnp.sum(leaf * leaf * w, axis=tuple(range(1, leaf.ndim)))
            return out
        for leaf in jax.tree.leaves(jrest):
            out = out + jnp.sum(leaf * leaf, axis=tuple(range(1, leaf.ndim)))
        return out

    return map_examples(diag, x, block_len(x.shape[0], block_size))

