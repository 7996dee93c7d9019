"""ntkbench.checkpoints: round trips, exact resumption, retention, save policy, corruption."""

import dataclasses
import json
import logging
import os
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ntkbench.checkpoints import CheckpointCorruptError, CheckpointMismatchError, PackCheckpointer
from ntkbench.checkpoints._format import Fingerprinter, _leaf_fingerprint

NUM = 4  # ensemble members: the leading axis of every array leaf but the scalars


class State(eqx.Module):
    """Shaped like the sweep's PackState: stacked model, optax state, flags, counters, keys."""

    model: eqx.Module
    opt_state: object
    diverged: jax.Array
    epoch: jax.Array
    keys: jax.Array
    record: object
    scale: float = eqx.field(static=True, default=1.0)


OPTIM = optax.adam(1e-2)


def make_state(seed: int, *, width: int = 8) -> State:
    keys = jax.random.split(jax.random.key(seed), NUM)
    model = eqx.filter_vmap(lambda k: eqx.nn.MLP(3, 2, width, 2, key=k))(keys)
    opt_state = eqx.filter_vmap(lambda m: OPTIM.init(eqx.filter(m, eqx.is_inexact_array)))(model)
    return State(model, opt_state, jnp.arange(NUM) % 2 == 0, jnp.asarray(seed, jnp.int32),
                 keys, None)


def leaves(tree) -> list[np.ndarray]:
    out = []
    for x in jax.tree.leaves(eqx.filter(tree, eqx.is_array)):
        out.append(np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                              else x))
    return out


def assert_trees_equal(a, b):
    """Same array leaves (key paths, dtypes, shapes, bits); static parts may differ."""
    pa = jax.tree_util.tree_leaves_with_path(eqx.filter(a, eqx.is_array))
    pb = jax.tree_util.tree_leaves_with_path(eqx.filter(b, eqx.is_array))
    assert [p for p, _ in pa] == [p for p, _ in pb]
    for (_, x), (_, y) in zip(pa, pb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
    for x, y in zip(leaves(a), leaves(b), strict=True):
        assert np.array_equal(x, y)


@pytest.fixture
def saved(tmp_path):
    """A directory with checkpoints of epochs 1 and 2 (different states)."""
    with PackCheckpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(1), extra={"epoch": 1})
        ckpt.save(2, make_state(2), extra={"epoch": 2})
    return tmp_path


def test_no_checkpoint_restores_none(tmp_path):
    with PackCheckpointer(tmp_path / "new") as ckpt:
        assert ckpt.restore_latest(make_state(0)) is None
        assert ckpt.latest_epoch() is None


def test_round_trip_realistic_pytree(tmp_path):
    state = make_state(7)
    extra = {"best_loss": [0.5, float("inf")], "fingerprint": "abc", "n": 3}
    with PackCheckpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(5, state, extra=extra)
    like = dataclasses.replace(make_state(0), scale=2.0)  # other values, other static
    with PackCheckpointer(tmp_path) as ckpt:
        epoch, restored, got_extra = ckpt.restore_latest(like)
    assert epoch == 5 and got_extra == extra
    assert_trees_equal(restored, state)
    assert restored.keys.dtype == state.keys.dtype  # typed keys stay typed
    assert restored.record is None and restored.scale == 2.0  # static part comes from `like`
    assert restored.model.activation is like.model.activation
    # zarr3 arrays inside an OCDBT database, JSON metadata beside them.
    step = tmp_path / "5"
    assert (step / "state" / "manifest.ocdbt").exists()
    assert json.loads((step / "state" / "_METADATA").read_text())["use_zarr3"] is True
    assert json.loads((step / "meta" / "metadata").read_text())["extra"] == extra


def test_weak_types_commitment_and_numpy_leaves_survive(tmp_path):
    mesh = jax.make_mesh((NUM,), ("ens",))
    state = {"lr": jnp.asarray(0.5), "w": jnp.ones((NUM,)), "key": jax.random.key(0),
             "sharded": jax.device_put(jnp.ones((NUM,)), NamedSharding(mesh, P("ens")))}
    assert state["lr"].weak_type and not state["w"].committed
    with PackCheckpointer(tmp_path) as ckpt:
        ckpt.save(1, {**state, "host": np.arange(3)})
        _, restored, _ = ckpt.restore_latest({**state, "host": np.zeros(3, int)})
    host = restored.pop("host")
    assert isinstance(host, np.ndarray) and np.array_equal(host, np.arange(3))
    assert restored["lr"].weak_type and not restored["w"].weak_type
    assert {k: x.committed for k, x in restored.items()} == {
        "lr": False, "w": False, "key": False, "sharded": True}
    # Uncommitted scalars still combine with mesh-sharded arrays under jit.
    jax.jit(lambda s: s["sharded"] * s["lr"] + s["w"])(restored)


def test_prepared_fingerprints_compile_once_and_match_each_leaf(tmp_path):
    mesh = jax.make_mesh((NUM,), ("ens",))
    state = {"pack": make_state(3), "lr": jnp.asarray(0.5), "host": np.arange(3),
             "sharded": jax.device_put(jnp.arange(NUM), NamedSharding(mesh, P("ens")))}
    arrays = eqx.filter(state, eqx.is_array)
    fp = Fingerprinter()
    fp.prepare(jax.tree.map(lambda x: x if isinstance(x, np.ndarray) else
                            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding,
                                                 weak_type=getattr(x, "weak_type", False)),
                            arrays))
    fp.wait()
    assert len(fp._compiled) == 2  # the leaves on device 0, the mesh-sharded one; numpy: jit
    got = fp(arrays)
    assert len(fp._compiled) == 2  # the call reused the programs compiled ahead of time
    one = jax.jit(_leaf_fingerprint)
    for path, leaf in jax.tree_util.tree_leaves_with_path(arrays):
        assert got[jax.tree_util.keystr(path)] == int(one(leaf)), path
    fp(eqx.filter(make_state(1, width=16), eqx.is_array))  # another layout: compiled on call
    assert len(fp._compiled) == 3
    with PackCheckpointer(tmp_path) as ckpt:  # and a checkpointer uses them end to end
        ckpt.prepare(state)
        ckpt.save(1, state)
        _, restored, _ = ckpt.restore_latest(state)
    assert_trees_equal(restored, state)


def test_continuation_is_bit_exact(tmp_path):
    x = jax.random.normal(jax.random.key(1), (16, 3))
    y = jax.random.normal(jax.random.key(2), (16, 2))

    @eqx.filter_jit(donate="all-except-first")
    def step(x, state: State) -> State:
        def one(model, opt_state, key):
            noise = 1e-3 * jax.random.normal(jax.random.fold_in(key, state.epoch), y.shape)
            loss_fn = lambda m: jnp.mean((jax.vmap(m)(x) - y - noise) ** 2)
            grads = eqx.filter_grad(loss_fn)(model)
            updates, opt_state = OPTIM.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), opt_state

        model, opt_state = eqx.filter_vmap(one)(state.model, state.opt_state, state.keys)
        return eqx.tree_at(lambda s: (s.model, s.opt_state, s.epoch), state,
                           (model, opt_state, state.epoch + 1))

    num_steps, stop = 6, 3
    reference = make_state(3)
    for _ in range(num_steps):
        reference = step(x, reference)

    state = make_state(3)
    with PackCheckpointer(tmp_path, save_every_epochs=stop) as ckpt:
        for epoch in range(1, num_steps):
            state = step(x, state)  # donates the buffers an async save may still be writing
            if ckpt.should_save(epoch):
                ckpt.save(epoch, state)
        # "Crash" here: the last epochs are lost.

    with PackCheckpointer(tmp_path) as ckpt:
        epoch, state, _ = ckpt.restore_latest(make_state(99))
    assert epoch == stop
    for _ in range(epoch, num_steps):
        state = step(x, state)
    assert_trees_equal(state, reference)


def test_keeps_last_two(tmp_path):
    state = make_state(0)
    with PackCheckpointer(tmp_path, max_to_keep=2) as ckpt:
        for epoch in range(1, 6):
            ckpt.save(epoch, state)
        ckpt.wait()
        assert ckpt.all_epochs() == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "5"]


def test_should_save_by_epochs_and_force(tmp_path):
    with PackCheckpointer(tmp_path, save_every_epochs=3) as ckpt:
        assert [e for e in range(1, 10) if ckpt.should_save(e)] == [3, 6, 9]
        assert ckpt.should_save(4, force=True)
        ckpt.save(6, make_state(0))
        ckpt.wait()
        assert not ckpt.should_save(6, force=True)  # already saved
        assert not ckpt.should_save(3)  # older than the latest checkpoint
        assert ckpt.should_save(9)
        with pytest.raises(ValueError, match="already saved"):
            ckpt.save(6, make_state(0))


def test_due_save_is_postponed_while_the_previous_one_writes(tmp_path, monkeypatch):
    with PackCheckpointer(tmp_path, save_every_epochs=2) as ckpt:
        ckpt.save(2, make_state(0))
        ckpt.wait()
        monkeypatch.setattr(ckpt._mngr, "is_saving_in_progress", lambda: True)
        assert not ckpt.should_save(3)  # not due
        assert not ckpt.should_save(4)  # due, but the disk is still busy: training goes on
        assert ckpt.should_save(5, force=True)  # preemption and the last epoch never wait
        assert ckpt.postponed == 1
        monkeypatch.setattr(ckpt._mngr, "is_saving_in_progress", lambda: False)
        assert ckpt.should_save(5)  # the postponed save, at the first chance
        ckpt.save(5, make_state(1))
        assert not ckpt.should_save(7)
        assert ckpt.should_save(8)


def test_max_overhead_postpones_saves_that_would_exceed_the_budget(tmp_path, monkeypatch):
    now = [0.0]
    with PackCheckpointer(tmp_path, save_every_epochs=1, max_overhead=0.1,
                          clock=lambda: now[0]) as ckpt:
        monkeypatch.setattr(ckpt._mngr, "is_saving_in_progress", lambda: False)
        real = ckpt._save

        def slow(*args):
            now[0] += 1.0  # this save blocks the caller for one second
            real(*args)

        monkeypatch.setattr(ckpt, "_save", slow)
        now[0] = 5.0
        assert ckpt.should_save(1)
        ckpt.save(1, make_state(0))  # blocked 1 s of the 6 s so far
        now[0] = 9.0
        assert not ckpt.should_save(2)  # 1 s > 10% of 9 s
        assert ckpt.should_save(2, force=True)
        now[0] = 11.0
        assert ckpt.should_save(3)  # 1 s < 10% of 11 s: the postponed save is made
        assert ckpt.postponed == 1
    with pytest.raises(ValueError, match="max_overhead"):
        PackCheckpointer(tmp_path, max_overhead=1.5)


@pytest.mark.parametrize("count", [False, True])
def test_background_writes_count_against_the_budget_where_they_share_the_cores(tmp_path, count):
    now = [5.0]
    with PackCheckpointer(tmp_path, save_every_epochs=1, max_overhead=0.1, count_background=count,
                          clock=lambda: now[0]) as ckpt:
        ckpt.save(1, make_state(0))  # blocks 0 s of fake time
        ckpt._mngr.wait_until_finished()
        assert ckpt._finished is not None  # Orbax called back once the save was durable
        now[0] = 8.0
        ckpt._finalized()  # as if the write had taken 3 s after `save` returned
        assert ckpt.background_seconds == 3.0 and ckpt.blocked_seconds == 0.0
        now[0] = 10.0
        # 3 s of background writes > 10% of 10 s: postponed only when they count.
        assert ckpt.should_save(2) is not count


def test_should_save_by_time(tmp_path):
    now = [1000.0]
    with PackCheckpointer(tmp_path, save_every_minutes=2, clock=lambda: now[0]) as ckpt:
        assert not ckpt.should_save(1)
        now[0] += 119
        assert not ckpt.should_save(2)
        now[0] += 1
        assert ckpt.should_save(3)
        ckpt.save(3, make_state(0))
        assert not ckpt.should_save(4)  # the clock restarts at each save
        ckpt.wait()
        now[0] += 120
        assert ckpt.should_save(5)
    with PackCheckpointer(tmp_path, clock=lambda: now[0]) as ckpt:  # both criteria disabled
        assert not ckpt.should_save(100)


def _data_files(step: pathlib.Path) -> list[pathlib.Path]:
    """The OCDBT data files (b-tree nodes and chunks) of the arrays of a checkpoint."""
    return [p for p in (step / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


def _truncate_arrays(step: pathlib.Path):
    for f in _data_files(step):
        os.truncate(f, f.stat().st_size // 2)


def _flip_one_data_bit(step: pathlib.Path):
    """Silent damage Tensorstore does not see: one bit of the compressed chunk data."""
    f = max(_data_files(step), key=lambda p: p.stat().st_size)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 1
    f.write_bytes(bytes(data))


# Orbax may leave a Tensorstore callback to a closed event loop after a failed read.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", [
    _truncate_arrays,
    _flip_one_data_bit,
    lambda step: (step / "_CHECKPOINT_METADATA").unlink(),
    lambda step: (step / "meta" / "metadata").unlink(),
    lambda step: (step / "state" / "_METADATA").unlink(),
], ids=["truncated", "bit_flip", "no_step_metadata", "no_json", "no_tree_metadata"])
def test_corrupt_newest_falls_back(tmp_path, caplog, damage):
    big = lambda seed: make_state(seed, width=64)  # chunks too large to be inlined in OCDBT
    with PackCheckpointer(tmp_path) as ckpt:
        ckpt.save(1, big(1), extra={"epoch": 1})
        ckpt.save(2, big(2), extra={"epoch": 2})
    damage(tmp_path / "2")
    like = big(0)
    with caplog.at_level(logging.WARNING), PackCheckpointer(tmp_path) as ckpt:
        epoch, state, extra = ckpt.restore_latest(like)
        assert (epoch, extra) == (1, {"epoch": 1})
        assert_trees_equal(state, big(1))
        assert any("corrupt" in r.getMessage() and str(tmp_path / "2") in r.getMessage()
                   for r in caplog.records)
        # The bad checkpoint is moved aside, so training resumes and saves epoch 2 again.
        assert ckpt.all_epochs() == [1]
        assert ckpt.should_save(2, force=True)
        ckpt.save(2, state)
        ckpt.wait()
        assert ckpt.restore_latest(like)[0] == 2
    assert len(list((tmp_path / "corrupt").iterdir())) == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_every_checkpoint_corrupt_raises(saved):
    for step in ("1", "2"):
        (saved / step / "meta" / "metadata").unlink()
    with PackCheckpointer(saved) as ckpt, pytest.raises(CheckpointCorruptError, match="move"):
        ckpt.restore_latest(make_state(0))
    assert sorted(p.name for p in saved.iterdir()) == ["1", "2"]  # nothing moved or deleted


def test_other_state_raises_mismatch(saved):
    with PackCheckpointer(saved) as ckpt, pytest.raises(CheckpointMismatchError, match="like"):
        ckpt.restore_latest(make_state(0, width=16))


def test_leftover_tmp_dir_is_ignored_and_cleaned(saved, caplog):
    tmp = saved / "3.orbax-checkpoint-tmp-1234567890"  # what a SIGKILL mid-save leaves
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "half_written").write_bytes(b"\0" * 10)
    with caplog.at_level(logging.WARNING), PackCheckpointer(saved) as ckpt:
        assert any(tmp.name in r.getMessage() for r in caplog.records)
        epoch, _, extra = ckpt.restore_latest(make_state(0))
        assert (epoch, extra) == (2, {"epoch": 2})
        ckpt.save(3, make_state(3))
    assert not tmp.exists()
    assert sorted(p.name for p in saved.iterdir()) == ["2", "3"]


def test_extra_must_be_json(tmp_path):
    with PackCheckpointer(tmp_path) as ckpt, pytest.raises(TypeError, match="tolist"):
        ckpt.save(1, make_state(0), extra={"best": np.zeros(3)})


def test_sharded_save_and_restore(tmp_path):
    assert jax.device_count() >= 4, "tests/conftest.py sets 4 fake CPU devices"
    mesh4 = jax.make_mesh((4,), ("ens",))
    mesh2 = jax.make_mesh((2,), ("ens",), devices=jax.devices()[:2])

    def shard(tree, mesh):
        spec = lambda x: NamedSharding(mesh, P("ens") if x.ndim and x.shape[0] == NUM else P())
        return jax.tree.map(lambda x: jax.device_put(x, spec(x)) if eqx.is_array(x) else x, tree)

    state = shard(make_state(5), mesh4)
    assert state.model.layers[0].weight.sharding.spec == P("ens")
    with PackCheckpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        for like in (shard(make_state(0), mesh4), shard(make_state(0), mesh2), make_state(0)):
            _, restored, _ = ckpt.restore_latest(like)
            assert_trees_equal(restored, state)
            for got, want in zip(jax.tree.leaves(eqx.filter(restored, eqx.is_array)),
                                 jax.tree.leaves(eqx.filter(like, eqx.is_array)), strict=True):
                assert got.sharding == want.sharding and got.committed == want.committed


_TWO_PROCESS_WORKER = r'''
import json, sys
pid, port, directory = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
import jax
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
import pathlib
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from ntkbench.checkpoints import PackCheckpointer

mesh = jax.make_mesh((4,), ("ens",))
full = np.arange(4 * 64 * 64, dtype=np.float32).reshape(4, 64, 64)

def make(v):
    rows = NamedSharding(mesh, P("ens"))
    w = jax.make_array_from_callback(full.shape, rows, lambda i: full[i] + v)
    raw = np.arange(8, dtype=np.uint32).reshape(4, 2)
    k = jax.make_array_from_callback(raw.shape, rows, lambda i: raw[i])
    e = jax.device_put(jnp.asarray(v, jnp.int32), NamedSharding(mesh, P()))
    return {"w": w, "keys": jax.random.wrap_key_data(k), "epoch": e}

out = {}
now = [0.0]
clock = lambda: now[0] if pid == 0 else 0.0  # only process 0's clock advances
with PackCheckpointer(directory, save_every_minutes=1, clock=clock) as ckpt:
    out["not_due"] = ckpt.should_save(1)
    out["force_anywhere"] = ckpt.should_save(1, force=pid == 1)  # e.g. SIGTERM seen by one
    now[0] = 100.0
    out["time_due"] = ckpt.should_save(1)  # process 0 decides for both
    try:
        ckpt.save(1, {"local": jnp.zeros(())})
    except ValueError as e:
        out["local_leaf_error"] = "global mesh" in str(e)
    ckpt.save(1, make(1.0), extra={"epoch": 1})
    ckpt.save(2, make(2.0), extra={"epoch": 2})
multihost_utils.sync_global_devices("saved")
if pid == 1:  # only process 1's shards of epoch 2 are damaged
    for f in pathlib.Path(directory, "2", "state", "ocdbt.process_1").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
multihost_utils.sync_global_devices("damaged")
with PackCheckpointer(directory) as ckpt:
    epoch, state, extra = ckpt.restore_latest(make(0.0))
    out["epoch"], out["extra"] = epoch, extra
    out["shards_ok"] = all(np.array_equal(np.asarray(s.data), full[s.index] + 1.0)
                           for s in state["w"].addressable_shards)
    out["spec"] = str(state["w"].sharding.spec)
    out["epochs_left"] = ckpt.all_epochs()
print("RESULT " + json.dumps(out), flush=True)
'''


@pytest.mark.slow
def test_two_processes_agree(tmp_path):
    """Multi-host rule on 2 local processes: one sees a corrupt shard, both fall back together."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    worker = tmp_path / "worker.py"
    worker.write_text(_TWO_PROCESS_WORKER)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = [str(port), str(tmp_path / "ck")]
    procs = [subprocess.Popen([sys.executable, str(worker), str(i), *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env)
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, text) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{text[-3000:]}"
        result = json.loads(text.split("RESULT ", 1)[1].splitlines()[0])
        assert result == {"not_due": False, "force_anywhere": True, "time_due": True, "local_leaf_error": True, "epoch": 1,
                          "extra": {"epoch": 1}, "shards_ok": True, "spec": "P('ens',)",
                          "epochs_left": [1]}
