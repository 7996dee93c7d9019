"""`ntkbench report` (one sweep, or several side by side) and `ntkbench calibrate`."""

from __future__ import annotations

import os

from absl import flags, logging

import ntkbench
from ntkbench.launchers._config_file import UsageError, define_config, parse, strip_config
from ntkbench.launchers._progress import ProgressDisplay
from ntkbench.launchers._watch import StopFlag


def _define_report(fv) -> None:
    flags.DEFINE_multi_string("workdir", None, "Sweep directory; repeat it to draw several "
                              "sweeps side by side.", flag_values=fv)
    flags.DEFINE_string("out", None, "Output directory (default WORKDIR/report, or "
                        "WORKDIR/compare for several).", flag_values=fv)
    flags.DEFINE_bool("allow_partial", False, "Report a sweep with unfinished members: fits use "
                      "the complete members only, and the report lists the others.",
                      flag_values=fv)


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
    if len(datasets) == 1:
        out = fv.out or os.path.join(fv.workdir[0], "report")
        paths = ntkbench.write_report(datasets[0], out, allow_partial=fv.allow_partial)
    else:
        out = fv.out or os.path.join(fv.workdir[0], "compare")
        paths = ntkbench.write_comparison(datasets, out, allow_partial=fv.allow_partial)
    for p in paths:
        print(p)
    return 0


def _define_calibrate(fv) -> None:
    flags.DEFINE_list("lrs", None, "Learning rates to try, e.g. 1e-4,3e-4,1e-3,3e-3.",
                      flag_values=fv)
    flags.DEFINE_integer("seeds", 2, "Seeds per pilot point (narrowest and widest width of "
                         "each depth).", flag_values=fv)
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
    display = ProgressDisplay("auto", log=logging.info)
    hooks = ntkbench.Hooks(log=display.log, progress=display, should_stop=StopFlag())
    try:
        result = ntkbench.calibrate(config, lrs=lrs, num_seeds=fv.seeds, window=window,
                                 workdir=workdir, hooks=hooks, model_fn=holder["model_fn"])
    finally:
        display.close()
    print(result.format())
    return 0
