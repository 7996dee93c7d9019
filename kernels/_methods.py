"""Choosing an NTK method: the `NtkMethod` enum, what `"auto"` picks (`resolve_method`) and why
(`explain_method`), from static FLOP counts and the hybrid kernel's recognized Linears."""

from __future__ import annotations

from typing import NamedTuple

from jaxtyping import Array

from . import _cost
from ._common import check_inputs, out_size, split
from ._hybrid import choose_rest
from ._linears import HybridPlan, analyze_linears, describe, example_spec
from ._names import NtkMethod
from ._protocol import num_trainable, supports_structured


def parse_method(method: str | NtkMethod) -> NtkMethod:
    try:
        return NtkMethod(method)
    except ValueError:
        raise ValueError(
            f"Unknown NTK method {method!r}; choose one of {[m.value for m in NtkMethod]}."
        ) from None


class _Choice(NamedTuple):
    """What `method="auto"` decides, with the numbers behind it (`explain_method`)."""

    method: NtkMethod
    plan: HybridPlan | None  # None for protocol models
    costs: dict  # FLOP estimates by method name ("hybrid" only with a recognized Linear)
    rest: str | None  # how HYBRID handles the other parameters ("jacobian" / "implicit")
    o: int = 0
    p: int = 0
    flops: float = 0.0


def _auto(model, x1: Array, x2: Array | None) -> _Choice:
    """The `"auto"` decision: protocol -> STRUCTURED, else the cheapest by FLOP count, ties
    going to JACOBIAN, then IMPLICIT, then HYBRID (chosen only when strictly cheaper)."""
    if supports_structured(model):
        return _Choice(NtkMethod.STRUCTURED, None, {}, None)
    params, f = split(model)
    o, _ = out_size(f, params, x1)
    flops = _cost.forward_flops(f, params, x1[0])
    p = num_trainable(model)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    costs = {
        "jacobian": _cost.jacobian_cost(n1, n2, o, p, flops, symmetric=x2 is None),
        "implicit": _cost.implicit_cost(n1, n2, o, p, flops),
    }
    plan = analyze_linears(model, example_spec(x1))
    rest = None
    if plan.structured:
        rest, hybrid = choose_rest(model, x1, x2, plan, flops)
        costs["hybrid"] = hybrid[rest]
    best = min(costs, key=costs.get)  # first minimum: ties keep the order above
    return _Choice(NtkMethod(best), plan, costs, rest, o, p, flops)


def resolve_method(model, x1: Array, x2: Array | None = None, method="auto") -> NtkMethod:
    """The concrete method `ntk(model, x1, x2, method=method)` uses.

    `"auto"` gives `STRUCTURED` for `StructuredModel`s; otherwise it counts the FLOPs of one
    forward pass (`F`, dots and convolutions of the jaxpr) and compares the Jacobian contraction
    (`~2·n1·n2·O²·P`), the NTK-vector products (`~2·n1·n2·O·F`) and, when the model has an
    `eqx.nn.Linear` the hybrid kernel recognizes, the hybrid kernel (per recognized Linear
    `2·n1·n2·(in_l + O²·out_l)` instead of `2·n1·n2·O²·(in_l·out_l + out_l)`, plus the cheaper
    of the two for the other parameters; `_cost.hybrid_costs`). The cheapest wins; `HYBRID` only
    when strictly cheaper. Dense nets without recognized Linears (`F ≈ 2P`) get `IMPLICIT`,
    convolutional nets (`F >> O·P`) `JACOBIAN`. `explain_method` gives the numbers.

    Nothing is computed for protocol models or models without an `eqx.nn.Linear`; otherwise the
    recognition runs the model once eagerly on zeros (`ntkbench.kernels._linears.analyze_linears`).

    Example:
        >>> from ntkbench.models import MLP
        >>> resolve_method(MLP(4, 2, width=8, depth=1, key=jax.random.key(0)), jnp.ones((3, 4)))
        <NtkMethod.STRUCTURED: 'structured'>
        >>> resolve_method(eqx.nn.MLP(4, 2, 8, depth=1, key=jax.random.key(0)), jnp.ones((3, 4)))
        <NtkMethod.HYBRID: 'hybrid'>

    Args:
        model: maps ONE example to `(O,)` logits.
        x1, x2: the inputs `ntk` would get (only their shapes are used).
        method: a method name or `NtkMethod`.

    Returns:
        A concrete `NtkMethod` (never `AUTO`).
    """
    method = parse_method(method)
    if method is not NtkMethod.AUTO:
        return method
    return _auto(model, x1, x2).method


def explain_method(model, x1: Array, x2: Array | None = None) -> str:
    """One paragraph: the method `ntk(model, x1, x2, method="auto")` picks and why.

    It names the FLOP estimates that decided, and which `eqx.nn.Linear`s are computed by the
    dense-layer identity (structured) and which parameters matrix-free, with the reason for
    every Linear that is not recognized (called twice, under a vmap, ...). For
    `ntkbench profile --config=FILE`.

    Example:
        >>> mlp = eqx.nn.MLP(4, 2, 8, depth=1, key=jax.random.key(0))
        >>> print(explain_method(mlp, jnp.ones((16, 4))))  # doctest: +ELLIPSIS
        method='auto' picks HYBRID for MLP ...

    Args:
        model: maps ONE example to `(O,)` logits.
        x1, x2: the inputs `ntk` would get (only their shapes are used).

    Returns:
        A human-readable paragraph.
    """
    check_inputs(x1, x2)
    name = type(model).__name__
    choice = _auto(model, x1, x2)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    shape = f"n1={n1}, n2={n2}" + (" (symmetric)" if x2 is None else "")
    if choice.method is NtkMethod.STRUCTURED:
        layout = model.structured_layout()
        layers = ", ".join(f"{i}->{o}" for i, o, _ in layout)
        return (
            f"method='auto' picks STRUCTURED for {name} ({shape}): it implements the "
            f"StructuredModel protocol, so all its trainable parameters are the {len(layout)} "
            f"dense layers of its structured_layout() ({layers}) and every layer's NTK is a "
            "conjugate kernel times a signal Gram; no FLOP comparison is needed."
        )
    plan = choice.plan
    costs = ", ".join(
        f"{k} {v:.3g}" + (f" (other parameters by {choice.rest})" if k == "hybrid" else "")
        for k, v in choice.costs.items()
    )
    text = (
        f"method='auto' picks {choice.method.name} for {name} ({shape}, O={choice.o} logits, "
        f"P={choice.p:,} trainable parameters, one forward pass ~{choice.flops:.3g} FLOPs): "
        f"estimated FLOPs {costs}"
    )
    if not plan.linears:
        return text + "; the model has no eqx.nn.Linear, so the hybrid kernel does not apply."
    if plan.probe_error and not plan.structured:
        text += (
            f"; no Linear is recognized because the recognition probe failed ({plan.probe_error})"
        )
    structured, matrix_free, not_recognized = describe(
        model, plan, choice.rest if choice.method is NtkMethod.HYBRID else None
    )
    if choice.method is NtkMethod.HYBRID:
        text += f". Structured (dense-layer identity): {structured}. Matrix-free: {matrix_free}."
    else:
        text += (
            f". Every parameter is handled by {choice.method.name}; with method='hybrid' the "
            f"structured Linears would be: {structured}; matrix-free: {matrix_free}."
        )
    if not_recognized:
        text += f" Not recognized as dense layers: {not_recognized}."
    return text


def resolve(model, x1, x2, method) -> tuple[NtkMethod, HybridPlan | None, str | None]:
    """`(method, plan, rest)`: the concrete method and, for HYBRID, its plan and rest mode."""
    method = parse_method(method)
    if method is NtkMethod.AUTO:
        choice = _auto(model, x1, x2)
        return choice.method, choice.plan, choice.rest
    if method is NtkMethod.HYBRID:
        plan = analyze_linears(model, example_spec(x1))
        return method, plan, choose_rest(model, x1, x2, plan)[0]
    return method, None, None
