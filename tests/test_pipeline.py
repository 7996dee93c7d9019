"""ntkbench._data.pipeline: per-member grain batch orders, their state, and input validation."""

import collections
import doctest
import itertools
import json
import time

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

import ntkbench._data.pipeline as _pipeline
from ntkbench._data.pipeline import STATE_VERSION, MinibatchSchedule, member_dataset, num_steps


def assert_valid_epoch(batches: np.ndarray, n: int, batch_size: int):
    """One member's epoch: each index once, -1 only at the end of the last batch."""
    steps = -(-n // batch_size)
    assert batches.shape == (steps, batch_size) and batches.dtype == np.int32
    flat = batches.ravel()
    np.testing.assert_array_equal(np.sort(flat[:n]), np.arange(n))
    # The -1 padding: steps * batch_size - n slots, all at the end of the last batch.
    np.testing.assert_array_equal(flat[n:], -1)
    assert (batches[:-1] >= 0).all()


def assert_one_line(err: pytest.ExceptionInfo, *needles: str):
    msg = str(err.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


# ------------------------------------------------------------------------------------------
# The orders themselves.


@pytest.mark.parametrize("n,batch_size", [(1, 1), (5, 5), (10, 3), (12, 4), (2000, 128), (37, 36)])
def test_every_epoch_is_padded_permutation(n, batch_size):
    sched = MinibatchSchedule([0, 5, 11], n, batch_size)
    chunk = sched.next_chunk(6)
    steps = num_steps(n, batch_size)
    assert chunk.shape == (6, 3, steps, batch_size) and chunk.dtype == np.int32
    assert sched.num_steps == steps and sched.num_members == 3
    for t, j in itertools.product(range(6), range(3)):
        assert_valid_epoch(chunk[t, j], n, batch_size)
    assert int((chunk == -1).sum()) == 6 * 3 * (steps * batch_size - n)


def test_deterministic():
    a = MinibatchSchedule([3, 4], 50, 8).next_chunk(5)
    b = MinibatchSchedule([3, 4], 50, 8).next_chunk(5)
    np.testing.assert_array_equal(a, b)


def test_epochs_and_members_differ():
    chunk = MinibatchSchedule([0, 1, 2, 3], 100, 10).next_chunk(20)
    orders = {chunk[t, j].tobytes() for t in range(20) for j in range(4)}
    assert len(orders) == 20 * 4


def test_member_independent_of_pack_size_and_other_seeds():
    alone = MinibatchSchedule([42], 300, 32).next_chunk(7)[:, 0]
    pack = MinibatchSchedule(list(range(19)) + [42], 300, 32).next_chunk(7)
    other = MinibatchSchedule([42, 1000, 7, 99], 300, 32).next_chunk(7)
    np.testing.assert_array_equal(pack[:, 19], alone)
    np.testing.assert_array_equal(other[:, 0], alone)
    # The other members of `other` differ from the shared ones of `pack` only through their seeds.
    np.testing.assert_array_equal(other[:, 2], pack[:, 7])


def test_epoch_order_depends_only_on_seed_and_epoch():
    # Drawing in different chunk sizes, or jumping ahead, never changes an epoch's order.
    whole = MinibatchSchedule([8, 9], 40, 6).next_chunk(12)
    sched = MinibatchSchedule([8, 9], 40, 6)
    pieces = np.concatenate([sched.next_chunk(k) for k in (1, 4, 2, 5)])
    np.testing.assert_array_equal(pieces, whole)
    np.testing.assert_array_equal(MinibatchSchedule([8, 9], 40, 6).batches(7, 3), whole[7:10])
    for j, seed in enumerate((8, 9)):
        ds = member_dataset(seed, 40, 6)
        for e in range(12):
            np.testing.assert_array_equal(ds[e], whole[e, j])


def test_member_dataset_is_an_infinite_grain_pipeline():
    ds = member_dataset(1, 10, 4)
    assert isinstance(ds, grain.MapDataset)
    assert len(ds) > 2**60  # `.repeat()`: one element per epoch, without end
    assert_valid_epoch(ds[10**12], 10, 4)  # random access to any epoch


def test_orders_look_uniform():
    # Fixed seeds, so this is deterministic; the bounds are ~5 standard deviations wide.
    # n=4 in one batch: 24 orders, 2400 epochs -> binomial(2400, 1/24) counts, 100 +- 9.8.
    first = MinibatchSchedule([123], 4, 4).next_chunk(2400)[:, 0, 0]
    counts = collections.Counter(map(tuple, first.tolist()))
    assert len(counts) == 24
    assert 55 <= min(counts.values()) and max(counts.values()) <= 150
    # Each position is uniform over the indices too: binomial(2000, 1/10), 200 +- 13.4.
    pos = MinibatchSchedule([5], 10, 10).next_chunk(2000)[:, 0, 0]
    for p in range(10):
        c = np.bincount(pos[:, p], minlength=10)
        assert c.min() >= 130 and c.max() <= 280, c


def test_large_seeds():
    big = 2**64 + 17  # e.g. two uint32 words of a JAX key packed into one int
    a = MinibatchSchedule([big, 0], 20, 6).next_chunk(3)
    np.testing.assert_array_equal(a, MinibatchSchedule([big, np.int64(0)], 20, 6).next_chunk(3))
    assert_valid_epoch(a[2, 0], 20, 6)
    assert not np.array_equal(a[:, 0], MinibatchSchedule([17], 20, 6).next_chunk(3)[:, 0])


def test_next_chunk_is_fast_for_a_pack():
    # M=20, n=2000, B=128, T=50: ~0.06 s on 2 CPU cores; per-element grain would take ~47 s.
    sched = MinibatchSchedule(list(range(20)), 2000, 128)
    start = time.perf_counter()
    chunk = sched.next_chunk(50)
    elapsed = time.perf_counter() - start
    assert chunk.shape == (50, 20, 16, 128)
    assert elapsed < 5.0, f"next_chunk took {elapsed:.2f} s"


# ------------------------------------------------------------------------------------------
# State: get_state/set_state, seek, Orbax.


def test_state_round_trip_continues_exactly():
    uninterrupted = MinibatchSchedule([1, 2, 3], 70, 16)
    expected = np.concatenate([uninterrupted.next_chunk(4) for _ in range(3)])

    first = MinibatchSchedule([1, 2, 3], 70, 16)
    part = first.next_chunk(4)
    state = json.loads(json.dumps(first.get_state()))  # what a JSON checkpoint gives back
    assert state["epoch"] == 4 and state["version"] == STATE_VERSION

    resumed = MinibatchSchedule([1, 2, 3], 70, 16)
    resumed.set_state(state)
    assert resumed.epoch == 4
    got = np.concatenate([part, resumed.next_chunk(4), resumed.next_chunk(4)])
    np.testing.assert_array_equal(got, expected)
    assert resumed.get_state() == uninterrupted.get_state()


def test_seek_continues_exactly():
    expected = MinibatchSchedule([10, 20], 33, 8).next_chunk(9)
    resumed = MinibatchSchedule([10, 20], 33, 8)
    resumed.next_chunk(2)  # wherever it stood, seek moves it
    resumed.seek(5)
    np.testing.assert_array_equal(resumed.next_chunk(4), expected[5:])
    resumed.seek(0)
    np.testing.assert_array_equal(resumed.next_chunk(5), expected[:5])


def test_state_round_trips_through_orbax(tmp_path):
    sched = MinibatchSchedule([4, 5], 25, 7)
    sched.next_chunk(3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(schedule=ocp.args.JsonSave(sched.get_state())))
        mngr.wait_until_finished()
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        step = mngr.latest_step()
        restored = mngr.restore(step, args=ocp.args.Composite(schedule=ocp.args.JsonRestore()))
    assert step == 3
    resumed = MinibatchSchedule([4, 5], 25, 7)
    resumed.set_state(restored["schedule"])
    np.testing.assert_array_equal(resumed.next_chunk(2), sched.next_chunk(2))


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"seeds": [4, 6]}, "seeds=[4, 6]"),
        ({"n": 26}, "n=26"),
        ({"batch_size": 5}, "batch_size=5"),
    ],
)
def test_set_state_refuses_another_configuration(change, needle):
    state = {**MinibatchSchedule([4, 5], 25, 7).get_state(), "epoch": 9, **change}
    with pytest.raises(ValueError) as err:
        MinibatchSchedule([4, 5], 25, 7).set_state(state)
    assert_one_line(err, needle, "seek(9)")


def test_set_state_refuses_foreign_dicts():
    sched = MinibatchSchedule([0], 5, 2)
    with pytest.raises(ValueError) as err:
        sched.set_state({"next_index": 3})  # e.g. a grain iterator's state
    assert_one_line(err, "get_state", "next_index")
    with pytest.raises(ValueError) as err:
        sched.set_state({**sched.get_state(), "version": 0})
    assert_one_line(err, "version")


# ------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize(
    "seeds,n,batch_size,exc,needles",
    [
        ([], 10, 2, ValueError, ("seeds is empty", "seeds=[0, 1, 2]")),
        ((), 10, 2, ValueError, ("seeds is empty",)),
        ([0, 1], 0, 1, ValueError, ("n=0", "n >= 1")),
        ([0, 1], -3, 1, ValueError, ("n=-3",)),
        ([0], 2**31, 4, ValueError, ("n=2147483648", "n < 2**31")),
        ([0, 1], 10, 0, ValueError, ("batch_size=0", "1 <= batch_size <= n")),
        ([0, 1], 10, 11, ValueError, ("batch_size=11", "n=10", "batch_size <= n")),
        ([0, -1], 10, 2, ValueError, ("seeds[1]=-1", ">= 0")),
        ([0, 1.5], 10, 2, TypeError, ("seeds[1]", "int")),
        ([0, 1], 10.0, 2, TypeError, ("n must be an int",)),
        ([0, 1], 10, True, TypeError, ("batch_size", "bool")),
        (3, 10, 2, TypeError, ("sequence of ints",)),
    ],
)
def test_bad_inputs_raise_one_line(seeds, n, batch_size, exc, needles):
    with pytest.raises(exc) as err:
        MinibatchSchedule(seeds, n, batch_size)
    assert_one_line(err, *needles)


def test_bad_epoch_arguments_raise():
    sched = MinibatchSchedule([0], 5, 2)
    with pytest.raises(ValueError) as err:
        sched.next_chunk(0)
    assert_one_line(err, "num_epochs=0")
    with pytest.raises(ValueError) as err:
        sched.seek(-1)
    assert_one_line(err, "epoch=-1")
    with pytest.raises(ValueError) as err:
        sched.batches(-2, 1)
    assert_one_line(err, "start_epoch=-2")
    with pytest.raises(ValueError):
        member_dataset(-1, 5, 2)
    assert sched.epoch == 0  # failed calls do not move the schedule


def test_docstring_examples():
    result = doctest.testmod(_pipeline, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0
