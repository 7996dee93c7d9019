"""`ntkbench report` (one sweep, or several side by side) and `ntkbench calibrate`."""

from __future__ import annotations

import os

from absl import flags

import ntkbench
from ntkbench.launchers._config_file import UsageError, parse


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
        from ntkbench._compare import write_comparison

        out = fv.out or os.path.join(fv.workdir[0], "compare")
        paths = write_comparison(datasets, out, allow_partial=fv.allow_partial)
    for p in paths:
        print(p)
    return 0


def calibrate(argv: list[str]) -> int:
    raise UsageError("calibrate is not available yet.")
