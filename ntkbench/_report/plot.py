"""Plotting helpers shared by the single-sweep report and the cross-sweep comparison.

Figures use matplotlib's object API (`matplotlib.figure.Figure`, Agg canvas): no display and no
pyplot state.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, NullFormatter


def fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


def label(axis: str, value) -> str:
    value = value.item() if hasattr(value, "item") else value
    return f"{axis}={value:g}" if isinstance(value, (int, float)) else f"{axis}={value}"


@contextlib.contextmanager
def quiet():
    """Silence numpy's all-NaN-slice warnings: NaN means "not recorded" here."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def band(ax, x, mean, std, color, log_y=False, low=None):
    lower = mean - std
    if log_y and low is not None:
        lower = np.maximum(lower, low)
    ax.fill_between(x, lower, mean + std, color=color, alpha=0.2, linewidth=0)


def finite_xy(x, *ys):
    ok = np.isfinite(x)
    for y in ys:
        ok &= np.isfinite(y)
    return (x[ok],) + tuple(y[ok] for y in ys)


def colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]


def widen_log_y(ax, min_decades: float = 1.0) -> None:
    """Make a log y axis span at least `min_decades` decades (a flat quantity stays readable)."""
    lo, hi = ax.get_ylim()
    if lo > 0 and hi > 0 and np.log10(hi / lo) < min_decades:
        mid = np.sqrt(lo * hi)
        ax.set_ylim(mid * 10 ** (-min_decades / 2), mid * 10 ** (min_decades / 2))


class _PlainLog(LogFormatter):
    """matplotlib's choice of which log ticks to label, each written plainly (0.2, 30)."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def plain_log_ticks(ax, axis: str = "y") -> None:
    """Tick labels of a log axis as plain numbers (20, 30, 0.5), not 2×10¹ or 1e−01 (minor
    ticks are labelled only where a decade holds few major ones)."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    if target.get_scale() == "log":
        target.set_major_formatter(_PlainLog(labelOnlyBase=False))
        target.set_minor_formatter(_PlainLog(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def sweep_xticks(ax, x: np.ndarray) -> None:
    """Log x axis labelled at the sweep values themselves (thinned to at most 8 labels)."""
    x = np.unique(x[np.isfinite(x) & (x > 0)])
    ax.set_xscale("log")
    if x.size:
        ticks = x[:: int(np.ceil(x.size / 8))]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())


def hatched_span(ax, lo: float, hi: float, color) -> None:
    """A 95% interval along x: hatched in the curve's colour, never filled like a ±1 std band."""
    ax.axvspan(lo, hi, facecolor="none", edgecolor=color, alpha=0.35, hatch="/", linewidth=0)


def key(fig: Figure, *, band: str | None = "±1 std over replicates", flagged: str | None = None,
        power_fit: bool = False, transition: bool = False) -> None:
    """One legend under the panels saying what the marks mean (the curves' own labels stay in
    the panels): the band, hollow (flagged) points, fits and their intervals."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles, labels = [], []
    if band:
        handles.append(Patch(facecolor="0.6", alpha=0.35))
        labels.append(f"band: {band}")
    if flagged:
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="none",
                              linewidth=0))
        labels.append(flagged)
    if power_fit:
        handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=1))
        labels.append("dashed: power-law fit (β, [95% bootstrap CI] in the legend)")
    if transition:
        handles += [Line2D([], [], color="0.3", linewidth=1),
                    Patch(facecolor="none", edgecolor="0.3", hatch="/", linewidth=0)]
        labels += ["vertical line: transition width w_t", "hatched: 95% bootstrap CI of w_t"]
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 3),
                   fontsize=8, frameon=False)


def wrapped(text: str, fig: Figure, fontsize: float = 12) -> str:
    """`text` wrapped to the figure's width (a suptitle is never clipped)."""
    import textwrap

    chars = int(fig.get_figwidth() * 72 / (0.55 * fontsize))
    return "\n".join(textwrap.wrap(text, chars))


def save(fig: Figure, path: Path) -> Path:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
