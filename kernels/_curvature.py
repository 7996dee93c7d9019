"""Matrix-free curvature: Hessian-vector products and the top eigenvalue of the loss Hessian, of
the Adam-preconditioned Hessian and of the training-set NTK (the Gauss-Newton matrix of MSE).

Nothing here forms a `(P, P)` or `(n·O, n·O)` matrix: every operator is used only through
products, and its top eigenvalue comes from `num_steps` Lanczos steps with full
reorthogonalization (`lanczos_basis`; memory `(num_steps + 1)` vectors of the operator's size).

Parameters are the model's trainable leaves, `eqx.partition(model, eqx.is_inexact_array)`, and
flat parameter vectors are `jax.flatten_util.ravel_pytree` of them (`P` entries). A loss is a
function `loss_fn(model) -> scalar` that closes over its data, so any loss works.

Hessian-vector products are forward-over-reverse: the jvp of `jax.grad`. `hessian_vp_fn`
linearizes the gradient once (`jax.linearize`, the same jvp with its primal forward and backward
pass hoisted out), so each product inside Lanczos costs only the tangent part.

Which eigenvalue: the largest ALGEBRAIC one, `λ_max` (the "sharpness" of Cohen et al. 2021,
whose full-batch gradient descent with step size `η` is stable while `λ_max < 2/η`). A Hessian
away from a minimum has negative eigenvalues, sometimes larger in magnitude than `λ_max`; power
iteration would converge to that one, while Lanczos resolves both ends of the spectrum at once
and we return the top. The Ritz value never exceeds `λ_max` (it is a Rayleigh quotient), and it
increases to `λ_max` with the number of steps.

The residual: `‖A y − θ y‖` for the normalized top Ritz vector `y = Q s` (`Q` the Lanczos basis,
`s` the eigenvector of the tridiagonal `T`), computed with ONE extra product after the
iteration (not inferred from the recurrence `|β_k s_k|`, so it is what it says even after a loss
of orthogonality or a breakdown). For symmetric `A` some eigenvalue lies within `residual` of
`θ`, and within `residual² / gap` when the next eigenvalue is `gap` away.

Adam (`preconditioned_top_eigen`): Adam's step is `η D⁻¹ m̂` with `D = diag(sqrt(v̂) + eps)`; its
stability is governed by the top eigenvalue of `D⁻¹H` (Cohen et al. 2022: `λ_max(D⁻¹H) <
(2 + 2β₁) / ((1 − β₁) η)`, 38/η at `β₁ = 0.9`). `D⁻¹H` is not symmetric, but it is similar to the
symmetric `S = D^{-1/2} H D^{-1/2}` (`D⁻¹H = D^{-1/2} S D^{1/2}`), so they have the same
eigenvalues; Lanczos runs on `S`. `adam_preconditioner` builds `D` from an optax Adam state.

Training-set NTK and Gauss-Newton (`ntk_top_eigen`, `gauss_newton_vp_fn`): for the weighted
squared loss `L = Σ_i w_i ½‖f(x_i) − y_i‖²` (the training MSE; `w_i = 1/n`, or 0 for padded
samples), `∇²L = G + Σ_i w_i Σ_a r_ia ∇²f_a(x_i)` with residuals `r = f − y` and the Gauss-Newton
matrix `G = Jᵀ W J` (`J` the `(n·O, P)` Jacobian, row `i·O + a`; `W = diag(w) ⊗ I_O`).
`G = (W^{1/2} J)ᵀ (W^{1/2} J)`, so its nonzero eigenvalues are those of
`W^{1/2} J Jᵀ W^{1/2} = W^{1/2} Θ W^{1/2}` with `Θ = J Jᵀ` the training-set NTK `(n·O, n·O)`:
for `w_i = 1/n` that is `Θ / n`. So `ntk_top_eigen` with the loss's weights is exactly
`λ_max(G)`, and where the residuals vanish (an interpolating minimum) it is `λ_max(∇²L)`. (For
cross-entropy the generalized Gauss-Newton matrix has the softmax Hessian between `Jᵀ` and `J`
and is not the NTK.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._common import HIGHEST, MATMUL_PRECISION, check_inputs, out_size, split
from ._implicit import ntk_vp_fn
from ._slq import lanczos_basis

# Lanczos steps of the top-eigenvalue functions, measured by benchmarks/bench_curvature.py (ReLU
# MLPs 64-256x3-10 after 50 Adam steps on 100 digits, float64, largest error over 4 members
# against 100 steps): at 10 steps the Hessian top is exact to round-off, the preconditioned one
# within 9e-9 and the training-set NTK one within 4e-3; at 20 steps all three within 2e-15.
TOP_EIGEN_NUM_STEPS = 20

Loss = Callable[[eqx.Module], Float[Array, ""]]
FlatMatvec = Callable[[Float[Array, " p"]], Float[Array, " p"]]


class TopEigen(NamedTuple):
    """The top (largest algebraic) Ritz value of a symmetric operator and its residual.

    Attributes:
        value: `θ`, the largest eigenvalue of the Lanczos tridiagonal (`<= λ_max` of the operator).
        residual: `‖A y − θ y‖` for the normalized Ritz vector `y` (one extra product): some
            eigenvalue of `A` lies within it of `θ`.
    """

    value: Float[Array, ""]
    residual: Float[Array, ""]


def _check_like(tree, params, name: str, how: str) -> None:
    """Raise a helpful error unless `tree` has the structure and shapes of `params`."""
    if jax.tree.structure(tree) != jax.tree.structure(params):
        raise ValueError(
            f"{name} must have the structure of the model's trainable parameters "
            f"(eqx.filter(model, eqx.is_inexact_array): the model with None at every other "
            f"leaf), got {jax.tree.structure(tree)}; {how}"
        )
    for a, p in zip(jax.tree.leaves(tree), jax.tree.leaves(params)):
        if jnp.shape(a) != jnp.shape(p):
            raise ValueError(
                f"{name} has a leaf of shape {jnp.shape(a)} where the parameter has shape "
                f"{jnp.shape(p)}; {how}"
            )


def _flat_params(model) -> tuple[Float[Array, " p"], Callable, object, object]:
    """`(flat, unravel, params, static)` of the model's trainable leaves."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    if flat.size == 0:
        raise ValueError(
            "The model has no trainable parameters (no inexact-array leaves); curvature is "
            "taken with respect to its floating-point array leaves."
        )
    return flat, unravel, params, static


def hessian_vp(loss_fn: Loss, model, tangent: PyTree[Array]) -> PyTree:
    """`∇²L · tangent`: one Hessian-vector product, forward-over-reverse (`jax.jvp` of `jax.grad`).

    Example:
        >>> lin = eqx.nn.Linear(3, 2, key=jax.random.key(0))
        >>> loss = lambda m: 0.5 * jnp.sum(m(jnp.ones(3)) ** 2)
        >>> t = jax.tree.map(jnp.ones_like, eqx.filter(lin, eqx.is_inexact_array))
        >>> hessian_vp(loss, lin, t).weight.shape
        (2, 3)

    Args:
        loss_fn: `model -> scalar` (closes over its data).
        model: an Equinox model; the Hessian is with respect to its inexact-array leaves.
        tangent: a pytree like `eqx.filter(model, eqx.is_inexact_array)` (leaves shaped like the
            parameters, None elsewhere).

    Returns:
        `H · tangent`, a pytree of the same structure and shapes.
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)
    _check_like(tangent, params, "tangent", "build it with jax.tree.map over "
                "eqx.filter(model, eqx.is_inexact_array).")
    grad = jax.grad(lambda p: loss_fn(eqx.combine(p, static)))
    with jax.default_matmul_precision(MATMUL_PRECISION):
        return jax.jvp(grad, (params,), (tangent,))[1]


def hessian_vp_fn(loss_fn: Loss, model) -> FlatMatvec:
    """`v ↦ ∇²L v` on flat parameter vectors; the gradient is linearized once and reused.

    The flat layout is `ravel_pytree(eqx.filter(model, eqx.is_inexact_array))`.

    Example:
        >>> lin = eqx.nn.Linear(3, 2, key=jax.random.key(0))
        >>> hvp = hessian_vp_fn(lambda m: 0.5 * jnp.sum(m(jnp.ones(3)) ** 2), lin)
        >>> hvp(jnp.ones(8)).shape
        (8,)

    Args:
        loss_fn: `model -> scalar` (closes over its data).
        model: an Equinox model with `P` trainable (inexact-array) entries.

    Returns:
        A linear function `(P,) -> (P,)`: the jvp of the flat gradient at the model's parameters
        (forward-over-reverse; the primal forward and backward pass run once).
    """
    flat, unravel, _, static = _flat_params(model)

    def flat_grad(theta):
        g = jax.grad(lambda p: loss_fn(eqx.combine(p, static)))(unravel(theta))
        return ravel_pytree(g)[0]

    with jax.default_matmul_precision(MATMUL_PRECISION):
        _, hvp = jax.linearize(flat_grad, flat)

    def vp(v):
        with jax.default_matmul_precision(MATMUL_PRECISION):
            return hvp(v)

    return vp


def _num_steps(num_steps) -> int:
    num_steps = int(num_steps)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1 Lanczos step, got {num_steps}.")
    return num_steps


def top_eigen(matvec_fn: FlatMatvec, v0: Float[Array, " m"], num_steps: int) -> TopEigen:
    """Largest algebraic eigenvalue of a symmetric operator by Lanczos, with its residual.

    `min(num_steps, m)` Lanczos steps with full reorthogonalization from `v0`, then one product
    with the top Ritz vector for the residual. Ritz values of the zero block that follows a
    breakdown (the Krylov space exhausted) are not candidates.

    Example:
        >>> a = jnp.diag(jnp.array([-5.0, 1.0, 2.0, 3.0]))
        >>> top = top_eigen(lambda v: a @ v, jnp.ones(4), num_steps=4)
        >>> round(float(top.value), 4), bool(top.residual < 1e-5)
        (3.0, True)

    Args:
        matvec_fn: `v ↦ A v` on flat vectors `(m,)`, `A` symmetric.
        v0: start vector `(m,)` (normalized inside; components along the top eigenvector are
            needed, so use a random one).
        num_steps: Lanczos steps (static; capped at `m`).

    Returns:
        `TopEigen(value, residual)`, scalars of `v0`'s dtype.
    """
    k = min(_num_steps(num_steps), v0.shape[0])
    with jax.default_matmul_precision(MATMUL_PRECISION):
        alpha, beta, basis = lanczos_basis(matvec_fn, v0, k)
        t = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
        theta, s = jnp.linalg.eigh(t)
        # Eigenvectors of the unreduced tridiagonal before a breakdown have a nonzero first
        # component; those of the zero block after it have none (their Ritz vectors are 0).
        eps = jnp.finfo(v0.dtype).eps
        live = s[0] ** 2 > eps**2
        i = jnp.argmax(jnp.where(live, theta, -jnp.inf))
        value = theta[i]
        y = jnp.matmul(s[:, i], basis[:k], precision=HIGHEST)
        y = y / jnp.maximum(jnp.linalg.norm(y), jnp.finfo(v0.dtype).tiny)
        residual = jnp.linalg.norm(matvec_fn(y) - value * y)
    return TopEigen(value, residual)


def hessian_top_eigen(
    loss_fn: Loss, model, *, key: PRNGKeyArray, num_steps: int = TOP_EIGEN_NUM_STEPS
) -> TopEigen:
    """Largest algebraic eigenvalue of the loss Hessian (the sharpness), matrix-free.

    Cost: `num_steps + 1` Hessian-vector products (each about two forward-and-backward passes)
    after one linearization; memory `num_steps + 1` parameter vectors. Works under `jax.jit` and
    `eqx.filter_vmap` over a stacked pack (one key per member).

    Example (a linear model on one example `x`: `H = x̃ x̃ᵀ` with `x̃ = (x, 1)`, top `‖x̃‖²`):
        >>> lin = eqx.nn.Linear(3, "scalar", key=jax.random.key(0))
        >>> loss = lambda m: 0.5 * (m(jnp.ones(3)) - 1.0) ** 2
        >>> top = eqx.filter_jit(hessian_top_eigen)(loss, lin, key=jax.random.key(1))
        >>> round(float(top.value), 4), bool(top.residual < 1e-5)
        (4.0, True)

    Args:
        loss_fn: `model -> scalar` (closes over its data).
        model: an Equinox model (its inexact-array leaves are the parameters, `P` entries).
        key: PRNG key for the Gaussian start vector `(P,)`.
        num_steps: Lanczos steps (static).

    Returns:
        `TopEigen(value, residual)` of `∇²L` (see the module docstring).
    """
    _num_steps(num_steps)
    flat, *_ = _flat_params(model)
    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    return top_eigen(hessian_vp_fn(loss_fn, model), v0, num_steps)


def preconditioned_top_eigen(
    loss_fn: Loss,
    model,
    preconditioner: PyTree[Array],
    *,
    key: PRNGKeyArray,
    num_steps: int = TOP_EIGEN_NUM_STEPS,
) -> TopEigen:
    """Largest eigenvalue of `D⁻¹H` for a positive diagonal `D` (Adam's `sqrt(v̂) + eps`).

    Lanczos runs on the similar symmetric `S = D^{-1/2} H D^{-1/2}` (same eigenvalues): products
    `u ↦ D^{-1/2} H (D^{-1/2} u)`. The residual is that of `S`; the eigenvector of `D⁻¹H` is
    `x = D^{-1/2} y` and its residual `‖D⁻¹H x − θ x‖ <= max(D^{-1/2}) · residual`.

    Example (the model of `hessian_top_eigen`'s example, `D = 2`: the top is `4 / 2`):
        >>> lin = eqx.nn.Linear(3, "scalar", key=jax.random.key(0))
        >>> loss = lambda m: 0.5 * (m(jnp.ones(3)) - 1.0) ** 2
        >>> d = jax.tree.map(lambda p: jnp.full_like(p, 2.0), eqx.filter(lin, eqx.is_inexact_array))
        >>> top = eqx.filter_jit(preconditioned_top_eigen)(loss, lin, d, key=jax.random.key(1))
        >>> round(float(top.value), 4)
        2.0

    Args:
        loss_fn: `model -> scalar` (closes over its data).
        model: an Equinox model with `P` trainable entries.
        preconditioner: `D`, positive arrays shaped like `eqx.filter(model, eqx.is_inexact_array)`
            (None elsewhere), e.g. from `adam_preconditioner`.
        key: PRNG key for the Gaussian start vector `(P,)`.
        num_steps: Lanczos steps (static).

    Returns:
        `TopEigen(value, residual)` of `D⁻¹H` (value) and `S` (residual).
    """
    _num_steps(num_steps)
    flat, _, params, _ = _flat_params(model)
    _check_like(preconditioner, params, "preconditioner", "build it from the optimizer state of "
                "eqx.filter(model, eqx.is_inexact_array), e.g. with adam_preconditioner.")
    d, _ = ravel_pytree(preconditioner)
    s = jax.lax.rsqrt(d.astype(flat.dtype))
    hvp = hessian_vp_fn(loss_fn, model)
    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    return top_eigen(lambda u: s * hvp(s * u), v0, num_steps)


def _is_adam_state(node) -> bool:
    return all(hasattr(node, f) for f in ("count", "mu", "nu"))


def adam_preconditioner(
    adam_state, *, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> PyTree[Array]:
    """Adam's denominator `D = sqrt(v̂ + eps_root) + eps`, `v̂ = nu / (1 − b2^count)`, as optax
    computes it (`optax.scale_by_adam`).

    `count` is the number of updates made, so this is the `v̂` of the last step taken. Pass the
    optimizer's own `b2`, `eps` and `eps_root`. optax is not imported: the state is found by its
    fields.

    Example:
        >>> from collections import namedtuple
        >>> State = namedtuple("State", "count mu nu")
        >>> st = State(jnp.asarray(1), {"w": jnp.zeros(2)}, {"w": jnp.full(2, 2.0)})
        >>> adam_preconditioner(st, b2=0.5, eps=0.0)["w"]  # sqrt(2 / (1 - 0.5))
        Array([2., 2.], dtype=float32)

    Args:
        adam_state: an optax Adam (or AdamW) optimizer state, or any pytree holding exactly one
            `ScaleByAdamState` (a node with `count`, `mu` and `nu`); `nu` is shaped like the
            parameters it was initialized with.
        b2: Adam's second-moment decay.
        eps: added outside the square root.
        eps_root: added inside the square root.

    Returns:
        `D`, a pytree shaped like `nu`, for `preconditioned_top_eigen`.
    """
    nodes = [n for n in jax.tree.leaves(adam_state, is_leaf=_is_adam_state) if _is_adam_state(n)]
    if len(nodes) != 1:
        raise ValueError(
            f"adam_state must hold exactly one ScaleByAdamState (a node with count, mu and nu), "
            f"found {len(nodes)}; pass the state of optax.adam/adamw, or the ScaleByAdamState "
            "itself when the chain has several."
        )
    state = nodes[0]
    correction = 1 - b2 ** jnp.asarray(state.count)
    return jax.tree.map(
        lambda nu: jnp.sqrt(nu / correction.astype(nu.dtype) + eps_root) + eps, state.nu)


def _weights(w, n: int, dtype) -> Float[Array, " n"]:
    if w is None:
        return jnp.full((n,), 1.0 / n, dtype)
    if jnp.shape(w) != (n,):
        raise ValueError(
            f"w must hold one weight per example, shape ({n},), got {jnp.shape(w)}; use 0 for "
            "padded examples."
        )
    return jnp.asarray(w).astype(dtype)


def ntk_top_eigen(
    model,
    x: Float[Array, "n ..."],
    w: Float[Array, " n"] | None = None,
    *,
    key: PRNGKeyArray,
    num_steps: int = TOP_EIGEN_NUM_STEPS,
) -> TopEigen:
    """Largest eigenvalue of the weighted training-set NTK `W^{1/2} Θ W^{1/2}`, matrix-free.

    `Θ = J Jᵀ` is the NTK on `x` in matrix form `(n·O, n·O)` (row `i·O + a`) and
    `W = diag(w) ⊗ I_O`; with the default `w_i = 1/n` this is `λ_max(Θ / n)`. With the sample
    weights of the weighted MSE `Σ_i w_i ½‖f(x_i) − y_i‖²` it equals the top eigenvalue of its
    Gauss-Newton matrix `Jᵀ W J` (module docstring). Examples of weight 0 (padding) do not count:
    their rows and columns are zero and the start vector is zero there.

    Cost: `num_steps + 1` NTK-vector products (one jvp and one vjp over the batch each,
    `ntk_vp_fn`); memory `num_steps + 1` vectors `(n·O,)`.

    Example (a linear model: `Θ[(i,a),(j,b)] = δ_ab (x_i·x_j + 1) = 4 δ_ab` for these `x`,
    so `Θ / n` has the top eigenvalue `4`; the third example is padding):
        >>> lin = eqx.nn.Linear(3, 2, key=jax.random.key(0))
        >>> x, w = jnp.ones((3, 3)).at[2].set(5.0), jnp.array([0.5, 0.5, 0.0])
        >>> top = eqx.filter_jit(ntk_top_eigen)(lin, x, w, key=jax.random.key(1))
        >>> round(float(top.value), 4)
        4.0

    Args:
        model: maps ONE example to `(O,)` logits.
        x: `(n, ...)` training examples.
        w: `(n,)` nonnegative sample weights (summing to 1 for a mean loss), or None for `1/n`.
        key: PRNG key for the Gaussian start vector `(n·O,)`.
        num_steps: Lanczos steps (static; capped at `n·O`).

    Returns:
        `TopEigen(value, residual)`.
    """
    _num_steps(num_steps)
    check_inputs(x, None)
    params, f = split(model)
    o, dtype = out_size(f, params, x)
    n = x.shape[0]
    s = jnp.sqrt(_weights(w, n, dtype))[:, None]
    vp = ntk_vp_fn(model, x)
    z = jax.random.normal(key, (n, o), dtype)
    z = jnp.where(jnp.any(s > 0), jnp.where(s > 0, z, 0.0), z)
    matvec = lambda v: jnp.reshape(s * vp(s * jnp.reshape(v, (n, o))), (n * o,))
    return top_eigen(matvec, jnp.reshape(z, (n * o,)), num_steps)


def gauss_newton_vp_fn(
    model, x: Float[Array, "n ..."], w: Float[Array, " n"] | None = None
) -> FlatMatvec:
    """`v ↦ Jᵀ W J v`: products with the Gauss-Newton matrix of the weighted squared loss.

    `G = Jᵀ W J` (`J` the `(n·O, P)` Jacobian on `x`, `W = diag(w) ⊗ I_O`) is the Hessian of
    `Σ_i w_i ½‖f(x_i) − y_i‖²` without its residual term (module docstring); flat parameter
    vectors as in `hessian_vp_fn`. The forward pass is linearized once.

    Example (a linear model `x ↦ W x + b`, `P = 2·3 + 2`):
        >>> lin = eqx.nn.Linear(3, 2, key=jax.random.key(0))
        >>> gnvp = gauss_newton_vp_fn(lin, jnp.ones((4, 3)))
        >>> gnvp(jnp.ones(8)).shape
        (8,)

    Args:
        model: maps ONE example to `(O,)` logits; `P` trainable entries.
        x: `(n, ...)` training examples.
        w: `(n,)` nonnegative sample weights, or None for `1/n`.

    Returns:
        A linear function `(P,) -> (P,)`.
    """
    check_inputs(x, None)
    flat, unravel, _, static = _flat_params(model)
    ww = _weights(w, x.shape[0], flat.dtype)[:, None]

    def fb(theta):
        return jax.vmap(eqx.combine(unravel(theta), static))(x)

    with jax.default_matmul_precision(MATMUL_PRECISION):
        _, jvp_fn = jax.linearize(fb, flat)
        vjp_fn = jax.linear_transpose(jvp_fn, flat)

    def vp(v):
        with jax.default_matmul_precision(MATMUL_PRECISION):
            return vjp_fn(ww * jvp_fn(v))[0]

    return vp
