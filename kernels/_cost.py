"""Static cost model used by `method="auto"` to pick between the jacobian and implicit kernels."""

from __future__ import annotations

import math

import jax
from jax.extend import core as jex_core


def _sub_jaxprs(params):
    for v in params.values():
        vs = v if isinstance(v, (tuple, list)) else (v,)
        for item in vs:
            if isinstance(item, jex_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex_core.Jaxpr):
                yield item


def _jaxpr_flops(jaxpr) -> float:
    """Multiply-add FLOPs (×2) of the dot products and convolutions of a jaxpr."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract_lhs, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in contract_lhs)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out = eqn.outvars[0].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out_feat, in_feat, *spatial)
            total += 2.0 * math.prod(out) * math.prod(rhs[d] for d in rhs_spec[1:])
        sub = sum(_jaxpr_flops(j) for j in _sub_jaxprs(eqn.params))
        total += sub * eqn.params.get("length", 1)
    return total


def forward_flops(f, params, x) -> float:
    """FLOPs of one forward pass `f(params, x)` of ONE example (dots and convolutions only)."""
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (params, x))
    return _jaxpr_flops(jax.make_jaxpr(f)(*shapes).jaxpr)


def jacobian_cost(n1: int, n2: int, o: int, p: int, flops: float, symmetric: bool) -> float:
    """Jacobian rows (a forward and O reverse passes per example) plus `2·n1·n2·O²·P`."""
    rows = (n1 if symmetric else n1 + n2) * (1 + 2 * o) * flops
    return rows + 2.0 * n1 * n2 * o * o * p


def implicit_cost(n1: int, n2: int, o: int, p: int, flops: float) -> float:
    """Tangents of x2 (as for the Jacobian) plus one jvp (≈2 forward passes) per tangent and
    example of x1."""
    return n2 * (1 + 2 * o) * flops + n1 * flops + 2.0 * n1 * n2 * o * flops


def structured_cost(n1: int, n2: int, o: int, layout, flops: float, symmetric: bool) -> float:
    """Dense-layer identity over the layers of `layout` (`(in_l, out_l, has_bias)` triples):
    the signal rows (a forward and O reverse passes per example) plus, per layer, the two Gram
    products `2·n1·n2·in_l` and `2·n1·n2·O²·out_l` and their elementwise product `n1·n2·O²`."""
    rows = (n1 if symmetric else n1 + n2) * (1 + 2 * o) * flops
    grams = sum(2.0 * n1 * n2 * (i + o * o * out) + n1 * n2 * o * o for i, out, _ in layout)
    return rows + grams


def hybrid_costs(
    n1: int, n2: int, o: int, layout, p_rest: int, flops: float, symmetric: bool
) -> dict[str, float]:
    """FLOPs of the hybrid kernel for both ways of handling the `p_rest` parameters outside the
    structured layers: `"jacobian"` (their Jacobian rows come out of the same reverse passes as
    the signals, then `2·n1·n2·O²·p_rest`) and `"implicit"` (tangents of x2 from extra reverse
    passes, then one jvp through the whole forward per tangent and example of x1)."""
    base = structured_cost(n1, n2, o, layout, flops, symmetric)
    if p_rest == 0:
        return {"jacobian": base, "implicit": base}
    return {
        "jacobian": base + 2.0 * n1 * n2 * o * o * p_rest,
        "implicit": base + n2 * (1 + 2 * o) * flops + n1 * flops + 2.0 * n1 * n2 * o * flops,
    }
