"""Choosing a learning rate: where does `k*` (the epoch of minimum test loss) land?

The paper's protocol takes a learning rate small enough that the minimum test loss is reached
late in the run, between 40% and 100% of the epochs (docs/definitions.md defines `k*`). Too
large an lr puts `k*` early (the approach to the minimum is resolved by few records); too small
puts it at the last epoch (the test loss is still falling: no minimum was reached).

`calibrate` runs short pilots of a sweep, one ordinary `ntkbench.run` per lr into
`workdir/lr_<value>` (resumable, inspectable, NTK records off), on the narrowest and widest
width of each depth, and proposes the largest lr that puts the mean `k*` of every pilot point
inside the window. `kstar_flags` checks any sweep's `k*` against a window.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Sequence

import numpy as np
import xarray as xr

from ntkbench._analysis import sweep_axes
from ntkbench._completeness import final_epoch
from ntkbench._config import SweepConfig, from_config_dict, validate
from ntkbench._errors import ConfigError
from ntkbench._schema import REPLICATE_AXES

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


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The outcome of `calibrate`: every pilot point's `k*` and the proposed lr."""

    name: str
    epochs: int
    window: tuple[float, float]
    lrs: tuple[float, ...]
    num_seeds: int
    points: tuple[KStar, ...]
    proposal: float | None  # the largest lr with every point inside the window; None: none
    advice: str  # one sentence: the proposal, or which way to move
    workdir: str


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


def _labels(points: Sequence[KStar], statuses: Sequence[str]) -> str:
    return "; ".join(p.label() for p in points if p.status in statuses)


def propose(points: Sequence[KStar], window: tuple[float, float]) -> tuple[float | None, str]:
    """The largest lr whose every point is inside the window, and one sentence of advice.

    Points are too slow (k* late or at the last epoch) or too fast (early, or no k*: diverged).
    Without a good lr the advice says which way to move: above the largest lr when every lr is
    too slow, below the smallest when every lr is too fast, between the two otherwise.

    Example:
        >>> mk = lambda lr, s: KStar((("width", 8),), 150.0, 140.0, 160.0, 2, 2, 0, s, lr)
        >>> propose([mk(1e-4, "late"), mk(3e-4, "inside"), mk(1e-3, "early")], (120, 300))[0]
        0.0003
    """
    lo, hi = window
    by_lr = {lr: [p for p in points if p.lr == lr] for lr in sorted({p.lr for p in points})}
    good = [lr for lr, pts in by_lr.items() if all(p.status == INSIDE for p in pts)]
    if good:
        best = max(good)
        larger = [lr for lr in by_lr if lr > best]
        why = ""
        if larger:
            bad = by_lr[larger[0]]
            why = (f"; at lr={larger[0]:g} " + ", ".join(
                f"{p.label()} is {p.status.replace('_', ' ')}" for p in bad
                if p.status != INSIDE))
        return best, f"lr={best:g} puts k* inside [{lo:g}, {hi:g}] for every point{why}."
    slow = [lr for lr, pts in by_lr.items() if all(p.status in (INSIDE, LATE, AT_END)
                                                    for p in pts)]
    fast = [lr for lr, pts in by_lr.items() if all(p.status in (INSIDE, EARLY, NONE)
                                                    for p in pts)]
    lrs = list(by_lr)
    if len(slow) == len(lrs):
        return None, (f"no lr puts k* inside [{lo:g}, {hi:g}]: k* comes too late even at "
                      f"lr={lrs[-1]:g}; try larger lrs (above {lrs[-1]:g}).")
    if len(fast) == len(lrs):
        return None, (f"no lr puts k* inside [{lo:g}, {hi:g}]: k* comes too early (or training "
                      f"diverges) even at lr={lrs[0]:g}; try smaller lrs (below {lrs[0]:g}).")
    mixed = [lr for lr in lrs if lr not in slow and lr not in fast]
    if slow and fast and max(slow) < min(fast) and not [
            lr for lr in lrs if max(slow) < lr < min(fast)]:
        a, b = max(slow), min(fast)
        return None, (f"no lr puts k* inside [{lo:g}, {hi:g}]: at lr={a:g} k* is too late, at "
                      f"lr={b:g} too early; try lrs between {a:g} and {b:g}.")
    if not mixed:
        return None, (f"no lr puts k* inside [{lo:g}, {hi:g}], and k* does not move steadily "
                      f"with the lr (too late at lr={', '.join(f'{v:g}' for v in slow)}, too "
                      f"early at lr={', '.join(f'{v:g}' for v in fast)}); rerun with more seeds "
                      "or a finer grid of lrs.")
    pts = by_lr[mixed[0]]
    labels = list(dict.fromkeys(p.label() for p in points))
    inside = "; ".join(f"{label} at " + (", ".join(f"{p.lr:g}" for p in points if p.label()
                                                   == label and p.status == INSIDE) or "none")
                       for label in labels)
    return None, (f"no single lr puts every point inside [{lo:g}, {hi:g}]: at lr={mixed[0]:g} "
                  f"{_labels(pts, (EARLY, NONE))} come too early while "
                  f"{_labels(pts, (LATE, AT_END))} come too late (inside: {inside}); k* spreads "
                  "across the points more than the window allows: widen the window, train "
                  "longer, or calibrate those widths separately.")


def _check(lrs: Sequence[float], window, epochs: int, num_seeds: int):
    lrs = tuple(float(v) for v in lrs)
    if not lrs or not all(math.isfinite(v) and v > 0 for v in lrs) or len(set(lrs)) < len(lrs):
        raise ConfigError(f"lrs={list(lrs)} must be distinct positive numbers, e.g. "
                          "1e-4,3e-4,1e-3,3e-3.")
    window = default_window(epochs) if window is None else tuple(float(v) for v in window)
    if len(window) != 2 or not (0 <= window[0] < window[1] <= epochs):
        raise ConfigError(f"window={list(window)} must be two epochs LO,HI with 0 <= LO < HI <= "
                          f"epochs={epochs}, e.g. {0.4 * epochs:g},{epochs}.")
    if num_seeds < 1:
        raise ConfigError(f"num_seeds={num_seeds} must be at least 1 (2 gives a range).")
    return tuple(sorted(lrs)), window


def pilot_config(config: SweepConfig, lr: float, num_seeds: int) -> SweepConfig:
    """`config` cut to its narrowest and widest width, `num_seeds` seeds, NTK records off."""
    widths = tuple(sorted({min(config.widths), max(config.widths)}))
    pilot = dataclasses.replace(config, name=f"{config.name}-calibrate", widths=widths,
                                num_seeds=num_seeds, lr=float(lr), ntk_every=0,
                                ntk_early_every=0, ntk_early_until=0, layer_ntks=False,
                                kernel_velocity=False)
    validate(pilot)
    return pilot


def calibrate(config, *, lrs: Sequence[float], num_seeds: int = 2,
              window: tuple[float, float] | None = None, workdir: str, hooks=None,
              runtime=None, model_fn=None) -> Calibration:
    """Run a pilot of `config` per lr and propose the largest lr that puts `k*` in `window`.

    Each pilot (narrowest and widest width of each depth, `num_seeds` seeds, NTK records off)
    is an ordinary sweep in `workdir/lr_<value>`: rerunning resumes it, `ntkbench.load` reads it.

    Args:
        config: a `SweepConfig` (or a preset's `ConfigDict`); its `epochs` and all other fields
            are kept.
        lrs: the learning rates to try.
        num_seeds: seeds per pilot point.
        window: `(lo, hi)` epochs where `k*` should land; default `(0.4·epochs, epochs)`.
        workdir: the parent directory of the pilots.
        hooks, runtime, model_fn: passed to `ntkbench.run`.

    Returns:
        A `Calibration` (`format_calibration` prints it).

    Example:
        >>> cal = calibrate(ntkbench.get_config("quick"), lrs=[1e-4, 1e-3],
        ...                 workdir="runs/calibrate-quick")  # doctest: +SKIP
        >>> cal.proposal  # doctest: +SKIP
    """
    from ntkbench._results import load
    from ntkbench._sweep import run

    if not isinstance(config, SweepConfig):
        config = from_config_dict(config)
    lrs, window = _check(lrs, window, config.epochs, num_seeds)
    pilots = {lr: pilot_config(config, lr, num_seeds) for lr in lrs}  # all checked first
    points = []
    for lr, pilot in pilots.items():
        path = os.path.join(workdir, f"lr_{lr:g}")
        if hooks is not None:
            hooks.log(f"calibrate: pilot lr={lr:g} in {path}")
        run(pilot, path, hooks=hooks, runtime=runtime, model_fn=model_fn)
        table = kstar_table(load(path, summaries=False), window, always=("width",))
        points += [dataclasses.replace(p, lr=lr) for p in table]
    proposal, advice = propose(points, window)
    return Calibration(config.name, config.epochs, window, lrs, num_seeds, tuple(points),
                       proposal, advice, os.path.abspath(workdir))


def format_calibration(cal: Calibration) -> str:
    """The calibration as a table (lr, sweep point, k* mean and range, status) and the advice."""
    rows = [("lr", "point", "k* mean", "k* range", "seeds", "where")]
    for p in cal.points:
        span = "-" if p.status == NONE else f"{p.low:.0f}..{p.high:.0f}"
        mean = "-" if p.status == NONE else f"{p.mean:.1f}"
        where = {AT_END: f"at the last epoch ({p.at_end})", NONE: "no k*"}.get(p.status,
                                                                                p.status)
        rows.append((f"{p.lr:g}", p.label(), mean, span, f"{p.found}/{p.replicates}", where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lo, hi = cal.window
    head = (f"calibration of {cal.name!r}: k* window [{lo:g}, {hi:g}] of {cal.epochs} epochs, "
            f"{cal.num_seeds} seed(s) per point; pilots in {cal.workdir}/lr_*")
    verdict = (f"proposal: lr={cal.proposal:g} ({cal.advice})" if cal.proposal is not None
               else f"proposal: none ({cal.advice})")
    return "\n".join([head, ""] + table + ["", verdict])
