"""Where `k*` lands: every sweep point's epoch of minimum test loss, against a window.

The paper's protocol takes a learning rate small enough that the minimum test loss is reached
late in the run, between 40% and 100% of the epochs (docs/definitions.md defines `k*`). A point
whose `k*` is the last epoch never reached its minimum (the test loss was still falling); one
before the window was resolved by few records. `kstar_table` gives every point's `k*` with its
status, `kstar_flags` one line per point outside the window; the report and the calibrator
(`ntkbench calibrate`) both read them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np
import xarray as xr

from ntkbench._analysis.completeness import final_epoch
from ntkbench._analysis.summaries import sweep_axes
from ntkbench._config import REPLICATE_AXES

#: Statuses of a sweep point, by where its mean k* lands.
INSIDE, EARLY, LATE, AT_END, NONE = "inside", "early", "late", "at_end", "none"


@dataclasses.dataclass(frozen=True)
class KStar:
    """`k*` of one sweep point (non-replicate axes) over its replicates (seeds, data draws)."""

    point: tuple[tuple[str, object], ...]  # ((axis, value), ...), e.g. (("width", 8),)
    mean: float  # NaN when no replicate has a k*
    low: float
    high: float
    found: int  # replicates with a k* (not diverged, complete)
    replicates: int
    at_end: int  # replicates whose k* is the last epoch
    status: str  # INSIDE, EARLY, LATE, AT_END or NONE
    lr: float = math.nan  # the pilot's lr (calibration only)

    def label(self) -> str:
        return ", ".join(f"{a}={v}" for a, v in self.point) or "the sweep"


def default_window(epochs: int) -> tuple[float, float]:
    """`(0.4·epochs, epochs)`: the paper's 400..1000 of 1000 epochs."""
    return 0.4 * epochs, float(epochs)


def _status(mean: float, at_end: int, window) -> str:
    if not np.isfinite(mean):
        return NONE
    if at_end:
        return AT_END
    return EARLY if mean < window[0] else LATE if mean > window[1] else INSIDE


def kstar_table(ds: xr.Dataset, window: tuple[float, float] | None = None,
                *, always: Sequence[str] = ()) -> list[KStar]:
    """`k*` of every sweep point of `ds` (stored `k_star`, or the summarized one), with status.

    Args:
        ds: a sweep from `ntkbench.load` (with or without summaries).
        window: `(lo, hi)` epochs; default `default_window(epochs)`.
        always: axes to name in every point even when the sweep has one value (e.g. "width").

    Returns:
        One `KStar` per combination of the non-replicate axes. Its status is `AT_END` when any
        replicate's `k*` is the last epoch (that member's test loss was still falling: its
        minimum was not reached), even if the mean lies inside; else `EARLY` / `LATE` / `INSIDE`
        by the mean against `[lo, hi]`; `NONE` without any `k*` (diverged or unfinished).
    """
    epochs = final_epoch(ds)
    window = default_window(epochs) if window is None else window
    axes = sweep_axes(ds)
    points = [a for a in axes if a not in REPLICATE_AXES]
    k = ds["k_star"].astype(np.float64)
    k = k.where(k >= 0)
    if "diverged" in ds:
        k = k.where(~ds["diverged"].astype(bool))
    shown = [a for a in points if ds.sizes[a] > 1 or a in always]
    out = []
    for idx in itertools.product(*[range(ds.sizes[a]) for a in points]):
        sub = k.isel(dict(zip(points, idx)))
        vals = np.asarray(sub.values, np.float64).reshape(-1)
        ok = vals[np.isfinite(vals)]
        mean, low, high = ((float(ok.mean()), float(ok.min()), float(ok.max())) if ok.size
                           else (math.nan,) * 3)
        at_end = int((ok >= epochs).sum())
        point = tuple((a, _item(ds[a].values[i])) for a, i in zip(points, idx) if a in shown)
        out.append(KStar(point, mean, low, high, ok.size, vals.size, at_end,
                         _status(mean, at_end, window)))
    return out


def _item(v):
    return v.item() if hasattr(v, "item") else v


def _why(p: KStar, window, epochs: int) -> str:
    lo, hi = window
    if p.status == NONE:
        return "no k* (every member diverged or is unfinished)"
    span = f"mean k* {p.mean:.0f} (range {p.low:.0f}..{p.high:.0f})"
    if p.status == AT_END:
        return (f"{span}: {p.at_end} of {p.found} at the last epoch {epochs}, the test loss "
                "was still falling; raise the lr or train longer")
    side = "before" if p.status == EARLY else "after"
    move = "lower the lr" if p.status == EARLY else "raise the lr or train longer"
    return f"{span} is {side} the window [{lo:g}, {hi:g}]; {move}"


def kstar_flags(ds: xr.Dataset, window: tuple[float, float] | None = None) -> list[str]:
    """One line per sweep point whose mean `k*` is outside `window` or at the last epoch.

    Args:
        ds: a sweep from `ntkbench.load` (`k_star` over the sweep axes).
        window: `(lo, hi)` epochs; default `default_window(epochs)`.

    Returns:
        Lines like `"width=8: mean k* 300 (range 300..300): 2 of 2 at the last epoch 300, ..."`;
        empty when every point is inside.

    Example:
        >>> ds = xr.Dataset({"k_star": (("width", "seed"), [[100, 110], [290, 300]])},
        ...                 coords={"width": [8, 512], "seed": [0, 1]}, attrs={"epochs": 300})
        >>> [line.split(":")[0] for line in kstar_flags(ds, (120, 300))]
        ['width=8', 'width=512']
    """
    epochs = final_epoch(ds)
    window = default_window(epochs) if window is None else tuple(window)
    return [f"{p.label()}: {_why(p, window, epochs)}" for p in kstar_table(ds, window)
            if p.status != INSIDE]


def usable_points(ds: xr.Dataset, window: tuple[float, float] | None = None) -> xr.DataArray:
    """Which sweep points the report may fit and conclude from: True where the point's `k*`
    lies inside `window` (status `INSIDE`), False where `kstar_table` flags it (at the last
    epoch, outside the window, or no `k*`).

    Returns:
        A boolean DataArray over the non-replicate sweep axes of `ds`.

    Example:
        >>> ds = xr.Dataset({"k_star": (("width", "seed"), [[150, 160], [290, 300]])},
        ...                 coords={"width": [8, 512], "seed": [0, 1]}, attrs={"epochs": 300})
        >>> usable_points(ds, (120, 300)).values.tolist()
        [True, False]
    """
    points = [a for a in sweep_axes(ds) if a not in REPLICATE_AXES]
    table = kstar_table(ds, window, always=points)
    ok = np.asarray([p.status == INSIDE for p in table], bool)
    shape = tuple(ds.sizes[a] for a in points)
    coords = {a: ds[a] for a in points if a in ds.coords}
    return xr.DataArray(ok.reshape(shape), dims=points, coords=coords)


def flagged_reasons(ds: xr.Dataset, window: tuple[float, float] | None = None
                    ) -> dict[tuple[tuple[str, object], ...], str]:
    """`{point: why}` of every flagged sweep point (`kstar_flags` as a mapping), each point
    `((axis, value), ...)` over all non-replicate sweep axes."""
    epochs = final_epoch(ds)
    window = default_window(epochs) if window is None else tuple(window)
    points = [a for a in sweep_axes(ds) if a not in REPLICATE_AXES]
    return {p.point: _why(p, window, epochs) for p in kstar_table(ds, window, always=points)
            if p.status != INSIDE}
