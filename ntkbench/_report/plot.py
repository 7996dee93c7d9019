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
from matplotlib.ticker import NullFormatter


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


def sweep_xticks(ax, x: np.ndarray) -> None:
    """Log x axis labelled at the sweep values themselves (thinned to at most 8 labels)."""
    x = np.unique(x[np.isfinite(x) & (x > 0)])
    ax.set_xscale("log")
    if x.size:
        ticks = x[:: int(np.ceil(x.size / 8))]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())


def save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
