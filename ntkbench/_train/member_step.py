"""One member's pieces of an epoch: the optimizer, losses, the linearized model, gradients, test
metrics and the optimizer step.

Pure functions of one member (the pack program vmaps them over the member axis), except
`apply_updates`, which maps the optimizer step over the members one at a time, and
`where_members`, which selects per member. `ntkbench._train.program.PackProgram` puts them together.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool

from ntkbench import kernels
from ntkbench._config import SweepConfig
from ntkbench._train.state import PackData


def make_optimizer(config: SweepConfig) -> optax.GradientTransformation:
    """The sweep's optimizer without its learning rate: optax's Adam or SGD built with
    `learning_rate=None` (the same transformations and state as with one, minus the final
    scaling), so that every member, and every parameter of it, can get its own rate
    (`PackData.lr`, applied by `apply_updates` as optax's `scale(-lr)` would)."""
    if config.optimizer == "adam":
        return optax.adam(None, b1=config.b1, b2=config.b2)
    return optax.sgd(None, momentum=config.momentum or None)


def per_sample_loss(kind: str, logits: Array, labels: Array) -> Array:
    """Cross-entropy, or MSE as `½‖f − onehot(y)‖²`, per sample."""
    if kind == "cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return 0.5 * jnp.sum((logits - onehot) ** 2, axis=-1)


def params_of(model):
    """The trainable parameters of a model (its inexact array leaves; None elsewhere)."""
    return eqx.filter(model, eqx.is_inexact_array)


def _all_finite(tree) -> Array:
    """One fused reduction: the sum of squares is finite iff every element is (or overflows,
    which at float32 means |x| > 1e19: a divergence all the same)."""
    return jnp.isfinite(optax.tree_utils.tree_norm(tree, squared=True))


def where_members(flag: Bool[Array, " m"], new, old):
    """Per member: the leaves of `new` where `flag`, else those of `old` (member axis first)."""
    return jax.tree.map(
        lambda a, b: jnp.where(flag.reshape(flag.shape + (1,) * (a.ndim - 1)), a, b), new, old)


def linearized(model, init_params):
    """`(params, x) ↦ f_lin(x; params) = f(x; θ0) + J(x; θ0)(params − θ0)` for one member, on a
    batch `x`; `θ0 = init_params` (docs/definitions.md, "laziness")."""
    static = eqx.filter(model, eqx.is_inexact_array, inverse=True)

    def apply(params, x):
        f = lambda p: jax.vmap(eqx.combine(p, static))(x)
        tangent = jax.tree.map(jnp.subtract, params, init_params)
        f0, df = jax.jvp(f, (init_params,), (tangent,))
        return f0 + df

    return apply


def member_loss(model, x, y, w, *, loss: str):
    """`(Σ w · loss, logits)` of one member on the batch `x`, `y` with sample weights `w`."""
    logits = jax.vmap(model)(x)
    return jnp.sum(w * per_sample_loss(loss, logits, y)), logits


def lin_member_loss(params, apply, x, y, w, *, loss: str):
    """`member_loss` of the linearized model `apply(params, x)` (see `linearized`)."""
    logits = apply(params, x)
    return jnp.sum(w * per_sample_loss(loss, logits, y)), logits


def member_inputs(data: PackData, m_idx, m_x, sel):
    """Inputs and labels of one member's training samples at positions `sel`."""
    x = data.x[m_idx[sel]] if m_x is None else m_x[sel]
    return x, data.y[m_idx[sel]]


def eval_metrics(logits_fn, data: PackData, *, loss: str):
    """Test loss and accuracy on the evaluation split, `eval_batch` samples at a time."""

    def chunk(carry, xs):
        x, y, w = xs
        logits = logits_fn(x)
        value = jnp.sum(w * per_sample_loss(loss, logits, y))
        acc = jnp.sum(w * (jnp.argmax(logits, -1) == y))
        return (carry[0] + value, carry[1] + acc), None

    zero = jnp.zeros((), data.x_eval.dtype)
    (value, acc), _ = jax.lax.scan(chunk, (zero, zero), (data.x_eval, data.y_eval,
                                                         data.w_eval))
    return value, acc


def evaluate_member(config: SweepConfig, model, lin_params, init, data: PackData):
    """Test metrics of one member (and of its linearized model, with the output gap)."""
    loss, acc = eval_metrics(jax.vmap(model), data, loss=config.loss)
    out = {"test_loss": loss, "test_accuracy": acc}
    if config.linearized:
        apply = linearized(model, init)
        out["lin_test_loss"], _ = eval_metrics(lambda x: apply(lin_params, x), data,
                                               loss=config.loss)
        f = jax.vmap(model)(data.x_ntk)
        f_lin = apply(lin_params, data.x_ntk)
        out["lin_output_gap"] = jnp.sum((f - f_lin) ** 2) / jnp.sum(f**2)
    return out


def grads_member(config: SweepConfig, model, lin_params, init, data: PackData, m_idx, m_x, sel,
                 w):
    """Loss, accuracy and gradients of one member (and of its linearized model) on the
    samples `sel` (positions into the member's training set) with weights `w`."""
    x, y = member_inputs(data, m_idx, m_x, sel)
    loss_fn = functools.partial(member_loss, loss=config.loss)
    (loss, logits), g = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, x, y, w)
    out = {"train_loss": loss, "train_accuracy": jnp.sum(w * (jnp.argmax(logits, -1) == y))}
    lin_g = None
    if config.linearized:
        apply = linearized(model, init)
        (out["lin_train_loss"], _), lin_g = jax.value_and_grad(
            lambda p: lin_member_loss(p, apply, x, y, w, loss=config.loss),
            has_aux=True)(lin_params)
    return out, g, lin_g, jnp.isfinite(loss) & _all_finite(g)


def apply_updates(optim: optax.GradientTransformation, lr, model, opt_state, grads, lin_params,
                  lin_opt, lin_grads):
    """The optimizer step of every member, one member at a time (`lax.map`).

    `lr` holds every member's learning rate of every parameter (a tree like the parameters,
    leaves `(m,)`); the update direction of `optim` is scaled by `-lr` leaf by leaf, exactly the
    multiplication optax's `scale_by_learning_rate` does.

    Elementwise, so mapping costs nothing measurable; it makes each member's arithmetic
    independent of how many members share its device: batched over members, XLA rewrites
    Adam's per-member bias correction `m / c` into `m * (1 / c)` in some programs and not
    in others, which differ by an ulp and, through ReLU kinks, in the NTK.
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def scaled(upd, rate):
        return jax.tree.map(lambda u, r: (-r) * u, upd, rate)

    def one(t):
        p, o, g, lp, lo, lg, rate = t
        upd, o = optim.update(g, o, p)
        p = optax.apply_updates(p, scaled(upd, rate))
        if lp is not None:
            lupd, lo = optim.update(lg, lo, lp)
            lp = optax.apply_updates(lp, scaled(lupd, rate))
        return p, o, lp, lo

    p, o, lp, lo = jax.lax.map(one, (params, opt_state, grads, lin_params, lin_opt, lin_grads,
                                     lr))
    return eqx.combine(p, static), o, lp, lo


def curvature_member(config: SweepConfig, model, opt_state, rate, data: PackData, m_idx, m_x,
                     m_w, key) -> dict:
    """The curvature record of one member (docs/definitions.md §16): the top eigenvalue of the
    Hessian of its full-batch training loss (the sharpness), of the training-set NTK `J Jᵀ / n`
    (the Gauss-Newton matrix of MSE), and, for Adam, of the preconditioned Hessian `λ D⁻¹ H`
    (`D = sqrt(v̂) + ε` from the optimizer state: the `v̂` of the last step, NaN before the
    first; `λ` the per-layer learning-rate multipliers of the parametrization, 1 for SP), each
    with its Lanczos residual. `rate` is the member's learning rate of every parameter."""
    x, y = member_inputs(data, m_idx, m_x, slice(None))
    loss_fn = lambda m: member_loss(m, x, y, m_w, loss=config.loss)[0]
    k_h, k_p, k_n = jax.random.split(key, 3)
    steps = config.curvature_steps
    h = kernels.hessian_top_eigen(loss_fn, model, key=k_h, num_steps=steps)
    n = kernels.ntk_top_eigen(model, x, m_w, key=k_n, num_steps=steps)
    out = {"sharpness": h.value, "sharpness_residual": h.residual,
           "train_ntk_top": n.value, "train_ntk_top_residual": n.residual}
    if config.optimizer == "adam":
        base = jax.tree.leaves(rate)[0]  # every rate over the member's point rate is its λ
        d = kernels.adam_preconditioner(opt_state, b2=config.b2)
        d = jax.tree.map(lambda di, r: di * (base / r), d, rate)
        p = kernels.preconditioned_top_eigen(loss_fn, model, d, key=k_p, num_steps=steps)
        out.update(precond_sharpness=p.value, precond_sharpness_residual=p.residual)
    return out
