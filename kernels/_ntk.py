"""The public NTK entry points: `ntk`, `as_matrix`, `ntk_diagonal`, `ntk_trace`, `ntk_vp` and
`layer_ntks`; how a method is chosen is in `_methods.py`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._common import MATMUL_PRECISION, check_inputs
from ._hybrid import diagonal_hybrid, ntk_hybrid
from ._implicit import ntk_implicit, ntk_vp_fn
from ._jacobian import diagonal_jacobian, ntk_jacobian
from ._linears import analyze_linears, example_spec
from ._methods import NtkMethod, parse_method, resolve
from ._protocol import supports_structured
from ._structured import LayerNTKs, diagonal_structured, layer_ntks_structured, ntk_structured

_NTK_FNS = {
    NtkMethod.JACOBIAN: ntk_jacobian,
    NtkMethod.IMPLICIT: ntk_implicit,
    NtkMethod.STRUCTURED: ntk_structured,
}


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
    weights=None,
) -> Float[Array, "n1 n2 o o"]:
    """Empirical NTK `Θ[i, j, a, b] = <∂f_a(x1_i)/∂θ, ∂f_b(x2_j)/∂θ>` (docs/definitions.md §1).

    `θ` are the model's inexact-array leaves (integer/boolean arrays such as padding masks are
    not parameters). Works under `jax.jit` and over a stacked pack of members with
    `eqx.filter_vmap(ntk, in_axes=(eqx.if_array(0), None))(pack, x)`; Gram products and the
    model's passes use full float32 matmul precision.

    With `weights` it is the weighted kernel (e.g. the NTK of training with per-layer learning
    rates `η_l`, weights `η_l / η`)

        Θ_w[i, j, a, b] = Σ_p w_p ∂f_a(x1_i)/∂θ_p ∂f_b(x2_j)/∂θ_p,   as_matrix(Θ_w) = J diag(w) Jᵀ.

    Every method computes it exactly: jacobian and implicit multiply one side's Jacobian rows or
    tangents by `w`; structured and hybrid multiply every dense layer's two terms,
    `(ω_l <h_i, h_j> + β_l) <δ_ia, δ_jb>` for scalar weights `ω_l` of `W_l` and `β_l` of `b_l`,
    at the cost of the plain kernel.

    Example:
        >>> from ntkbench.models import MLP
        >>> model = MLP(784, 10, width=64, depth=3, key=jax.random.key(0))
        >>> ntk(model, jnp.ones((5, 784))).shape
        (5, 5, 10, 10)
        >>> w = jax.tree.map(lambda p: 1.0, eqx.filter(model, eqx.is_inexact_array))
        >>> w = eqx.tree_at(lambda t: t.weights[-1], w, 1 / 64)  # the readout W at rate η / 64
        >>> ntk(model, jnp.ones((5, 784)), weights=w).shape
        (5, 5, 10, 10)

    Args:
        model: maps ONE example to `(O,)` logits.
        x1: `(n1, ...)` examples.
        x2: `(n2, ...)` examples, or None for `x1` (the symmetric NTK; cheaper).
        method: `"auto"`, `"jacobian"`, `"implicit"`, `"structured"` or `"hybrid"` (see
            `NtkMethod`; `explain_method` says what `"auto"` picks and why; weights do not
            change the choice).
        block_size: examples per block; the kernel is then assembled tile by tile in place
            (`lax.fori_loop`), with only one row block and one column block of Jacobian rows
            (jacobian), of basis tangents (implicit) or one tile (structured) alive: memory is the
            output plus `O(block_size)`, for N up to 10,000 and beyond (hybrid: as jacobian or
            implicit for the other parameters, plus the small per-layer features). None: in one
            go.
        weights: None (the plain NTK), or per-parameter weights: a pytree with the structure of
            the model's trainable parameters, `eqx.filter(model, eqx.is_inexact_array)` (None
            where the model has no trainable array), whose leaves are nonnegative scalars (0-d
            arrays; they may be traced, e.g. vmapped over a pack with `in_axes=(eqx.if_array(0),
            None, 0)`, or computed from the member inside the vmapped function) or arrays
            broadcastable to their parameter. Method "structured" needs the model's
            `structured_leaves` (see `StructuredModel`); "structured" and "hybrid" take weights
            of a dense layer's `W` that are scalars or vary along one axis only (`(out, 1)` or
            `(in,)`). Weights are multiplied as given (no square root): zero removes a parameter.

    Returns:
        `(n1, n2, O, O)`; use `as_matrix` for the `(n1·O, n2·O)` form.
    """
    check_inputs(x1, x2)
    method, plan, rest = resolve(model, x1, x2, method)
    if method is NtkMethod.HYBRID:
        return ntk_hybrid(model, x1, x2, block_size, plan=plan, rest=rest, weights=weights)
    return _NTK_FNS[method](model, x1, x2, block_size, weights)


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
    weights=None,
) -> Float[Array, "n o"]:
    """`Θ[(i,a),(i,a)] = |∂f_a(x_i)/∂θ|²` for every example and logit, without forming the NTK.

    Structured models use `Σ_l (|h_il|² + [has_bias]) |δ_ial|²` (one forward and O batched
    reverse passes); hybrid the same for the recognized Linears plus the squared Jacobian rows of
    the other parameters; other models per-example Jacobians, `block_size` examples at a time.
    With `weights` (see `ntk`), the diagonal of the weighted kernel, `Σ_p w_p (∂f_a(x_i)/∂θ_p)²`.

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
        weights: per-parameter weights as for `ntk`, or None.

    Returns:
        `(n, O)`.
    """
    check_inputs(x, None)
    method = parse_method(method)
    plan = None
    if method is NtkMethod.AUTO:
        if supports_structured(model):
            method = NtkMethod.STRUCTURED
        else:  # the hybrid diagonal never costs more than the Jacobian one
            plan = analyze_linears(model, example_spec(x))
            method = NtkMethod.HYBRID if plan.structured else NtkMethod.JACOBIAN
    if method is NtkMethod.STRUCTURED:
        return diagonal_structured(model, x, block_size, weights)
    if method is NtkMethod.HYBRID:
        return diagonal_hybrid(model, x, block_size, plan=plan, weights=weights)
    return diagonal_jacobian(model, x, block_size, weights)


def ntk_trace(
    model,
    x: Float[Array, "n ..."],
    *,
    method: str | NtkMethod = "auto",
    block_size: int | None = None,
    weights=None,
) -> Float[Array, ""]:
    """Normalized NTK trace `T = tr(Θ) / (N·O)`, the mean squared gradient norm (docs/definitions.md §2).

    Computed from `ntk_diagonal` without forming the NTK. Multiply by `N·O` for the plain sum.
    With `weights` (see `ntk`), the trace of the weighted kernel.

    Example:
        >>> from ntkbench.models import MLP
        >>> ntk_trace(MLP(8, 3, width=16, depth=2, key=jax.random.key(0)), jnp.ones((4, 8))).shape
        ()

    Args:
        model: maps ONE example to `(O,)` logits.
        x: `(N, ...)` examples.
        method, block_size, weights: as for `ntk_diagonal`.

    Returns:
        Scalar `T`.
    """
    return jnp.mean(ntk_diagonal(model, x, method=method, block_size=block_size, weights=weights))


@_precise
def ntk_vp(
    model, x: Float[Array, "n ..."], v: Float[Array, "n o"], *, weights=None
) -> Float[Array, "n o"]:
    """Matrix-free NTK-vector product `(Θ v)[i, a] = Σ_{j,b} Θ[(i,a),(j,b)] v[j, b]`.

    One vjp (`Jᵀ v`) and one jvp (`J (Jᵀ v)`) over the batch; the NTK is never formed.
    Equals `as_matrix(ntk(model, x)) @ v.reshape(-1)` reshaped to `(n, O)`; with `weights` (see
    `ntk`), `J (w ⊙ Jᵀ v)`, the product with the weighted kernel.

    Example:
        >>> from ntkbench.models import MLP
        >>> model = MLP(8, 3, width=16, depth=2, key=jax.random.key(0))
        >>> ntk_vp(model, jnp.ones((4, 8)), jnp.ones((4, 3))).shape
        (4, 3)

    Args:
        model: maps ONE example to `(O,)` logits.
        x: `(n, ...)` examples.
        v: `(n, O)`.
        weights: per-parameter weights as for `ntk`, or None.

    Returns:
        `(n, O)`.
    """
    check_inputs(x, None)
    return ntk_vp_fn(model, x, weights=weights)(v)


@_precise
def layer_ntks(
    model,
    x1: Float[Array, "n1 ..."],
    x2: Float[Array, "n2 ..."] | None = None,
    *,
    block_size: int | None = None,
    weights=None,
) -> LayerNTKs:
    """Per-dense-layer NTK contributions and conjugate kernels (structured models only).

    `Θ_l[i, j, a, b] = (<h_il, h_jl> + [has_bias]) <δ_ial, δ_jbl>` (docs/definitions.md §1); the `Θ_l` sum to
    `ntk(model, x1, x2)`. The conjugate kernel of layer `l` is `H_l H_lᵀ`, the Gram of its inputs
    (layer 0: the raw inputs). With `weights` (see `ntk`; scalars `ω_l`, `β_l` on `W_l`, `b_l`)
    `Θ_l = (ω_l <h_il, h_jl> + β_l [has_bias]) <δ_ial, δ_jbl>`, summing to the weighted NTK; the
    conjugate kernels are not weighted.

    Example:
        >>> from ntkbench.models import MLP
        >>> out = layer_ntks(MLP(8, 3, width=16, depth=2, key=jax.random.key(0)), jnp.ones((4, 8)))
        >>> out.ntks.shape, [c.shape for c in out.conjugate_kernels]
        ((3, 4, 4, 3, 3), [(4, 4), (4, 4), (4, 4)])

    Args:
        model: implements `StructuredModel` (e.g. `ntkbench.models.MLP`; with `weights` also its
            `structured_leaves`).
        x1: `(n1, ...)` examples.
        x2: `(n2, ...)` examples, or None for `x1`.
        block_size: examples per block (tile-by-tile assembly, as for `ntk`).
        weights: per-parameter weights as for `ntk`, or None.

    Returns:
        `LayerNTKs(ntks (L, n1, n2, O, O), conjugate_kernels)`, the latter a tuple of `L`
        arrays `(n1, n2)`.
    """
    return layer_ntks_structured(model, x1, x2, block_size, weights)
