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
import os
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ntkbench import _ensemble as ens
from ntkbench._config import ConfigError, SweepConfig
from ntkbench._datasets import Dataset, apply_noisy_replacement, draw_indices, load_dataset
from ntkbench._models import CNN, MLP
from ntkbench._results import ResultsStore, _atomic_json
from ntkbench._training import METRICS, PackData, PackProgram

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
    if config.n_test > t_avail:
        raise ConfigError(
            f"config.n_test={config.n_test} is larger than the {t_avail} test samples of "
            f"{config.dataset!r}; use --config.n_test <= {t_avail}.")
    if config.model == "cnn" and min(data.input_shape[:2]) < 8:
        raise ConfigError(
            f"config.model='cnn' needs images of at least 8x8; {config.dataset!r} has "
            f"{data.input_shape[:2]}. Use model='mlp'.")


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """An exclusive lock on `workdir` for the life of a run; a second process is refused."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise WorkdirError(
                f"Another ntkbench process (pid {other}) is using {workdir!r}; wait for it to "
                "finish or use another --workdir.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def read_manifest(workdir: str) -> dict | None:
    path = os.path.join(workdir, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_workdir(config: SweepConfig, workdir: str) -> dict | None:
    """Refuse a workdir that holds another sweep or foreign files; returns its manifest."""
    if not os.path.exists(workdir):
        return None
    if not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir!r} is a file; give a directory.")
    manifest = read_manifest(workdir)
    if manifest is None:
        foreign = [f for f in os.listdir(workdir) if f not in (".lock",)]
        if foreign:
            raise WorkdirError(
                f"{workdir!r} is not empty and holds no ntkbench sweep ({', '.join(sorted(foreign)[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty --workdir.")
        return None
    if manifest.get("fingerprint") != config.fingerprint():
        old = SweepConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in manifest["config"].items()
                             if k in {f.name for f in dataclasses.fields(SweepConfig)}})
        diff = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in old.diff(config).items()
                         if k != "data_dir")
        raise WorkdirError(
            f"{workdir!r} holds a different sweep ({diff}); rerun with its config to resume, "
            "or choose a new --workdir.")
    return manifest


# ----------------------------------------------------------------------------- packs


def build_models(config: SweepConfig, pack: ens.Pack, in_size: int, image_shape, out_size: int):
    """The stacked (padded) model of a pack, members in pack order."""
    by_width: dict[int, list[int]] = {}
    for j, m in enumerate(pack.members):
        by_width.setdefault(m.width, []).append(j)
    blocks, order = [], []
    for width, js in by_width.items():
        keys = jnp.stack([ens.member_keys(config, pack.members[j])["init"] for j in js])
        if config.model == "mlp":
            make = lambda k, w=width: MLP(in_size, out_size, w, pack.depth, key=k,
                                          pad_to=pack.padded_width, init=config.init)
        else:
            make = lambda k: CNN(image_shape, out_size, key=k, init=config.init)
        blocks.append(eqx.filter_vmap(make)(keys))
        order.extend(js)
    arrays = [eqx.filter(b, eqx.is_array) for b in blocks]
    static = eqx.filter(blocks[0], eqx.is_array, inverse=True)
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *arrays)
    inverse = np.argsort(np.asarray(order))
    return eqx.combine(jax.tree.map(lambda a: a[inverse], stacked), static)


def build_data(config: SweepConfig, pack: ens.Pack, data: Dataset, test_idx: np.ndarray) -> PackData:
    x_all = jnp.asarray(data.x_train.reshape(len(data.y_train), -1))
    y_all = jnp.asarray(data.y_train)
    n_max = pack.padded_n_train
    idx, weight, x_member, shuffle = [], [], [], []
    noisy = any(m.noise > 0 for m in pack.members)
    for m in pack.members:
        keys = ens.member_keys(config, m)
        i = draw_indices(keys["data"], y_all, m.n_train)
        pad = n_max - m.n_train
        idx.append(jnp.concatenate([i, jnp.zeros((pad,), i.dtype)]))
        weight.append(jnp.concatenate([jnp.full((m.n_train,), 1.0 / m.n_train), jnp.zeros((pad,))]))
        shuffle.append(keys["shuffle"])
        if noisy:
            xm = apply_noisy_replacement(keys["noise"], x_all[i], y_all[i], m.noise,
                                         data.num_classes, std=config.noise_std)
            x_member.append(jnp.concatenate([xm, jnp.zeros((pad, xm.shape[1]), xm.dtype)]))
    x_test = data.x_test.reshape(len(data.y_test), -1)[test_idx]
    return PackData(
        x=x_all, y=y_all, idx=jnp.stack(idx).astype(jnp.int32),
        weight=jnp.stack(weight).astype(jnp.float32),
        x_test=jnp.asarray(x_test), y_test=jnp.asarray(data.y_test[test_idx]),
        x_member=jnp.stack(x_member) if noisy else None,
        shuffle_key=jnp.stack(shuffle),
    )


def ntk_test_indices(config: SweepConfig, data: Dataset) -> np.ndarray:
    """The fixed NTK/test set: `n_test` test samples drawn once from the sweep seed."""
    return np.asarray(draw_indices(ens.test_set_key(config), jnp.asarray(data.y_test), config.n_test))


# ----------------------------------------------------------------------------- running


@dataclasses.dataclass
class SweepResult:
    workdir: str
    plan: ens.Plan
    seconds: float
    member_epochs: int


def _fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_sweep(config: SweepConfig, workdir: str, *, log: Callable[[str], None] = print,
              make_record: Callable | None = None) -> SweepResult:
    """Train every member of the sweep and write its records to `workdir/results`.

    Args:
        config: a validated sweep.
        workdir: directory for the manifest and the results store.
        log: progress sink (the CLI passes absl logging).
        make_record: optional factory `(config, num_classes) -> (record_fn, record_init)` of the
            per-member NTK record step.

    Returns:
        A `SweepResult`; load the numbers with `ntkbench.results.load(workdir)`.
    """
    data = load_dataset(config.dataset, config.data_dir or None)
    check_data(config, data)
    manifest = check_workdir(config, workdir)
    in_size, out_size = data.input_size, data.num_classes
    plan = ens.plan(config, in_size, out_size)
    with workdir_lock(workdir):
        manifest = manifest or {
            "config": config.to_dict(), "fingerprint": config.fingerprint(),
            "efficiency": plan.efficiency,
            "packs": [{"pack_id": p.pack_id, "members": [list(m.index) for m in p.members],
                       "padded_width": p.padded_width, "padded_n_train": p.padded_n_train,
                       "depth": p.depth, "status": "pending"} for p in plan.packs],
        }
        _atomic_json(os.path.join(workdir, MANIFEST), manifest)
        log(f"sweep {config.name!r}: {config.num_members} members on {config.dataset} "
            f"({len(data.y_train)} train / {len(data.y_test)} test), {config.epochs} epochs\n"
            + plan.describe())
        snap = config.n_test * out_size if (config.ntk_every and config.ntk_snapshots) else 0
        store = ResultsStore(os.path.join(workdir, "results"), config, snapshot_size=snap)
        test_idx = ntk_test_indices(config, data)
        record_fn = record_init = None
        if make_record is not None and config.ntk_every > 0:
            record_fn, record_init = make_record(config, out_size)
        programs: dict[tuple, PackProgram] = {}
        start = time.perf_counter()
        total = config.num_members * config.epochs
        done_member_epochs = 0
        for pack in plan.packs:
            status = manifest["packs"][pack.pack_id]
            if status["status"] == "done":
                done_member_epochs += pack.num_members * config.epochs
                continue
            status.update(status="running", started=time.time())
            _atomic_json(os.path.join(workdir, MANIFEST), manifest)
            t_pack = time.perf_counter()
            program = programs.setdefault("all", PackProgram(config, record_fn, record_init))
            model = build_models(config, pack, in_size, data.input_shape, out_size)
            pdata = build_data(config, pack, data, test_idx)
            state = program.init_state(model)
            indices = [m.index for m in pack.members]
            epoch = 0
            while epoch < config.epochs:
                steps = min(config.chunk_epochs, config.epochs - epoch)
                state, out = program.train_chunk(pdata, state, steps)
                out = jax.device_get(out)
                store.write_records(indices, epoch, out)
                epoch += steps
                store.commit(indices, epoch - 1, np.asarray(state.diverged))
                done_member_epochs += pack.num_members * steps
                elapsed = time.perf_counter() - start
                rate = done_member_epochs / max(elapsed, 1e-9)
                log(f"pack {pack.pack_id + 1}/{len(plan.packs)} (width<= {pack.padded_width}, "
                    f"{pack.num_members} members) epoch {epoch}/{config.epochs} | "
                    f"{rate:,.0f} member-epochs/s | ETA {_fmt_time((total - done_member_epochs) / rate)}")
            out, state = program.evaluate(pdata, state)
            out = jax.device_get(out)
            store.write_records(indices, config.epochs, {k: v[None] for k, v in out.items()})
            if snap and record_fn is not None:
                rec = jax.device_get(state.record)
                for which, mats in (("init", rec.init_ntk), ("best", rec.best_ntk),
                                    ("final", rec.last_ntk)):
                    store.write_snapshot(indices, which, mats)
            store.commit(indices, config.epochs, np.asarray(state.diverged))
            status.update(status="done", finished=time.time(), seconds=time.perf_counter() - t_pack,
                          epochs_done=config.epochs)
            _atomic_json(os.path.join(workdir, MANIFEST), manifest)
        seconds = time.perf_counter() - start
    return SweepResult(workdir, plan, seconds, total)


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
