"""Building a pack: its stacked (padded) members, its device data, and their placement.

Everything here is a function of the sweep config, the dataset and the pack's members, so a
resumed pack is rebuilt bit for bit (nothing built here is checkpointed).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ntkbench._config import SweepConfig
from ntkbench._data import Dataset, MinibatchSchedule, apply_noisy_replacement, draw_indices
from ntkbench._record import Recorder
from ntkbench._train.family import ModelFamily
from ntkbench._train.member_step import params_of
from ntkbench._train.members import eval_set_key, members_keys, test_set_key
from ntkbench._train.placement import Placement
from ntkbench._train.planner import Pack
from ntkbench._train.state import SHARED, PackData
from ntkbench.models import concat


@dataclasses.dataclass(frozen=True)
class SweepData:
    """The host arrays every pack of a sweep shares: the splits and the fixed sample sets."""

    data: Dataset
    ntk_idx: np.ndarray  # the NTK samples: `ntk_test_draws` disjoint draws of `n_test`
    eval_idx: np.ndarray  # the evaluation split (indices into the test split)

    @classmethod
    def of(cls, config: SweepConfig, data: Dataset) -> SweepData:
        y_test = jnp.asarray(data.y_test)
        ntk = np.asarray(draw_indices(test_set_key(config), y_test,
                                      config.n_test * config.ntk_test_draws))
        if config.n_eval in (0, len(data.y_test)):
            evals = np.arange(len(data.y_test))
        else:
            evals = np.sort(np.asarray(draw_indices(eval_set_key(config), y_test,
                                                    config.n_eval)))
        return cls(data, ntk, evals)


def with_slots(pack: Pack, placement: Placement) -> Pack:
    """`pack` padded with copies of its last member to a multiple of the device count."""
    slots = placement.slots(pack.num_members)
    return dataclasses.replace(
        pack, members=pack.members + (pack.members[-1],) * (slots - pack.num_members))


def build_models(config: SweepConfig, family: ModelFamily, pack: Pack) -> eqx.Module:
    """The stacked (padded) members of a pack, in pack order.

    Members are built at their true shape, one compiled program per `(width, depth)`, then
    padded exactly, so a member's initial bits never depend on its pack.
    """
    by_width: dict[int, list[int]] = {}
    for j, m in enumerate(pack.members):
        by_width.setdefault(m.width, []).append(j)
    init_keys = members_keys(config, pack.members)["init"]
    blocks, order = [], []
    for width, js in by_width.items():
        block = family.build_stack(init_keys[np.asarray(js)], width, pack.depth,
                                   pack.parametrization)
        if family.paddable and width != pack.padded_width:
            block = family.pad_stack(block, pack.padded_width)
        blocks.append(block)
        order.extend(js)
    stacked = concat(blocks) if len(blocks) > 1 else blocks[0]
    inverse = np.argsort(np.asarray(order))
    arrays, static = eqx.partition(stacked, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda a: a[inverse], arrays), static)


def _eval_chunks(config: SweepConfig, sweep: SweepData):
    x = sweep.data.x_test.reshape(len(sweep.data.y_test), -1)[sweep.eval_idx]
    y = sweep.data.y_test[sweep.eval_idx]
    n = len(y)
    b = min(config.eval_batch, n)
    chunks = -(-n // b)
    pad = chunks * b - n
    xs = np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)]).reshape(chunks, b, -1)
    ys = np.concatenate([y, np.zeros(pad, y.dtype)]).reshape(chunks, b)
    ws = np.concatenate([np.full(n, 1.0 / n, np.float32), np.zeros(pad, np.float32)])
    return xs, ys, ws.reshape(chunks, b)


def _flags(epochs: tuple[int, ...], num_records: int) -> np.ndarray:
    out = np.zeros(num_records, bool)
    out[list(epochs)] = True
    return out


def build_data(config: SweepConfig, pack: Pack, sweep: SweepData) -> PackData:
    """The device data of a pack (no record inputs yet: see `build_pack`)."""
    data = sweep.data
    x_all = data.x_train.reshape(len(data.y_train), -1)
    n_max = pack.padded_n_train
    noisy = any(m.noise > 0 for m in pack.members)
    keys = members_keys(config, pack.members)
    idx = np.zeros((pack.num_members, n_max), np.int32)
    weight = np.zeros((pack.num_members, n_max), np.float32)
    draws: dict[tuple, np.ndarray] = {}  # members sharing a data key share the draw
    x_member = []
    for j, m in enumerate(pack.members):
        which = (m.n_train, m.data_draw, m.seed if config.data_per_seed else None)
        if which not in draws:
            draws[which] = np.asarray(draw_indices(keys["data"][j], data.y_train, m.n_train))
        i = draws[which]
        idx[j, :m.n_train] = i
        weight[j, :m.n_train] = np.float32(1.0 / m.n_train)
        if noisy:
            xm = np.asarray(apply_noisy_replacement(keys["noise"][j], x_all[i], data.y_train[i],
                                                    m.noise, data.num_classes,
                                                    std=config.noise_std))
            x_member.append(np.concatenate([xm, np.zeros((n_max - m.n_train, xm.shape[1]),
                                                         xm.dtype)]))
    x_eval, y_eval, w_eval = _eval_chunks(config, sweep)
    x_test = data.x_test.reshape(len(data.y_test), -1)
    return PackData(
        x=jnp.asarray(x_all), y=jnp.asarray(data.y_train), idx=jnp.asarray(idx),
        weight=jnp.asarray(weight), x_member=jnp.asarray(np.stack(x_member)) if noisy else None,
        x_eval=jnp.asarray(x_eval), y_eval=jnp.asarray(y_eval), w_eval=jnp.asarray(w_eval),
        x_ntk=jnp.asarray(x_test[sweep.ntk_idx]), y_ntk=jnp.asarray(data.y_test[sweep.ntk_idx]),
        eval_epochs=jnp.asarray(_flags(config.eval_epochs(), config.num_records)),
        ntk_epochs=jnp.asarray(_flags(config.ntk_epochs(), config.num_records)),
        curvature_epochs=jnp.asarray(_flags(config.curvature_epochs(), config.num_records)),
        curvature_key=keys["curvature"] if config.curvature_every > 0 else None,
        lr=None, init=None, record=None)


def build_pack_arrays(config: SweepConfig, family: ModelFamily, pack: Pack, sweep: SweepData,
               placement: Placement, recorder: Recorder | None, *, sequential: bool
               ) -> tuple[eqx.Module, PackData]:
    """A pack's stacked members and its device data, placed (pack padded to device slots)."""
    model = build_models(config, family, pack)
    data = build_data(config, pack, sweep)
    init = params_of(model) if config.linearized else None
    record = None
    if recorder is not None:
        keys = members_keys(config, pack.members)["ntk"]
        record = _prepare(recorder, model, data.x_ntk, keys, sequential)
    data = data._replace(lr=learning_rates(config, pack, model), init=init, record=record)
    return placement.members(model), placement.data(data, SHARED)


@eqx.filter_jit
def _prepare(recorder, model, x, keys, sequential):
    return recorder.prepare(model, x, keys, sequential=sequential)


def learning_rates(config: SweepConfig, pack: Pack, model: eqx.Module):
    """Every member's learning rate of every parameter: a tree like the parameters whose leaves
    are `(m,)` float32, each member's rate at its sweep point (`SweepConfig.lr_of`), times the
    parameter's multiplier under a non-standard parametrization (`lr_multipliers`)."""
    rates = jnp.asarray(np.asarray([config.lr_of(m) for m in pack.members], np.float32))
    if pack.parametrization == "standard":
        return jax.tree.map(lambda _: rates, params_of(model))
    # Each member's per-layer multipliers at its true width (docs/definitions.md,
    # "Parametrizations"), times its point's rate.
    mult = eqx.filter_vmap(lambda m: m.lr_multipliers(config.optimizer))(model)
    return jax.tree.map(lambda k: rates * k.astype(jnp.float32), mult)


def minibatch_schedule(config: SweepConfig, pack: Pack) -> MinibatchSchedule | None:
    """The grain minibatch schedule of a pack (None for full batch): each member's order comes
    from its own `shuffle` key, so it does not depend on the pack."""
    if config.batch_size <= 0:
        return None
    shuffle = np.asarray(jax.random.key_data(members_keys(config, pack.members)["shuffle"]))
    seeds = [int.from_bytes(k.astype(np.uint32).tobytes(), "little") for k in shuffle]
    return MinibatchSchedule(seeds, pack.members[0].n_train, config.batch_size)
