"""Per-member minibatch orders for vmapped ensembles, built with grain.

A pack of `M` members trains with minibatch SGD inside `jax.lax.scan`, `T` epochs per chunk. Each
member `j` trains on its own `n` samples (positions `0..n-1` of its index array) and needs, every
epoch, a fresh shuffle of `range(n)` cut into `num_steps = ceil(n / batch_size)` batches, the
last one padded with `-1` (the trainer masks `-1` slots). `MinibatchSchedule.next_chunk` returns
those orders for the whole pack as one int32 array of shape `(T, M, num_steps, batch_size)`.

The grain pipeline (`member_dataset`). Member `j` is one `grain.MapDataset` whose element `e` is
epoch `e`'s batches::

    grain.MapDataset.source([range(n)]).seed(seeds[j]).random_map(ShuffleAndPad).repeat()

`.seed` derives the `random_map` seed from `seeds[j]` (a `SeedSequence` hash, so seeds 0, 1, 2
give unrelated streams); `.repeat()` makes the dataset infinite with a reseed per epoch; and
`random_map` hands element `e` a Philox generator keyed by that derived seed with counter `e`
(grain's `RngPool`). An epoch's order is therefore a function of `(seeds[j], e)` only: the same
whether the member trains alone or in a pack of 20, whatever the other members' seeds, and
independent of which epochs were drawn before.

Why whole epochs as elements, and not `MapDataset.range(n).seed(s).shuffle().batch(...)`: grain's
per-element shuffle costs about 12 µs per index on a 2-core CPU (its index shuffle is a Simon
cipher on at least 16 bits, so `n = 2000` cycle-walks ~33 encryptions per index), and grain adds
~7 µs of per-element Python on top: 47 s for one chunk of `M=20, n=2000, T=50` against 0.06 s
here. One element per epoch keeps grain's per-element cost at `M * T` calls per chunk.

The permutation. Epoch `e` draws `n` raw 64-bit Philox words `r_i` from its generator, replaces
the low `b = bit_length(n - 1)` bits of `r_i` with `i`, sorts, and keeps the low bits: the
indices ordered by their random keys. The keys are distinct, so the order does not depend on the
sort algorithm, and raw Philox words are stream-stable across NumPy versions (NEP 19), unlike
`Generator.permutation`. Ties in the top `64 - b` bits (probability about `n**2 / 2**(65 - b)`
per epoch, ~2e-10 at `n = 2000`) fall back to index order.

State. `MapDataset` is random access, so the only state is the next epoch to draw: `get_state`
returns a small JSON dict (epoch plus the schedule's configuration, checked on `set_state`), to be
saved beside the model with `ocp.args.JsonSave`; `seek(epoch)` resumes from an epoch count alone.
Both continue exactly as an uninterrupted schedule would. No grain iterator is kept: an iterator
would add prefetch threads and an opaque state for what is one integer here.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from jaxtyping import Int32

STATE_VERSION = 1
"""Version of the order algorithm recorded in `MinibatchSchedule.get_state`."""

_STATE_KEYS = frozenset({"version", "epoch", "seeds", "n", "batch_size"})


def _as_int(name: str, value: Any) -> int:
    """`value` as a Python int; bools and floats are refused (a float `n` is usually a bug)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got the bool {value!r}; pass an int.")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an int, got {value!r} ({type(value).__name__}); pass an int,"
            f" e.g. {name}=int(...)."
        ) from None


def _check_sizes(n: int, batch_size: int) -> tuple[int, int]:
    n = _as_int("n", n)
    batch_size = _as_int("batch_size", batch_size)
    if n < 1:
        raise ValueError(
            f"n={n}: a member needs at least one training sample; pass n >= 1 (the size of each"
            " member's training subset)."
        )
    if n > np.iinfo(np.int32).max:
        raise ValueError(f"n={n} does not fit the int32 batch indices; pass n < 2**31.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1; pass 1 <= batch_size <= n.")
    if batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} is larger than n={n}; pass batch_size <= n (batch_size=n"
            " gives one full batch per epoch)."
        )
    return n, batch_size


def _check_seed(name: str, seed: Any) -> int:
    seed = _as_int(name, seed)
    if seed < 0:
        raise ValueError(f"{name}={seed} is negative; grain seeds must be ints >= 0.")
    return seed


def num_steps(n: int, batch_size: int) -> int:
    """Batches per epoch, `ceil(n / batch_size)`.

    >>> num_steps(2000, 128)
    16
    """
    n, batch_size = _check_sizes(n, batch_size)
    return -(-n // batch_size)


@dataclasses.dataclass(frozen=True)
class ShuffleAndPad(grain.transforms.RandomMap):
    """grain `RandomMap`: one epoch's shuffled batches of `range(n)`, the last padded with -1.

    The element it maps is ignored (the source holds `range(n)` only to name the data); the
    order comes from the generator grain passes in (see the module docstring for the algorithm).
    A dataclass, so that the pipeline pickles (grain's multiprocess prefetch needs that).
    """

    n: int
    batch_size: int

    def random_map(self, element: Any, rng: np.random.Generator) -> Int32[np.ndarray, "s b"]:
        del element
        n, b = self.n, self.batch_size
        low = (n - 1).bit_length()
        mask = np.uint64((1 << low) - 1)
        keys = rng.bit_generator.random_raw(n)
        keys &= ~mask
        keys |= np.arange(n, dtype=np.uint64)
        keys.sort()
        out = np.full(-(-n // b) * b, -1, dtype=np.int32)
        out[:n] = keys & mask
        return out.reshape(-1, b)


def member_dataset(seed: int, n: int, batch_size: int) -> grain.MapDataset:
    """The grain pipeline of one member: element `e` is epoch `e`'s batches.

    Args:
        seed: the member's data-order seed (an int >= 0).
        n: the member's number of training samples; batches hold positions `0..n-1`.
        batch_size: samples per batch, `1 <= batch_size <= n`.

    Returns:
        An infinite `grain.MapDataset` (`len` is `sys.maxsize`) of int32 arrays of shape
        `(num_steps, batch_size)`: a permutation of `range(n)` in row-major order followed by
        `num_steps * batch_size - n` entries of -1. Element `e` depends only on `(seed, e)`.

    >>> ds = member_dataset(0, n=5, batch_size=2)
    >>> ds[0].shape, ds[0].dtype.name
    ((3, 2), 'int32')
    >>> sorted(ds[7].ravel().tolist())
    [-1, 0, 1, 2, 3, 4]
    """
    seed = _check_seed("seed", seed)
    n, batch_size = _check_sizes(n, batch_size)
    return (
        grain.MapDataset.source([range(n)])
        .seed(seed)
        .random_map(ShuffleAndPad(n, batch_size))
        .repeat()
    )


class MinibatchSchedule:
    """Minibatch orders for a pack of ensemble members, drawn chunk by chunk.

    Member `j` follows `member_dataset(seeds[j], n, batch_size)`; the schedule keeps the next
    epoch to draw. Seeds may repeat (two members then see the same order).

    Args:
        seeds: one data-order seed per member (ints >= 0).
        n: training samples per member (all members of a pack share it).
        batch_size: samples per batch, `1 <= batch_size <= n`.

    >>> sched = MinibatchSchedule([0, 1, 2], n=10, batch_size=4)
    >>> sched.next_chunk(5).shape  # (epochs, members, steps, batch)
    (5, 3, 3, 4)
    >>> state = sched.get_state()
    >>> state["epoch"]
    5
    """

    def __init__(self, seeds: Sequence[int], n: int, batch_size: int) -> None:
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence | np.ndarray):
            raise TypeError(
                f"seeds must be a sequence of ints (one per member), got {type(seeds).__name__};"
                " pass e.g. seeds=[0, 1, 2]."
            )
        if len(seeds) == 0:
            raise ValueError(
                "seeds is empty: a schedule needs one seed per ensemble member; pass e.g."
                " seeds=[0, 1, 2]."
            )
        self._seeds = tuple(_check_seed(f"seeds[{j}]", s) for j, s in enumerate(seeds))
        self._n, self._batch_size = _check_sizes(n, batch_size)
        self._num_steps = num_steps(self._n, self._batch_size)
        self._datasets = [member_dataset(s, self._n, self._batch_size) for s in self._seeds]
        self._epoch = 0

    def __repr__(self) -> str:
        return (
            f"MinibatchSchedule(num_members={self.num_members}, n={self._n},"
            f" batch_size={self._batch_size}, epoch={self._epoch})"
        )

    @property
    def seeds(self) -> tuple[int, ...]:
        return self._seeds

    @property
    def n(self) -> int:
        return self._n

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def num_members(self) -> int:
        return len(self._seeds)

    @property
    def num_steps(self) -> int:
        """Batches per epoch, `ceil(n / batch_size)`."""
        return self._num_steps

    @property
    def epoch(self) -> int:
        """The next epoch `next_chunk` draws (epochs count from 0)."""
        return self._epoch

    def batches(
        self, start_epoch: int, num_epochs: int
    ) -> Int32[np.ndarray, "num_epochs num_members num_steps batch_size"]:
        """Epochs `start_epoch .. start_epoch + num_epochs - 1`, without moving the schedule.

        Args:
            start_epoch: first epoch to return, `>= 0`.
            num_epochs: number of epochs, `>= 1`.

        Returns:
            int32 array `(num_epochs, num_members, num_steps, batch_size)`; `[t, j]` is member
            `j`'s epoch `start_epoch + t` (see `member_dataset`).

        >>> sched = MinibatchSchedule([3], n=4, batch_size=4)
        >>> sorted(sched.batches(10, 1)[0, 0, 0].tolist())
        [0, 1, 2, 3]
        """
        start_epoch = _as_int("start_epoch", start_epoch)
        num_epochs = _as_int("num_epochs", num_epochs)
        if start_epoch < 0:
            raise ValueError(f"start_epoch={start_epoch} is negative; epochs count from 0.")
        if num_epochs < 1:
            raise ValueError(f"num_epochs={num_epochs} must be at least 1.")
        out = np.empty(
            (num_epochs, self.num_members, self._num_steps, self._batch_size), dtype=np.int32
        )
        for t in range(num_epochs):
            for j, ds in enumerate(self._datasets):
                out[t, j] = ds[start_epoch + t]
        return out

    def next_chunk(
        self, num_epochs: int
    ) -> Int32[np.ndarray, "num_epochs num_members num_steps batch_size"]:
        """The next `num_epochs` epochs for every member, advancing the schedule.

        Args:
            num_epochs: epochs in the chunk (the scan length `T`), `>= 1`.

        Returns:
            int32 array `(num_epochs, num_members, num_steps, batch_size)`: for each epoch and
            member, a permutation of `range(n)` cut into batches, the last padded with -1.

        >>> sched = MinibatchSchedule([0, 1], n=3, batch_size=2)
        >>> chunk = sched.next_chunk(4)
        >>> chunk.shape, int((chunk == -1).sum()), sched.epoch
        ((4, 2, 2, 2), 8, 4)
        """
        out = self.batches(self._epoch, num_epochs)
        self._epoch += out.shape[0]
        return out

    def seek(self, epoch: int) -> None:
        """Make `epoch` the next epoch to draw, e.g. after restoring a model saved at `epoch`.

        Continues exactly as an uninterrupted schedule would; no saved state is needed.

        >>> sched = MinibatchSchedule([0], n=6, batch_size=4)
        >>> sched.seek(3)
        >>> bool((sched.next_chunk(1) == MinibatchSchedule([0], 6, 4).batches(3, 1)).all())
        True
        """
        epoch = _as_int("epoch", epoch)
        if epoch < 0:
            raise ValueError(
                f"epoch={epoch} is negative; pass the number of epochs already trained."
            )
        self._epoch = epoch

    def get_state(self) -> dict[str, Any]:
        """JSON-serializable state: the next epoch and the schedule's configuration.

        Save it beside the model, e.g. `ocp.args.Composite(..., schedule=ocp.args.JsonSave(
        sched.get_state()))`, and restore with `ocp.args.JsonRestore()` and `set_state`.

        >>> MinibatchSchedule([7, 8], n=10, batch_size=5).get_state()
        {'version': 1, 'epoch': 0, 'seeds': [7, 8], 'n': 10, 'batch_size': 5}
        """
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "seeds": list(self._seeds),
            "n": self._n,
            "batch_size": self._batch_size,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore a `get_state` dict saved by a schedule with the same seeds, n and batch_size.

        >>> a = MinibatchSchedule([1, 2], n=9, batch_size=4)
        >>> _ = a.next_chunk(2)
        >>> b = MinibatchSchedule([1, 2], n=9, batch_size=4)
        >>> b.set_state(a.get_state())
        >>> bool((a.next_chunk(3) == b.next_chunk(3)).all())
        True
        """
        if not isinstance(state, Mapping) or set(state) != _STATE_KEYS:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"not a MinibatchSchedule state: expected keys {sorted(_STATE_KEYS)}, got {got};"
                " pass the dict returned by get_state (or use seek(epoch))."
            )
        if state["version"] != STATE_VERSION:
            raise ValueError(
                f"state version {state['version']!r} is not {STATE_VERSION}: it was saved by an"
                " ntkbench with a different batch-order algorithm, so it cannot continue the same"
                " sequence; restart the run or use the ntkbench version that saved it."
            )
        mine = self.get_state()
        for key in ("seeds", "n", "batch_size"):
            theirs = list(state[key]) if key == "seeds" else state[key]
            if theirs != mine[key]:
                raise ValueError(
                    f"state was saved with {key}={theirs!r} but this schedule has"
                    f" {key}={mine[key]!r}; build the schedule with the saved configuration, or"
                    f" call seek({state['epoch']!r}) to start this configuration at that epoch."
                )
        self.seek(state["epoch"])
