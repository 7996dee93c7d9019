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
from ntkbench._train.runtime import host_memory_limit


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


#: The memory model of a run's peak (bytes), fitted to the peak resident memory of real runs
#: on CPU (`benchmarks/bench_memory.py`; docs/scaling.md lists the measurements): JAX, XLA's
#: CPU client, Python and the compiled programs of a small sweep before any NTK record ...
RUNTIME_BYTES = 680 * 2**20
#: ... float32 `M x M` matrices alive at once while one member records its NTK (the kernel,
#: its cosine normalization, the host eigensolver's copies, the initial kernel, the update) ...
RECORD_COPIES = 10.5
#: ... and, in float32 `M x M` units, what `ntk_float64` adds (the float64 copies of the
#: spectral step) and what `layer_ntks` adds per layer (each layer's NTK and its spectrum).
FLOAT64_COPIES = 5.0
LAYER_COPIES = 2.3


def record_bytes(config: SweepConfig, family: ModelFamily, depth: int) -> float:
    """Working memory of one member's NTK record, beyond what the member keeps (measured)."""
    if config.ntk_every == 0 or config.spectrum(family.num_classes) == "slq":
        return 0.0
    m2 = float(config.n_test * family.num_classes) ** 2
    copies = (RECORD_COPIES - config.ntk_test_draws - 1  # less what `kept_bytes` counts
              + (FLOAT64_COPIES if config.ntk_float64 else 0.0)
              + (LAYER_COPIES * (depth + 1) if config.layer_ntks else 0.0))
    return 4.0 * copies * m2


def kept_bytes(config: SweepConfig, family: ModelFamily, width: int, depth: int,
               n_train: int) -> float:
    """What one member of a pack keeps for the pack's life: its training state and
    activations, its initial NTK (and previous NTK, snapshots) for the records, and its
    record's output (measured: about two `M x M` float32 matrices per member, 4 members
    against 1)."""
    params = family.num_params(width, depth)
    copies = 5 + (4 if config.linearized else 0)
    acts = 3 * (n_train + min(config.eval_batch, 10_000)
                + config.n_test * config.ntk_test_draws) * width * depth
    ntk = 0.0
    if config.ntk_every > 0 and config.spectrum(family.num_classes) != "slq":
        m2 = float(config.n_test * family.num_classes) ** 2
        ntk = m2 * (config.ntk_test_draws * (1 + config.kernel_velocity) + 1
                    + (2 if config.ntk_snapshots else 0))
    return 4.0 * (copies * params + acts + ntk)


def peak_bytes(config: SweepConfig, family: ModelFamily, pack, *, num_devices: int = 1,
               sequential: bool = True, num_processes: int = 1, data_bytes: int = 0) -> float:
    """The peak memory of a process training `pack` on CPU devices (they share the host's
    memory): the runtime, the data (a host and a device copy), every member's kept state, and
    the records running at once (one per device when members record one at a time, all of
    them when batched)."""
    members = math.ceil(pack.num_members / num_processes)
    at_once = min(members, max(1, num_devices // num_processes)) if sequential else members
    kept = members * kept_bytes(config, family, pack.padded_width, pack.depth,
                                pack.padded_n_train)
    return (RUNTIME_BYTES + 2 * data_bytes + kept
            + at_once * record_bytes(config, family, pack.depth))


def check_fits(config: SweepConfig, family: ModelFamily, runtime, packs=(), *,
               data_bytes: int = 0, limit: tuple[int | None, str] | None = None) -> None:
    """Refuse a sweep that cannot fit, before anything is created: its largest member against
    one device's memory, and on CPU devices the peak of its largest pack (`peak_bytes`)
    against the memory the process may use (`host_memory_limit`: cgroup v1/v2, SLURM, the
    physical memory). A job over its cgroup limit would be killed without a word.

    Args:
        runtime: the `Runtime` (devices, their memory, how members record).
        packs: the packs of this run (the CPU check).
        data_bytes: bytes of the dataset's arrays.
        limit: `(bytes, where from)`, the process's bound; `host_memory_limit()` by default.

    Raises:
        ResourceError: one line with the estimate, the bound and what to lower.
    """
    device_bytes = runtime.device_memory
    if device_bytes:
        for depth in config.depth:
            for width in config.widths:
                need = member_bytes(config, family, width, depth, max(config.n_train))
                if need > device_bytes:
                    raise ResourceError(
                        f"a member of width {width} and depth {depth} needs about "
                        f"{need / 2**30:,.1f} GiB of device memory, but a device has "
                        f"{device_bytes / 2**30:,.1f} GiB; lower config.widths (or n_test, "
                        "eval_batch).")
    if runtime.platform != "cpu" or not packs:
        return
    limit = host_memory_limit() if limit is None else limit
    if not limit[0]:
        return
    peaks = [(peak_bytes(config, family, p, num_devices=runtime.num_devices,
                         sequential=runtime.sequential, num_processes=runtime.num_processes,
                         data_bytes=data_bytes), p) for p in packs]
    need, pack = max(peaks, key=lambda t: t[0])
    if need <= limit[0]:
        return
    m = config.n_test * family.num_classes
    record = (f", NTK records of M = {m}{' in float64' if config.ntk_float64 else ''}"
              f"{' with per-layer kernels' if config.layer_ntks else ''}"
              if record_bytes(config, family, pack.depth) else "")
    options = [o for o, on in (("config.ntk_float64=false", config.ntk_float64),
                               ("config.layer_ntks=false", config.layer_ntks)) if on]
    raise ResourceError(
        f"this sweep needs about {need / 2**30:,.2f} GiB of memory at its peak (pack "
        f"{pack.pack_id}: {pack.num_members} member(s) of width <= {pack.padded_width}{record}), "
        f"but this process may use {limit[0] / 2**30:,.2f} GiB ({limit[1]}); lower "
        f"config.n_test (records grow with M²){', set ' + ' or '.join(options) if options else ''}"
        ", lower config.pack_memory_mb (smaller packs), or run with more memory.")


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
