"""The pack planner: which members train together in one compiled program.

Each pack is one vmapped, jitted program over a stacked model padded to the pack's width (and,
for full-batch training, to the pack's largest training set, with zero sample weights). Within a
group of members that can share a program (same depth; same `n_train` for minibatch training;
same width when the model cannot be padded), the planner sorts the distinct member sizes and
splits them into contiguous packs by dynamic programming, minimising the padded FLOPs, with the
fewest packs (compiled programs) that reach `min_pack_efficiency` and at most
`max_packs_per_group`; a pack over the memory bound `pack_memory_mb` is split into equal chunks
(one program).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from ntkbench._config import ResourceError, SweepConfig
from ntkbench._train.family import ModelFamily
from ntkbench._train.members import Member, from_indices, members


@dataclasses.dataclass(frozen=True)
class Pack:
    """Members trained together by one compiled program, padded to `padded_width`/`n_train`."""

    pack_id: int
    members: tuple[Member, ...]
    depth: int
    padded_width: int
    padded_n_train: int
    parametrization: str = "standard"  # one per pack: it fixes the program's model

    @property
    def num_members(self) -> int:
        return len(self.members)


@dataclasses.dataclass(frozen=True)
class Plan:
    packs: tuple[Pack, ...]
    useful_flops: float
    executed_flops: float

    @property
    def efficiency(self) -> float:
        """Padding efficiency: useful FLOPs / executed FLOPs of the whole plan."""
        return self.useful_flops / self.executed_flops if self.executed_flops else 1.0

    @property
    def num_programs(self) -> int:
        return len({(p.depth, p.padded_width, p.padded_n_train, p.num_members)
                    for p in self.packs})

    def describe(self) -> str:
        lines = [f"{len(self.packs)} packs, {self.num_programs} programs, padding efficiency "
                 f"{self.efficiency:.1%}"]
        for p in self.packs:
            widths = sorted({m.width for m in p.members})
            lines.append(f"  pack {p.pack_id}: {p.num_members} members, depth {p.depth}, widths "
                         f"{widths} padded to {p.padded_width}, n_train padded to "
                         f"{p.padded_n_train}")
        return "\n".join(lines)


def member_bytes(config: SweepConfig, family: ModelFamily, width: int, depth: int,
                 n_train: int) -> float:
    """Device memory of one member in a pack, an upper estimate (float32).

    Parameters with their optimizer moments and the best-so-far copy (plus the linearized
    model's copies), the activations of a training step and of one evaluation chunk, and, for
    NTK records, the kernel, its normalization, the initial kernel and the eigensolver's
    workspace.
    """
    params = family.num_params(width, depth)
    copies = 5 + (4 if config.linearized else 0)
    acts = 3 * (n_train + min(config.eval_batch, 10_000)
                + config.n_test * config.ntk_test_draws) * width * depth
    m = config.n_test * family.num_classes if config.ntk_every > 0 else 0
    ntk = 0 if config.spectrum(family.num_classes) == "slq" else (
        (4 + 2 * config.ntk_test_draws + (1 if config.kernel_velocity else 0)) * m * m)
    return 4.0 * (copies * params + acts + ntk)


def check_fits(config: SweepConfig, family: ModelFamily, device_bytes: int | None) -> None:
    """Refuse a sweep whose largest member cannot fit one device, before anything is created.

    Raises:
        ResourceError: one line with the estimate and the device's memory.
    """
    if not device_bytes:
        return
    for depth in config.depth:
        for width in config.widths:
            need = member_bytes(config, family, width, depth, max(config.n_train))
            if need > device_bytes:
                raise ResourceError(
                    f"a member of width {width} and depth {depth} needs about "
                    f"{need / 2**30:,.1f} GiB of device memory, but a device has "
                    f"{device_bytes / 2**30:,.1f} GiB; lower config.widths (or n_test, "
                    "eval_batch).")


def _partition(sizes: Sequence[float], counts: Sequence[int], max_groups: int,
               min_efficiency: float = 1.0) -> list[tuple[int, int]]:
    """Split sorted `sizes` into contiguous runs minimising sum(count * max size), with the
    fewest runs whose padding efficiency reaches `min_efficiency` (at most `max_groups`)."""
    k = len(sizes)
    prefix = np.concatenate([[0], np.cumsum(counts)])
    inf = float("inf")
    best = [[inf] * (k + 1) for _ in range(max_groups + 1)]
    arg = [[-1] * (k + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for j in range(1, k + 1):
            for i in range(j):
                if best[g - 1][i] == inf:
                    continue
                cost = best[g - 1][i] + (prefix[j] - prefix[i]) * sizes[j - 1]
                if cost < best[g][j]:
                    best[g][j], arg[g][j] = cost, i
    useful = float(np.dot(sizes, counts))
    feasible = [g for g in range(1, max_groups + 1) if best[g][k] < inf]
    good = [g for g in feasible if useful >= min_efficiency * best[g][k] * (1 - 1e-12)]
    g = min(good) if good else min(feasible, key=lambda g: (best[g][k], g))
    runs, j = [], k
    while j > 0:
        i = arg[g][j]
        runs.append((i, j))
        j, g = i, g - 1
    return runs[::-1]


def plan(config: SweepConfig, family: ModelFamily, *, num_devices: int = 1,
         only: Sequence[Member] | None = None, first_pack_id: int = 0) -> Plan:
    """Group the sweep's members into packs (see the module docstring).

    Args:
        config: the sweep.
        family: how members are built (padding, costs).
        num_devices: pack sizes are rounded up to a multiple of this when packs are sharded
            (the extra slots are masked copies, counted as executed FLOPs).
        only: plan just these members (e.g. the ones an extension adds), in grid order.
        first_pack_id: id of the first pack (packs are numbered consecutively).
    """
    groups: dict[tuple, list[Member]] = {}
    for m in members(config) if only is None else list(only):
        key = (m.parametrization, m.depth) + ((m.n_train,) if config.batch_size > 0 else ())
        key += () if family.paddable else (m.width,)
        groups.setdefault(key, []).append(m)

    packs: list[Pack] = []
    for gkey in sorted(groups):
        group, parametrization, depth = groups[gkey], gkey[0], gkey[1]

        def size(m, depth=depth):
            return (family.flops_per_example(m.width, depth) * m.n_train, m.width, m.n_train)

        distinct = sorted({size(m) for m in group})
        counts = [sum(1 for m in group if size(m) == s) for s in distinct]
        runs = _partition([s[0] for s in distinct], counts, config.max_packs_per_group,
                          config.min_pack_efficiency)
        for i, j in runs:
            run_sizes = set(distinct[i:j])
            run = [m for m in group if size(m) in run_sizes]
            width = max(m.width for m in run)
            n_max = max(m.n_train for m in run)
            per = member_bytes(config, family, width, depth, n_max)
            cap = max(1, int(config.pack_memory_mb * 2**20 // per))
            num_chunks = math.ceil(len(run) / cap)
            chunk = math.ceil(len(run) / num_chunks)
            for c in range(num_chunks):
                part = run[c * chunk:(c + 1) * chunk]
                packs.append(Pack(first_pack_id + len(packs), tuple(part), depth, width, n_max,
                                  parametrization))
    return account(packs, family, num_devices=num_devices)


def account(packs: Sequence[Pack], family: ModelFamily, *, num_devices: int = 1) -> Plan:
    """The `Plan` of these packs, with its useful and executed (padded) FLOPs."""
    useful = executed = 0.0
    for p in packs:
        slots = math.ceil(p.num_members / num_devices) * num_devices
        executed += slots * family.flops_per_example(p.padded_width, p.depth) * p.padded_n_train
        useful += sum(family.flops_per_example(m.width, p.depth) * m.n_train for m in p.members)
    return Plan(tuple(packs), useful, executed)


def extend_plan(config: SweepConfig, family: ModelFamily, old: Sequence[Pack], *,
                num_devices: int = 1) -> Plan:
    """The recorded packs, plus new packs for members they do not cover (an extension)."""
    planned = {m.index for p in old for m in p.members}
    new = [m for m in members(config) if m.index not in planned]
    packs = list(old)
    if new:
        first = max(p.pack_id for p in old) + 1
        packs += plan(config, family, only=new, first_pack_id=first).packs
    return account(packs, family, num_devices=num_devices)


def packs_to_json(packs: Sequence[Pack]) -> list[dict]:
    """The manifest form of packs: ids, member grid indices and padded shapes."""
    return [{"pack_id": p.pack_id, "members": [list(m.index) for m in p.members],
             "padded_width": p.padded_width, "padded_n_train": p.padded_n_train,
             "depth": p.depth, "parametrization": p.parametrization} for p in packs]


def packs_from_json(config: SweepConfig, items: Sequence[dict]) -> list[Pack]:
    """Packs recorded in a manifest, rebuilt against `config`'s grid (a sweep keeps the plan
    it started with, so pack ids, status files and checkpoints stay valid across versions)."""
    return [Pack(int(item["pack_id"]), tuple(from_indices(config, item["members"])),
                 int(item["depth"]), int(item["padded_width"]), int(item["padded_n_train"]),
                 str(item.get("parametrization", "standard")))
            for item in items]


def shard_packs(plan: Plan, shard: tuple[int, int]) -> list[Pack]:
    """Share `I` of `N` of the packs: a greedy, deterministic split balancing executed work."""
    i, n = shard
    if n == 1:
        return list(plan.packs)
    load, owner = [0.0] * n, {}

    def work(p):
        return p.num_members * p.padded_width**2 * p.padded_n_train

    for p in sorted(plan.packs, key=lambda p: (-work(p), p.pack_id)):
        j = min(range(n), key=lambda j: (load[j], j))
        owner[p.pack_id] = j
        load[j] += work(p)
    return [p for p in plan.packs if owner[p.pack_id] == i]
