"""Training a pack: one vmapped, jitted program whose epoch loop runs inside `lax.scan`.

Recording follows SPEC.md §4: record `k` is the state after `k` updates, record 0 is the
initialization and the final state is recorded too. In the scan body for epoch `t` the metrics of
state `t` are computed (for full-batch training from the same forward pass as the gradient), the
NTK is recorded when `t` is an NTK epoch, and then the update is applied. `evaluate` records the
final state `E`.

A member whose loss or gradient becomes non-finite is marked diverged at that record and frozen
(its parameters stop changing); its metrics read NaN from then on. Its optimizer state is left to
run on (it may turn non-finite): it never reaches the frozen parameters, and not selecting it
saves a pass over the optimizer state every epoch (about 10% of an epoch of a width-256 pack).
The other members of the pack are unaffected: every operation is per member under `vmap`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int

from ntkbench._config import SweepConfig


class PackData(NamedTuple):
    """Device data of a pack. Members index one shared copy of the training set."""

    x: Float[Array, "n_all d"]  # whole training split, flattened
    y: Int[Array, " n_all"]
    idx: Int[Array, "m n"]  # per-member training samples (padded slots point anywhere)
    weight: Float[Array, "m n"]  # 1/n_member on real samples, 0 on padding
    x_test: Float[Array, "t d"]  # the fixed NTK/test set
    y_test: Int[Array, " t"]
    x_member: Float[Array, "m n d"] | None  # per-member inputs when they differ from x[idx]
                                             # (noise-scaling axis), else None


class PackState(eqx.Module):
    """Everything that changes during training (checkpointed as its array leaves)."""

    model: eqx.Module  # stacked members; inexact leaves are the trainable parameters
    opt_state: Any
    diverged: Bool[Array, " m"]
    epoch: Int[Array, ""]
    record: Any  # carry of the NTK record step (None without NTK records)


def make_optimizer(config: SweepConfig) -> optax.GradientTransformation:
    if config.optimizer == "adam":
        return optax.adam(config.lr, b1=config.b1, b2=config.b2)
    return optax.sgd(config.lr, momentum=config.momentum or None)


def per_sample_loss(kind: str, logits: Array, labels: Array) -> Array:
    """Cross-entropy, or MSE as `½‖f − onehot(y)‖²`, per sample."""
    if kind == "cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return 0.5 * jnp.sum((logits - onehot) ** 2, axis=-1)


def _params(model):
    return eqx.filter(model, eqx.is_inexact_array)


def _all_finite(tree) -> Array:
    """One fused reduction: the sum of squares is finite iff every element is (or overflows,
    which at float32 means |x| > 1e19: a divergence all the same)."""
    return jnp.isfinite(optax.tree_utils.tree_norm(tree, squared=True))


def _select(flag, new, old):
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b) if eqx.is_array(a) else a, new, old)


class PackProgram:
    """The compiled functions of one pack shape (built once per pack, jitted lazily).

    Args:
        config: the sweep.
        record_fn: optional per-member NTK record `(model, x_test, y_test, carry) ->
            (dict of scalars, carry)`; run at the sweep's NTK epochs.
    """

    def __init__(self, config: SweepConfig, record_fn: Callable | None = None,
                 record_init: Callable | None = None):
        self.config = config
        self.optim = make_optimizer(config)
        self.record_fn = record_fn
        self.record_init = record_init
        ntk_epochs = config.ntk_epochs()
        self.ntk_every = config.ntk_every if ntk_epochs else 0
        self.train_chunk = eqx.filter_jit(self._train_chunk, donate="all-except-first")
        self.evaluate = eqx.filter_jit(self._evaluate)
        self.init_state = eqx.filter_jit(self._init_state)

    # ------------------------------------------------------------------ pieces
    def _member_inputs(self, data: PackData, m_idx, m_x, sel):
        x = data.x[m_idx[sel]] if m_x is None else m_x[sel]
        return x, data.y[m_idx[sel]]

    def _loss(self, model, x, y, w):
        logits = jax.vmap(model)(x)
        losses = per_sample_loss(self.config.loss, logits, y)
        return jnp.sum(w * losses), logits

    def _metrics(self, model, data: PackData, train_loss, train_logits, y, w):
        acc = jnp.sum(w * (jnp.argmax(train_logits, -1) == y))
        test_logits = jax.vmap(model)(data.x_test)
        test_loss = jnp.mean(per_sample_loss(self.config.loss, test_logits, data.y_test))
        test_acc = jnp.mean(jnp.argmax(test_logits, -1) == data.y_test)
        return {"train_loss": train_loss, "test_loss": test_loss,
                "train_accuracy": acc, "test_accuracy": test_acc}

    def _eval_member(self, model, data, m_idx, m_w, m_x):
        x, y = self._member_inputs(data, m_idx, m_x, slice(None))
        loss, logits = self._loss(model, x, y, m_w)
        return self._metrics(model, data, loss, logits, y, m_w)

    def _record(self, state: PackState, data: PackData, metrics, do_record):
        """NTK record of every member (only when `do_record`), NaN otherwise."""
        if self.record_fn is None:
            return {}, state.record

        def run(carry):
            fn = lambda model, c, test_loss: self.record_fn(model, data.x_test, data.y_test, c, test_loss)
            return eqx.filter_vmap(fn)(state.model, carry, metrics["test_loss"])

        def skip(carry):
            out_shape = jax.eval_shape(run, carry)[0]
            nan = {k: jnp.full(v.shape, jnp.nan, v.dtype) for k, v in out_shape.items()}
            return nan, carry

        return jax.lax.cond(do_record, run, skip, state.record)

    def _mask_diverged(self, metrics, diverged):
        return {k: jnp.where(diverged.reshape(diverged.shape + (1,) * (v.ndim - 1)), jnp.nan, v)
                for k, v in metrics.items()}

    # ------------------------------------------------------------------ programs
    def _init_state(self, model) -> PackState:
        opt_state = eqx.filter_vmap(lambda m: self.optim.init(_params(m)))(model)
        num = jax.tree.leaves(eqx.filter(model, eqx.is_array))[0].shape[0]
        record = None
        if self.record_fn is not None:
            record = eqx.filter_vmap(lambda m: self.record_init(m, None))(model)
        return PackState(model, opt_state, jnp.zeros((num,), bool), jnp.asarray(0, jnp.int32), record)

    def _evaluate(self, data: PackData, state: PackState):
        """Metrics (and NTK record) of the current state, without updating it."""
        metrics = eqx.filter_vmap(self._eval_member, in_axes=(0, None, 0, 0, 0))(
            state.model, data, data.idx, data.weight, data.x_member)
        ntk, record = self._record(state, data, metrics, jnp.asarray(self.record_fn is not None))
        out = self._mask_diverged({**metrics, **ntk}, state.diverged)
        return out, eqx.tree_at(lambda s: s.record, state, record, is_leaf=lambda x: x is None)

    def _member_update(self, model, opt_state, diverged, data, m_idx, m_w, m_x, m_batches):
        """One epoch of updates of one member; returns new model/state, its metrics, divergence.

        `m_batches` `(steps, B)`: this epoch's minibatches (positions into the member's training
        samples, -1 = padding), from `ntkbench.pipeline.MinibatchSchedule`; None for full batch.
        """
        cfg = self.config
        grad_fn = eqx.filter_value_and_grad(self._loss, has_aux=True)
        if cfg.batch_size <= 0:
            x, y = self._member_inputs(data, m_idx, m_x, slice(None))
            (loss, logits), grads = grad_fn(model, x, y, m_w)
            metrics = self._metrics(model, data, loss, logits, y, m_w)
            updates, new_opt = self.optim.update(grads, opt_state, _params(model))
            new_model = eqx.apply_updates(model, updates)
            # A non-finite update from finite gradients shows up as a non-finite loss next epoch.
            ok = jnp.isfinite(loss) & _all_finite(grads)
        else:
            metrics = self._eval_member(model, data, m_idx, m_w, m_x)

            def step(carry, p):
                mdl, opt, ok = carry
                valid = p >= 0
                sel = jnp.where(valid, p, 0)
                x, y = self._member_inputs(data, m_idx, m_x, sel)
                w = valid / jnp.maximum(jnp.sum(valid), 1)
                (loss, _), grads = grad_fn(mdl, x, y, w)
                upd, opt = self.optim.update(grads, opt, _params(mdl))
                mdl = eqx.apply_updates(mdl, upd)
                return (mdl, opt, ok & jnp.isfinite(loss) & _all_finite(grads)), None

            (new_model, new_opt, ok), _ = jax.lax.scan(step, (model, opt_state, jnp.asarray(True)),
                                                       m_batches)
            ok = ok & jnp.isfinite(metrics["train_loss"])
        now_diverged = diverged | ~ok | ~jnp.isfinite(metrics["train_loss"])
        new_model = _select(now_diverged, model, new_model)
        return new_model, new_opt, now_diverged, metrics

    def _train_chunk(self, data: PackData, state: PackState, num_epochs: int, batches=None):
        """`num_epochs` epochs inside one `lax.scan`; returns the new state and the metrics
        `(num_epochs, m)` of the records `state.epoch .. state.epoch + num_epochs - 1`.

        `batches` `(num_epochs, m, steps, B)` int32: the minibatches of every epoch and member
        (required when `batch_size > 0`, None for full batch)."""
        if (batches is None) != (self.config.batch_size <= 0):
            raise ValueError("train_chunk needs `batches` exactly when config.batch_size > 0.")

        def body(st: PackState, epoch_batches):
            upd = eqx.filter_vmap(self._member_update, in_axes=(0, 0, 0, None, 0, 0, 0, 0))
            new_model, new_opt, div, metrics = upd(
                st.model, st.opt_state, st.diverged, data, data.idx, data.weight,
                data.x_member, epoch_batches)
            do_record = (st.epoch % max(self.ntk_every, 1) == 0) if self.ntk_every else jnp.asarray(False)
            ntk, record = self._record(st, data, metrics, do_record)
            # Members frozen before this epoch read NaN; one that diverges now shows its
            # non-finite metrics as they are.
            out = self._mask_diverged({**metrics, **ntk}, st.diverged)
            new = PackState(new_model, new_opt, div, st.epoch + 1, record)
            return new, out

        return jax.lax.scan(body, state, batches, length=num_epochs)

