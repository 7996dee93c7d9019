"""Choosing learning rates: where does `k*` (the epoch of minimum test loss) land?

The paper's protocol takes, per setup, a learning rate small enough that the minimum test loss
is reached late in the run, between 40% and 100% of the epochs (docs/definitions.md defines
`k*`). Too large an lr puts `k*` early (the approach to the minimum is resolved by few records);
too small puts it at the last epoch (the test loss is still falling: no minimum was reached).
With Adam in the standard parametrization wide networks learn faster per step, so one lr rarely
fits every width: the rule holds per sweep point.

`calibrate` runs pilots of a sweep, one ordinary `ntkbench.run` per lr into
`workdir/lr_<value>` (resumable, inspectable, NTK records off), over every point of the axes the
learning rate may vary with (`by`: by default the sweep's varying axes among depth, width,
n_train and noise), and proposes for every point one lr that puts its mean `k*` inside the
window (`propose_points`): the pilot lr whose `k*` lies inside, nearest the window's middle, or,
between a pilot too slow and one too fast, the lr interpolated on `log k*` against `log lr`
(marked so: it was not run). Points no pilot brackets are listed with the reason. With
`verify`, the proposed table itself is run as one more pilot and its `k*` reported. The proposal
is a `lr_by`/`lr_table` config override (`Calibration.override()`); `propose` gives the single
lr that fits every point, when one does.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

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
from ntkbench._config import (
    LR_AXES,
    ConfigError,
    SweepConfig,
    format_lr_table,
    from_config_dict,
)
from ntkbench._store import load
from ntkbench._sweep.sweep import run


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


def _group_status(points: Sequence[KStar]) -> str:
    """The status of several points that must share one lr: inside only if all are."""
    statuses = {p.status for p in points}
    if statuses in ({INSIDE}, {NONE}):
        return statuses.pop()
    slow, fast = statuses & {LATE, AT_END}, statuses & {EARLY, NONE}
    if slow and fast:
        return "mixed"
    return EARLY if fast else (AT_END if AT_END in slow else LATE)


@dataclasses.dataclass(frozen=True)
class PointProposal:
    """The learning rate proposed for one point of the `by` axes.

    Attributes:
        point: `((axis, value), ...)` of the `by` axes.
        lr: the proposed rate (for an unplaced point: the pilot rate nearest to placing it, so
            that the table is complete; `placed` says it is not one).
        placed: True when a pilot put `k*` inside the window at `lr`, or `lr` lies between a
            pilot too slow and one too fast (then `how` says "interpolated").
        how: "pilot" (a pilot at `lr` put k* inside), "interpolated", or why it is not placed.
        kstar: the mean `k*` observed (pilot) or expected (interpolated) at `lr`; NaN if none.
    """

    point: tuple[tuple[str, object], ...]
    lr: float
    placed: bool
    how: str
    kstar: float

    def label(self) -> str:
        return ", ".join(f"{a}={v}" for a, v in self.point) or "the sweep"


def propose_points(points: Sequence[KStar], by: Sequence[str], window: tuple[float, float],
                   epochs: int) -> list[PointProposal]:
    """One learning rate per point of the `by` axes from the pilots' `points` (`KStar`s with
    their pilot `lr`), as the module docstring describes.

    Example:
        >>> mk = lambda lr, k, s: KStar((("width", 8),), k, k, k, 2, 2, 0, s, lr)
        >>> [p.lr for p in propose_points([mk(1e-3, 400.0, "inside"), mk(3e-3, 150.0, "inside")],
        ...                               ("width",), (120, 300), 300)]
        [0.003]
    """
    lo, hi = window
    middle = math.sqrt(max(lo, 1.0) * hi)
    groups: dict[tuple, dict[float, list[KStar]]] = {}
    for p in points:
        key = tuple((a, v) for a, v in p.point if a in by)
        groups.setdefault(key, {}).setdefault(p.lr, []).append(p)
    out = []
    for key, by_lr in groups.items():
        lrs = sorted(by_lr)
        status = {lr: _group_status(by_lr[lr]) for lr in lrs}
        kstar = {lr: float(np.mean([p.mean for p in by_lr[lr]])) for lr in lrs}
        inside = [lr for lr in lrs if status[lr] == INSIDE]
        if inside:
            best = min(inside, key=lambda lr: (abs(math.log(kstar[lr] / middle)), -lr))
            out.append(PointProposal(key, best, True, "pilot", kstar[best]))
            continue
        slow = [lr for lr in lrs if status[lr] in (LATE, AT_END)]
        fast = [lr for lr in lrs if status[lr] in (EARLY, NONE)]
        pair = [(a, b) for a in slow for b in fast if a < b
                and not any(a < lr < b for lr in lrs)]
        usable = [(a, b) for a, b in pair if status[b] == EARLY]
        if usable:
            a, b = usable[0]
            ka, kb = kstar[a], kstar[b]  # ka may be censored at the last epoch: conservative
            t = (math.log(ka) - math.log(middle)) / (math.log(ka) - math.log(kb))
            lr = math.exp(math.log(a) + t * (math.log(b) - math.log(a)))
            censored = " (k* at the last epoch there, so k* may land later)" if status[a] == (
                AT_END) else ""
            out.append(PointProposal(key, float(f"{lr:.3g}"), True,
                                     f"interpolated between lr={a:g} (k* {ka:.0f}) and lr={b:g} "
                                     f"(k* {kb:.0f}){censored}; not run", middle))
            continue
        if slow and len(slow) == len(lrs):
            why = (f"k* comes too late even at the largest pilot lr={lrs[-1]:g} (mean "
                   f"{kstar[lrs[-1]]:.0f}); try larger lrs")
            out.append(PointProposal(key, lrs[-1], False, why, kstar[lrs[-1]]))
        elif fast and len(fast) == len(lrs):
            diverged = status[lrs[0]] == NONE
            why = (f"{'training diverges' if diverged else 'k* comes too early'} even at the "
                   f"smallest pilot lr={lrs[0]:g}; try smaller lrs")
            out.append(PointProposal(key, lrs[0], False, why, kstar[lrs[0]]))
        else:
            mixed = [lr for lr in lrs if status[lr] == "mixed"]
            why = ("the points sharing this lr disagree (some early, some late) at "
                   f"lr={', '.join(f'{v:g}' for v in mixed)}; give lr_by more axes"
                   if mixed else "k* does not move steadily with the lr (a seed diverged or "
                   "the pilots are noisy); rerun with more seeds or a finer grid of lrs")
            nearest = min(lrs, key=lambda lr: abs(math.log(max(kstar[lr], 1.0) / middle))
                          if np.isfinite(kstar[lr]) else math.inf)
            out.append(PointProposal(key, nearest, False, why, kstar[nearest]))
    return out


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The outcome of `calibrate`: every pilot point's `k*`, one proposed lr per point of `by`,
    the single lr that fits every point (if any), and the verification run's `k*`."""

    name: str
    epochs: int
    window: tuple[float, float]
    lrs: tuple[float, ...]
    num_seeds: int
    by: tuple[str, ...]
    points: tuple[KStar, ...]
    proposals: tuple[PointProposal, ...]
    proposal: float | None  # the single lr with every point inside the window; None: none
    advice: str  # one sentence about the single lr
    workdir: str
    verified: tuple[KStar, ...] | None = None  # k* of the proposed table, when verified

    def table(self) -> str:
        """The proposed rates as a `lr_table` (`"8=0.003, 16=0.001, ..."`, keyed by `by`)."""
        return format_lr_table({tuple(v for _, v in p.point): float(f"{p.lr:.3g}")
                                for p in self.proposals})

    def override(self) -> str:
        """The proposal as command-line overrides of `ntkbench run`."""
        return f"--config.lr_by={','.join(self.by)} --config.lr_table='{self.table()}'"

    def apply(self, config: SweepConfig) -> SweepConfig:
        """`config` with the proposed per-point learning rates."""
        return dataclasses.replace(config, lr_by=",".join(self.by), lr_table=self.table())

    def format(self) -> str:
        """The pilots as a table, the per-point proposal, its override, what could not be
        placed and why, and the single-lr verdict (what `ntkbench calibrate` prints)."""
        return format_calibration(self)


def default_by(config: SweepConfig) -> tuple[str, ...]:
    """The axes an lr table follows by default: the sweep's varying ones among `LR_AXES`."""
    values = config.axis_values()
    return tuple(a for a in LR_AXES if len(values[a]) > 1)


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
    """`config` with one lr everywhere, `num_seeds` seeds (and one data draw), NTK records off:
    what a pilot trains (every point of the sweep, so that each gets its own proposal)."""
    return dataclasses.replace(
        config, name=f"{config.name}-calibrate", num_seeds=num_seeds, num_data_draws=1,
        lr=float(lr), lr_by="", lr_table="", ntk_every=0, ntk_early_every=0,
        ntk_early_until=0, layer_ntks=False, kernel_velocity=False, linearized=False)


def calibrate(config, *, lrs: Sequence[float], num_seeds: int = 2,
              window: tuple[float, float] | None = None, by: Sequence[str] | None = None,
              verify: bool = False, workdir: str, hooks=None, runtime=None,
              model_fn=None) -> Calibration:
    """Run a pilot of `config` per lr and propose one lr per point of `by` that puts `k*` in
    `window` (module docstring).

    Each pilot (every point of the sweep, `num_seeds` seeds, NTK records off) is an ordinary
    sweep in `workdir/lr_<value>`: rerunning resumes it, `ntkbench.load` reads it. With
    `verify`, the proposed table runs as `workdir/proposed`.

    Args:
        config: a `SweepConfig` (or a preset's `ConfigDict`); its `epochs` and all other fields
            are kept.
        lrs: the learning rates to try.
        num_seeds: seeds per pilot point.
        window: `(lo, hi)` epochs where `k*` should land; default `(0.4·epochs, epochs)`.
        by: the axes the lr may vary with (default `default_by(config)`); () for one lr.
        verify: also run the proposed table and report where its `k*` lands.
        workdir: the parent directory of the pilots.
        hooks, runtime, model_fn: passed to `ntkbench.run`.

    Returns:
        A `Calibration` (`.format()` prints it, `.override()` and `.apply(config)` use it).

    Example:
        >>> cal = calibrate(ntkbench.preset("quick"), lrs=[1e-4, 1e-3, 1e-2],
        ...                 workdir="runs/calibrate-quick")  # doctest: +SKIP
        >>> cal.override()  # doctest: +SKIP
        "--config.lr_by=width --config.lr_table='(0.01, 0.003, ...)'"
    """
    if not isinstance(config, SweepConfig):
        config = from_config_dict(config)
    lrs, window = _check(lrs, window, config.epochs, num_seeds)
    by = default_by(config) if by is None else tuple(by)
    bad = [a for a in by if a not in LR_AXES]
    if bad:
        raise ConfigError(f"by={list(by)}: the lr can vary only with {', '.join(LR_AXES)}.")
    pilots = {lr: pilot_config(config, lr, num_seeds) for lr in lrs}  # all checked first
    points = []
    for lr, pilot in pilots.items():
        path = os.path.join(workdir, f"lr_{lr:g}")
        if hooks is not None:
            hooks.log(f"calibrate: pilot lr={lr:g} in {path}")
        run(pilot, path, hooks=hooks, runtime=runtime, model_fn=model_fn)
        table = kstar_table(load(path, summaries=False), window, always=by)
        points += [dataclasses.replace(p, lr=lr) for p in table]
    proposals = propose_points(points, by, window, config.epochs) if by else []
    proposal, advice = propose(points, window)
    cal = Calibration(config.name, config.epochs, window, lrs, num_seeds, by, tuple(points),
                      tuple(proposals), proposal, advice, os.path.abspath(workdir))
    if verify and by:
        check = dataclasses.replace(cal.apply(pilot_config(config, lrs[0], num_seeds)),
                                    name=f"{config.name}-calibrate-proposed")
        path = os.path.join(workdir, "proposed")
        if hooks is not None:
            hooks.log(f"calibrate: the proposed table in {path}")
        run(check, path, hooks=hooks, runtime=runtime, model_fn=model_fn)
        cal = dataclasses.replace(cal, verified=tuple(kstar_table(
            load(path, summaries=False), window, always=by)))
    return cal


def format_calibration(cal: Calibration) -> str:
    """The calibration as text: the pilots (lr, point, k* mean and range, where), the proposal
    per point with its override, the points it could not place, and the single-lr verdict."""
    rows = [("lr", "point", "k* mean", "k* range", "seeds", "where")]
    for p in cal.points:
        span = "-" if p.status == NONE else f"{p.low:.0f}..{p.high:.0f}"
        mean = "-" if p.status == NONE else f"{p.mean:.1f}"
        where = {AT_END: f"at the last epoch ({p.at_end})", NONE: "no k*"}.get(p.status,
                                                                                p.status)
        rows.append((f"{p.lr:g}", p.label(), mean, span, f"{p.found}/{p.replicates}", where))
    lo, hi = cal.window
    head = (f"calibration of {cal.name!r}: k* window [{lo:g}, {hi:g}] of {cal.epochs} epochs, "
            f"{cal.num_seeds} seed(s) per point; pilots in {cal.workdir}/lr_*")
    lines = [head, "", *_columns(rows)]
    if cal.proposals:
        rows = [("point", "proposed lr", "k*", "how")]
        rows += [(p.label(), f"{p.lr:g}", "-" if not np.isfinite(p.kstar) else f"{p.kstar:.0f}",
                  p.how if p.placed else f"NOT PLACED: {p.how}") for p in cal.proposals]
        placed = sum(p.placed for p in cal.proposals)
        lines += ["", f"one lr per point of {', '.join(cal.by)}: {placed} of "
                      f"{len(cal.proposals)} placed", *_columns(rows),
                  "", "as overrides of `ntkbench run`:", f"  {cal.override()}"]
        if cal.verified is not None:
            lines += ["", "the proposed table, run (workdir/proposed):"]
            lines += [f"  {p.label()}: mean k* {p.mean:.0f} (range {p.low:.0f}..{p.high:.0f}),"
                      f" {p.status.replace('_', ' ')}" for p in cal.verified]
    verdict = (f"one lr for every point: lr={cal.proposal:g} ({cal.advice})"
               if cal.proposal is not None else f"one lr for every point: none ({cal.advice})")
    return "\n".join([*lines, "", verdict])


def _columns(rows) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
