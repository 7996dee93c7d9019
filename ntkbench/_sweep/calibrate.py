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
import math
import os
from collections.abc import Sequence

from ntkbench._analysis import (
    AT_END,
    EARLY,
    INSIDE,
    LATE,
    NONE,
    KStar,
    default_window,
    kstar_table,
)
from ntkbench._config import ConfigError, SweepConfig, from_config_dict
from ntkbench._store import load
from ntkbench._sweep.sweep import run


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

    def format(self) -> str:
        """The calibration as a table and the advice (what `ntkbench calibrate` prints)."""
        return format_calibration(self)


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
