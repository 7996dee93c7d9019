"""Training one pack end to end: build, restore, train chunk by chunk, checkpoint, write, finish.

A pack's status file moves `pending -> running -> done` (or `interrupted`); records are written
and committed chunk by chunk; checkpoints are taken at chunk boundaries. Every process of a
multi-process run calls `train_pack` for the same packs in the same order.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable

import jax
import numpy as np

from ntkbench._config import IntegrityError, Interrupted, SweepConfig
from ntkbench._store import ResultsStore
from ntkbench._sweep.live import LiveCurves
from ntkbench._sweep.progress import Eta, Progress, ProgressDisplay
from ntkbench._train import Pack, PackBuilder, Placement, minibatch_schedule
from ntkbench._workdir import Workdir
from ntkbench.checkpoints import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    PackCheckpointer,
)

logger = logging.getLogger("ntkbench")


def _nothing(p: Progress) -> None:
    del p


@dataclasses.dataclass
class Hooks:
    """Callbacks from the sweep to its caller: what a person sees, and how a run is stopped.

    `Hooks()` (what `ntkbench.run` uses by default) shows progress like the command line: a bar
    per pack in a notebook or a terminal, one line per chunk elsewhere; Ctrl-C stops the run at
    the next chunk boundary with a checkpoint and raises `Interrupted`. `Hooks.quiet()` shows
    nothing.

    Attributes:
        log: one-line messages for a person (plain text); default: beside the progress display
            (stderr), or the "ntkbench" logger when progress is off.
        progress: called when a pack starts (compiling) and after every chunk with a
            `Progress`; True: a `ProgressDisplay("auto")`; False: nothing.
        should_stop: polled after every chunk; True checkpoints the pack and raises
            `Interrupted`. None: the first Ctrl-C (SIGINT) during `ntkbench.run` asks for it (in
            the main thread; a second Ctrl-C raises KeyboardInterrupt at once).
        heartbeat: called before and after every compiled call, with `(pack_id, chunk index,
            "start" | "end")`; a watchdog uses it to detect a chunk that never ends.
    """

    log: Callable[[str], None] | None = None
    progress: Callable[[Progress], None] | bool = True
    should_stop: Callable[[], bool] | None = None
    heartbeat: Callable[[int, int, str], None] = lambda pack_id, chunk, what: None

    def __post_init__(self):
        if self.progress is True:
            self.progress = ProgressDisplay("auto")
        elif self.progress is False or self.progress is None:
            self.progress = _nothing
        if self.log is None:
            self.log = getattr(self.progress, "log", logger.info)

    @classmethod
    def quiet(cls, **overrides) -> Hooks:
        """Hooks that show nothing (no progress, no messages); `overrides` set other fields."""
        return cls(**{"log": lambda message: None, "progress": False, **overrides})

    def close(self) -> None:
        """Close the progress display (its last bar)."""
        close = getattr(self.progress, "close", None)
        if close is not None:
            close()


@dataclasses.dataclass
class PackContext:
    """Everything `train_pack` needs that is the same for all packs of a sweep."""

    config: SweepConfig
    builder: PackBuilder  # what the packs share (data, family, recorder, program, placement)
    workdir: Workdir
    store: ResultsStore
    writes_share_cores: bool  # training runs on the host's CPUs, like the background writes
    hooks: Hooks
    primary: bool  # process 0 writes status files
    stop: Callable[[], bool]  # should_stop, agreed across processes
    sync: Callable[[str], None]  # a barrier across processes
    total: int  # member-epochs of this run's packs
    runtime_id: str = ""  # the runtime computing the records (`Runtime.describe()["id"]`)
    eta: Eta | None = None  # the time left, each pack weighted by its cost
    live: LiveCurves | None = None  # TensorBoard / W&B curves (process 0 writes them)
    gather: bool = False  # live curves of several processes: every one gathers, 0 writes
    done: int = 0  # member-epochs done, including skipped and restored ones
    trained: int = 0  # member-epochs trained by this run
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def status(self, pack_id: int, **fields) -> None:
        if self.primary:
            self.workdir.write_status(pack_id, **fields)


def _write(ctx: PackContext, indices, start: int, out, diverged, last: int, num_real: int):
    """This process's member rows of the records `out` (name -> (T, m)), then commit them."""
    for rows, values in Placement.local_rows(out, 1, num_real):
        ctx.store.write_records([indices[j] for j in rows], start, values)
    for rows, div in Placement.local_rows(diverged, 0, num_real):
        ctx.store.commit([indices[j] for j in rows], last, div)


def _write_members(ctx: PackContext, indices, values: dict, num_real: int):
    for rows, vals in Placement.local_rows(values, 0, num_real):
        ids = [indices[j] for j in rows]
        committed = [ctx.store.last_record(i) >= ctx.config.epochs for i in ids]
        snaps = {k: vals.pop(k) for k in list(vals) if k.startswith("snapshot_")}
        ctx.store.write_members(ids, vals, committed=committed)
        for name, mats in snaps.items():
            ctx.store.write_snapshot(ids, name.removeprefix("snapshot_"), mats,
                                     committed=committed)


def _everyone(tree):
    """The whole of `tree` (every member, whichever process holds it) as host arrays."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def _live(ctx: PackContext, start: int, values: dict, num_real: int, axis: int) -> None:
    """Records from `start` of the pack's real members (member axis `axis`) to the live
    curves; with several processes each one takes part in the gather, process 0 writes."""
    if ctx.live is None and not ctx.gather:
        return
    host = _everyone(values) if ctx.gather else jax.tree.map(np.asarray, values)
    if ctx.live is not None:
        ctx.live.write(start, {k: np.take(v, np.arange(num_real), axis=axis)
                               for k, v in host.items()})


def _report(ctx: PackContext, pack: Pack, i: int, n: int, epoch: int, phase: str) -> None:
    rate = ctx.trained / max(time.perf_counter() - ctx.start, 1e-9)
    eta, per_epoch, first = ctx.eta, None, False
    if eta is not None and phase == "train":
        steady = eta.steady.get(pack.pack_id)
        if steady and steady[1]:
            per_epoch = steady[0] / steady[1]
        elif pack.pack_id in eta.first:
            seconds, epochs = eta.first[pack.pack_id]
            per_epoch, first = seconds / max(epochs, 1), True
    ctx.hooks.progress(Progress(
        pack.pack_id, i, n, pack.num_members, pack.padded_width, epoch, ctx.config.epochs,
        ctx.done, ctx.total, rate, phase,
        seconds_left=None if eta is None else eta.seconds_left(),
        pack_epochs_per_second=1.0 / per_epoch if per_epoch else 0.0, first_chunk=first))


def train_pack(ctx: PackContext, pack: Pack, i: int, n: int) -> None:
    """Train `pack` (the `i`-th of this run's `n` packs) to the end, or raise `Interrupted`."""
    cfg = ctx.config
    status = ctx.workdir.read_status(pack.pack_id)
    if status.get("unreadable"):
        ctx.hooks.log(f"pack {pack.pack_id}: its status file {ctx.workdir.status_path(pack.pack_id)} "
                      "is unreadable; the pack continues from its newest readable checkpoint "
                      "(or from scratch), and the records it rewrites are checked bit for bit "
                      "against the stored ones")
    if status.get("status") == "done":
        ctx.done += pack.num_members * cfg.epochs
        if ctx.eta is not None:
            ctx.eta.resumed(pack.pack_id, cfg.epochs)
        _report(ctx, pack, i, n, cfg.epochs, "skip")
        return
    t_pack = time.perf_counter()
    _report(ctx, pack, i, n, status.get("epochs_done", 0), "compile")
    ready = ctx.builder.build(pack)
    slotted, data, state = ready.slots, ready.data, ready.state
    recorder = ctx.builder.recorder
    indices = [m.index for m in pack.members]
    real = pack.num_members
    ckpt_dir = ctx.workdir.checkpoints(pack.pack_id)
    with PackCheckpointer(ckpt_dir, max_to_keep=2, save_every_epochs=cfg.checkpoint_every_epochs,
                          save_every_minutes=cfg.checkpoint_every_minutes,
                          max_overhead=cfg.checkpoint_max_overhead,
                          count_background=ctx.writes_share_cores) as ckpt:
        if 0 < cfg.checkpoint_every_epochs < cfg.epochs:
            # Saves by epoch are coming: compile their fingerprints while the pack trains (a
            # save by time alone, in a long run, compiles them when it comes: once per pack).
            ckpt.prepare(state)
        found = _restore(ctx, ckpt, pack, state)
        epoch = 0
        if found is None and recorder is not None and recorder.snapshots:
            _write_members(ctx, indices, {"snapshot_init": data.record.ntk0[:, 0]}, real)
        if found is not None:
            epoch, state = found
            ctx.done += real * epoch
            if ctx.eta is not None:
                ctx.eta.resumed(pack.pack_id, epoch)
            ctx.hooks.log(f"pack {pack.pack_id}: resuming from the checkpoint at epoch {epoch}")
        schedule = minibatch_schedule(cfg, slotted)
        if schedule is not None:
            schedule.seek(epoch)  # the order is a function of (member, epoch): no state
        ctx.status(pack.pack_id, status="running", started=status.get("started", time.time()),
                   epochs_done=epoch,
                   runtimes=_runtimes(status.get("runtimes"), epoch, ctx.runtime_id))
        if ctx.live is not None:
            ctx.live.open_pack(pack.members, epoch)
        state, saves, chunk = _train_chunks(ctx, ckpt, pack, i, n, data, state, epoch, schedule,
                                            indices, t_pack)
        _finish_pack(ctx, ckpt, pack, data, state, indices, chunk, saves)
        if ctx.live is not None:
            ctx.live.close_pack()
    ctx.sync(f"ntkbench-pack-{pack.pack_id}-done")
    if ctx.primary:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the results are complete: free the disk
    ctx.status(pack.pack_id, status="done", finished=time.time(), epochs_done=cfg.epochs,
               seconds=time.perf_counter() - t_pack, repair=None)
    _report(ctx, pack, i, n, cfg.epochs, "done")


def _runtimes(ranges, epoch: int, runtime_id: str) -> list:
    """Which runtime computed which records of a pack: `[[first epoch, runtime id], ...]`,
    continued from `epoch` by `runtime_id` (records from `epoch` on are computed again)."""
    kept = [r for r in (ranges or []) if isinstance(r, list) and len(r) == 2 and r[0] < epoch]
    if not kept or kept[-1][1] != runtime_id:
        kept.append([epoch, runtime_id])
    return kept


def _train_chunks(ctx: PackContext, ckpt, pack: Pack, i: int, n: int, data, state, epoch: int,
                  schedule, indices, t_pack: float):
    """Train `pack` (the `i`-th of `n`) from `epoch` to the last epoch chunk by chunk, writing
    and committing each chunk's records, checkpointing when due and reporting progress. On a
    stop request the state is checkpointed and `Interrupted` raised. `t_pack`: when the pack
    started (its first chunk's time includes building it and compiling).

    Returns:
        `(state, saves, chunk)`: the trained state, checkpoints written, chunks run.
    """
    cfg, real = ctx.config, pack.num_members
    saves, chunk = 0, 0
    while epoch < cfg.epochs:
        steps = min(cfg.chunk_epochs - epoch % cfg.chunk_epochs, cfg.epochs - epoch)
        batches = None
        if schedule is not None:  # member axis first, placed like the members
            batches = ctx.builder.placement.members(np.swapaxes(schedule.next_chunk(steps), 0, 1))
        ctx.hooks.heartbeat(pack.pack_id, chunk, "start")
        t_chunk = t_pack if chunk == 0 else time.perf_counter()
        state, out = ctx.builder.program.train_chunk(data, state, steps, batches)
        out = jax.block_until_ready(out)
        if ctx.eta is not None:
            ctx.eta.chunk(pack.pack_id, steps, time.perf_counter() - t_chunk, first=chunk == 0)
        ctx.hooks.heartbeat(pack.pack_id, chunk, "end")
        _write(ctx, indices, epoch, out, state.diverged, epoch + steps - 1, real)
        _live(ctx, epoch, out, real, axis=1)
        epoch += steps
        chunk += 1
        ctx.done += real * steps
        ctx.trained += real * steps
        stop = ctx.stop()
        if ckpt.should_save(epoch, force=stop):
            ckpt.save(epoch, state)
            saves += 1
            ctx.status(pack.pack_id, last_checkpoint_epoch=epoch,
                       last_checkpoint_time=time.time())
        ctx.status(pack.pack_id, epochs_done=epoch)
        _report(ctx, pack, i, n, epoch, "train")
        if stop:
            ckpt.wait()
            ctx.status(pack.pack_id, status="interrupted")
            raise Interrupted(f"interrupted at epoch {epoch} of pack {pack.pack_id}; the "
                              "checkpoint is written. Rerun the same command to resume (in "
                              "Python: ntkbench.run with the same config and workdir).")
    return state, saves, chunk


def _finish_pack(ctx: PackContext, ckpt, pack: Pack, data, state, indices, chunk: int,
                 saves: int) -> None:
    """The final records and the member results (`k*`, the quantities at `k*`, snapshots),
    written and committed; then the last checkpoint is waited for and its cost logged."""
    cfg, real = ctx.config, pack.num_members
    ctx.hooks.heartbeat(pack.pack_id, chunk, "start")
    final, members, snaps = jax.block_until_ready(ctx.builder.program.finish(data, state))
    ctx.hooks.heartbeat(pack.pack_id, chunk, "end")
    for rows, values in Placement.local_rows(final, 0, real):
        ctx.store.write_records([indices[j] for j in rows], cfg.epochs,
                                {k: v[None] for k, v in values.items()})
    _live(ctx, cfg.epochs, final, real, axis=0)
    _write_members(ctx, indices, {**members, **{f"snapshot_{k}": v for k, v in
                                                 snaps.items()}}, real)
    for rows, div in Placement.local_rows(state.diverged, 0, real):
        ctx.store.commit([indices[j] for j in rows], cfg.epochs, div)
    ckpt.wait()
    if saves or ckpt.postponed:
        skipped = (f"; {ckpt.postponed} skipped (the previous one was still being written, or "
                   "the checkpoint_max_overhead budget was spent)" if ckpt.postponed else "")
        ctx.hooks.log(f"pack {pack.pack_id}: {saves} checkpoint(s) written; they held training "
                      f"up {ckpt.blocked_seconds:.2f}s and took {ckpt.background_seconds:.2f}s "
                      f"in the background{skipped}")


def _restore(ctx: PackContext, ckpt, pack: Pack, state):
    """`(epoch, state)` from the newest readable checkpoint, or None to start from scratch.

    When every checkpoint of the pack is unreadable, they are moved aside and the pack restarts
    from epoch 0 (logged); its stored records are then checked bit for bit as it rewrites them.
    """
    try:
        found = ckpt.restore_latest(state)
    except CheckpointCorruptError as e:
        ckpt.discard_all()
        ctx.hooks.log(f"pack {pack.pack_id}: no checkpoint could be restored ({e}); they were "
                      "moved aside and the pack restarts from epoch 0 (its stored records are "
                      "checked as they are rewritten)")
        return None
    except CheckpointMismatchError as e:
        if not ctx.store.relaxed:  # the runtime is the sweep's: the state should fit
            raise IntegrityError(f"pack {pack.pack_id}: its checkpoint does not fit this run's "
                                 f"state ({str(e).split(' (')[0]}); finish the sweep with the "
                                 "ntkbench version that wrote it, or use a new workdir.") from None
        ckpt.discard_all()
        ctx.hooks.log(f"pack {pack.pack_id}: its checkpoints hold the state of the previous "
                      "runtime (another device count lays members out differently); they were "
                      "moved aside and the pack restarts from epoch 0 on this runtime")
        return None
    return None if found is None else found[:2]
