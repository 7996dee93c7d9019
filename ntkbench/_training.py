"""Training a pack: one jitted program whose epoch loop runs inside `lax.scan`.

Recording (docs/definitions.md, "recording"): record `k` is the state after `k` updates, record 0
is the initialization, the final state is recorded too. The scan body for epoch `t` computes the
training metrics of state `t` (for full-batch training from the same forward pass as the
gradient), the test metrics of state `t` on the evaluation split when `t` is an evaluation epoch,
keeps each member's parameters at its best test loss so far (the exact `k*`), runs the NTK record
when `t` is an NTK epoch, and then applies the update. `finish` records the final state `E` and
the NTK quantities of the state at `k*`.

A member whose loss or gradient becomes non-finite is marked diverged at that record and frozen
(its parameters stop changing); its metrics read NaN from then on. Its optimizer state runs on:
it never reaches the frozen parameters, and not selecting it saves a pass over the optimizer
state every epoch. The other members are unaffected: every operation is per member.

With a mesh, every program runs under `jax.shard_map` over the member axis: each device runs the
program of its own members. Members are independent, so there is no communication at all.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, Float, Int

from ntkbench._config import SweepConfig
from ntkbench._recording import Recorder
from ntkbench._schema import LINEARIZED, TEST_METRICS


class PackData(NamedTuple):
    """Device inputs of a pack; never checkpointed (rebuilt identically on resume).

    Fields in `SHARED` are the same for every member (replicated over a mesh); the others have
    a leading member axis.
    """

    x: Float[Array, "n_all d"]  # the whole training split, flattened
    y: Int[Array, " n_all"]
    idx: Int[Array, "m n"]  # per-member training samples (padded slots point anywhere)
    weight: Float[Array, "m n"]  # 1/n_member on real samples, 0 on padding
    x_member: Float[Array, "m n d"] | None  # per-member inputs (noise axis), else None
    x_eval: Float[Array, "c b d"]  # the evaluation split, in chunks of `eval_batch`
    y_eval: Int[Array, "c b"]
    w_eval: Float[Array, "c b"]  # 1/n_eval on real samples, 0 on padding
    x_ntk: Float[Array, "t d"]  # the NTK samples (draw-major)
    y_ntk: Int[Array, " t"]
    eval_epochs: Bool[Array, " e"]  # whether record k is evaluated
    ntk_epochs: Bool[Array, " e"]  # whether record k has an NTK
    init: Any  # trainable parameters at initialization (linearized model), or None
    record: Any  # per-member constants of the NTK record (`Recorder.prepare`), or None


SHARED = ("x", "y", "x_eval", "y_eval", "w_eval", "x_ntk", "y_ntk", "eval_epochs", "ntk_epochs")


class Best(NamedTuple):
    """Each member at its lowest test loss so far (the first one on ties: the exact `k*`)."""

    params: Any
    lin_params: Any
    loss: Float[Array, " m"]
    epoch: Int[Array, " m"]


class PackState(eqx.Module):
    """Everything that changes during training (checkpointed as its array leaves)."""

    model: eqx.Module  # stacked members; inexact leaves are the trainable parameters
    opt_state: Any
    diverged: Bool[Array, " m"]
    epoch: Int[Array, ""]
    best: Best
    lin_params: Any  # the linearized model's parameters (`linearized=True`), else None
    lin_opt_state: Any
    record: Any  # carry of the NTK record step, or None


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


def _nan(shape_tree):
    return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shape_tree)


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


def _member_specs(tree, axis):
    """Member axis first for every leaf; scalars (the epoch) replicated."""
    return jax.tree.map(lambda leaf: P() if leaf.ndim == 0 else P(axis), tree)


class PackProgram:
    """The compiled programs of one sweep (jitted lazily, once per pack shape).

    Args:
        config: the sweep.
        recorder: the NTK record step, or None for no NTK records.
        mesh: a 1-D mesh whose only axis shards the member axis; None for one device.
        sequential: run each device's members one at a time in the NTK record instead of
            batched (see `ntkbench.kernels.pack_map`): the right choice on CPUs.
    """

    def __init__(self, config: SweepConfig, recorder: Recorder | None = None, *, mesh=None,
                 sequential: bool = True):
        self.config = config
        self.optim = make_optimizer(config)
        self.recorder = recorder
        self.mesh = mesh
        self.sequential = sequential
        self.train_chunk = eqx.filter_jit(self._train_chunk, donate="all-except-first")
        self.finish = eqx.filter_jit(self._finish)
        self.init_state = eqx.filter_jit(self._init_state)

    # ------------------------------------------------------------------ sharding
    def _on_members(self, fn, args: tuple, out_specs=_member_specs):
        """`fn(*args)`, each device running it on its own members (`jax.shard_map`).

        `args[0]` is the `PackData`; every other argument and output has the member axis first
        (scalars are replicated), unless `out_specs(out_shapes, axis)` says otherwise.
        """
        if self.mesh is None:
            return fn(*args)
        axis = self.mesh.axis_names[0]
        arrays, static = eqx.partition(args, eqx.is_array)
        data = arrays[0]
        data_specs = type(data)(*(
            jax.tree.map(lambda _, name=name: P() if name in SHARED else P(axis), value)
            for name, value in zip(data._fields, data)))
        holder = {}

        def local(*arrs):
            out = fn(*eqx.combine(arrs, static))
            out_arrays, holder["static"] = eqx.partition(out, eqx.is_array)
            return out_arrays

        shapes = jax.eval_shape(local, *arrays)
        mapped = jax.shard_map(local, mesh=self.mesh,
                               in_specs=(data_specs, *_member_specs(arrays[1:], axis)),
                               out_specs=out_specs(shapes, axis), check_vma=False)
        return eqx.combine(mapped(*arrays), holder["static"])

    # ------------------------------------------------------------------ one member
    def _loss(self, model, x, y, w):
        logits = jax.vmap(model)(x)
        return jnp.sum(w * per_sample_loss(self.config.loss, logits, y)), logits

    def _lin_loss(self, params, apply, x, y, w):
        logits = apply(params, x)
        return jnp.sum(w * per_sample_loss(self.config.loss, logits, y)), logits

    def _inputs(self, data: PackData, m_idx, m_x, sel):
        x = data.x[m_idx[sel]] if m_x is None else m_x[sel]
        return x, data.y[m_idx[sel]]

    def _eval_metrics(self, logits_fn, data: PackData):
        """Test loss and accuracy on the evaluation split, `eval_batch` samples at a time."""

        def chunk(carry, xs):
            x, y, w = xs
            logits = logits_fn(x)
            loss = jnp.sum(w * per_sample_loss(self.config.loss, logits, y))
            acc = jnp.sum(w * (jnp.argmax(logits, -1) == y))
            return (carry[0] + loss, carry[1] + acc), None

        zero = jnp.zeros((), data.x_eval.dtype)
        (loss, acc), _ = jax.lax.scan(chunk, (zero, zero), (data.x_eval, data.y_eval,
                                                            data.w_eval))
        return loss, acc

    def _evaluate_member(self, model, lin_params, init, data: PackData):
        """Test metrics of one member (and of its linearized model, with the output gap)."""
        loss, acc = self._eval_metrics(jax.vmap(model), data)
        out = {"test_loss": loss, "test_accuracy": acc}
        if self.config.linearized:
            apply = linearized(model, init)
            out["lin_test_loss"], _ = self._eval_metrics(lambda x: apply(lin_params, x), data)
            f = jax.vmap(model)(data.x_ntk)
            f_lin = apply(lin_params, data.x_ntk)
            out["lin_output_gap"] = jnp.sum((f - f_lin) ** 2) / jnp.sum(f**2)
        return out

    def _grads_member(self, model, lin_params, init, data, m_idx, m_x, sel, w):
        """Loss, accuracy and gradients of one member (and of its linearized model) on the
        samples `sel` (positions into the member's training set) with weights `w`."""
        x, y = self._inputs(data, m_idx, m_x, sel)
        (loss, logits), g = eqx.filter_value_and_grad(self._loss, has_aux=True)(model, x, y, w)
        out = {"train_loss": loss, "train_accuracy": jnp.sum(w * (jnp.argmax(logits, -1) == y))}
        lin_g = None
        if self.config.linearized:
            apply = linearized(model, init)
            (out["lin_train_loss"], _), lin_g = jax.value_and_grad(
                lambda p: self._lin_loss(p, apply, x, y, w), has_aux=True)(lin_params)
        return out, g, lin_g, jnp.isfinite(loss) & _all_finite(g)

    def _apply(self, model, opt_state, grads, lin_params, lin_opt, lin_grads):
        """The optimizer step of every member, one member at a time (`lax.map`).

        Elementwise, so mapping costs nothing measurable; it makes each member's arithmetic
        independent of how many members share its device: batched over members, XLA rewrites
        Adam's per-member bias correction `m / c` into `m * (1 / c)` in some programs and not
        in others, which differ by an ulp and, through ReLU kinks, in the NTK.
        """
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def one(t):
            p, o, g, lp, lo, lg = t
            upd, o = self.optim.update(g, o, p)
            p = optax.apply_updates(p, upd)
            if lp is not None:
                lupd, lo = self.optim.update(lg, lo, lp)
                lp = optax.apply_updates(lp, lupd)
            return p, o, lp, lo

        p, o, lp, lo = jax.lax.map(one, (params, opt_state, grads, lin_params, lin_opt,
                                         lin_grads))
        return eqx.combine(p, static), o, lp, lo

    def _update(self, st: PackState, data: PackData, batches):
        """One epoch of updates of every member: the new model, optimizer states and linearized
        model, the training metrics of the state before the epoch, and which members stayed
        finite. `batches` `(m, steps, B)`: positions into each member's samples (-1 = padding)
        from `ntkbench._pipeline`'s schedule; None for full batch."""
        def grads(sel_axis):
            return eqx.filter_vmap(self._grads_member,
                                   in_axes=(0, 0, 0, None, 0, 0, sel_axis, 0))

        if batches is None:  # full batch: the metrics come from the gradient's forward pass
            metrics, g, lg, ok = grads(None)(st.model, st.lin_params, data.init, data,
                                             data.idx, data.x_member, slice(None), data.weight)
            return (*self._apply(st.model, st.opt_state, g, st.lin_params, st.lin_opt_state,
                                 lg), metrics, ok)
        metrics, _, _, ok = grads(None)(st.model, st.lin_params, data.init, data, data.idx,
                                        data.x_member, slice(None), data.weight)

        def step(carry, sel):
            model, opt, lp, lo, ok = carry
            valid = sel >= 0
            w = valid / jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1)
            _, g, lg, fine = grads(0)(model, lp, data.init, data, data.idx, data.x_member,
                                      jnp.where(valid, sel, 0), w)
            return (*self._apply(model, opt, g, lp, lo, lg), ok & fine), None

        carry = (st.model, st.opt_state, st.lin_params, st.lin_opt_state, ok)
        (model, opt, lp, lo, ok), _ = jax.lax.scan(step, carry, jnp.swapaxes(batches, 0, 1))
        return model, opt, lp, lo, metrics, ok

    # ------------------------------------------------------------------ the pack
    def _eval_all(self, state: PackState, data: PackData, do_eval):
        """Test metrics of every member when `do_eval`, NaN otherwise (no work is done then)."""
        names = TEST_METRICS + (LINEARIZED[1:] if self.config.linearized else ())
        m = state.diverged.shape[0]

        def run(_):
            fn = lambda mdl, lp, init: self._evaluate_member(mdl, lp, init, data)
            return eqx.filter_vmap(fn)(state.model, state.lin_params, data.init)

        def skip(_):
            return {k: jnp.full((m,), jnp.nan, jnp.float32) for k in names}

        return jax.lax.cond(do_eval, run, skip, None)

    def _track_best(self, state: PackState, test_loss) -> Best:
        """Keep the parameters of each member's first minimum of the test loss."""
        b = state.best
        better = test_loss < b.loss  # NaN (not evaluated, diverged) is never better

        return Best(where_members(better, params_of(state.model), b.params),
                    None if b.lin_params is None
                    else where_members(better, state.lin_params, b.lin_params),
                    jnp.where(better, test_loss, b.loss),
                    jnp.where(better, state.epoch, b.epoch))

    def _ntk(self, state: PackState, data: PackData, do_record):
        """The NTK record of every member when `do_record`, NaN otherwise."""
        if self.recorder is None:
            return {}, state.record
        run = lambda carry: self.recorder.record_pack(
            state.model, data.x_ntk, data.y_ntk, carry, data.record, state.epoch,
            sequential=self.sequential)
        skip = lambda carry: (_nan(jax.eval_shape(run, carry)[0]), carry)
        return jax.lax.cond(do_record, run, skip, state.record)

    @staticmethod
    def _mask(metrics, diverged):
        return {k: jnp.where(diverged.reshape(diverged.shape + (1,) * (v.ndim - 1)), jnp.nan, v)
                for k, v in metrics.items()}

    def _init_state(self, data: PackData, model) -> PackState:
        return self._on_members(self._init_local, (data, model))

    def _init_local(self, data: PackData, model) -> PackState:
        params = params_of(model)
        opt_state = eqx.filter_vmap(self.optim.init)(params)
        num = jax.tree.leaves(params)[0].shape[0]
        lin = lin_opt = None
        if self.config.linearized:
            lin, lin_opt = data.init, eqx.filter_vmap(self.optim.init)(data.init)
        record = None
        if self.recorder is not None:
            record = eqx.filter_vmap(self.recorder.init_carry)(data.record)
        best = Best(params, lin, jnp.full((num,), jnp.inf, jnp.float32),
                    jnp.full((num,), -1, jnp.int32))
        return PackState(model, opt_state, jnp.zeros((num,), bool), jnp.asarray(0, jnp.int32),
                         best, lin, lin_opt, record)

    def _train_chunk(self, data: PackData, state: PackState, num_epochs: int, batches=None):
        """`num_epochs` epochs inside one `lax.scan`: the new state and the records
        `(num_epochs, m)` of records `state.epoch .. state.epoch + num_epochs - 1`.

        `batches` `(m, num_epochs, steps, B)` int32, member axis first like every argument: the
        minibatches of every member and epoch (required when `batch_size > 0`, None for full
        batch)."""
        if (batches is None) != (self.config.batch_size <= 0):
            raise ValueError("train_chunk needs `batches` exactly when config.batch_size > 0.")

        def local(data, state, batches):  # the scan runs over epochs: (m, T, ...) -> (T, m, ...)
            xs = None if batches is None else jnp.swapaxes(batches, 0, 1)
            return jax.lax.scan(lambda st, b: self._epoch(data, st, b), state, xs,
                                length=num_epochs)

        def out_specs(shapes, axis):  # records are (epochs, members)
            return _member_specs(shapes[0], axis), jax.tree.map(lambda _: P(None, axis),
                                                                 shapes[1])

        return self._on_members(local, (data, state, batches), out_specs)

    def _epoch(self, data: PackData, st: PackState, epoch_batches):
        model, opt, lin, lin_opt, metrics, ok = self._update(st, data, epoch_batches)
        test = self._eval_all(st, data, data.eval_epochs[st.epoch])
        best = self._track_best(st, jnp.where(st.diverged, jnp.nan, test["test_loss"]))
        ntk, record = self._ntk(st, data, data.ntk_epochs[st.epoch])
        # Members frozen before this epoch read NaN; one that diverges now shows its metrics.
        out = self._mask({**metrics, **test, **ntk}, st.diverged)
        diverged = st.diverged | ~ok
        model = eqx.combine(where_members(diverged, params_of(st.model), params_of(model)),
                            eqx.filter(st.model, eqx.is_inexact_array, inverse=True))
        new = PackState(model, opt, diverged, st.epoch + 1, best, lin, lin_opt, record)
        return new, out

    def _finish(self, data: PackData, state: PackState):
        """Records of the final state `E`, and the NTK quantities of each member at `k*`.

        Returns:
            `(final, best, snapshots)`: `final` name -> `(m,)` (record `E`); `best` holds
            `k_star`, `min_test_loss` and `best_<name>` per member; `snapshots` the matrix-form
            NTKs `(m, M, M)` at `k*` and at the end (empty without snapshots).
        """
        return self._on_members(self._finish_local, (data, state))

    def _finish_local(self, data: PackData, state: PackState):
        cfg = self.config
        fwd = eqx.filter_vmap(lambda mdl, lp, init, idx, w, xm: self._final_train(
            mdl, lp, init, data, idx, w, xm))
        train = fwd(state.model, state.lin_params, data.init, data.idx, data.weight,
                    data.x_member)
        test = self._eval_all(state, data, jnp.asarray(True))
        best = self._track_best(state, jnp.where(state.diverged, jnp.nan, test["test_loss"]))
        ntk, _ = self._ntk(state, data, jnp.asarray(True))
        final = self._mask({**train, **test, **ntk}, state.diverged)
        static = eqx.filter(state.model, eqx.is_inexact_array, inverse=True)
        best_model = eqx.combine(best.params, static)
        found = best.epoch >= 0
        out = {"k_star": jnp.where(found, best.epoch, -1),
               "min_test_loss": jnp.where(found, best.loss, jnp.nan)}
        snapshots = {}
        if self.recorder is not None:
            at_best = self.recorder.measure_pack(best_model, data.x_ntk, data.y_ntk, data.record,
                                                 sequential=self.sequential)
            out.update({f"best_{k}": jnp.where(found, v, jnp.nan) for k, v in at_best.items()})
            if self.recorder.snapshots:
                snapshots = {"best": self.recorder.snapshot_pack(
                    best_model, data.x_ntk, sequential=self.sequential),
                    "final": self.recorder.snapshot_pack(
                        state.model, data.x_ntk, sequential=self.sequential)}
        if cfg.linearized:
            gap = eqx.filter_vmap(lambda mdl, lp, init: self._evaluate_member(
                mdl, lp, init, data)["lin_output_gap"])
            out["best_lin_output_gap"] = jnp.where(
                found, gap(best_model, best.lin_params, data.init), jnp.nan)
        return final, out, snapshots

    def _final_train(self, model, lin_params, init, data, m_idx, m_w, m_x):
        x, y = self._inputs(data, m_idx, m_x, slice(None))
        loss, logits = self._loss(model, x, y, m_w)
        out = {"train_loss": loss, "train_accuracy": jnp.sum(m_w * (jnp.argmax(logits, -1) == y))}
        if self.config.linearized:
            out["lin_train_loss"], _ = self._lin_loss(lin_params, linearized(model, init), x, y,
                                                      m_w)
        return out

