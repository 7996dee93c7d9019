"""The commands of the `ntkbench` command line (see `ntkbench.launchers.cli`)."""

from __future__ import annotations

import math
import os
import sys

from absl import flags, logging

import ntkbench
from ntkbench.launchers._config_file import (
    UsageError,
    define_config,
    format_fields,
    parse,
    preset_or_file,
    strip_config,
)
from ntkbench.launchers._devices import define_runtime_flags, init_runtime
from ntkbench.launchers._profile_cmd import coordcheck, profile
from ntkbench.launchers._report_cmd import calibrate, report
from ntkbench.launchers._tables import status_table, summary_table
from ntkbench.launchers._watch import StopFlag, Watchdog


def _workdir_flag(fv, help_text: str = "Sweep directory.") -> None:
    flags.DEFINE_string("workdir", None, help_text, flag_values=fv)


def _require_workdir(fv) -> str:
    if not fv.workdir:
        raise UsageError("--workdir is required, e.g. --workdir=runs/quick.")
    return fv.workdir


def _config_and_flags(argv: list[str], define_more):
    """`(SweepConfig, model_fn, flags)` of a command that takes `--config`."""
    holder = {}

    def define(fv):
        holder["model_fn"] = define_config(fv, argv)
        define_more(fv)

    fv = parse(strip_config(argv), define)
    try:
        config = ntkbench.from_config_dict(fv.config)
    except ntkbench.ConfigError as e:
        raise UsageError(str(e)) from None
    return config, holder["model_fn"], fv


def _run_flags(fv) -> None:
    _workdir_flag(fv, "Directory for the manifest, checkpoints and results.")
    flags.DEFINE_bool("extend", False, "Add the config's new members (more widths, seeds, ...) "
                      "to the sweep in --workdir; finished members are kept as they are.",
                      flag_values=fv)
    flags.DEFINE_string("shard", None, "I/N: run only share I of N of the packs (job arrays).",
                        flag_values=fv)
    flags.DEFINE_float("watchdog_seconds", 1800.0, "A pack's first chunk (compiling included) "
                       "that has not returned after this many seconds ends the run (status "
                       "70); later chunks get watchdog_factor x the slowest one (at least 120 "
                       "s). 0 disables the watchdog.", flag_values=fv)
    flags.DEFINE_float("watchdog_factor", 10.0, "See --watchdog_seconds.", flag_values=fv)
    flags.DEFINE_enum("progress", "auto", ["auto", "bar", "log", "none"], "Progress display: a "
                      "bar per pack on a terminal, log lines elsewhere.", flag_values=fv)
    flags.DEFINE_bool("tensorboard", True, "Write every member's losses, accuracies and NTK "
                      "quantities as they are recorded to TensorBoard event files in "
                      "WORKDIR/tensorboard/ (one run per member): `tensorboard --logdir runs/`.",
                      flag_values=fv)
    flags.DEFINE_string("wandb_project", None, "Also log the curves to this Weights & Biases "
                        "project (one run per member, grouped by the sweep's name; needs the "
                        "wandb package).", flag_values=fv)
    flags.DEFINE_string("trace_dir", None, "Write a jax.profiler trace of one chunk (the "
                        "second of the first pack trained, or its first) to this directory "
                        "(Perfetto / TensorBoard).", flag_values=fv)
    flags.DEFINE_bool("allow_runtime_change", False, "Continue a sweep whose records were "
                      "computed on another runtime (device count, x64, XLA flags, versions); "
                      "refused by default since its records would mix numerics. The change is "
                      "recorded in the manifest and the results.", flag_values=fv)
    define_runtime_flags(fv)


def _check_watchdog(fv) -> None:
    """Bad watchdog values are bad input, found before anything starts."""
    if not (math.isfinite(fv.watchdog_seconds) and fv.watchdog_seconds >= 0):
        raise UsageError(f"--watchdog_seconds={fv.watchdog_seconds} must be a number of seconds "
                         ">= 0 (0 disables the watchdog), e.g. --watchdog_seconds=1800.")
    if not (math.isfinite(fv.watchdog_factor) and fv.watchdog_factor > 0):
        raise UsageError(f"--watchdog_factor={fv.watchdog_factor} must be a positive number, "
                         "e.g. --watchdog_factor=10.")


def _trace_hook(trace_dir: str | None, chunk_to_trace: int):
    """A heartbeat that writes a `jax.profiler` trace of one chunk."""
    state = {"done": trace_dir is None, "on": False}

    def beat(pack_id, chunk, what):
        import jax

        if state["done"]:
            return
        if what == "start" and chunk == chunk_to_trace and not state["on"]:
            jax.profiler.start_trace(trace_dir)
            state["on"] = True
        elif what == "end" and state["on"]:
            jax.profiler.stop_trace()
            state.update(on=False, done=True)
            logging.info("wrote a profiler trace of pack %d chunk %d to %s", pack_id, chunk,
                         trace_dir)

    return beat


def cmd_run(argv: list[str]) -> int:
    config, model_fn, fv = _config_and_flags(argv, _run_flags)
    workdir = _require_workdir(fv)
    try:
        ntkbench.parse_shard(fv.shard)  # bad input fails before JAX starts
    except ntkbench.ConfigError as e:
        raise UsageError(str(e)) from None
    _check_watchdog(fv)
    runtime = init_runtime(fv)
    display = ntkbench.ProgressDisplay(fv.progress, log=logging.info)
    watchdog = Watchdog(fv.watchdog_seconds, fv.watchdog_factor) if fv.watchdog_seconds else None
    trace = _trace_hook(fv.trace_dir, 1 if config.epochs > config.chunk_epochs else 0)

    def heartbeat(pack_id, chunk, what):
        trace(pack_id, chunk, what)
        if watchdog is not None:
            watchdog.heartbeat(pack_id, chunk, what)

    hooks = ntkbench.Hooks(log=display.log, progress=display, should_stop=StopFlag(),
                           heartbeat=heartbeat)
    try:
        outcome = ntkbench.run(config, workdir, runtime=runtime, hooks=hooks, shard=fv.shard,
                               extend=fv.extend, model_fn=model_fn,
                               allow_runtime_change=fv.allow_runtime_change,
                               tensorboard=fv.tensorboard, wandb_project=fv.wandb_project)
    finally:
        display.close()
        if watchdog is not None:
            watchdog.close()
    if not runtime.primary:
        return 0
    ds = ntkbench.load(workdir, summaries=False)
    print(summary_table(ds))
    rate = (f" ({outcome.member_epochs / max(outcome.seconds, 1e-9):,.0f}/s)"
            if outcome.member_epochs else " (everything was already done)")
    print(f"{outcome.member_epochs:,} member-epochs trained in {outcome.seconds:.1f}s{rate}; "
          f"padding efficiency {outcome.plan.efficiency:.1%}; results in "
          f"{os.path.join(os.path.abspath(workdir), 'results')} (ntkbench.load)")
    return 0


def cmd_status(argv: list[str]) -> int:
    fv = parse(argv, _workdir_flag)
    try:
        status = ntkbench.sweep_status(_require_workdir(fv))
    except ntkbench.WorkdirError as e:
        raise UsageError(str(e)) from None
    print(status_table(status))
    return 0


def cmd_verify(argv: list[str]) -> int:
    fv = parse(argv, _workdir_flag)
    workdir = _require_workdir(fv)
    try:
        damage = ntkbench.verify(workdir)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    if not damage:
        print(f"{workdir}: {damage.describe()}.")
        return 0
    print(f"ntkbench: error: {damage.describe()}; rerun the sweep's `ntkbench run` command to "
          "repair it (it rebuilds damaged metadata and coordinates from the manifest and "
          "retrains exactly the packs that own lost values).", file=sys.stderr)
    return ntkbench.ExitStatus.INTEGRITY


def cmd_report(argv: list[str]) -> int:
    return report(argv)


def cmd_calibrate(argv: list[str]) -> int:
    return calibrate(argv)


def cmd_profile(argv: list[str]) -> int:
    return profile(argv)


def cmd_coordcheck(argv: list[str]) -> int:
    return coordcheck(argv)


def cmd_presets(argv: list[str]) -> int:
    parse(argv, lambda fv: None)
    for name, fn in ntkbench.PRESETS.items():
        print(f"{name:24s} {fn.__doc__.splitlines()[0]}")
    print("\nfields of a config and their defaults (docs/configuration.md explains each; run "
          "settings never change results; set one with --config.FIELD=VALUE):")
    print(format_fields(ntkbench.SweepConfig().to_dict()))
    return 0


__all__ = ["cmd_calibrate", "cmd_coordcheck", "cmd_presets", "cmd_profile", "cmd_report", "cmd_run",
           "cmd_status", "cmd_verify", "preset_or_file"]
