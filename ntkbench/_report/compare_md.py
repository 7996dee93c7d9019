"""`compare.md`: the sweeps compared, every fit, the points fits left out, and what was skipped."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ntkbench._analysis import sweep_axes
from ntkbench._config import REPLICATE_AXES
from ntkbench._report.compare_figs import fmt


@dataclasses.dataclass(frozen=True)
class FitRow:
    """One fit of one curve: a power-law exponent or a transition width, with its interval."""

    sweep: str  # the sweep's label
    quantity: str  # e.g. "min_test_loss"
    axis: str  # the abscissa, e.g. "width"
    group: str  # the curve's other axes, e.g. "depth=3" ("" when none)
    kind: str  # "power law" (estimate: exponent β) or "transition width" (estimate: w_t)
    estimate: float
    ci_low: float
    ci_high: float
    used: int  # abscissae the fit used
    total: int  # abscissae of the curve
    dropped: list[str]  # the abscissae left out, each with its reason


def _sweep_table(sweeps) -> list[str]:
    lines = [("| sweep | name | dataset | model | axes | members | complete | diverged | "
              "workdir |"), "|---|---|---|---|---|---|---|---|---|"]
    for s in sweeps:
        ds = s.ds
        axes = sweep_axes(ds)
        shown = ", ".join(
            f"{a}: {', '.join(str(v) for v in ds[a].values)}" if a not in REPLICATE_AXES
            and a in ds.coords else f"{a} x{ds.sizes[a]}" for a in axes if ds.sizes[a] > 1)
        members = int(np.prod([ds.sizes[a] for a in axes])) if axes else 1
        diverged = int(np.asarray(ds["diverged"].values).sum()) if "diverged" in ds else 0
        lines.append(f"| {s.label} | {s.attr('name')} | {s.attr('dataset')} | "
                     f"{s.attr('model')} | {shown or 'single point'} | {members} | "
                     f"{members - len(s.incomplete)} | {diverged} | {s.attr('workdir', '-')} |")
    return lines


def _fit_table(rows: list[FitRow], num_bootstrap: int) -> list[str]:
    if not rows:
        return ["None: no figure with fits could be drawn (see Skipped)."]
    lines = [
        ("Power law `y = c·x^β`: least squares in log-log on the replicate means (seeds, data "
         "draws), estimate β. Transition width: continuous two-segment power law in log-log, "
         "estimate the breakpoint w_t. Intervals: 95% bootstrap over replicates "
         f"({num_bootstrap} resamples; n/a without replicates). A transition needs 4 usable "
         "abscissae."), "",
        ("| sweep | quantity | against | group | fit | estimate | 95% CI | points used | "
         "dropped |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        est = f"β = {fmt(r.estimate)}" if r.kind == "power law" else f"w_t = {fmt(r.estimate)}"
        lines.append(f"| {r.sweep} | {r.quantity} | {r.axis} | {r.group or 'all'} | {r.kind} | "
                     f"{est} | [{fmt(r.ci_low)}, {fmt(r.ci_high)}] | {r.used}/{r.total} | "
                     f"{'; '.join(r.dropped) or 'none'} |")
    return lines


def _dropped(rows: list[FitRow]) -> list[str]:
    with_drops = [r for r in rows if r.dropped]
    if not with_drops:
        return ["None: every fit used all its points."]
    lines = [("A fit uses only points whose k* is not flagged and whose replicate mean is finite "
              "(and positive, for a log-log fit); these were left out:"), ""]
    for r in with_drops:
        group = f" ({r.group})" if r.group else ""
        lines.append(f"- {r.sweep}{group}, {r.quantity} against {r.axis} ({r.kind}): "
                     f"{'; '.join(r.dropped)}")
    return lines


def _incomplete(sweeps) -> list[str]:
    lines = []
    for s in sweeps:
        if s.incomplete:
            lines.append(f"- {s.label} ({s.attr('workdir', '-')}): {len(s.incomplete)} "
                         "incomplete member(s), left out of every mean, band and fit:")
            lines += [f"  - {line}" for line in s.incomplete]
    return lines


def _usable(sweeps, include_flagged: bool) -> list[str]:
    """The opening lines: how many points of each sweep the fits use, and the flagged ones."""
    lines = []
    for s in sweeps:
        if s.usable is None:
            continue
        n, ok = int(s.usable.size), int(s.usable.values.sum())
        head = f"- **{s.label}: {ok} of {n} points usable**"
        if ok == n:
            lines.append(head + " (every point's k* inside the window).")
            continue
        what = ("fitted anyway, on request" if include_flagged
                else "drawn hollow, left out of every fit")
        lines.append(head + f"; flagged ({what}):")
        lines += [f"  - {', '.join(f'{a}={v}' for a, v in point)}: {why}"
                  for point, why in (s.reasons or {}).items()]
    return lines


def markdown(sweeps, rows: list[FitRow], notes: list[str], paths: list[Path],
             num_bootstrap: int, include_flagged: bool = False,
             differences: list[str] | None = None) -> str:
    """The text of `compare.md`."""
    differ = ["## What differs between the sweeps", ""] + (
        ["Beyond their sweep points the sweeps were trained or measured differently; their "
         "curves compare these differences too:", ""] + [f"- {d}" for d in differences]
        if differences else ["Nothing beyond their sweep points: every other config field that "
                             "changes results is the same."])
    lines = [f"# ntkbench comparison of {len(sweeps)} sweeps", "", *differ, "",
             *_usable(sweeps, include_flagged), "",
             ("Means over replicates (seeds, data draws) with ±1 std bands; diverged members "
              "are left out of means, bands and fits."), "", "## Sweeps", ""]
    lines += _sweep_table(sweeps)
    lines += ["", "## Fits", ""] + _fit_table(rows, num_bootstrap)
    lines += ["", "## Points left out of fits", ""] + _dropped(rows)
    incomplete = _incomplete(sweeps)
    if incomplete:
        lines += ["", "## Incomplete members (partial results allowed)", ""] + incomplete
    lines += ["", "## Figures", ""]
    for p in paths:
        lines += [f"![{p.stem}]({p.name})", ""]
    lines += ["## Skipped", ""] + ([f"- {n}" for n in notes] or ["Nothing."])
    return "\n".join(lines) + "\n"
