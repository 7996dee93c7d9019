"""Running a sweep: check, plan, then train every pack and stream its records to the store.

`run` reads like the description of a sweep in README.md: check the request against the
workdir and the data (before anything is compiled or written), plan the packs, write the
manifest, open the results store (repairing damage `verify` finds), then train pack by pack.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time

from ntkbench._config import (
    ConfigError,
    SweepConfig,
    WorkdirError,
    from_config_dict,
    parse_shard,
    storage_guard,
)
from ntkbench._data import check_data, load_dataset
from ntkbench._store import ResultsStore, load_repairs, repair, store_summaries
from ntkbench._sweep.live import LiveCurves, wandb_available
from ntkbench._sweep.progress import Eta
from ntkbench._sweep.runner import Hooks, PackContext, train_pack
from ntkbench._train import (
    ModelFamily,
    PackBuilder,
    Plan,
    Runtime,
    check_fits,
    extend_plan,
    model_family,
    packs_from_json,
    packs_to_json,
    shard_packs,
)
from ntkbench._train import plan as plan_packs
from ntkbench._workdir import Workdir, check_data_fingerprint, known_fingerprints


@dataclasses.dataclass(frozen=True)
class SweepResult:
    workdir: str
    plan: Plan
    seconds: float
    member_epochs: int  # trained by this call (not skipped or restored)


def plan_sweep(config: SweepConfig, family: ModelFamily, manifest: dict | None,
               num_devices: int) -> tuple[Plan, int]:
    """The manifest's plan plus packs for members it does not cover yet: `(plan, #old packs)`."""
    if manifest is None or not manifest.get("packs"):
        return plan_packs(config, family, num_devices=num_devices), 0
    old = packs_from_json(config, manifest["packs"])
    return extend_plan(config, family, old, num_devices=num_devices), len(old)


def _manifest(config, plan, num_old, previous, fingerprint, num_devices, described,
              change) -> dict:
    history = [] if previous is None else list(previous.get("history", []))
    if previous is not None and num_old < len(plan.packs):
        added = plan.packs[num_old:]
        history.append({"extended": time.time(), "from_fingerprint": previous.get("fingerprint"),
                        "added_packs": [p.pack_id for p in added],
                        "added_members": sum(p.num_members for p in added)})
    if change is not None:
        history.append(change)
    # `num_devices` is the device count the plan was made for: kept for the sweep's life (the
    # runtime now is in `runtime`, and a change of it in `history`).
    if previous is not None and previous.get("num_devices"):
        num_devices = previous["num_devices"]
    return {"config": config.to_dict(), "fingerprint": config.fingerprint(), "data": fingerprint,
            "efficiency": plan.efficiency, "num_devices": num_devices,
            "packs": packs_to_json(plan.packs), "history": history, "runtime": described}


def _trained(wd: Workdir, manifest: dict) -> bool:
    """Whether any pack of the sweep has started (it may have committed records)."""
    for p in manifest.get("packs", []):
        st = wd.read_status(int(p["pack_id"]))
        if (st.get("status", "pending") != "pending" or st.get("epochs_done") or
                st.get("runtimes") or st.get("repair") or st.get("unreadable")):
            return True
    return False


def check_runtime(wd: Workdir, previous: dict | None, now: dict, *, allow: bool
                  ) -> dict | None:
    """Refuse to continue a sweep on a runtime that need not reproduce its records.

    Returns:
        None when the runtime is the recorded one (or nothing was trained yet), else, when
        `allow`, the change as the manifest's history records it.

    Raises:
        WorkdirError: the runtime differs (`option="allow_runtime_change"`).
    """
    if previous is None:
        return None
    recorded = previous.get("runtime")
    if recorded is None:  # a manifest from before runtimes were recorded
        recorded = ({"num_devices": previous["num_devices"]} if previous.get("num_devices")
                    else {})
    diff = {k: (v, now.get(k)) for k, v in recorded.items() if k != "id" and v != now.get(k)}
    if not diff or not _trained(wd, previous):
        return None
    if not allow:
        listing = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise WorkdirError(
            f"{wd.path} holds records computed on another runtime ({listing}); continuing "
            "there would mix results that this runtime does not reproduce bit for bit. Rerun "
            "with the sweep's runtime (its devices, device count, flags and versions), or "
            "allow the change, which the manifest's history and the results' attributes "
            "then record.", option="allow_runtime_change")
    return {"runtime_changed": time.time(), "from": recorded, "to": now,
            "changed": sorted(diff)}


def pack_costs(config: SweepConfig, family: ModelFamily, packs, *, num_devices: int,
               num_eval: int) -> dict[int, float]:
    """Estimated cost of one epoch of each pack (FLOPs; only ratios matter): its padded
    members (rounded up to the devices) x the model's forward FLOPs per example at the padded
    width x the examples of an epoch (a training step costs about 3 forward passes; the
    evaluation adds `num_eval` examples every `eval_every` epochs)."""
    evaluated = num_eval / max(config.eval_every, 1)
    return {p.pack_id: math.ceil(p.num_members / num_devices) * num_devices
            * family.flops_per_example(p.padded_width, p.depth)
            * (3 * p.padded_n_train + evaluated) for p in packs}


@contextlib.contextmanager
def ctrl_c_stops(log):
    """While the run lasts, the first Ctrl-C (SIGINT) asks it to stop at the next chunk
    boundary with a checkpoint (`Interrupted` is raised then) instead of raising
    KeyboardInterrupt inside JAX, Orbax or Tensorstore (which can leave the process unable to
    exit); a second one raises KeyboardInterrupt at once. Only the main thread receives
    signals: elsewhere nothing changes. Yields the `should_stop` poll."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    asked = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def handle(signum, frame):
        if asked.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        asked.set()
        log("Ctrl-C: stopping at the next chunk boundary with a checkpoint (then "
            "ntkbench.Interrupted is raised; running the sweep again resumes it); press Ctrl-C "
            "again to interrupt at once (the last checkpoint is kept).")

    signal.signal(signal.SIGINT, handle)
    try:
        yield asked.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def run(config, workdir: str, *, runtime: Runtime | None = None, hooks: Hooks | None = None,
        shard=None, extend: bool = False, model_fn=None,
        allow_runtime_change: bool = False, tensorboard: bool = True,
        wandb_project: str | None = None) -> SweepResult:
    """Train every member of a sweep (or of share `shard` of its packs), recording its losses
    and NTK quantities in `workdir`.

    Resumable: done packs are skipped, started ones continue from their latest readable
    checkpoint, and records that are rewritten must reproduce the stored bits.

    Example:
        >>> config = ntkbench.SweepConfig(widths=(8, 64), num_seeds=2, epochs=20)
        >>> ntkbench.run(config, "runs/tiny")  # doctest: +SKIP

    Args:
        config: a `SweepConfig`, or a preset's `ConfigDict` (validated here).
        workdir: directory for the manifest, checkpoints and results.
        runtime: devices, mesh and runtime choices (`Runtime.local()` by default). With several
            processes, every process calls `run_sweep` with the same arguments.
        hooks: progress, logging, stop requests and heartbeats (see `Hooks`); by default a
            progress bar (a notebook's, a terminal's) or log lines, and Ctrl-C stops the run
            at the next chunk boundary (`Interrupted`). `Hooks.quiet()` shows nothing.
        shard: `"I/N"`: train only share I of N of the packs (independent jobs on one workdir).
        extend: `config` may add members to the sweep in `workdir` (more widths, seeds, ...);
            finished members are left exactly as they are.
        model_fn: the constructor of `model="custom"` members (docs/models.md).
        allow_runtime_change: continue a sweep whose records were computed on another
            runtime (devices, device count, x64, XLA flags, versions: `Runtime.describe`).
            Refused by default, since the records would mix numerics; when allowed, the change
            is recorded in the manifest's history, the results' attributes and each pack's
            status (`runtimes`: from which epoch which runtime computed its records).
        tensorboard: write every member's curves (losses, accuracies, NTK quantities) as they
            are recorded to TensorBoard event files in `workdir/tensorboard/` (one run per
            member; `tensorboard --logdir workdir` shows them).
        wandb_project: also log them to this Weights & Biases project (needs the `wandb`
            package, >= 0.19.10).

    Returns:
        A `SweepResult`; load the numbers with `ntkbench.load(workdir)`.

    Raises:
        Interrupted: a stop was asked for (Ctrl-C, `hooks.should_stop`); the checkpoint is
            written, and running the same sweep again resumes it.
    """
    hooks = Hooks() if hooks is None else hooks
    if wandb_project and not wandb_available():
        raise ConfigError(f"wandb_project={wandb_project!r} needs the wandb package (pip install "
                          "'wandb>=0.19.10'); TensorBoard curves need nothing more.")
    live = {"tensorboard": tensorboard, "wandb_project": wandb_project}
    try:
        if hooks.should_stop is not None:
            return _run(config, workdir, runtime, hooks, shard, extend, model_fn, live,
                        allow_runtime_change)
        with ctrl_c_stops(hooks.log) as asked:
            return _run(config, workdir, runtime, dataclasses.replace(hooks, should_stop=asked),
                        shard, extend, model_fn, live, allow_runtime_change)
    finally:
        hooks.close()


def _run(config, workdir, runtime, hooks, shard, extend, model_fn, live,
         allow_runtime_change) -> SweepResult:
    if not isinstance(config, SweepConfig):
        config = from_config_dict(config)
    runtime = Runtime.local() if runtime is None else runtime
    shard = parse_shard(shard)
    wd = Workdir(workdir)
    previous, config = wd.check(config, extend_ok=extend)
    data = load_dataset(config.dataset, config.data_dir or None)
    check_data(config, data)
    fingerprint = data.fingerprint()
    check_data_fingerprint(previous, fingerprint, wd.path)
    family = model_family(config, data, model_fn)
    plan, num_old = plan_sweep(config, family, previous, runtime.num_devices)
    mine = shard_packs(plan, shard)
    check_fits(config, family, runtime, mine,
               data_bytes=data.x_train.nbytes + data.x_test.nbytes)
    described = runtime.describe()
    change = check_runtime(wd, previous, described, allow=allow_runtime_change)
    # Every process has checked the workdir before process 0 writes to it.
    runtime.sync("ntkbench-workdir-checked")
    lock = wd.lock(shard) if runtime.primary else contextlib.nullcontext()
    if runtime.primary:
        wd.check_writable()
    with storage_guard(wd.path), lock:
        known = known_fingerprints(previous) if previous is not None else []
        if runtime.primary:
            with wd.setup_lock():  # shares of one sweep set up one at a time
                manifest = _manifest(config, plan, num_old, previous, fingerprint,
                                     runtime.num_devices, described, change)
                if previous is None or manifest != {k: previous.get(k) for k in manifest}:
                    wd.write_manifest(manifest)  # the plan first: the store grows when opened
                store = ResultsStore(wd.results, config, data.num_classes, fingerprints=known,
                                     log=hooks.log)
                if change is not None:
                    store.add_attributes(ntkbench_runtime_changes=[
                        *store.attributes().get("ntkbench_runtime_changes", []), change])
        runtime.sync("ntkbench-store-created")
        if not runtime.primary:
            store = ResultsStore(wd.results, config, data.num_classes, fingerprints=known)
        if runtime.primary:
            repair(wd, store, config, mine, log=hooks.log)
        runtime.sync("ntkbench-repaired")  # every process sees the repaired pack statuses
        load_repairs(wd, store, mine)
        store.relaxed = change is not None
        hooks.log(_describe(config, data, runtime, plan, mine, num_old, shard))
        builder = PackBuilder(config, runtime=runtime, data=data, family=family, plan=plan)
        num_eval = config.n_eval or len(data.y_test)
        costs = pack_costs(config, family, mine, num_devices=runtime.num_devices,
                           num_eval=num_eval)
        programs = {p.pack_id: (p.depth, p.padded_width, p.padded_n_train, p.num_members)
                    for p in mine}
        on = live["tensorboard"] or bool(live["wandb_project"])
        curves = (LiveCurves(wd.path, config, log=hooks.log, **live)
                  if on and runtime.primary else None)
        ctx = PackContext(
            config=config, builder=builder, workdir=wd, store=store,
            writes_share_cores=runtime.platform == "cpu",
            hooks=hooks, primary=runtime.primary,
            stop=lambda: runtime.agree(hooks.should_stop()), sync=runtime.sync,
            total=sum(p.num_members for p in mine) * config.epochs,
            runtime_id=described["id"],
            eta=Eta(costs, config.epochs, programs, config.chunk_epochs),
            live=curves, gather=on and runtime.num_processes > 1)
        try:
            for i, pack in enumerate(mine):
                train_pack(ctx, pack, i, len(mine))
        finally:
            if curves is not None:
                curves.close()
        if store.replaced:
            hooks.log(f"{store.replaced} committed value(s) recomputed on the new runtime "
                      "differed from the stored ones and were replaced (the runtime change is "
                      "recorded in the manifest's history)")
        if runtime.primary:  # a complete sweep's store also holds its summaries
            store_summaries(wd.path, store)
    return SweepResult(wd.path, plan, time.perf_counter() - ctx.start, ctx.trained)


def _describe(config, data, runtime, plan, mine, num_old, shard) -> str:
    share = (f", share {shard[0]}/{shard[1]}: {len(mine)} of {len(plan.packs)} packs"
             if shard[1] > 1 else "")
    extended = (f"; extended by {len(plan.packs) - num_old} new pack(s)"
                if 0 < num_old < len(plan.packs) else "")
    members = math.prod(config.grid_shape)
    return (f"sweep {config.name!r}: {members} members on {config.dataset} "
            f"({len(data.y_train)} train / {len(data.y_test)} test), {config.epochs} epochs, "
            f"{runtime.num_devices} device(s), {runtime.num_processes} process(es){share}"
            f"{extended}\n{plan.describe()}")
