"""Sweep members, deterministic per-member keys, and the pack planner.

A sweep's members are the product of its axes (`ntkbench.config.AXES`). Members are grouped into
packs; each pack is one vmapped, jitted program over a stacked model padded to the pack's width
(and, for full-batch training, to the pack's largest training set, with zero sample weights).

The planner keeps executed FLOPs close to useful FLOPs: within a group of members that can share
a program (same depth, and same `n_train` for minibatch training), it sorts the distinct member
sizes and splits them into contiguous packs by dynamic programming, minimising the padded FLOPs,
with the fewest packs (compiled programs) that reach `min_pack_efficiency` and at most
`max_packs_per_group`; a pack over the memory bound is split into equal chunks (one
program). A member's keys depend only on the sweep seed and its own coordinates, never on its
pack, so a member trains to the same numbers under any plan.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntkbench._config import AXES, SweepConfig

_INIT_TAG, _DATA_TAG, _SHUFFLE_TAG, _TEST_TAG, _NOISE_TAG = 0, 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class Member:
    """One sweep member: its position in the results grid and its coordinates."""

    index: tuple[int, ...]  # position along each axis in AXES order
    depth: int
    width: int
    n_train: int
    noise: float
    data_draw: int
    seed: int


@dataclasses.dataclass(frozen=True)
class Pack:
    """Members trained together by one compiled program, padded to `padded_width`/`n_train`."""

    pack_id: int
    members: tuple[Member, ...]
    depth: int
    padded_width: int
    padded_n_train: int

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
        return len({(p.depth, p.padded_width, p.padded_n_train, p.num_members) for p in self.packs})

    def describe(self) -> str:
        lines = [f"{len(self.packs)} packs, {self.num_programs} programs, padding efficiency "
                 f"{self.efficiency:.1%}"]
        for p in self.packs:
            widths = sorted({m.width for m in p.members})
            lines.append(f"  pack {p.pack_id}: {p.num_members} members, depth {p.depth}, widths "
                         f"{widths} padded to {p.padded_width}, n_train padded to {p.padded_n_train}")
        return "\n".join(lines)


def members(config: SweepConfig) -> list[Member]:
    """All members of the sweep, in row-major grid order."""
    values = config.axis_values()
    out = []
    for index in itertools.product(*(range(len(values[a])) for a in AXES)):
        coords = {a: values[a][i] for a, i in zip(AXES, index)}
        out.append(Member(index=tuple(index), **coords))
    return out


def _fold(key, *ints: int):
    for i in ints:
        key = jax.random.fold_in(key, int(i) % (2**31 - 1))
    return key


@jax.jit
def _fold_rows(key, rows):
    """`_fold(key, *row)` for every row of `rows` `(m, L)` (already reduced mod 2**31 - 1):
    one compiled call instead of `m·L` dispatches; the same threefry bits."""

    def one(row):
        return jax.lax.fori_loop(0, row.shape[0], lambda i, k: jax.random.fold_in(k, row[i]), key)

    return jax.vmap(one)(rows)


def _noise_code(noise: float) -> int:
    return int(round(noise * 1_000_000))


def _key_ints(config: SweepConfig, m: Member) -> dict[str, tuple[int, ...]]:
    data = (m.n_train, m.data_draw) + ((m.seed,) if config.data_per_seed else ())
    return {
        "init": (_INIT_TAG, m.depth, m.width, m.seed),
        "data": (_DATA_TAG, *data),
        "noise": (_NOISE_TAG, *data, _noise_code(m.noise)),
        "shuffle": (_SHUFFLE_TAG, m.depth, m.width, m.seed, *data, _noise_code(m.noise)),
    }


def members_keys(config: SweepConfig, ms: Sequence[Member]) -> dict[str, jax.Array]:
    """`member_keys` of several members at once: each entry stacked over `ms` (in order)."""
    base = jax.random.key(config.seed)
    ints = [_key_ints(config, m) for m in ms]
    out = {}
    for name in ints[0]:
        rows = np.asarray([i[name] for i in ints], np.int64) % (2**31 - 1)
        out[name] = _fold_rows(base, jnp.asarray(rows, jnp.uint32))
    return out


def member_keys(config: SweepConfig, m: Member) -> dict[str, jax.Array]:
    """Keys for one member, derived from `config.seed` and the member's own coordinates only.

    init: (depth, width, seed); data: (n_train, data_draw[, seed if data_per_seed]);
    shuffle (minibatch order): the init coordinates plus the data ones; noise: data + noise level.
    """
    return {name: k[0] for name, k in members_keys(config, [m]).items()}


def test_set_key(config: SweepConfig) -> jax.Array:
    """The key of the fixed NTK/test-set draw shared by all members."""
    return _fold(jax.random.key(config.seed), _TEST_TAG)


# ------------------------------------------------------------------------ cost model


def flops_per_example(config: SweepConfig, in_size: int, out_size: int, width: int, depth: int) -> float:
    """Forward multiply-adds x2 of one example (the training step costs about 3x this)."""
    if config.model == "cnn":
        return 1.0  # one fixed architecture: padding never applies
    return 2.0 * (in_size * width + (depth - 1) * width * width + width * out_size)


def member_bytes(config: SweepConfig, in_size: int, out_size: int, width: int, depth: int,
                 n_train: int) -> float:
    """Rough device memory of one member in a pack (params, Adam moments, activations, NTK)."""
    params = in_size * width + (depth - 1) * width * width + width * out_size + depth * width
    m = config.n_test * out_size if config.ntk_every > 0 else 0
    ntk = (4 + config.ntk_test_draws) * m * m  # K, its normalization, eigenvectors, snapshots
    acts = 3 * (n_train + config.n_test * config.ntk_test_draws) * width * depth
    return 4.0 * (5 * params + acts + ntk)


def _partition(sizes: Sequence[float], counts: Sequence[int], max_groups: int,
               min_efficiency: float = 1.0) -> list[tuple[int, int]]:
    """Split sorted `sizes` into contiguous runs minimising sum(count * max size).

    Uses the fewest runs (each run is one more compiled program) whose padding efficiency
    reaches `min_efficiency`, and at most `max_groups` runs.
    """
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


def plan(config: SweepConfig, in_size: int, out_size: int, *, num_devices: int = 1,
         only: Sequence[Member] | None = None, first_pack_id: int = 0) -> Plan:
    """Group the sweep's members into packs (see the module docstring).

    Args:
        config: the sweep.
        in_size, out_size: flattened input size and number of logits.
        num_devices: pack sizes are rounded up to a multiple of this when packs are sharded
            (the extra slots are masked padding members, counted as executed FLOPs).
        only: plan just these members (e.g. the ones an extension adds), in grid order.
        first_pack_id: id of the first pack (packs are numbered consecutively).
    """
    all_members = members(config) if only is None else list(only)
    groups: dict[tuple, list[Member]] = {}
    for m in all_members:
        key = (m.depth, m.n_train) if config.batch_size > 0 else (m.depth,)
        groups.setdefault(key, []).append(m)

    packs: list[Pack] = []
    for gkey in sorted(groups):
        group = groups[gkey]
        depth = gkey[0]

        def size(m):
            return (flops_per_example(config, in_size, out_size, m.width, depth) * m.n_train, m.width, m.n_train)

        distinct = sorted({size(m) for m in group})
        counts = [sum(1 for m in group if size(m) == s) for s in distinct]
        # The padded shape of a run is its widest width and largest training set.
        runs = _partition([s[0] for s in distinct], counts, config.max_packs_per_group,
                          config.min_pack_efficiency)
        for i, j in runs:
            run_sizes = set(distinct[i:j])
            run = [m for m in group if size(m) in run_sizes]
            width = max(m.width for m in run) if config.model == "mlp" else run[0].width
            n_max = max(m.n_train for m in run)
            per = member_bytes(config, in_size, out_size, width, depth, n_max)
            cap = max(1, int(config.pack_memory_mb * 2**20 // per))
            num_chunks = math.ceil(len(run) / cap)
            chunk = math.ceil(len(run) / num_chunks)
            for c in range(num_chunks):
                part = run[c * chunk:(c + 1) * chunk]
                packs.append(Pack(first_pack_id + len(packs), tuple(part), depth, width, n_max))
    return account(config, packs, in_size, out_size, num_devices=num_devices)


def account(config: SweepConfig, packs: Sequence[Pack], in_size: int, out_size: int, *,
            num_devices: int = 1) -> Plan:
    """The `Plan` of these packs, with its useful and executed (padded) FLOPs."""
    useful = executed = 0.0
    for p in packs:
        slots = math.ceil(p.num_members / num_devices) * num_devices
        executed += slots * flops_per_example(config, in_size, out_size, p.padded_width,
                                              p.depth) * p.padded_n_train
        useful += sum(flops_per_example(config, in_size, out_size, m.width, p.depth) * m.n_train
                      for m in p.members)
    return Plan(tuple(packs), useful, executed)


def packs_to_json(packs: Sequence[Pack]) -> list[dict]:
    """The manifest form of packs: ids, member grid indices and padded shapes."""
    return [{"pack_id": p.pack_id, "members": [list(m.index) for m in p.members],
             "padded_width": p.padded_width, "padded_n_train": p.padded_n_train,
             "depth": p.depth} for p in packs]


def packs_from_json(config: SweepConfig, items: Sequence[dict]) -> list[Pack]:
    """Packs recorded in a manifest, rebuilt against `config`'s grid.

    A sweep keeps the plan it started with (even if a later ntkbench plans differently), so pack
    ids, per-pack status and checkpoints stay valid across versions and resumes.
    """
    values = config.axis_values()
    shape = config.grid_shape
    out = []
    for item in items:
        ms = []
        for index in item["members"]:
            index = tuple(int(i) for i in index)
            if len(index) != len(AXES) or any(not 0 <= i < n for i, n in zip(index, shape)):
                raise ValueError(f"pack {item['pack_id']} lists member {index} outside the "
                                 f"sweep's grid {shape}")
            ms.append(Member(index=index, **{a: values[a][i] for a, i in zip(AXES, index)}))
        out.append(Pack(int(item["pack_id"]), tuple(ms), int(item["depth"]),
                        int(item["padded_width"]), int(item["padded_n_train"])))
    return out
