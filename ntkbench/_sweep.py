"""Running a sweep: validate, plan, then train every pack and stream its records to the store.

`run_sweep` is the library entry point behind `ntkbench run`. Everything that can be checked
without compiling (the config, the dataset and its sizes, the workdir) is checked first, so bad
input fails in a second with one line and leaves the workdir as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shutil
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ntkbench import _ensemble as ens
from ntkbench._config import RUN_SETTINGS, ConfigError, SweepConfig, same_sweep
from ntkbench._config import extend as extend_config
from ntkbench._datasets import Dataset, apply_noisy_replacement, draw_indices, load_dataset
from ntkbench._models import CNN, MLP, concat
from ntkbench._pipeline import MinibatchSchedule
from ntkbench._results import ResultsStore, _atomic_json
from ntkbench._training import PackData, PackProgram

MANIFEST = "manifest.json"


class WorkdirError(RuntimeError):
    """The workdir cannot be used (another sweep, another process, not an ntkbench workdir)."""


# ----------------------------------------------------------------------------- checks


def check_data(config: SweepConfig, data: Dataset) -> None:
    """Sizes that depend on the dataset; raises ConfigError before any compute."""
    n_avail, t_avail = len(data.y_train), len(data.y_test)
    if max(config.n_train) > n_avail:
        raise ConfigError(
            f"config.n_train={max(config.n_train)} is larger than the {n_avail} training samples "
            f"of {config.dataset!r}; use --config.n_train <= {n_avail}.")
    if config.n_test * config.ntk_test_draws > t_avail:
        raise ConfigError(
            f"config.n_test={config.n_test} x ntk_test_draws={config.ntk_test_draws} is larger "
            f"than the {t_avail} test samples of {config.dataset!r}; lower --config.n_test.")
    if config.model == "cnn" and min(data.input_shape[:2]) < 8:
        raise ConfigError(
            f"config.model='cnn' needs images of at least 8x8; {config.dataset!r} has "
            f"{data.input_shape[:2]}. Use model='mlp'.")


@contextlib.contextmanager
def workdir_lock(workdir: str, shard: tuple[int, int] = (0, 1)):
    """Locks `workdir` for the life of a run; a second process is refused with one line.

    An unsharded run holds `.lock` exclusively. A share `I/N` holds `.lock` shared (so shares
    exclude unsharded runs but not each other) and `.lock.share-I-of-N` exclusively (so the same
    share cannot run twice).
    """
    os.makedirs(workdir, exist_ok=True)
    i, n = shard
    fds = []
    try:
        names = [(".lock", fcntl.LOCK_EX if n == 1 else fcntl.LOCK_SH)]
        if n > 1:
            names.append((f".lock.share-{i}-of-{n}", fcntl.LOCK_EX))
        for name, mode in names:
            fd = os.open(os.path.join(workdir, name), os.O_RDWR | os.O_CREAT, 0o644)
            fds.append(fd)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise WorkdirError(
                    f"Another ntkbench process (pid {other}) is using {workdir!r}; wait for it to "
                    "finish or use another --workdir.") from None
            if mode == fcntl.LOCK_EX:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def read_manifest(workdir: str) -> dict | None:
    path = os.path.join(workdir, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def stored_config(manifest: dict) -> SweepConfig:
    """The `SweepConfig` recorded in a manifest."""
    fields = {f.name for f in dataclasses.fields(SweepConfig)}
    return SweepConfig(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in manifest["config"].items() if k in fields})


def check_workdir(config: SweepConfig, workdir: str, *, extend: bool = False
                  ) -> tuple[dict | None, SweepConfig]:
    """Refuse a workdir that holds another sweep or foreign files.

    Args:
        config: the sweep asked for.
        workdir: its directory.
        extend: allow `config` to add members to the sweep in `workdir` (see
            `ntkbench.config.extend`); finished members are never touched.

    Returns:
        `(manifest or None, the config to run)`. The config to run is the stored one when the
        workdir holds the same sweep (its axis values in the stored order), the grown one for an
        extension, and `config` for a new workdir.
    """
    if not os.path.exists(workdir):
        return None, config
    if not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir!r} is a file; give a directory.")
    manifest = read_manifest(workdir)
    if manifest is None:
        foreign = [f for f in os.listdir(workdir) if not f.startswith(".lock")]
        if foreign:
            raise WorkdirError(
                f"{workdir!r} is not empty and holds no ntkbench sweep ({', '.join(sorted(foreign)[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty --workdir.")
        return None, config
    old = stored_config(manifest)
    if manifest.get("fingerprint") == config.fingerprint() or same_sweep(old, config):
        return manifest, dataclasses.replace(old, **{k: getattr(config, k) for k in RUN_SETTINGS})
    try:
        grown = extend_config(old, config)
    except ConfigError as e:
        if extend:
            raise WorkdirError(f"Cannot extend the sweep in {workdir!r}: {e}") from None
        grown = None
    if extend:
        return manifest, grown
    diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in old.diff(config).items()
                     if k != "data_dir")
    hint = (" or pass --extend to add the new members (finished ones are kept as they are),"
            if grown is not None else "")
    raise WorkdirError(
        f"{workdir!r} holds a different sweep ({diff}); rerun with its config to resume,{hint} "
        "or choose a new --workdir.")


def plan_sweep(config: SweepConfig, manifest: dict | None, in_size: int, out_size: int, *,
               num_devices: int = 1) -> tuple[ens.Plan, int]:
    """The sweep's packs: the manifest's plan, plus packs for members it does not cover yet.

    Returns:
        `(plan, number of packs already in the manifest)`.
    """
    if manifest is None or not manifest.get("packs"):
        return ens.plan(config, in_size, out_size, num_devices=num_devices), 0
    old = ens.packs_from_json(config, manifest["packs"])
    planned = {m.index for p in old for m in p.members}
    new = [m for m in ens.members(config) if m.index not in planned]
    packs = list(old)
    if new:
        first = max(p.pack_id for p in old) + 1
        packs += ens.plan(config, in_size, out_size, only=new, first_pack_id=first).packs
    return ens.account(config, packs, in_size, out_size, num_devices=num_devices), len(old)


# ----------------------------------------------------------------------------- packs


@eqx.filter_jit
def _init_mlps(keys, in_size: int, out_size: int, width: int, depth: int, init: str) -> MLP:
    """Unpadded MLPs, one per key: one compiled program per shape, shared by every pack (so a
    member's initial bits never depend on its pack), instead of one compile per operation."""
    return eqx.filter_vmap(lambda k: MLP(in_size, out_size, width, depth, key=k, init=init))(keys)


@eqx.filter_jit
def _init_cnns(keys, image_shape: tuple, out_size: int, init: str) -> CNN:
    return eqx.filter_vmap(lambda k: CNN(image_shape, out_size, key=k, init=init))(keys)


def build_models(config: SweepConfig, pack: ens.Pack, in_size: int, image_shape, out_size: int):
    """The stacked (padded) model of a pack, members in pack order."""
    by_width: dict[int, list[int]] = {}
    for j, m in enumerate(pack.members):
        by_width.setdefault(m.width, []).append(j)
    blocks, order = [], []
    init_keys = ens.members_keys(config, pack.members)["init"]
    for width, js in by_width.items():
        keys = init_keys[np.asarray(js)]
        if config.model == "mlp":
            block = _init_mlps(keys, in_size, out_size, width, pack.depth, config.init)
            blocks.append(block.padded(pack.padded_width))
        else:
            blocks.append(_init_cnns(keys, tuple(image_shape), out_size, config.init))
        order.extend(js)
    stacked = concat(blocks)
    inverse = np.argsort(np.asarray(order))
    arrays, static = eqx.partition(stacked, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda a: a[inverse], arrays), static)


def build_data(config: SweepConfig, pack: ens.Pack, data: Dataset, test_idx: np.ndarray) -> PackData:
    x_all = jnp.asarray(data.x_train.reshape(len(data.y_train), -1))
    y_all = jnp.asarray(data.y_train)
    n_max = pack.padded_n_train
    noisy = any(m.noise > 0 for m in pack.members)
    keys = ens.members_keys(config, pack.members)
    idx = np.zeros((pack.num_members, n_max), np.int32)
    weight = np.zeros((pack.num_members, n_max), np.float32)
    draws: dict[tuple, np.ndarray] = {}  # members sharing a data key share the draw
    x_member = []
    for j, m in enumerate(pack.members):
        which = (m.n_train, m.data_draw, m.seed if config.data_per_seed else None)
        if which not in draws:
            draws[which] = np.asarray(draw_indices(keys["data"][j], y_all, m.n_train))
        i = draws[which]
        idx[j, :m.n_train] = i
        weight[j, :m.n_train] = np.float32(1.0 / m.n_train)
        if noisy:
            xm = apply_noisy_replacement(keys["noise"][j], x_all[i], y_all[i], m.noise,
                                         data.num_classes, std=config.noise_std)
            x_member.append(jnp.concatenate([xm, jnp.zeros((n_max - m.n_train, xm.shape[1]), xm.dtype)]))
    x_test = data.x_test.reshape(len(data.y_test), -1)[test_idx]
    return PackData(
        x=x_all, y=y_all, idx=jnp.asarray(idx), weight=jnp.asarray(weight),
        x_test=jnp.asarray(x_test), y_test=jnp.asarray(data.y_test[test_idx]),
        x_member=jnp.stack(x_member) if noisy else None,
    )


def minibatch_schedule(config: SweepConfig, members) -> MinibatchSchedule | None:
    """The grain minibatch schedule of a pack (None for full batch): each member's order comes
    from its own `shuffle` key, so it does not depend on the pack."""
    if config.batch_size <= 0:
        return None
    shuffle = np.asarray(jax.random.key_data(ens.members_keys(config, members)["shuffle"]))
    seeds = [int.from_bytes(k.astype(np.uint32).tobytes(), "little") for k in shuffle]
    return MinibatchSchedule(seeds, members[0].n_train, config.batch_size)


def ntk_test_indices(config: SweepConfig, data: Dataset) -> np.ndarray:
    """The fixed NTK/test set: `ntk_test_draws` disjoint draws of `n_test` test samples, drawn
    once from the sweep seed (concatenated, draw-major)."""
    return np.asarray(draw_indices(ens.test_set_key(config), jnp.asarray(data.y_test),
                                   config.n_test * config.ntk_test_draws))


# ----------------------------------------------------------------------------- running


class Interrupted(Exception):
    """The run stopped at a checkpoint because it was asked to (SIGTERM/SIGINT); rerun the same
    command to resume."""


@dataclasses.dataclass
class SweepResult:
    workdir: str
    plan: ens.Plan
    seconds: float
    member_epochs: int


def _fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """`"I/N"` -> (I, N) with 0 <= I < N."""
    if shard is None:
        return 0, 1
    if isinstance(shard, tuple):
        i, n = shard
    else:
        try:
            i, n = (int(v) for v in str(shard).split("/"))
        except ValueError:
            raise ConfigError(f"--shard={shard!r} must look like I/N, e.g. --shard=0/4.") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard={i}/{n} needs 0 <= I < N.")
    return i, n


def shard_packs(plan: ens.Plan, shard: tuple[int, int]) -> list[ens.Pack]:
    """This share of the packs: a greedy, deterministic split balancing executed work."""
    i, n = shard
    if n == 1:
        return list(plan.packs)
    load = [0.0] * n
    owner = {}
    for p in sorted(plan.packs, key=lambda p: (-p.num_members * p.padded_width**2 * p.padded_n_train, p.pack_id)):
        j = min(range(n), key=lambda j: (load[j], j))
        owner[p.pack_id] = j
        load[j] += p.num_members * p.padded_width**2 * p.padded_n_train
    return [p for p in plan.packs if owner[p.pack_id] == i]


def _pack_status_path(workdir: str, pack_id: int) -> str:
    return os.path.join(workdir, "packs", f"pack_{pack_id:04d}.json")


def read_pack_status(workdir: str, pack_id: int) -> dict:
    path = _pack_status_path(workdir, pack_id)
    if not os.path.exists(path):
        return {"status": "pending", "epochs_done": 0}
    with open(path) as f:
        return json.load(f)


def _put(tree, mesh, spec):
    """Place every array leaf on `mesh` with PartitionSpec `spec` (works across processes)."""
    if mesh is None:
        return tree
    from jax.sharding import NamedSharding

    sharding = NamedSharding(mesh, spec)

    def put(x):
        if not eqx.is_array(x):
            return x
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)


def _local_rows(tree, axis: int, num_real: int):
    """`(rows, {path: np.ndarray})` of the member rows this process holds, padding excluded.

    For arrays sharded over members (or unsharded), each member lives on one device; this
    process writes exactly the members whose shards it holds.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        return []
    blocks = {}
    for shard in leaves[0].addressable_shards:
        sl = shard.index[axis] if len(shard.index) > axis else slice(None)
        start, stop, _ = sl.indices(leaves[0].shape[axis])
        blocks.setdefault((start, stop), None)
    out = []
    for (start, stop) in sorted(blocks):
        stop = min(stop, num_real)
        if start >= stop:
            continue
        parts = []
        for leaf in leaves:
            for shard in leaf.addressable_shards:
                sl = shard.index[axis] if len(shard.index) > axis else slice(None)
                s0, s1, _ = sl.indices(leaf.shape[axis])
                if s0 <= start and stop <= s1:
                    data = np.asarray(shard.data)
                    idx = [slice(None)] * data.ndim
                    idx[axis] = slice(start - s0, stop - s0)
                    parts.append(data[tuple(idx)])
                    break
        out.append((range(start, stop), jax.tree.unflatten(treedef, parts)))
    return out


def run_sweep(config: SweepConfig, workdir: str, *, log: Callable[[str], None] = print,
              make_record: Callable | None = None, mesh=None, shard=None,
              should_stop: Callable[[], bool] | None = None, extend: bool = False) -> SweepResult:
    """Train every member of the sweep (or of this share) and write its records.

    Resumable: done packs are skipped, started ones continue from their latest complete
    checkpoint, and records that are rewritten must reproduce the same bits.

    Args:
        config: a validated sweep.
        workdir: directory for the manifest, checkpoints and results.
        log: progress sink (the CLI passes absl logging).
        make_record: optional factory `(config, num_classes) -> (record_fn, record_init)` of the
            per-member NTK record step (`ntkbench.recording.make_record`).
        mesh: optional 1-D `jax.sharding.Mesh` (any axis name) over which each pack's member
            axis is sharded; packs are padded with masked members to use every device. With
            several processes, every process calls `run_sweep` with the same arguments.
        shard: `"I/N"`: train only share I of N of the packs (independent jobs on one workdir).
        should_stop: polled between chunks; when it returns True the pack is checkpointed,
            its records flushed, and `Interrupted` is raised.
        extend: `config` may add members to the sweep already in `workdir` (more widths,
            seeds, ...; see `ntkbench.config.extend`). The new members get new packs; finished
            members, their records and their packs are left exactly as they are.

    Returns:
        A `SweepResult`; load the numbers with `ntkbench.results.load(workdir)`.
    """
    from ntkbench.checkpoints import PackCheckpointer

    shard = parse_shard(shard)
    workdir = os.path.abspath(workdir)  # Orbax requires absolute checkpoint paths
    previous, config = check_workdir(config, workdir, extend=extend)
    data = load_dataset(config.dataset, config.data_dir or None)
    check_data(config, data)
    in_size, out_size = data.input_size, data.num_classes
    num_devices = 1 if mesh is None else mesh.devices.size
    plan, num_old = plan_sweep(config, previous, in_size, out_size, num_devices=num_devices)
    mine = shard_packs(plan, shard)
    primary = jax.process_index() == 0
    multi = jax.process_count() > 1
    spec_members = spec_rep = None
    if mesh is not None:
        from jax.sharding import PartitionSpec as P

        spec_members, spec_rep = P(mesh.axis_names[0]), P()
        spec_batches = P(None, mesh.axis_names[0])
    else:
        spec_batches = None

    def sync(name):
        if multi:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(name)

    def stop_requested() -> bool:
        flag = bool(should_stop()) if should_stop is not None else False
        if multi:
            from jax.experimental import multihost_utils
            flag = bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
        return flag

    # Every process has checked the workdir before process 0 writes to it; otherwise a slower
    # process could find the lock or manifest of this very run and refuse the workdir.
    sync("ntkbench-workdir-checked")
    lock = workdir_lock(workdir, shard) if primary else contextlib.nullcontext()
    with lock:
        if primary:
            manifest = {
                "config": config.to_dict(), "fingerprint": config.fingerprint(),
                "efficiency": plan.efficiency, "num_devices": num_devices,
                "packs": ens.packs_to_json(plan.packs),
                "history": [] if previous is None else previous.get("history", []),
            }
            extended = previous is not None and num_old < len(plan.packs)
            if extended:
                added = plan.packs[num_old:]
                manifest["history"] = manifest["history"] + [{
                    "extended": time.time(), "from_fingerprint": previous.get("fingerprint"),
                    "added_packs": [p.pack_id for p in added],
                    "added_members": sum(p.num_members for p in added)}]
            # The manifest (the plan) is written before the results store grows, so a crash
            # in between is repaired by rerunning: the store grows when it is opened.
            if (previous is None or extended
                    or previous.get("fingerprint") != manifest["fingerprint"]):
                _atomic_json(os.path.join(workdir, MANIFEST), manifest)
            os.makedirs(os.path.join(workdir, "packs"), exist_ok=True)
        log(f"sweep {config.name!r}: {config.num_members} members on {config.dataset} "
            f"({len(data.y_train)} train / {len(data.y_test)} test), {config.epochs} epochs, "
            f"{num_devices} device(s), {jax.process_count()} process(es)"
            + (f", share {shard[0]}/{shard[1]}: {len(mine)} of {len(plan.packs)} packs" if shard[1] > 1 else "")
            + (f"; extended by {len(plan.packs) - num_old} new pack(s)"
               if previous is not None and num_old < len(plan.packs) else "")
            + "\n" + plan.describe())
        snap = config.n_test * out_size if (config.ntk_every and config.ntk_snapshots) else 0
        root = os.path.join(workdir, "results")
        layers = max(config.depth) + 1 if (config.layer_ntks and config.ntk_every
                                            and config.model == "mlp") else 0
        if primary:
            store = ResultsStore(root, config, snapshot_size=snap, num_layers=layers)
        sync("ntkbench-store-created")
        if not primary:
            store = ResultsStore(root, config, snapshot_size=snap, num_layers=layers)
        test_idx = ntk_test_indices(config, data)
        record_fn = record_init = None
        if make_record is not None and config.ntk_every > 0:
            record_fn, record_init = make_record(config, out_size)
        program = PackProgram(config, record_fn, record_init)
        snapshot_fn = None
        if snap and record_fn is not None:
            from ntkbench.recording import make_snapshot_fn

            snapshot_fn = make_snapshot_fn(config)
        start = time.perf_counter()
        total = sum(p.num_members for p in mine) * config.epochs
        done_member_epochs = 0
        trained = 0  # member-epochs trained by this call (not skipped or restored)

        def set_status(pack, **fields):
            if primary:
                st = read_pack_status(workdir, pack.pack_id)
                st.update(fields, updated=time.time())
                _atomic_json(_pack_status_path(workdir, pack.pack_id), st)

        for pack in mine:
            status = read_pack_status(workdir, pack.pack_id)
            if status["status"] == "done":
                done_member_epochs += pack.num_members * config.epochs
                log(f"pack {pack.pack_id}: done in an earlier run, skipped")
                continue
            t_pack = time.perf_counter()
            slots = math.ceil(pack.num_members / num_devices) * num_devices
            members = pack.members + (pack.members[-1],) * (slots - pack.num_members)
            padded = dataclasses.replace(pack, members=members)
            model = build_models(config, padded, in_size, data.input_shape, out_size)
            pdata = build_data(config, padded, data, test_idx)
            shared = ("x", "y", "x_test", "y_test")
            pdata = pdata._replace(
                **{k: _put(getattr(pdata, k), mesh, spec_rep) for k in shared},
                **{k: _put(getattr(pdata, k), mesh, spec_members)
                   for k in pdata._fields if k not in shared})
            state = _put_state(program.init_state(model), mesh, spec_members, spec_rep)
            indices = [m.index for m in pack.members]
            ckpt_dir = os.path.join(workdir, "checkpoints", f"pack_{pack.pack_id:04d}")
            with PackCheckpointer(ckpt_dir, max_to_keep=2,
                                  save_every_epochs=config.checkpoint_every_epochs,
                                  save_every_minutes=config.checkpoint_every_minutes,
                                  max_overhead=config.checkpoint_max_overhead) as ckpt:
                found = ckpt.restore_latest(state)
                epoch = 0
                if found is None and snapshot_fn is not None:
                    _write_snapshot(store, indices, "init", snapshot_fn(state.model, pdata.x_test),
                                    pack.num_members)
                if found is not None:
                    epoch, state, _ = found
                    done_member_epochs += pack.num_members * epoch
                    log(f"pack {pack.pack_id}: resuming from the checkpoint at epoch {epoch}")
                schedule = minibatch_schedule(config, members)
                if schedule is not None:
                    schedule.seek(epoch)  # the order is a function of (member, epoch): no state
                set_status(pack, status="running", started=status.get("started", time.time()),
                           epochs_done=epoch)
                saves = 0
                while epoch < config.epochs:
                    steps = min(config.chunk_epochs - epoch % config.chunk_epochs,
                                config.epochs - epoch)
                    batches = None
                    if schedule is not None:
                        batches = _put(schedule.next_chunk(steps), mesh, spec_batches)
                    state, out = program.train_chunk(pdata, state, steps, batches)
                    _write(store, indices, epoch, out, state.diverged, epoch + steps - 1,
                           pack.num_members)
                    epoch += steps
                    done_member_epochs += pack.num_members * steps
                    trained += pack.num_members * steps
                    stop = stop_requested()
                    if ckpt.should_save(epoch, force=stop):
                        ckpt.save(epoch, state)
                        saves += 1
                        set_status(pack, last_checkpoint_epoch=epoch, last_checkpoint_time=time.time())
                    set_status(pack, epochs_done=epoch)
                    elapsed = time.perf_counter() - start
                    rate = trained / max(elapsed, 1e-9)
                    log(f"pack {pack.pack_id + 1}/{len(plan.packs)} (width<= {pack.padded_width}, "
                        f"{pack.num_members} members) epoch {epoch}/{config.epochs} | "
                        f"{rate:,.0f} member-epochs/s | ETA "
                        f"{_fmt_time((total - done_member_epochs) / max(rate, 1e-9))}")
                    if stop:
                        ckpt.wait()
                        set_status(pack, status="interrupted")
                        raise Interrupted(
                            f"interrupted at epoch {epoch} of pack {pack.pack_id}; checkpoint "
                            f"written. Rerun the same command to resume.")
                out, state = program.evaluate(pdata, state)
                out = jax.tree.map(lambda v: v[None], out)
                _write(store, indices, config.epochs, out, None, None, pack.num_members)
                if snapshot_fn is not None:
                    _write_snapshot(store, indices, "best", state.record.best_ntk, pack.num_members)
                    _write_snapshot(store, indices, "final",
                                    snapshot_fn(state.model, pdata.x_test), pack.num_members)
                _commit(store, indices, config.epochs, state.diverged, pack.num_members)
                ckpt.wait()
                if saves or ckpt.postponed:
                    log(f"pack {pack.pack_id}: {saves} checkpoint(s) written, training blocked "
                        f"{ckpt.blocked_seconds:.2f}s by them; {ckpt.postponed} due one(s) "
                        "postponed (the previous one still writing, or checkpoint_max_overhead "
                        "reached)")
            sync(f"ntkbench-pack-{pack.pack_id}-done")
            if primary:
                shutil.rmtree(ckpt_dir, ignore_errors=True)  # results are complete; free the disk
            set_status(pack, status="done", finished=time.time(), epochs_done=config.epochs,
                       seconds=time.perf_counter() - t_pack)
        seconds = time.perf_counter() - start
    return SweepResult(workdir, plan, seconds, trained)


def _put_state(state, mesh, spec_members, spec_rep):
    """Shard every leaf with a leading member axis; replicate scalars (the epoch counter)."""
    if mesh is None:
        return state
    arrays, static = eqx.partition(state, eqx.is_array)
    placed = jax.tree.map(
        lambda x: _put(x, mesh, spec_rep if x.ndim == 0 else spec_members), arrays)
    return eqx.combine(placed, static)


def _write(store, indices, start, out, diverged, committed, num_real):
    """Write this process's member rows of `out` (name -> (T, m)); then commit them."""
    for rows, values in _local_rows(out, 1, num_real):
        store.write_records([indices[j] for j in rows], start, values)
    if committed is not None:
        _commit(store, indices, committed, diverged, num_real)


def _write_snapshot(store, indices, which, matrices, num_real):
    for rows, mats in _local_rows(matrices, 0, num_real):
        store.write_snapshot([indices[j] for j in rows], which, mats)


def _commit(store, indices, epochs_done, diverged, num_real):
    for rows, div in _local_rows(diverged, 0, num_real):
        store.commit([indices[j] for j in rows], epochs_done, div)


def summary_table(ds) -> str:
    """Final and best test loss/accuracy per sweep point (mean ± std over seeds)."""
    import itertools

    axes = [a for a in ds["test_loss"].dims if a not in ("epoch", "seed") and ds.sizes[a] > 1]
    last = ds["test_loss"].isel(epoch=-1)
    best = ds["test_loss"].min("epoch")
    acc = ds["test_accuracy"].isel(epoch=-1)
    header = " ".join(f"{a:>9}" for a in axes) + "  final test loss    best test loss   test acc"
    lines = [header]
    coords = [ds[a].values for a in axes]
    for values in itertools.product(*coords):
        sel = dict(zip(axes, values))
        f = last.sel(sel)
        b = best.sel(sel)
        a = acc.sel(sel)
        lines.append(" ".join(f"{v:>9}" for v in values)
                     + f"  {float(f.mean()):.4f} ± {float(f.std()):.4f}"
                     + f"   {float(b.mean()):.4f} ± {float(b.std()):.4f}"
                     + f"   {float(a.mean()):.3f}")
    return "\n".join(lines)


def status_table(workdir: str, manifest: dict) -> str:
    """Progress per pack: status, epochs done, rate, ETA and the age of the last checkpoint."""
    epochs = manifest["config"]["epochs"]
    now = time.time()
    lines = [f"{'pack':>4} {'status':11} {'members':>7} {'width<=':>7} {'epochs':>11} "
             f"{'m-epochs/s':>10} {'ETA':>8} {'last ckpt':>12}"]
    total_left = total_rate = 0.0
    for p in manifest["packs"]:
        st = read_pack_status(workdir, p["pack_id"])
        done = st.get("epochs_done", 0)
        members = len(p["members"])
        rate = eta = ""
        if st.get("started") and done and st["status"] != "done":
            r = members * done / max(st.get("updated", now) - st["started"], 1e-9)
            rate, eta = f"{r:,.0f}", _fmt_time(members * (epochs - done) / r)
            total_rate = max(total_rate, r)
        if st["status"] != "done":
            total_left += members * (epochs - done)
        ck = st.get("last_checkpoint_time")
        age = f"{_fmt_time(now - ck)} ago" if ck and st["status"] != "done" else "-"
        lines.append(f"{p['pack_id']:>4} {st['status']:11} {members:>7} {p['padded_width']:>7} "
                     f"{done:>5}/{epochs:<5} {rate:>10} {eta:>8} {age:>12}")
    if total_rate and total_left:
        lines.append(f"remaining: {total_left:,.0f} member-epochs, about {_fmt_time(total_left / total_rate)} "
                     "at the latest pack's rate")
    return "\n".join(lines)
