"""`ntkbench report` (one sweep, or several side by side) and `ntkbench calibrate`."""

from __future__ import annotations

import os
import re

from absl import flags, logging

import ntkbench
from ntkbench.launchers._config_file import (
    UsageError,
    config_arg,
    define_config,
    parse,
    strip_config,
)
from ntkbench.launchers._watch import StopFlag


def _define_report(fv) -> None:
    flags.DEFINE_multi_string("workdir", None, "Sweep directory; repeat it to draw several "
                              "sweeps side by side.", flag_values=fv)
    flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/report for one sweep; "
                        "./compare-<workdir names> for several, beside neither sweep).",
                        flag_values=fv)
    flags.DEFINE_bool("allow_partial", False, "Report a sweep with unfinished members: fits use "
                      "the complete members only, and the report lists the others.",
                      flag_values=fv)
    flags.DEFINE_bool("include_flagged", False, "Fit the sweep points whose k* is at the last "
                      "epoch or outside the window too (by default they are drawn hollow and "
                      "left out of every fit).", flag_values=fv)
    flags.DEFINE_list("kstar_window", None, "LO,HI: the epochs where k* should land (default "
                      "0.4*epochs,epochs).", flag_values=fv)


def report(argv: list[str]) -> int:
    fv = parse(argv, _define_report)
    if not fv.workdir:
        raise UsageError("--workdir is required, e.g. --workdir=runs/quick.")
    datasets = []
    for w in fv.workdir:
        try:
            datasets.append(ntkbench.load(w))
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
    window = None
    if fv.kstar_window:
        window = _numbers(fv.kstar_window, "kstar_window", "400,1000")
        if len(window) != 2 or not window[0] < window[1]:
            raise UsageError(f"--kstar_window={','.join(fv.kstar_window)} must be two epochs "
                             "LO,HI with LO < HI, e.g. --kstar_window=400,1000.")
    kw = dict(allow_partial=fv.allow_partial, include_flagged=fv.include_flagged,
              kstar_window=None if window is None else tuple(window))
    out = fv.out or (os.path.join(fv.workdir[0], "report") if len(datasets) == 1
                     else compare_dir(fv.workdir))
    try:
        if len(datasets) == 1:
            paths = ntkbench.write_report(datasets[0], out, **kw)
        else:
            paths = ntkbench.write_comparison(datasets, out, **kw)
    except OSError as e:
        if isinstance(e, ntkbench.NtkbenchError):
            raise
        error = ntkbench.StorageError.of(out, e)
        raise ntkbench.StorageError(f"{str(error).rstrip('.')}; or write the report elsewhere "
                                    "with --out=DIR.") from None
    if len(datasets) > 1:
        differences = ntkbench.sweep_differences(datasets)
        print("What differs between the sweeps (besides their sweep points):")
        print("\n".join(f"  {d}" for d in differences) if differences else "  nothing")
    print(f"wrote {len(paths)} files to {os.path.abspath(out)}:")
    for p in paths:
        print(f"  {p.name}")
    return 0


def compare_dir(workdirs: list[str]) -> str:
    """`compare-<name>-<name>...` in the current directory, from the workdirs' folder names.

    Not inside the first sweep's workdir: a comparison belongs to no one sweep (it would be
    lost with that workdir, or written into a sweep someone else owns or that is read-only).
    """
    names = [re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(w)))
             for w in workdirs]
    name = "compare-" + "-".join(names)
    if len(name) > 80:
        name = f"compare-{names[0]}-and-{len(names) - 1}-more"
    return name


def _define_calibrate(fv) -> None:
    flags.DEFINE_list("lrs", None, "Learning rates to try, e.g. 1e-4,3e-4,1e-3,3e-3.",
                      flag_values=fv)
    flags.DEFINE_integer("seeds", 2, "Seeds per pilot point (every point of the sweep is "
                         "piloted).", flag_values=fv)
    flags.DEFINE_list("by", None, "Axes the learning rate may vary with (default: the sweep's "
                      "varying axes among depth, width, n_train, noise); 'none' for one lr.",
                      flag_values=fv)
    flags.DEFINE_bool("verify", False, "Also run the proposed per-point table and report "
                      "where its k* lands.", flag_values=fv)
    flags.DEFINE_string("out", None, "Write the proposal as a config file (the --config given, "
                        "with its lr_by and lr_table) to this .py path, for `ntkbench run "
                        "--config=PATH`.", flag_values=fv)
    flags.DEFINE_list("window", None, "LO,HI: the epochs where k* should land (default "
                      "0.4*epochs,epochs).", flag_values=fv)
    flags.DEFINE_string("workdir", None, "Parent directory of the pilots, one sweep per lr in "
                        "WORKDIR/lr_<value> (default runs/calibrate-<config name>).",
                        flag_values=fv)


def _numbers(values: list[str], flag: str, example: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise UsageError(f"--{flag}={','.join(values)} must be numbers separated by commas, "
                         f"e.g. --{flag}={example}.") from None


def calibrate(argv: list[str]) -> int:
    """`ntkbench calibrate --config=quick --lrs=1e-4,3e-4,1e-3 [--seeds=2] [--window=LO,HI]
    [--workdir=DIR]`: where k* lands per lr and width, and the largest lr that puts it in the
    window (`ntkbench.calibrate`)."""
    holder = {}

    def define(fv):
        holder["model_fn"] = define_config(fv, argv)
        _define_calibrate(fv)

    fv = parse(strip_config(argv), define)
    with fv.config.unlocked():  # the pilots set the learning rate: a preset's table is moot
        fv.config.lr_by, fv.config.lr_table = "", ""
    try:
        config = ntkbench.from_config_dict(fv.config)
    except ntkbench.ConfigError as e:
        raise UsageError(str(e)) from None
    if not fv.lrs:
        raise UsageError("--lrs is required, e.g. --lrs=1e-4,3e-4,1e-3,3e-3.")
    lrs = _numbers(fv.lrs, "lrs", "1e-4,3e-4,1e-3,3e-3")
    window = None
    if fv.window:
        window = _numbers(fv.window, "window", f"{0.4 * config.epochs:g},{config.epochs}")
        if len(window) != 2:
            raise UsageError(f"--window={','.join(fv.window)} must be two epochs LO,HI, e.g. "
                             f"--window={0.4 * config.epochs:g},{config.epochs}.")
    workdir = fv.workdir or os.path.join("runs", f"calibrate-{config.name}")
    by = None if fv.by is None else tuple(a for a in fv.by if a != "none")
    if fv.out and not fv.out.endswith(".py"):
        raise UsageError(f"--out={fv.out} must be a .py path (a config file), e.g. "
                         f"--out=configs/{config.name}_calibrated.py.")
    display = ntkbench.ProgressDisplay("auto", log=logging.info)
    hooks = ntkbench.Hooks(log=display.log, progress=display, should_stop=StopFlag())
    try:
        result = ntkbench.calibrate(config, lrs=lrs, num_seeds=fv.seeds, window=window, by=by,
                                    verify=fv.verify, workdir=workdir, hooks=hooks,
                                    model_fn=holder["model_fn"])
    finally:
        display.close()
    print(result.format())
    if fv.out and result.proposals:
        _write_config(fv.out, config_arg(argv), result)
        print(f"wrote {fv.out}: run it with `ntkbench run --config={fv.out} --workdir=...`")
    return 0

def _write_config(path: str, base: str, cal) -> None:
    """A config file: the preset or config file `base` with the calibrated lr table."""
    if base.endswith(".py"):
        header = ("import importlib.util\n\n\n"
                  "def _base():\n"
                  f"    spec = importlib.util.spec_from_file_location('base', {os.path.abspath(base)!r})\n"
                  "    module = importlib.util.module_from_spec(spec)\n"
                  "    spec.loader.exec_module(module)\n"
                  "    return module.get_config()\n")
    else:
        header = ("import ntkbench\n\n\n"
                  "def _base():\n"
                  f"    return ntkbench.get_config({base!r})\n")
    unplaced = [f"#   {p.label()}: {p.how}" for p in cal.proposals if not p.placed]
    lines = [
        f'"""{cal.name} with per-point learning rates from `ntkbench calibrate` (k* window',
        f"[{cal.window[0]:g}, {cal.window[1]:g}] of {cal.epochs} epochs; pilots in "
        f'{cal.workdir})."""', "", header, "",
        "# Points the calibration could not place (their rate is the nearest pilot's):",
        *(unplaced or ["#   none"]), "", "",
        "def get_config():",
        "    c = _base()",
        "    with c.unlocked():",
        f"        c.lr_by = {','.join(cal.by)!r}",
        f"        c.lr_table = {cal.table()!r}",
        "    return c", ""]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))
