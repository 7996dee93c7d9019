"""A sweep's report: the paper's figures and a `report.md` with fits, flags and summaries.

Figures are drawn by `ntkbench._report.figures` (dynamics) and `ntkbench._report.scaling_figures` (fits);
several sweeps side by side by `ntkbench._report.compare`. An unfinished sweep is refused unless
partial results are allowed, and then only its complete members are drawn and fitted.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import xarray as xr

from ntkbench._analysis import (
    default_window,
    describe_incomplete,
    final_epoch,
    kstar_flags,
    require_complete,
    summarize,
    usable_points,
)
from ntkbench._config import REPLICATE_AXES
from ntkbench._report.figures import (
    MAX_FACETS,
    Plan,
    fig1_dynamics,
    fig4_noise,
    fig8_alignment,
    fig_losses,
    fig_sharpness,
    has,
    masked,
)
from ntkbench._report.plot import fmt, quiet
from ntkbench._report.scaling_figures import (
    fig2_scaling,
    fig3_transition,
    fig_laziness,
    fig_parametrizations,
)

TABLE_VARIABLES = ("min_test_loss", "k_star", "T0", "T_star", "trace_ratio", "erank_star",
                   "alpha_star", "kernel_distance_star", "lin_output_gap_star")


def write_report(ds: xr.Dataset, out_dir: str | Path, *, window: int = 20,
                 num_bootstrap: int = 1000, seed: int = 0, allow_partial: bool = False,
                 kstar_window: tuple[float, float] | None = None,
                 include_flagged: bool = False) -> list[Path]:
    r"""Write the paper's figures and a `report.md` for a sweep; return the paths written.

    Figures (PNG), each the mean over replicates with a ±1 std band (filled; 95% intervals are
    hatched or given in the legends, and a key under each figure says which is which); a panel
    is drawn only for a quantity with values (report.md names the others): `fig_losses*` (losses and
    accuracy against epoch), `fig1_dynamics*` (trace against train loss, adaptation rate,
    effective rank), `fig2_scaling_<axis>` (min test loss, `erank*`, `T0`, `α*` against width /
    `n_train` with power-law fits), `fig3_transition` (trace ratio and `erank*` against width
    with the transition width), `fig4_noise*` (a `noise` axis), `fig8_alignment*`, and
    `fig_laziness` (kernel distance and output gap at `k*` against width, beside the trace
    ratio), and `fig_parametrizations` (a `parametrization` axis: trace ratio, `erank*`,
    kernel distance and `k*` against width per parametrization). Figures a sweep cannot support are skipped and `report.md` says why; it lists the
    fits with their intervals and dropped points, the sweep points whose `k*` falls outside
    `kstar_window` (default: the last 60% of the run) or at the last epoch, and a summary table.

    Flagged points (k* at the last epoch, outside the window, or none) are drawn hollow (their
    curves' labels say "k* flagged") and left out of every fit and transition estimate, each
    listed with its reason; `report.md` opens with how many points are usable. With
    `include_flagged` they are fitted too, and the report says so.

    Example:
        >>> paths = write_report(ntkbench.load("runs/quick"), "runs/quick/report")  # doctest: +SKIP
        >>> paths[-1].name  # doctest: +SKIP
        'report.md'

    Args:
        ds: sweep results (`ntkbench.load`); summarized first if it lacks the summaries.
        out_dir: directory to write into (created).
        window: adaptation-rate window in epochs, for `summarize`.
        num_bootstrap: bootstrap resamples of every fit.
        seed: seed of the bootstraps.
        allow_partial: draw an unfinished sweep from its complete members (listed in
            report.md) instead of refusing it.
        kstar_window: `(first, last)` epochs where `k*` should fall.
        include_flagged: fit the flagged points too (they are still drawn hollow).

    Raises:
        ConfigError: the sweep has unfinished members and `allow_partial` is False.
    """
    out_dir = Path(out_dir)
    if "epoch" not in ds.dims:
        raise ValueError("write_report needs per-epoch results with an `epoch` dimension.")
    incomplete = describe_incomplete(ds)
    ds = require_complete(ds, allow_partial)
    if "k_star" not in ds or "adaptation_rate" not in ds:
        ds = summarize(ds, window=window)
    ds = masked(ds)
    out_dir.mkdir(parents=True, exist_ok=True)
    usable = usable_points(ds, kstar_window)
    plan = Plan(ds, usable, include_flagged)
    window = kstar_window or default_window(final_epoch(ds))
    paths, skipped, fit_rows, trans_rows = _figures(ds, plan, out_dir, num_bootstrap, seed,
                                                    window)
    flags = kstar_flags(ds, kstar_window)
    report = out_dir / "report.md"
    report.write_text(_markdown(ds, plan, paths, skipped, fit_rows, trans_rows, num_bootstrap,
                                flags, incomplete, usable))
    return paths + [report]


def _figures(ds, plan: Plan, out_dir: Path, num_bootstrap: int, seed: int, window):
    has_ntk = has(ds, "ntk_trace")
    paths, skipped, fit_rows, trans_rows = [], [], [], []
    facets = plan.facets(ds, exclude=[plan.curve])
    if len(facets) > MAX_FACETS:
        skipped.append(f"dynamics figures: only the first {MAX_FACETS} of {len(facets)} "
                       "combinations of the other axes are drawn")
        facets = facets[:MAX_FACETS]
    paths += [fig_losses(ds, plan, f, out_dir) for f in facets]
    if has_ntk:
        paths += [fig1_dynamics(ds, plan, f, out_dir) for f in facets]
    else:
        skipped.append("Fig. 1 (NTK dynamics): no NTK was recorded (ntk_trace is all NaN)")
    if plan.scaling:
        for axis in plan.scaling:
            path = fig2_scaling(ds, plan, axis, out_dir, fit_rows, num_bootstrap, seed, skipped)
            if path is not None:
                paths.append(path)
    else:
        skipped.append("Fig. 2 (scaling): needs a `width` or `n_train` axis with at least two "
                       "values")
    wide = "width" in plan.axes and ds.sizes["width"] >= 4
    if wide and has_ntk:
        paths.append(fig3_transition(ds, plan, out_dir, trans_rows, num_bootstrap, seed))
    else:
        why = ("no NTK was recorded" if not has_ntk else
               "needs a `width` axis with at least 4 values for a two-segment fit")
        skipped.append(f"Fig. 3 (width transition): {why}")
    if "noise" in plan.axes and ds.sizes["noise"] >= 2:
        paths += [fig4_noise(ds, plan, f, out_dir)
                  for f in plan.facets(ds, exclude=["noise"])[:MAX_FACETS]]
    else:
        skipped.append("Fig. 4 (noise scaling): the sweep has no `noise` axis with two or more "
                       "values")
    if has_ntk:
        paths += [fig8_alignment(ds, plan, f, out_dir) for f in facets]
    else:
        skipped.append("Fig. 8 (alignment): no NTK was recorded")
    if has(ds, "sharpness"):
        paths += [fig_sharpness(ds, plan, f, out_dir) for f in facets]
    else:
        skipped.append("Sharpness: no curvature was recorded (config.curvature_every = 0)")
    if wide and (has(ds, "kernel_distance_star") or has(ds, "lin_output_gap_star")):
        paths.append(fig_laziness(ds, plan, out_dir, fit_rows, [], num_bootstrap, seed,
                                  skipped))
    else:
        skipped.append("Laziness: needs a `width` axis with at least 4 values and the kernel "
                       "distance (NTK records) or the linearized model (`linearized=True`)")
    if "parametrization" in plan.axes and ds.sizes["parametrization"] >= 2:
        if wide and has_ntk:
            paths.append(fig_parametrizations(ds, plan, out_dir, window, num_bootstrap, seed))
        else:
            skipped.append("Parametrizations: needs a `width` axis with at least 4 values and "
                           "NTK records")
    return paths, skipped, fit_rows, trans_rows


def _summary_table(ds: xr.Dataset, plan: Plan) -> list[str]:
    points = [a for a in plan.axes if a not in REPLICATE_AXES]
    names = [v for v in TABLE_VARIABLES if v in ds]
    header = points + ["members", "diverged", "α* at edge"] + names
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with quiet():
        for idx in itertools.product(*[range(ds.sizes[a]) for a in points]):
            sub = ds.isel(dict(zip(points, idx)))
            vals = [str(sub[a].values.item()) if a in sub.coords else str(i)
                    for a, i in zip(points, idx)]
            num = int(np.prod([sub.sizes[a] for a in plan.reps])) if plan.reps else 1
            div = int(sub["diverged"].values.sum()) if "diverged" in sub else 0
            edge = int(sub["alpha_star_at_edge"].values.sum())
            vals += [str(num), str(div), str(edge)]
            for v in names:
                arr = np.asarray(sub[v].values, float)
                arr = arr[np.isfinite(arr)]
                vals.append(f"{arr.mean():.4g} ± {arr.std():.2g}" if arr.size else "n/a")
            lines.append("| " + " | ".join(vals) + " |")
    return lines


def _fit_tables(fit_rows, trans_rows, num_bootstrap: int) -> list[str]:
    lines = ["## Fitted exponents", ""]
    if fit_rows:
        lines += [f"Power law y = c·x^β, least squares in log-log on the replicate means; 95% "
                  f"bootstrap interval of β over replicates ({num_bootstrap} resamples). Points "
                  "without a finite, positive mean, and flagged points (\"Where k* falls\"), "
                  "are left out and listed.", "",
                  "| quantity | against | group | c | β | 95% CI | dropped |",
                  "|---|---|---|---|---|---|---|"]
        for (name, axis), group, fit in fit_rows:
            dropped = ", ".join(f"{v:g}" for v in fit.dropped) or "-"
            lines.append(f"| {name} | {axis} | {group or 'all'} | {fmt(fit.c)} | "
                         f"{fmt(fit.beta)} | [{fmt(fit.ci_low)}, {fmt(fit.ci_high)}] | "
                         f"{dropped} |")
    else:
        lines.append("None: the sweep has no `width` or `n_train` axis with two or more values.")
    lines += ["", "## Transition widths", ""]
    if trans_rows:
        lines += ["Continuous two-segment power law in log-log, breakpoint fitted; 95% bootstrap "
                  "interval over replicates.", "",
                  "| quantity | group | transition width | 95% CI | β below | 95% CI | "
                  "β above | 95% CI | dropped |", "|---|---|---|---|---|---|---|---|---|"]
        for name, group, fit in trans_rows:
            dropped = ", ".join(f"{v:g}" for v in fit.dropped) or "-"
            lines.append(f"| {name} | {group or 'all'} | {fmt(fit.x_break)} | "
                         f"[{fmt(fit.ci_low)}, {fmt(fit.ci_high)}] | {fmt(fit.beta_below)} | "
                         f"[{fmt(fit.beta_below_low)}, {fmt(fit.beta_below_high)}] | "
                         f"{fmt(fit.beta_above)} | "
                         f"[{fmt(fit.beta_above_low)}, {fmt(fit.beta_above_high)}] | "
                         f"{dropped} |")
    else:
        lines.append("None (see skipped figures).")
    return lines


def usable_line(usable: xr.DataArray, include_flagged: bool) -> str:
    """The report's first line: how many sweep points its fits use."""
    n, ok = int(usable.size), int(usable.values.sum())
    if ok == n:
        return f"**Usable points: all {n}** (every point's k* lies inside the window)."
    what = ("fitted anyway, on request (include_flagged)" if include_flagged else
            "drawn hollow and left out of every fit and transition estimate")
    return (f"**Usable points: {ok} of {n}.** The other {n - ok} have k* at the last epoch, "
            f"outside the window, or none (\"Where k* falls\" below): {what}.")


def _markdown(ds, plan, paths, skipped, fit_rows, trans_rows, num_bootstrap, flags,
              incomplete, usable) -> str:
    sizes = ", ".join(f"{a}={ds.sizes[a]}" for a in plan.axes)
    values = "; ".join(f"{a}: {', '.join(str(v) for v in ds[a].values)}" for a in plan.axes
                       if a not in REPLICATE_AXES and a in ds.coords)
    num_members = int(np.prod([ds.sizes[a] for a in plan.axes])) if plan.axes else 1
    num_div = int(ds["diverged"].values.sum()) if "diverged" in ds else 0
    num_edge = int(ds["alpha_star_at_edge"].values.sum())
    epochs = ds["epoch"].values
    source = ("the first epoch with the minimum test loss over all evaluated epochs, NTK "
              "quantities at k* measured at that state" if
              ds.attrs.get("k_star_source") == "exact" else
              "the first NTK record with the minimum test loss among NTK records")
    lines = [
        "# ntkbench sweep report", "", usable_line(usable, plan.include_flagged), "",
        f"- Sweep {ds.attrs.get('name', '')!r} on {ds.attrs.get('dataset', '?')} "
        f"({ds.attrs.get('model', '?')}); axes: {sizes}; epochs {epochs.min()}..{epochs.max()}.",
        f"- Sweep values: {values or 'single point'}.",
        f"- Members: {num_members}, diverged: {num_div} (left out of means, bands and fits), "
        f"α* at a window edge (NaN, not extrapolated): {num_edge}.",
        f"- Replicates averaged over: {', '.join(plan.reps) or 'none'}; bands are ±1 std.",
        f"- k* = {source}; adaptation rate over a {ds.attrs.get('window_epochs', 20)}-epoch "
        "running window" + (f", NTK every {ds.attrs['ntk_every']} epochs"
                            if "ntk_every" in ds.attrs else "") + ".", ""]
    if incomplete:
        lines += ["## Incomplete members (left out: partial results allowed)", ""]
        lines += [f"- {s}" for s in incomplete] + [""]
    lines += ["## Where k* falls", ""]
    lines += ([f"- {f}" for f in flags] if flags else
              ["Every sweep point's k* falls inside the window, before the last epoch."])
    lines += [""] + _fit_tables(fit_rows, trans_rows, num_bootstrap)
    lines += ["", "## Summaries per sweep point (mean ± std over replicates)", ""]
    lines += _summary_table(ds, plan) + ["", "## Figures", ""]
    for p in paths:
        lines += [f"![{p.stem}]({p.name})", ""]
    if skipped:
        lines += ["### Skipped", ""] + [f"- {s}" for s in skipped]
    return "\n".join(lines) + "\n"
