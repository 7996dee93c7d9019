"""Which `equinox.nn.Linear`s of a user's model the hybrid kernel may treat as dense layers.

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

`describe` turns a `HybridPlan` into the phrases `explain_method` prints. The kernel itself is
in `_hybrid.py`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array


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


def rest_spec(model, plan: HybridPlan):
    """The filter spec (a pytree of bools shaped like `model`) of the trainable parameters
    outside the recognized Linears."""
    leaves, treedef = jax.tree_util.tree_flatten(model, is_leaf=_is_linear)
    recognized = {info.position for info in plan.structured}
    spec = [
        jax.tree.map(lambda _: False, leaf)
        if k in recognized
        else jax.tree.map(eqx.is_inexact_array, leaf)
        for k, leaf in enumerate(leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, spec)


def rest_partition(model, plan: HybridPlan):
    """`(rest, frozen)`: the trainable parameters outside the recognized Linears, and everything
    else (the recognized Linears' parameters included), for `eqx.combine(rest, frozen)`."""
    return eqx.partition(model, rest_spec(model, plan))


def rest_names(model, plan: HybridPlan) -> list[tuple[str, tuple[int, ...]]]:
    """`(path, shape)` of every trainable array outside the recognized Linears."""
    rest, _ = rest_partition(model, plan)
    return [(_name(p), tuple(a.shape)) for p, a in jax.tree_util.tree_flatten_with_path(rest)[0]]



def example_spec(x: Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)


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
