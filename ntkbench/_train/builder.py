"""Building a pack ready to train: its program, stacked members, device data and initial state.

`PackBuilder` holds what every pack of a sweep shares, built once: the dataset and its fixed
sample sets (`SweepData`), the model family, the plan, the NTK recorder, the placement on the
runtime's mesh and the pack program (compiled once per pack shape). `PackBuilder.build(pack)`
turns one planned pack into a `ReadyPack`. The orchestrator builds every pack this way; so do the
device profiler, the benchmarks and the tests (`ntkbench.build_pack` is the one-call form).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx

from ntkbench._config import SweepConfig
from ntkbench._data import Dataset, check_data, load_dataset
from ntkbench._record import Recorder
from ntkbench._train.family import ModelFamily, model_family
from ntkbench._train.pack import SweepData, build_pack_arrays, with_slots
from ntkbench._train.placement import Placement
from ntkbench._train.planner import Pack, Plan
from ntkbench._train.planner import plan as plan_members
from ntkbench._train.program import PackProgram
from ntkbench._train.runtime import Runtime
from ntkbench._train.state import PackData, PackState


@dataclasses.dataclass(frozen=True)
class ReadyPack:
    """One pack, built and placed, with its initial state.

    Attributes:
        pack: the planned pack (its real members, in pack order).
        slots: `pack` padded with copies of its last member to a multiple of the device count
            (the leading axis of every array below; only the first `pack.num_members` count).
        model: the stacked (padded) members.
        data: the pack's device inputs (never checkpointed: rebuilt identically on resume).
        state: the initial `PackState` (parameters, optimizer states, best-so-far, record carry).
        program: the sweep's compiled program: `program.train_chunk(data, state, epochs)`,
            `program.finish(data, state)`.
    """

    pack: Pack
    slots: Pack
    model: eqx.Module
    data: PackData
    state: PackState
    program: PackProgram


class PackBuilder:
    """What the packs of one sweep share, built once; `build(pack)` makes each one ready.

    Args:
        config: the sweep.
        runtime: devices and runtime choices (`Runtime.local()` by default).
        data: the dataset, if already loaded (checked against `config`); else loaded.
        model_fn: the constructor of `model="custom"` members (docs/models.md).
        family: the model family, if already made from `data` and `model_fn`.
        plan: the packs (default: the planner's plan of `config`).

    Example:
        >>> builder = ntkbench.PackBuilder(ntkbench.preset("smoke"))
        >>> ready = builder.build(0)
        >>> state, records = ready.program.train_chunk(ready.data, ready.state, 5)  # doctest: +SKIP
    """

    def __init__(self, config: SweepConfig, *, runtime: Runtime | None = None,
                 data: Dataset | None = None, model_fn=None, family: ModelFamily | None = None,
                 plan: Plan | None = None):
        self.config = config
        self.runtime = Runtime.local() if runtime is None else runtime
        if data is None:
            data = load_dataset(config.dataset, config.data_dir or None)
        check_data(config, data)
        self.data = data
        self.family = model_family(config, data, model_fn) if family is None else family
        self.plan = (plan_members(config, self.family, num_devices=self.runtime.num_devices)
                     if plan is None else plan)
        self.sweep = SweepData.of(config, data)
        self.recorder = (Recorder(config, data.num_classes, platform=self.runtime.platform)
                         if config.ntk_every > 0 else None)
        self.placement = Placement(self.runtime.mesh)
        self.program = PackProgram(config, self.recorder, mesh=self.runtime.mesh,
                                   sequential=self.runtime.sequential)

    def build(self, pack: Pack | int = 0) -> ReadyPack:
        """`pack` (a planned `Pack`, or its index in the plan) ready to train."""
        if isinstance(pack, int):
            pack = self.plan.packs[pack]
        slots = with_slots(pack, self.placement)
        model, data = build_pack_arrays(self.config, self.family, slots, self.sweep,
                                        self.placement, self.recorder,
                                        sequential=self.runtime.sequential)
        return ReadyPack(pack, slots, model, data, self.program.init_state(data, model),
                         self.program)


def build_pack(config: SweepConfig, pack: Pack | int = 0, *, runtime: Runtime | None = None,
               data: Dataset | None = None, model_fn=None) -> ReadyPack:
    """One pack of `config` ready to train: `PackBuilder(config, ...).build(pack)`.

    Example:
        >>> ready = ntkbench.build_pack(ntkbench.preset("smoke"))
        >>> ready.pack.num_members
        4
    """
    return PackBuilder(config, runtime=runtime, data=data, model_fn=model_fn).build(pack)
