"""Drawing the comparison figures: a grid of panels, each a set of curves with optional fits.

A `Curve` holds one sweep point's values against a sweep axis, `y` of shape
`(num_x, num_replicates)`; a panel draws each curve's replicate mean with a ±1 std band (filled)
and, when given, its fit: a power law (dashed, exponent and interval in the panel's legend) or a
broken power law (dashed hinge, the transition width as a vertical line and its 95% interval
hatched, never filled like a band). The curves' labels and what each mark means are in one
legend under the grid; titles are wrapped to the figure's width, never clipped. Drawn with
matplotlib's object API (`matplotlib.figure.Figure`, Agg canvas), no pyplot state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import textwrap
import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ntkbench._analysis import BrokenPowerLawFit, PowerLawFit
from ntkbench._report.plot import plain_log_ticks


@dataclasses.dataclass(frozen=True)
class Curve:
    """One curve: `y` `(num_x, num_replicates)` against the abscissae `x` `(num_x,)`."""

    label: str  # the legend text: sweep label and group
    sweep: str  # the sweep's label
    group: str  # the other non-replicate axes of this curve, e.g. "depth=3" ("" when none)
    x: np.ndarray
    y: np.ndarray
    usable: np.ndarray | None = None  # (num_x,) bool: False where the point's k* is flagged
    reasons: tuple[str, ...] = ()  # why each flagged point is flagged, in x order

    def ok(self) -> np.ndarray:
        return np.ones(self.x.size, bool) if self.usable is None else self.usable

    def fit_y(self, include_flagged: bool) -> np.ndarray:
        """`y` for fitting: flagged points read NaN unless `include_flagged`."""
        return self.y if include_flagged else np.where(self.ok()[:, None], self.y, np.nan)


@dataclasses.dataclass
class Panel:
    """One axes of a figure: curves (with their fits, or None) and how to draw them."""

    title: str
    xlabel: str
    ylabel: str
    curves: list[Curve] = dataclasses.field(default_factory=list)
    fits: list = dataclasses.field(default_factory=list)
    log_x: bool = True
    log_y: bool = True
    note: str = "no finite (positive, on a log axis) values"


def fmt(v, digits: int = 3) -> str:
    """`v` with `digits` significant digits, "n/a" when missing or not finite."""
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


@contextlib.contextmanager
def quiet():
    """Silence numpy's all-NaN-slice warnings: NaN means "not recorded" here."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def mean_std(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over the finite replicates of `y` `(num_x, num_reps)`."""
    with quiet():
        return np.nanmean(y, axis=-1), np.nanstd(y, axis=-1)


def _fit_label(fit) -> str:
    if isinstance(fit, PowerLawFit):
        return f"β={fmt(fit.beta)} [{fmt(fit.ci_low)}, {fmt(fit.ci_high)}]"
    return f"w_t={fmt(fit.x_break)} [{fmt(fit.ci_low)}, {fmt(fit.ci_high)}]"


def _draw_fit(ax, fit, x: np.ndarray, color) -> bool:
    """The fitted line over the range of the abscissae it used, `x` less `fit.dropped`: never
    across a range without data; False when the fit has no estimate."""
    x = x[np.isfinite(x) & (x > 0) & ~np.isin(x, np.asarray(fit.dropped, float))]
    if isinstance(fit, PowerLawFit) and np.isfinite(fit.beta) and x.size:
        xx = np.geomspace(x.min(), x.max(), 50)
        ax.plot(xx, fit.c * xx**fit.beta, "--", color=color, linewidth=1)
        return True
    if isinstance(fit, BrokenPowerLawFit) and np.isfinite(fit.x_break) and x.size:
        xx = np.geomspace(x.min(), x.max(), 100)
        below = np.where(xx <= fit.x_break, fit.beta_below, fit.beta_above)
        ax.plot(xx, fit.c_break * (xx / fit.x_break) ** below, "--", color=color, linewidth=1)
        ax.axvline(fit.x_break, color=color, linewidth=1)
        if np.isfinite(fit.ci_low) and np.isfinite(fit.ci_high):
            ax.axvspan(fit.ci_low, fit.ci_high, facecolor="none", edgecolor=color, alpha=0.35,
                       hatch="/", linewidth=0)
        return True
    return False


def _draw_curve(ax, curve: Curve, fit, color, log_y: bool) -> None:
    mean, std = mean_std(curve.y)
    ok = np.isfinite(curve.x) & np.isfinite(mean)
    if log_y:
        ok &= mean > 0
    if not ok.any():
        return
    x, m, sd, good = curve.x[ok], mean[ok], std[ok], curve.ok()[ok]
    has_fit = fit is not None and _draw_fit(ax, fit, curve.x, color)
    ax.plot(x, m, "-", color=color, linewidth=0.8, label=_fit_label(fit) if has_fit else None)
    ax.plot(x[good], m[good], "o", color=color, markersize=4)
    if (~good).any():  # flagged points (k* at the last epoch or outside the window): hollow
        ax.plot(x[~good], m[~good], "o", markerfacecolor="none", color=color, markersize=5)
    lower = m - sd
    if log_y:
        values = curve.y[np.isfinite(curve.y) & (curve.y > 0)]
        lower = np.maximum(lower, values.min())  # keep the band's lower edge positive
    ax.fill_between(x, lower, m + sd, color=color, alpha=0.2, linewidth=0)


def _axes_style(ax, panel: Panel) -> None:
    xs = np.unique(np.concatenate([c.x for c in panel.curves])) if panel.curves else np.array([])
    if panel.log_x:
        ax.set_xscale("log")
        xs = xs[np.isfinite(xs) & (xs > 0)]
        if xs.size:
            ticks = xs[:: int(np.ceil(xs.size / 8))]
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
    if panel.log_y and ax.has_data():
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        if lo > 0 and np.log10(hi / lo) < 1.0:  # at least a decade: a flat quantity reads flat
            mid = np.sqrt(lo * hi)
            ax.set_ylim(mid / np.sqrt(10.0), mid * np.sqrt(10.0))
        plain_log_ticks(ax)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel("\n".join(textwrap.wrap(panel.ylabel, 30)))
    ax.set_title("\n".join(textwrap.wrap(panel.title, 60)), fontsize=9)


def _colors(labels: list[str]) -> dict[str, tuple]:
    """One color per distinct curve label, the same in every panel of a figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def _key(fig, colors: dict, grid) -> None:
    """One legend under the grid: each curve's label by its colour, then what the marks mean."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=c, marker="o", markersize=4, linewidth=0.8)
               for c in colors.values()]
    labels = list(colors)
    fits = [f for r in grid for p in r for f in p.fits if f is not None]
    flagged = any((~c.ok()).any() for r in grid for p in r for c in p.curves)
    handles.append(Patch(facecolor="0.6", alpha=0.35))
    labels.append("±1 std over replicates")
    if flagged:
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="none",
                              linewidth=0))
        labels.append("hollow: k* flagged")
    if any(isinstance(f, PowerLawFit) for f in fits):
        handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=1))
        labels.append("dashed: power-law fit (β and its 95% CI in each panel)")
    if any(isinstance(f, BrokenPowerLawFit) for f in fits):
        handles += [Line2D([], [], color="0.3", linewidth=1),
                    Patch(facecolor="none", edgecolor="0.3", hatch="/", linewidth=0)]
        labels += ["transition width w_t (broken power law)", "hatched: 95% CI of w_t"]
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=7, frameon=False)


def draw_grid(grid: list[list[Panel]], title: str, path: Path) -> Path:
    """Draw `grid` (rows of panels) into one PNG at `path`; return `path`."""
    rows, cols = len(grid), max(len(r) for r in grid)
    labels = list(dict.fromkeys(c.label for r in grid for p in r for c in p.curves))
    colors = _colors(labels)
    width = max(4.6 * cols, 6.0)
    fig = Figure(figsize=(width, 3.4 * rows + 0.5 + 0.2 * (len(labels) + 4)),
                 layout="constrained")
    axs = np.asarray(fig.subplots(rows, cols, squeeze=False))
    with quiet():
        for i, row in enumerate(grid):
            for j in range(cols):
                ax = axs[i, j]
                if j >= len(row):
                    ax.set_axis_off()
                    continue
                panel = row[j]
                fits = panel.fits or [None] * len(panel.curves)
                for curve, fit in zip(panel.curves, fits):
                    _draw_curve(ax, curve, fit, colors[curve.label], panel.log_y)
                if not ax.has_data():
                    ax.text(0.5, 0.5, panel.note, ha="center", va="center",
                            transform=ax.transAxes, fontsize=8)
                _axes_style(ax, panel)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=6)
    _key(fig, colors, grid)
    fig.suptitle("\n".join(textwrap.wrap(title, int(width * 11))), fontsize=10)
    fig.savefig(path, dpi=100)
    return path
