"""Sweep members and their deterministic keys.

A sweep's members are the product of its axes (`AXES`). A member's keys depend only on the sweep
seed and its own coordinates, never on its pack, so a member trains to the same numbers under any
plan, and adding widths or seeds never changes existing members:

- init: `(depth, width, seed)`, plus `(n_train, data_draw)` with `init_per_data` (every data
  draw gets its own initialization, as in the paper's data scaling);
- data (the training subset): `(n_train, data_draw)`, plus `seed` with `data_per_seed`;
- noise (the noisy replacement): the data coordinates and the noise level;
- shuffle (minibatch order): the init coordinates and the data ones;
- ntk (matrix-free probes): the init and data coordinates;
- curvature (Lanczos start vectors of the curvature records): the same coordinates.

The parametrization is in no key: the members of one point under `standard`, `ntk` and `mup`
draw the same weights (scaled by each parametrization's init gain), a paired comparison; and a
`standard` member keeps exactly the keys it had before parametrizations existed.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntkbench._config import AXES, SweepConfig

_INIT_TAG, _DATA_TAG, _SHUFFLE_TAG, _TEST_TAG, _NOISE_TAG, _NTK_TAG, _EVAL_TAG = range(7)
_CURVATURE_TAG = 7
KEY_KINDS = ("init", "data", "noise", "shuffle", "ntk", "curvature")


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
    parametrization: str = "standard"  # not in any key: every parametrization of a point draws
    #                                     the same unit-variance weights, scaled by its table


def members(config: SweepConfig) -> list[Member]:
    """All members of the sweep, in row-major grid order."""
    values = config.axis_values()
    out = []
    for index in itertools.product(*(range(len(values[a])) for a in AXES)):
        coords = {a: values[a][i] for a, i in zip(AXES, index)}
        out.append(Member(index=tuple(index), **coords))
    return out


def from_indices(config: SweepConfig, indices: Sequence[Sequence[int]]) -> list[Member]:
    """The members at these grid indices (e.g. read from a manifest).

    Raises:
        ValueError: an index lies outside the sweep's grid.
    """
    values, shape = config.axis_values(), config.grid_shape
    out = []
    for index in indices:
        index = tuple(int(i) for i in index)
        if len(index) == len(AXES) - 1:  # a manifest from before the parametrization axis
            index = (0,) + index
        if len(index) != len(AXES) or any(not 0 <= i < n for i, n in zip(index, shape)):
            raise ValueError(f"member {index} lies outside the sweep's grid {shape}")
        out.append(Member(index=index, **{a: values[a][i] for a, i in zip(AXES, index)}))
    return out


def _noise_code(noise: float) -> int:
    return int(round(noise * 1_000_000))


def _key_ints(config: SweepConfig, m: Member) -> dict[str, tuple[int, ...]]:
    data = (m.n_train, m.data_draw) + ((m.seed,) if config.data_per_seed else ())
    init = (m.depth, m.width, m.seed) + ((m.n_train, m.data_draw) if config.init_per_data else ())
    return {
        "init": (_INIT_TAG, *init),
        "data": (_DATA_TAG, *data),
        "noise": (_NOISE_TAG, *data, _noise_code(m.noise)),
        "shuffle": (_SHUFFLE_TAG, m.depth, m.width, m.seed, *data, _noise_code(m.noise)),
        "ntk": (_NTK_TAG, *init, *data, _noise_code(m.noise)),
        "curvature": (_CURVATURE_TAG, *init, *data, _noise_code(m.noise)),
    }


@jax.jit
def _fold_rows(key, rows):
    """`fold_in` of every entry of each row of `rows` `(m, L)` in turn: one compiled call."""

    def one(row):
        return jax.lax.fori_loop(0, row.shape[0], lambda i, k: jax.random.fold_in(k, row[i]), key)

    return jax.vmap(one)(rows)


def members_keys(config: SweepConfig, ms: Sequence[Member]) -> dict[str, jax.Array]:
    """Every kind of key (`KEY_KINDS`) of several members, each stacked over `ms` in order."""
    base = jax.random.key(config.seed)
    ints = [_key_ints(config, m) for m in ms]
    out = {}
    for name in KEY_KINDS:
        arr = np.asarray([i[name] for i in ints], np.int64) % (2**31 - 1)
        out[name] = _fold_rows(base, jnp.asarray(arr, jnp.uint32))
    return out


def _fold(key, *ints: int):
    for i in ints:
        key = jax.random.fold_in(key, int(i) % (2**31 - 1))
    return key


def test_set_key(config: SweepConfig) -> jax.Array:
    """The key of the fixed NTK-sample draw shared by all members."""
    return _fold(jax.random.key(config.seed), _TEST_TAG)


def eval_set_key(config: SweepConfig) -> jax.Array:
    """The key of the evaluation subset (`n_eval` samples of the test split), shared by all."""
    return _fold(jax.random.key(config.seed), _EVAL_TAG)
