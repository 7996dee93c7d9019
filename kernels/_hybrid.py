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

Recognition (`analyze_linears`). The identity needs `∂f_a/∂W = δ_a hᵀ` with ONE `(δ, h)` pair
per example, so a Linear is *recognized* only if, in one forward pass of one example, it is

- called exactly once (not twice, not never),
- on a 1-D input of `in_features` entries at the top level of the pass, i.e. not inside a
  transformation within the model (`jax.vmap` over tokens, `lax.scan`, `cond`, `jit`,
  `checkpoint`): there it would run many times per example, or under other rules,
- and its `weight` / `bias` are not read directly by the model (e.g. tied weights),

and it is exactly an `eqx.nn.Linear` (not a subclass, which may compute something else), with
array (not "scalar") features and an unstacked `(out, in)` weight.

To find out, `analyze_linears` runs the model once eagerly on zeros: concrete zero copies of its
array leaves and of one example, under `jax.ensure_compile_time_eval` (so it also works while
`ntk` is traced under `jit` or `vmap`), with every Linear replaced by a recording stand-in. A
stand-in that receives a concrete array ran at the top level; one that receives a tracer ran
inside a transformation of the model. (Telling the two apart from tracers alone would need JAX
internals; on concrete inputs any tracer means a transformation inside the model.) If the probe raises (a model that rejects all-zero inputs, say),
nothing is recognized and the hybrid kernel is the plain matrix-free one; the reason is reported
by `explain_method`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _cost
from ._common import (
    block_len,
    check_inputs,
    gram,
    map_examples,
    out_size,
    sample_major,
    split,
    tiled,
)
from ._implicit import _jvp_tile, _vjp_tangents
from ._protocol import num_trainable
from ._structured import Features, _layer_terms

REST_MODES = ("jacobian", "implicit")


def _is_linear(node) -> bool:
    return type(node) is eqx.nn.Linear


class LinearInfo(NamedTuple):
    """One `eqx.nn.Linear` of a model and whether the hybrid kernel treats it as structured.

    Attributes:
        name: its path in the model, e.g. `"blocks[0].fc1"` (`"<model>"` for the model itself).
        in_features, out_features: as in `eqx.nn.Linear` (an int, or `"scalar"`).
        has_bias: whether it has a bias.
        position: its index among the leaves of the model flattened with Linears as leaves.
        recognized: whether the dense-layer identity is used for it.
        reason: why not (empty when recognized).
    """

    name: str
    in_features: int | str
    out_features: int | str
    has_bias: bool
    position: int
    recognized: bool
    reason: str


class HybridPlan(NamedTuple):
    """What `analyze_linears` found: every Linear of the model and whether it is recognized.

    Attributes:
        linears: every `eqx.nn.Linear` of the model, in flattening order.
        probe_error: the error of the recognition probe, or "" when it ran.
    """

    linears: tuple[LinearInfo, ...]
    probe_error: str = ""

    @property
    def structured(self) -> tuple[LinearInfo, ...]:
        """The recognized Linears, in flattening order."""
        return tuple(info for info in self.linears if info.recognized)

    @property
    def layout(self) -> tuple[tuple[int, int, bool], ...]:
        """`(in_l, out_l, has_bias)` of the recognized Linears (the structured layout)."""
        return tuple((int(i.in_features), int(i.out_features), i.has_bias) for i in self.structured)

    @property
    def num_structured(self) -> int:
        """Number of parameters in the recognized Linears."""
        return sum(i * o + (o if b else 0) for i, o, b in self.layout)


# --------------------------------------------------------------------------------------------
# Recognition
# --------------------------------------------------------------------------------------------


class _Log:
    """Python-side record of one pass through the stand-ins (hashed by identity, so it can sit
    in a static field)."""

    def __init__(self, n: int):
        self.calls: list[list[str]] = [[] for _ in range(n)]  # per layer, per call: "" or a problem
        self.reads = [False] * n
        self.inputs: list[list[Array]] = [[] for _ in range(n)]


class _Stand(eqx.Module):
    """Stands in for one `eqx.nn.Linear`. Probe mode (`eps is None`): records each call and
    direct reads of `weight`/`bias`. Tap mode: returns `linear(x) + eps` and records `x`."""

    linear: eqx.nn.Linear
    eps: Array | None
    index: int = eqx.field(static=True)
    log: _Log = eqx.field(static=True)

    def __call__(self, x, *, key=None):
        y = self.linear(x, key=key)
        if self.eps is None:
            self.log.calls[self.index].append(_call_problem(x, self.linear))
            return y
        self.log.inputs[self.index].append(x)
        return y + self.eps

    @property
    def weight(self):
        self.log.reads[self.index] = True
        return self.linear.weight

    @property
    def bias(self):
        self.log.reads[self.index] = True
        return self.linear.bias

    @property
    def in_features(self):
        return self.linear.in_features

    @property
    def out_features(self):
        return self.linear.out_features

    @property
    def use_bias(self):
        return self.linear.use_bias


def _call_problem(x, linear: eqx.nn.Linear) -> str:
    if isinstance(x, jax.core.Tracer):
        return (
            "called inside a transformation within the model (a vmap, e.g. per token, or a "
            "scan, cond, jit or checkpoint)"
        )
    shape = getattr(x, "shape", None)
    if shape != (linear.in_features,):
        return f"called on an input of shape {shape}, not one vector of {linear.in_features}"
    return ""


def _concrete_zeros(a):
    if not eqx.is_array(a):
        return a
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        return jnp.broadcast_to(jax.random.key(0), a.shape)
    return jnp.zeros(a.shape, a.dtype)


def _name(path) -> str:
    name = jax.tree_util.keystr(path)
    return name[1:] if name.startswith(".") else (name or "<model>")


def _reason(lin: eqx.nn.Linear, log: _Log, idx: int, error: str) -> str:
    if "scalar" in (lin.in_features, lin.out_features):
        return "scalar input or output features"
    if not eqx.is_inexact_array(lin.weight):
        return "its weight is not a trainable (inexact) array"
    if lin.weight.shape != (lin.out_features, lin.in_features):
        return f"weight of shape {lin.weight.shape}, not (out, in) (stacked layers?)"
    if error:
        return f"the recognition probe failed ({error})"
    calls = log.calls[idx]
    if not calls:
        return "never called"
    if len(calls) > 1:
        return f"called {len(calls)} times per example"
    if calls[0]:
        return calls[0]
    if log.reads[idx]:
        return "its weight or bias is read directly by the model"
    return ""


def analyze_linears(model, example: jax.ShapeDtypeStruct) -> HybridPlan:
    """Find the model's `eqx.nn.Linear`s that the dense-layer identity applies to.

    Runs the model once, eagerly, on zeros (see the module docstring); nothing runs when the model
    has no `eqx.nn.Linear`.

    Example:
        >>> mlp = eqx.nn.MLP(4, 2, 8, depth=2, key=jax.random.key(0))
        >>> plan = analyze_linears(mlp, jax.ShapeDtypeStruct((4,), jnp.float32))
        >>> [i.name for i in plan.structured]
        ['layers[0]', 'layers[1]', 'layers[2]']

    Args:
        model: maps ONE example to `(O,)` logits (one member, not a stacked pack).
        example: shape and dtype of one example.

    Returns:
        A `HybridPlan`.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_linear)
    found = [(k, path, leaf) for k, (path, leaf) in enumerate(flat) if _is_linear(leaf)]
    if not found:
        return HybridPlan(())
    log = _Log(len(found))
    leaves = [leaf for _, leaf in flat]
    for idx, (k, _, lin) in enumerate(found):
        leaves[k] = _Stand(lin, None, idx, log)
    probe = jax.tree_util.tree_unflatten(treedef, leaves)
    error = ""
    try:
        with jax.ensure_compile_time_eval(), jax.debug_nans(False), jax.debug_infs(False):
            concrete = jax.tree.map(_concrete_zeros, probe)
            concrete(jnp.zeros(example.shape, example.dtype))
    except Exception as e:  # noqa: BLE001 - a failed probe only means: recognize nothing
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        error = f"{type(e).__name__}: {message}"
        error = error if len(error) <= 200 else error[:199] + "…"
    infos = []
    for idx, (k, path, lin) in enumerate(found):
        reason = _reason(lin, log, idx, error)
        infos.append(
            LinearInfo(
                _name(path), lin.in_features, lin.out_features, lin.use_bias, k, not reason, reason
            )
        )
    return HybridPlan(tuple(infos), error)


def rest_partition(model, plan: HybridPlan):
    """`(rest, frozen)`: the trainable parameters outside the recognized Linears, and everything
    else (the recognized Linears' parameters included), for `eqx.combine(rest, frozen)`."""
    leaves, treedef = jax.tree_util.tree_flatten(model, is_leaf=_is_linear)
    recognized = {info.position for info in plan.structured}
    spec = [
        jax.tree.map(lambda _: False, leaf)
        if k in recognized
        else jax.tree.map(eqx.is_inexact_array, leaf)
        for k, leaf in enumerate(leaves)
    ]
    return eqx.partition(model, jax.tree_util.tree_unflatten(treedef, spec))


def rest_names(model, plan: HybridPlan) -> list[tuple[str, tuple[int, ...]]]:
    """`(path, shape)` of every trainable array outside the recognized Linears."""
    rest, _ = rest_partition(model, plan)
    return [(_name(p), tuple(a.shape)) for p, a in jax.tree_util.tree_flatten_with_path(rest)[0]]


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


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


def _struct_acc(f1: Features, f2: Features, layout, acc=None):
    """`Σ_l K_l ⊙ G_l` in the `(i, a, j, b)` layout added to `acc` (None: no term yet)."""
    for _, k, g in _layer_terms(f1, f2, layout):
        term = k[:, None, :, None] * g
        acc = term if acc is None else acc + term
    return acc


def _jac_tile(r1, r2, layout) -> Float[Array, "n1 n2 o o"]:
    (f1, j1), (f2, j2) = r1, r2
    acc = _struct_acc(f1, f2, layout)
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


def _example(x: Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)


def ntk_hybrid(
    model,
    x1: Array,
    x2: Array | None = None,
    block_size: int | None = None,
    *,
    plan: HybridPlan | None = None,
    rest: str = "auto",
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

    Returns:
        `(n1, n2, O, O)`.
    """
    check_inputs(x1, x2)
    plan = analyze_linears(model, _example(x1)) if plan is None else plan
    if rest == "auto":
        rest, _ = choose_rest(model, x1, x2, plan)
    if rest not in REST_MODES:
        raise ValueError(f"rest must be 'auto' or one of {REST_MODES}, got {rest!r}.")
    params, f = split(model)
    o, dtype = out_size(f, params, x1)
    layout = plan.layout
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
                lambda r: r, lambda r, _, c: _jac_tile(r, c, layout), r1, r2, b1, b2, like,
                symmetric=symmetric,
            )  # fmt: skip
        rows = jax.vmap(one)
        if symmetric and block_size is None:
            r = rows(x1)
            return _jac_tile(r, r, layout)
        return tiled(
            rows, lambda r, _, xb2: _jac_tile(r, rows(xb2), layout), x1, x2, b1, b2, like,
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
        return fb2, _vjp_tangents(rest_params, f_rest, xb2, o, dtype)

    def tile_fn(row, _, t1):
        fb2, tangents = row
        xb1, fb1 = t1
        out = _jvp_tile(rest_params, f_rest, xb1, tangents)
        acc = _struct_acc(fb2, fb1, layout)
        return out if acc is None else out + sample_major(acc)

    k = tiled(
        row_fn, tile_fn, (x2, f2), (x1, f1), b2, b1, jax.ShapeDtypeStruct((n2, n1, o, o), dtype),
        symmetric=symmetric,
    )  # fmt: skip
    return k if symmetric else jnp.transpose(k, (1, 0, 3, 2))


def diagonal_hybrid(
    model, x: Array, block_size: int | None = None, *, plan: HybridPlan | None = None
) -> Float[Array, "n o"]:
    """`Θ[(i,a),(i,a)] = Σ_l (|h_il|² + [has_bias]) |δ_ial|² + |J_rest,ia|²` from one forward
    and O reverse passes per example, `block_size` examples at a time."""
    check_inputs(x, None)
    plan = analyze_linears(model, _example(x)) if plan is None else plan
    params, f = split(model)
    o, dtype = out_size(f, params, x)
    p_rest = num_trainable(model) - plan.num_structured
    one, _, _ = _rows_fn(model, plan, with_rest=p_rest > 0)

    def diag(xi):
        feats, jrest = one(xi)
        out = jnp.zeros((o,), dtype)
        for h, d, (_, _, has_bias) in zip(feats.inputs, feats.deltas, plan.layout):
            out = out + (jnp.sum(h * h) + (1.0 if has_bias else 0.0)) * jnp.sum(d * d, axis=-1)
        for leaf in jax.tree.leaves(jrest):
            out = out + jnp.sum(leaf * leaf, axis=tuple(range(1, leaf.ndim)))
        return out

    return map_examples(diag, x, block_len(x.shape[0], block_size))


def describe(
    model, plan: HybridPlan, rest_mode: str | None, limit: int = 12
) -> tuple[str, str, str]:
    """Three phrases for `explain_method`: the structured Linears, the matrix-free parameters
    and the Linears that are not recognized, grouped by reason ("" if none)."""

    def listing(items: list[str]) -> str:
        if len(items) > limit:
            items = items[:limit] + [f"and {len(items) - limit} more"]
        return ", ".join(items)

    s = plan.structured
    structured = (
        f"{len(s)} Linear{'s' if len(s) != 1 else ''}, {plan.num_structured:,} parameters: "
        + listing([f"{i.name} ({i.in_features}->{i.out_features})" for i in s])
        if s
        else "none"
    )
    names = rest_names(model, plan)
    p_rest = sum(math.prod(shape) for _, shape in names)
    how = {"jacobian": " by Jacobian contraction", "implicit": " by NTK-vector products"}
    matrix_free = (
        f"{p_rest:,} parameters{how.get(rest_mode, '')}: "
        + listing([f"{n} {shape}" for n, shape in names])
        if names
        else "none"
    )
    by_reason: dict[str, list[str]] = {}
    for info in plan.linears:
        if not info.recognized:
            by_reason.setdefault(info.reason, []).append(info.name)
    not_recognized = "; ".join(f"{reason}: {listing(names)}" for reason, names in by_reason.items())
    return structured, matrix_free, not_recognized
