"""Scaling figures of a single sweep's report: Fig. 2 (summaries against width or data),
Fig. 3 (the width transition) and the laziness figure, with their fits.

Every fit is appended to the caller's list of rows (for report.md), dropped points included.
A panel is drawn only for a quantity with values; the others are named in the caller's notes
(report.md's "Skipped"). Every panel has its quantity as y label; ±1 std bands are filled and
95% intervals hatched (a transition width) or given in the legend (an exponent), and one key
under the panels says which is which.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ntkbench._analysis import fit_broken_power_law, fit_power_law
from ntkbench._report.figures import Plan, facet_name, has, mean_std
from ntkbench._report.plot import (
    band,
    colors,
    finite_xy,
    fmt,
    hatched_span,
    key,
    plain_log_ticks,
    quiet,
    save,
    sweep_xticks,
    widen_log_y,
)

SCALING_VARIABLES = (
    ("min_test_loss", "min test loss"),
    ("erank_star", "erank* (effective rank at k*)"),
    ("T0", "T0 (NTK trace at init)"),
    ("alpha_star", "α* (adaptation rate at k*)"),
)
LAZINESS_VARIABLES = (
    ("kernel_distance_star", "kernel distance from init at k*"),
    ("lin_output_gap_star", "linearized-model output gap at k*"),
)


def _fitted_x(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The abscissae a fit of `y` `(num_x, replicates)` can use: finite, positive mean."""
    with np.errstate(all="ignore"):
        mean = np.nanmean(np.where(np.isfinite(y), y, np.nan), axis=-1)
    return x[np.isfinite(mean) & (mean > 0) & (x > 0)]


def _power_fit_line(ax, x, y, color, group, fit_rows, key, num_bootstrap, seed) -> bool:
    """Fit `y ~ x^β`, draw the line over the points it used; whether one was drawn."""
    fit = fit_power_law(x, y, num_bootstrap=num_bootstrap, seed=seed)
    fit_rows.append((key, group, fit))
    used = _fitted_x(x, y)
    if np.isfinite(fit.beta) and used.size:  # the line spans only the points it was fitted to
        xx = np.geomspace(used.min(), used.max(), 50)
        ax.plot(xx, fit.c * xx**fit.beta, "--", color=color, linewidth=1,
                label=(f"{group + ': ' if group else ''}β={fit.beta:.2f} "
                       f"[{fmt(fit.ci_low)}, {fmt(fit.ci_high)}]"))
        return True
    return False


def _curves(ax, ds, name, plan, axis, groups, cols, style):
    """Plot, per facet, the mean ± std of `name` against `axis`; yield `(color, title, x, y)`:
    `x` the plotted (finite) axis values, `y` the `(len(axis), replicates)` values for a fit
    (facets without finite values are skipped). Points the report flags (`plan.usable`) are
    drawn as hollow markers and, unless `plan.include_flagged`, read NaN in `y`."""
    x_all = np.asarray(ds[axis].values, float)
    for facet, color in zip(groups, cols):
        _, title = facet_name(ds, facet)
        sub = ds[name].isel(facet)
        mean, std = mean_std(sub, plan.reps)
        ok = plan.usable_along(facet, axis, x_all.size)
        x, m, sd, good = finite_xy(x_all, mean.values, std.values, ok.astype(float))
        if not x.size:
            continue
        good = good > 0
        if "-" in style:
            ax.plot(x, m, "-", color=color, linewidth=0.8)
        ax.plot(x[good], m[good], "o", color=color, markersize=4)
        if (~good).any():
            ax.plot(x[~good], m[~good], "o", markerfacecolor="none", color=color, markersize=5)
        positive = sub.values[np.isfinite(sub.values) & (sub.values > 0)]
        band(ax, x, m, sd, color, True, positive.min() if positive.size else None)
        y = np.asarray(sub.transpose(axis, *plan.reps).values, float).reshape(x_all.size, -1)
        if not plan.include_flagged:
            y = np.where(ok[:, None], y, np.nan)
        yield color, title, x, y


def _finish_axis(ax, ds, name, axis, ylabel, fontsize) -> None:
    if np.any(np.asarray(ds[name].values) > 0):
        ax.set_yscale("log")
        widen_log_y(ax)
        plain_log_ticks(ax)
    sweep_xticks(ax, np.asarray(ds[axis].values, float))
    ax.set_xlabel(axis)
    ax.set_ylabel(ylabel)
    ax.set_title(ylabel.split(" (")[0])
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def _panels(ds, variables, figure: str, notes: list | None, why: str) -> list:
    """The `(name, ylabel)` of `variables` that have values; the others noted."""
    drawn = [(n, y) for n, y in variables if has(ds, n)]
    for n, y in variables:
        if (n, y) not in drawn and notes is not None:
            notes.append(f"{figure}: no panel for {y}: no finite value ({why})")
    return drawn


def _flagged(ds, plan) -> str | None:
    """The key's entry for hollow points, when some point is flagged."""
    if plan.usable is None or bool(np.all(plan.usable.values)):
        return None
    return "hollow: k* flagged" + ("" if plan.include_flagged else " (not fitted)")


def _facets(ds, plan, axis):
    groups = plan.facets(ds, exclude=[axis])
    return groups, colors(len(groups)) if len(groups) > 1 else ["C0"]


def fig2_scaling(ds, plan, axis, out_dir, fit_rows, num_bootstrap, seed,
                 notes: list | None = None) -> Path | None:
    """The summaries against `axis`, one panel per quantity with values (None: none has)."""
    panels = _panels(ds, SCALING_VARIABLES, f"Fig. 2 ({axis})", notes,
                     "NTK not recorded, k* at a window edge, or every point flagged")
    if not panels:
        return None
    groups, cols = _facets(ds, plan, axis)
    fig = Figure(figsize=(3.4 * len(panels) + 0.6, 4.2), layout="constrained")
    axs = np.atleast_1d(fig.subplots(1, len(panels)))
    x_all = np.asarray(ds[axis].values, float)
    fitted = False
    with quiet():
        for ax, (name, ylabel) in zip(axs, panels):
            for color, title, _, y in _curves(ax, ds, name, plan, axis, groups, cols, "o"):
                fitted |= _power_fit_line(ax, x_all, y, color, title, fit_rows, (name, axis),
                                          num_bootstrap, seed)
            ax.set_xscale("log")
            _finish_axis(ax, ds, name, axis, ylabel, 6)
    key(fig, band=f"±1 std over {', '.join(plan.reps) or 'replicates'}",
        flagged=_flagged(ds, plan), power_fit=fitted)
    fig.suptitle(f"Fig. 2: scaling with {axis} (mean over {', '.join(plan.reps) or '1'})")
    return save(fig, out_dir / f"fig2_scaling_{axis}.png")


def _transition_line(ax, x, fit, color, title) -> None:
    """The fitted broken power law, its breakpoint and the breakpoint's interval."""
    xx = np.geomspace(x.min(), x.max(), 100)
    yy = fit.c_break * np.where(xx <= fit.x_break, (xx / fit.x_break) ** fit.beta_below,
                                (xx / fit.x_break) ** fit.beta_above)
    ax.plot(xx, yy, "--", color=color, linewidth=1,
            label=(f"{title + ': ' if title else ''}w_t={fit.x_break:.0f} "
                   f"[{fmt(fit.ci_low)}, {fmt(fit.ci_high)}], "
                   f"β={fit.beta_below:.2f}/{fit.beta_above:.2f}"))
    ax.axvline(fit.x_break, color=color, linewidth=1)
    if np.isfinite(fit.ci_low):
        hatched_span(ax, fit.ci_low, fit.ci_high, color)


def fig3_transition(ds, plan, out_dir, trans_rows, num_bootstrap, seed) -> Path:
    axis = "width"
    groups, cols = _facets(ds, plan, axis)
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    axs = fig.subplots(1, 2)
    x_all = np.asarray(ds[axis].values, float)
    fitted = False
    with quiet():
        for ax, (name, ylabel) in zip(axs, [("trace_ratio", "trace ratio (T* − T0)/T0"),
                                            ("erank_star", "erank* (effective rank at k*)")]):
            for color, title, x, y in _curves(ax, ds, name, plan, axis, groups, cols, "o-"):
                fit = fit_broken_power_law(x_all, y, num_bootstrap=num_bootstrap, seed=seed)
                trans_rows.append((name, title, fit))
                if np.isfinite(fit.x_break):
                    _transition_line(ax, _fitted_x(x_all, y), fit, color, title)
                    fitted = True
            ax.set_xscale("log")
            _finish_axis(ax, ds, name, axis, ylabel, 7)
    key(fig, band=f"±1 std over {', '.join(plan.reps) or 'replicates'}",
        flagged=_flagged(ds, plan), transition=fitted)
    fig.suptitle("Fig. 3: width transition" + (" (dashed: broken power law fitted in log-log)"
                                               if fitted else " (too few usable widths for a "
                                               "transition fit: report.md)"))
    return save(fig, out_dir / "fig3_transition.png")


def fig_laziness(ds, plan: Plan, out_dir: Path, fit_rows, trans_rows, num_bootstrap, seed,
                 notes: list | None = None) -> Path:
    """How lazy is each width: the kernel distance from initialization and the linearized
    model's output gap at k* against width (power-law fits), beside the trace ratio with its
    transition width (docs/definitions.md §12). Only what was recorded is drawn: the output gap
    needs `linearized=True`, the kernel distance NTK records."""
    axis = "width"
    panels = _panels(ds, LAZINESS_VARIABLES + (("trace_ratio", "trace ratio (T* − T0)/T0"),),
                     "Laziness", notes, "not recorded in this sweep")
    groups, cols = _facets(ds, plan, axis)
    fig = Figure(figsize=(3.6 * len(panels) + 0.6, 4.4), layout="constrained")
    axs = np.atleast_1d(fig.subplots(1, len(panels)))
    x_all = np.asarray(ds[axis].values, float)
    power = transition = False
    with quiet():
        for ax, (name, ylabel) in zip(axs, panels):
            for color, title, _, y in _curves(ax, ds, name, plan, axis, groups, cols, "o-"):
                if name != "trace_ratio":
                    power |= _power_fit_line(ax, x_all, y, color, title, fit_rows,
                                             (name, axis), num_bootstrap, seed)
                    continue
                fit = fit_broken_power_law(x_all, y, num_bootstrap=num_bootstrap, seed=seed)
                trans_rows.append((name, title, fit))
                if np.isfinite(fit.x_break):
                    transition = True
                    ax.axvline(fit.x_break, color=color, linewidth=1,
                               label=f"transition w_t={fit.x_break:.0f} "
                                     f"[{fmt(fit.ci_low)}, {fmt(fit.ci_high)}]")
                    if np.isfinite(fit.ci_low):
                        hatched_span(ax, fit.ci_low, fit.ci_high, color)
            _finish_axis(ax, ds, name, axis, ylabel, 6)
    key(fig, band=f"±1 std over {', '.join(plan.reps) or 'replicates'}",
        flagged=_flagged(ds, plan), power_fit=power, transition=transition)
    fig.suptitle("Laziness: how far training leaves the kernel regime (lower is lazier)")
    return save(fig, out_dir / "fig_laziness.png")


def fig_parametrizations(ds, plan: Plan, out_dir: Path, window: tuple[float, float],
                         num_bootstrap, seed) -> Path:
    """Where feature learning ends under each parametrization (docs/definitions.md §15): the
    trace ratio and `erank*` with their transition widths, the kernel distance from
    initialization at `k*` with its power law, and `k*` itself with the window it should fall
    in, all against width, one colour per parametrization (and value of the other axes). The
    fits are those of report.md's tables (same data, same bootstrap seed)."""
    axis = "width"
    groups, cols = _facets(ds, plan, axis)
    panels = [("trace_ratio", "trace ratio (T* − T0)/T0"),
              ("erank_star", "erank* (effective rank at k*)")]
    if has(ds, "kernel_distance_star"):
        panels.append(("kernel_distance_star", "kernel distance from init at k*"))
    panels.append(("k_star", "k* (epoch of the minimum test loss)"))
    fig = Figure(figsize=(3.7 * len(panels) + 0.8, 4.6), layout="constrained")
    axs = np.atleast_1d(fig.subplots(1, len(panels)))
    x_all = np.asarray(ds[axis].values, float)
    power = transition = False
    with quiet():
        for ax, (name, ylabel) in zip(axs, panels):
            if name == "k_star":
                _kstar_panel(ax, ds, plan, groups, cols, window)
                continue
            for color, title, x, y in _curves(ax, ds, name, plan, axis, groups, cols, "o-"):
                if name == "kernel_distance_star":
                    power |= _power_fit_line(ax, x_all, y, color, title, [], (name, axis),
                                             num_bootstrap, seed)
                    continue
                fit = fit_broken_power_law(x_all, y, num_bootstrap=num_bootstrap, seed=seed)
                if np.isfinite(fit.x_break):
                    _transition_line(ax, _fitted_x(x_all, y), fit, color, title)
                    transition = True
            ax.set_xscale("log")
            _finish_axis(ax, ds, name, axis, ylabel, 6)
    key(fig, band=f"±1 std over {', '.join(plan.reps) or 'replicates'}",
        flagged=_flagged(ds, plan), power_fit=power, transition=transition)
    fig.suptitle("Parametrizations: trace ratio, erank*, laziness and k* against width")
    return save(fig, out_dir / "fig_parametrizations.png")


def _kstar_panel(ax, ds, plan: Plan, groups, cols, window) -> None:
    """`k*` against width per facet: mean, and the range over replicates as error bars; the
    window `k*` should fall in shaded; flagged points hollow."""
    x_all = np.asarray(ds["width"].values, float)
    k = ds["k_star"].astype(float)
    k = k.where(k >= 0)
    for facet, color in zip(groups, cols):
        _, title = facet_name(ds, facet)
        sub = k.isel(facet).transpose("width", *plan.reps)
        vals = np.asarray(sub.values, float).reshape(x_all.size, -1)
        with np.errstate(all="ignore"):
            mean = np.nanmean(vals, axis=1)
            lo, hi = np.nanmin(vals, axis=1), np.nanmax(vals, axis=1)
        ok = plan.usable_along(facet, "width", x_all.size)
        fin = np.isfinite(mean)
        ax.errorbar(x_all[fin], mean[fin], yerr=[mean[fin] - lo[fin], hi[fin] - mean[fin]],
                    color=color, linewidth=0.8, capsize=2, label=title or None)
        good = fin & ok
        ax.plot(x_all[good], mean[good], "o", color=color, markersize=4)
        ax.plot(x_all[fin & ~ok], mean[fin & ~ok], "o", markerfacecolor="none", color=color,
                markersize=5)
    ax.axhspan(window[0], window[1], color="0.85", zorder=0,
               label=f"window [{window[0]:g}, {window[1]:g}]")
    ax.set_xscale("log")
    sweep_xticks(ax, x_all)
    ax.set_xlabel("width")
    ax.set_ylabel("k* (epoch), mean and range")
    ax.set_title("k*")
    ax.legend(fontsize=6)
