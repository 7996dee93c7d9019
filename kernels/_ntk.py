"""The public NTK entry points: `ntk`, `as_matrix`, `ntk_diagonal`, `ntk_trace`, `ntk_vp`,
`layer_ntks`, and the method enum."""

from __future__ import annotations

import enum
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _cost
from ._common import MATMUL_PRECISION, check_inputs, out_size, split
from ._hybrid import choose_rest, diagonal_hybrid, ntk_hybrid
from ._implicit import ntk_implicit, ntk_vp_fn
from ._jacobian import diagonal_jacobian, ntk_jacobian
from ._linears import HybridPlan, _example, analyze_linears, describe
from ._protocol import num_trainable, supports_structured
from ._structured import LayerNTKs, diagonal_structured, layer_ntks_structured, ntk_structured


class NtkMethod(enum.Enum):
    """How `ntk` computes the kernel (all are exact; they differ in speed and memory).

    - `JACOBIAN`: per-example `jax.jacrev`, contracted over parameters. Memory `~ N·O·P`.
    - `IMPLICIT`: NTK-vector products (jvp of vjp over blocks of basis vectors); the Jacobian of
      `x1` is never formed. Fewer FLOPs than `JACOBIAN` when a forward pass is cheap relative to
      `O·P` (dense nets), more for weight-sharing layers (convolutions).
    - `STRUCTURED`: the dense-layer identity of docs/definitions.md §1 (`StructuredModel` protocol only);
      orders of magnitude faster for MLPs.
    - `HYBRID`: any model. The dense-layer identity for every `eqx.nn.Linear` the model calls
      once per example at the top level of its forward pass (see `ntkbench.kernels._linears`),
      the Jacobian or NTK-vector products for all other parameters (LayerNorms, convolutions,
      Linears applied per token under a vmap, ...).
    - `AUTO`: `STRUCTURED` if the model implements the protocol, else whichever of `JACOBIAN`,
      `IMPLICIT` and (if the model has a recognized Linear) `HYBRID` a static FLOP count (dots
      and convolutions of the jaxpr) says is cheaper; `explain_method` says why.
    """

    AUTO = "auto"
    JACOBIAN = "jacobian"
    IMPLICIT = "implicit"
    STRUCTURED = "structured"
    HYBRID = "hybrid"


_NTK_FNS = {
    NtkMethod.JACOBIAN: ntk_jacobian,
    NtkMethod.IMPLICIT: ntk_implicit,
    NtkMethod.STRUCTURED: ntk_structured,
}


def _parse_method(method: str | NtkMethod) -> NtkMethod:
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
    plan = analyze_linears(model, _example(x1))
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
    method = _parse_method(method)
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


def _resolve(model, x1, x2, method) -> tuple[NtkMethod, HybridPlan | None, str | None]:
    """`(method, plan, rest)`: the concrete method and, for HYBRID, its plan and rest mode."""
    method = _parse_method(method)
    if method is NtkMethod.AUTO:
        choice = _auto(model, x1, x2)
        return choice.method, choice.plan, choice.rest
    if method is NtkMethod.HYBRID:
        plan = analyze_linears(model, _example(x1))
        return method, plan, choose_rest(model, x1, x2, plan)[0]
    return method, None, None


def _precise(fn):
    """Trace `fn` with float32 matmuls at full precision (no TF32 on GPUs)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.default_matmul_precision(MATMUL_PRECISION):
            return fn(*args, **kwargs)

    return wrapper


@_precise
def ntk(
    model,
    x1: Float[Array, "n1 ..."],
    x2: Float[Array, "n2 ..."] | None = None,
    *,
    method: str | NtkMethod = "auto",
    block_size: int | None = None,
) -> Float[Array, "n1 n2 o o"]:
    """Empirical NTK `Θ[i, j, a, b] = <∂f_a(x1_i)/∂θ, ∂f_b(x2_j)/∂θ>` (docs/definitions.md §1).

    `θ` are the model's inexact-array leaves (integer/boolean arrays such as padding masks are
    not parameters). Works under `jax.jit` and over a stacked pack of members with
    `eqx.filter_vmap(ntk, in_axes=(eqx.if_array(0), None))(pack, x)`; Gram products and the
    model's passes use full float32 matmul precision.

    Example:
        >>> from ntkbench.models import MLP
        >>> model = MLP(784, 10, width=64, depth=3, key=jax.random.key(0))
        >>> ntk(model, jnp.ones((5, 784))).shape
        (5, 5, 10, 10)

    Args:
        model: maps ONE example to `(O,)` logits.
        x1: `(n1, ...)` examples.
        x2: `(n2, ...)` examples, or None for `x1` (the symmetric NTK; cheaper).
        method: `"auto"`, `"jacobian"`, `"implicit"`, `"structured"` or `"hybrid"` (see
            `NtkMethod`; `explain_method` says what `"auto"` picks and why).
        block_size: examples per block; the kernel is then assembled tile by tile in place
            (`lax.fori_loop`), with only one row block and one column block of Jacobian rows
            (jacobian), of basis tangents (implicit) or one tile (structured) alive: memory is the
            output plus `O(block_size)`, for N up to 10,000 and beyond (hybrid: as jacobian or
            implicit for the other parameters, plus the small per-layer features). None: in one
            go.

    Returns:
        `(n1, n2, O, O)`; use `as_matrix` for the `(n1·O, n2·O)` form.
    """
    check_inputs(x1, x2)
    method, plan, rest = _resolve(model, x1, x2, method)
    if method is NtkMethod.HYBRID:
        return ntk_hybrid(model, x1, x2, block_size, plan=plan, rest=rest)
    return _NTK_FNS[method](model, x1, x2, block_size)


def as_matrix(k: Float[Array, "n1 n2 o1 o2"]) -> Float[Array, "n1*o1 n2*o2"]:
    """The `(n1·O, n2·O)` matrix form of a rank-4 NTK, row index `i·O + a` (docs/definitions.md §1).

    Example:
        >>> as_matrix(jnp.zeros((3, 4, 2, 2))).shape
        (6, 8)
    """
    if k.ndim != 4:
        raise ValueError(
            f"as_matrix takes a rank-4 NTK (n1, n2, O, O), got shape {k.shape}; for a pack of "
            "members use jax.vmap(as_matrix)."
        )
    n1, n2, o1, o2 = k.shape
    # Two single-merge reshapes (explicit-sharding meshes reject a reshape merging two groups).
    return jnp.transpose(k, (0, 2, 1, 3)).reshape(n1 * o1, n2, o2).reshape(n1 * o1, n2 * o2)


@_precise
def ntk_diagonal(
    model,
    x: Float[Array, "n ..."],
    *,
    method: str | NtkMethod = "auto",
    block_size: int | None = None,
) -> Float[Array, "n o"]:
    """`Θ[(i,a),(i,a)] = |∂f_a(x_i)/∂θ|²` for every example and logit, without forming the NTK.

    Structured models use `Σ_l (|h_il|² + [has_bias]) |δ_ial|²` (one forward and O batched
    reverse passes); hybrid the same for the recognized Linears plus the squared Jacobian rows of
    the other parameters; other models per-example Jacobians, `block_size` examples at a time.

    Example:
        >>> from ntkbench.models import MLP
        >>> ntk_diagonal(MLP(8, 3, width=16, depth=2, key=jax.random.key(0)), jnp.ones((4, 8))).shape
        (4, 3)

    Args:
        model: maps ONE example to `(O,)` logits.
        x: `(n, ...)` examples.
        method: `"auto"` (structured when supported, else hybrid when the model has a
            recognized `eqx.nn.Linear`, else jacobian), `"structured"`, `"hybrid"`, or
            `"jacobian"`/`"implicit"` (both use per-example squared gradient norms).
        block_size: examples per block (bounds memory to one block of Jacobian rows).

    Returns:
        `(n, O)`.
    """
    check_inputs(x, None)
    method = _parse_method(method)
    plan = None
    if method is NtkMethod.AUTO:
        if supports_structured(model):
            method = NtkMethod.STRUCTURED
        else:  # the hybrid diagonal never costs more than the Jacobian one
            plan = analyze_linears(model, _example(x))
            method = NtkMethod.HYBRID if plan.structured else NtkMethod.JACOBIAN
    if method is NtkMethod.STRUCTURED:
        return diagonal_structured(model, x, block_size)
    if method is NtkMethod.HYBRID:
        return diagonal_hybrid(model, x, block_size, plan=plan)
    return diagonal_jacobian(model, x, block_size)


def ntk_trace(
    model,
    x: Float[Array, "n ..."],
    *,
    method: str | NtkMethod = "auto",
    block_size: int | None = None,
) -> Float[Array, ""]:
    """Normalized NTK trace `T = tr(Θ) / (N·O)`, the mean squared gradient norm (docs/definitions.md §2).

    Computed from `ntk_diagonal` without forming the NTK. Multiply by `N·O` for the plain sum.

    Example:
        >>> from ntkbench.models import MLP
        >>> ntk_trace(MLP(8, 3, width=16, depth=2, key=jax.random.key(0)), jnp.ones((4, 8))).shape
        ()

    Args:
        model: maps ONE example to `(O,)` logits.
        x: `(N, ...)` examples.
        method, block_size: as for `ntk_diagonal`.

    Returns:
        Scalar `T`.
    """
    return jnp.mean(ntk_diagonal(model, x, method=method, block_size=block_size))


@_precise
def ntk_vp(model, x: Float[Array, "n ..."], v: Float[Array, "n o"]) -> Float[Array, "n o"]:
    """Matrix-free NTK-vector product `(Θ v)[i, a] = Σ_{j,b} Θ[(i,a),(j,b)] v[j, b]`.

    One vjp (`Jᵀ v`) and one jvp (`J (Jᵀ v)`) over the batch; the NTK is never formed.
    Equals `as_matrix(ntk(model, x)) @ v.reshape(-1)` reshaped to `(n, O)`.

    Example:
        >>> from ntkbench.models import MLP
        >>> model = MLP(8, 3, width=16, depth=2, key=jax.random.key(0))
        >>> ntk_vp(model, jnp.ones((4, 8)), jnp.ones((4, 3))).shape
        (4, 3)

    Args:
        model: maps ONE example to `(O,)` logits.
        x: `(n, ...)` examples.
        v: `(n, O)`.

    Returns:
        `(n, O)`.
    """
    check_inputs(x, None)
    return ntk_vp_fn(model, x)(v)


@_precise
def layer_ntks(
    model,
    x1: Float[Array, "n1 ..."],
    x2: Float[Array, "n2 ..."] | None = None,
    *,
    block_size: int | None = None,
) -> LayerNTKs:
    """Per-dense-layer NTK contributions and conjugate kernels (structured models only).

    `Θ_l[i, j, a, b] = (<h_il, h_jl> + [has_bias]) <δ_ial, δ_jbl>` (docs/definitions.md §1); the `Θ_l` sum to
    `ntk(model, x1, x2)`. The conjugate kernel of layer `l` is `H_l H_lᵀ`, the Gram of its inputs
    (layer 0: the raw inputs).

    Example:
        >>> from ntkbench.models import MLP
        >>> out = layer_ntks(MLP(8, 3, width=16, depth=2, key=jax.random.key(0)), jnp.ones((4, 8)))
        >>> out.ntks.shape, [c.shape for c in out.conjugate_kernels]
        ((3, 4, 4, 3, 3), [(4, 4), (4, 4), (4, 4)])

    Args:
        model: implements `StructuredModel` (e.g. `ntkbench.models.MLP`).
        x1: `(n1, ...)` examples.
        x2: `(n2, ...)` examples, or None for `x1`.
        block_size: examples per block (tile-by-tile assembly, as for `ntk`).

    Returns:
        `LayerNTKs(ntks (L, n1, n2, O, O), conjugate_kernels)`, the latter a tuple of `L`
        arrays `(n1, n2)`.
    """
    return layer_ntks_structured(model, x1, x2, block_size)
