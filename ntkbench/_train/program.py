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

The per-member pieces (losses, gradients, test metrics, the optimizer step) are in
`member_step.py`, the pack's inputs and state in `state.py`; this module holds the pack
program: sharding over the mesh, the epoch, the chunk scan and the final records.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ntkbench import kernels
from ntkbench._config import LINEARIZED, TEST_METRICS, SweepConfig
from ntkbench._record import Recorder
from ntkbench._train.member_step import (
    apply_updates,
    curvature_member,
    evaluate_member,
    grads_member,
    lin_member_loss,
    linearized,
    make_optimizer,
    member_inputs,
    member_loss,
    params_of,
    where_members,
)
from ntkbench._train.state import SHARED, Best, PackData, PackState


def _nan(shape_tree):
    return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shape_tree)


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

    # ------------------------------------------------------------------ one epoch
    def _update(self, st: PackState, data: PackData, batches):
        """One epoch of updates of every member: the new model, optimizer states and linearized
        model, the training metrics of the state before the epoch, and which members stayed
        finite. `batches` `(m, steps, B)`: positions into each member's samples (-1 = padding)
        from `ntkbench._data.pipeline`'s schedule; None for full batch."""
        def grads(sel_axis):
            return eqx.filter_vmap(functools.partial(grads_member, self.config),
                                   in_axes=(0, 0, 0, None, 0, 0, sel_axis, 0))

        apply = functools.partial(apply_updates, self.optim, data.lr)
        if batches is None:  # full batch: the metrics come from the gradient's forward pass
            metrics, g, lg, ok = grads(None)(st.model, st.lin_params, data.init, data,
                                             data.idx, data.x_member, slice(None), data.weight)
            return (*apply(st.model, st.opt_state, g, st.lin_params, st.lin_opt_state, lg),
                    metrics, ok)
        metrics, _, _, ok = grads(None)(st.model, st.lin_params, data.init, data, data.idx,
                                        data.x_member, slice(None), data.weight)

        def step(carry, sel):
            model, opt, lp, lo, ok = carry
            valid = sel >= 0
            w = valid / jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1)
            _, g, lg, fine = grads(0)(model, lp, data.init, data, data.idx, data.x_member,
                                      jnp.where(valid, sel, 0), w)
            return (*apply(model, opt, g, lp, lo, lg), ok & fine), None

        carry = (st.model, st.opt_state, st.lin_params, st.lin_opt_state, ok)
        (model, opt, lp, lo, ok), _ = jax.lax.scan(step, carry, jnp.swapaxes(batches, 0, 1))
        return model, opt, lp, lo, metrics, ok

    # ------------------------------------------------------------------ the pack
    def _eval_all(self, state: PackState, data: PackData, do_eval):
        """Test metrics of every member when `do_eval`, NaN otherwise (no work is done then)."""
        names = TEST_METRICS + (LINEARIZED[1:] if self.config.linearized else ())
        m = state.diverged.shape[0]

        def run(_):
            fn = lambda mdl, lp, init: evaluate_member(self.config, mdl, lp, init, data)
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

    def _curvature(self, state: PackState, data: PackData, do_record):
        """The curvature record of every member when `do_record`, NaN otherwise (none without
        `curvature_every`). Members run one at a time on CPUs (`kernels.pack_map`): every
        Lanczos step ends in a small batched eigendecomposition."""
        if self.config.curvature_every <= 0:
            return {}
        def one(t):
            model, opt, rate, idx, xm, w, key = t
            key = jax.random.fold_in(key, state.epoch)
            return curvature_member(self.config, model, opt, rate, data, idx, xm, w, key)

        args = (state.model, state.opt_state, data.lr, data.idx, data.x_member, data.weight,
                data.curvature_key)
        run = lambda _: kernels.pack_map(one, args, sequential=self.sequential)
        skip = lambda _: _nan(jax.eval_shape(run, None))
        return jax.lax.cond(do_record, run, skip, None)

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
        curvature = self._curvature(st, data, data.curvature_epochs[st.epoch])
        # Members frozen before this epoch read NaN; one that diverges now shows its metrics.
        out = self._mask({**metrics, **test, **ntk, **curvature}, st.diverged)
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
        curvature = self._curvature(state, data, jnp.asarray(True))
        final = self._mask({**train, **test, **ntk, **curvature}, state.diverged)
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
            gap = eqx.filter_vmap(lambda mdl, lp, init: evaluate_member(
                cfg, mdl, lp, init, data)["lin_output_gap"])
            out["best_lin_output_gap"] = jnp.where(
                found, gap(best_model, best.lin_params, data.init), jnp.nan)
        return final, out, snapshots

    def _final_train(self, model, lin_params, init, data, m_idx, m_w, m_x):
        x, y = member_inputs(data, m_idx, m_x, slice(None))
        loss, logits = member_loss(model, x, y, m_w, loss=self.config.loss)
        out = {"train_loss": loss, "train_accuracy": jnp.sum(m_w * (jnp.argmax(logits, -1) == y))}
        if self.config.linearized:
            out["lin_train_loss"], _ = lin_member_loss(lin_params, linearized(model, init), x,
                                                       y, m_w, loss=self.config.loss)
        return out

