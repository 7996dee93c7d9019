"""Power-law and broken-power-law fits of arrays `(x, y[x, replicate])`, with bootstrap intervals.

The replicates (seeds) at each `x` are averaged before the log-log fit and resampled for the
interval; points without a finite, positive mean are left out and listed in `dropped`. The fits
of a whole sweep, one per value of the other axes, are in `fits.py`.

The intervals come from `scipy.stats.bootstrap` (a percentile bootstrap, one sample per `x`
resampled independently: `paired=False`), with the fits as vectorized statistics. It replaced a
hand-written resampling of the same algorithm: `python benchmarks/bench_bootstrap.py` (1000
resamples of 10 widths x 20 seeds, 2 loaded cores) measured 3.0 ms against 1.6 ms for an
exponent (the same interval: the same draws) and 0.26 s against 0.27 s for a breakpoint (its grid
search dominates; the draws differ, the intervals agree to the grid's resolution); a report makes
a few dozen such fits, so the difference is milliseconds. The fits
themselves (weighted least squares in log-log, the hinge grid) stay here: they are batched over
the resamples, which a per-resample `scipy.optimize` call would not be.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy import optimize, stats


# ----------------------------------------------------------------------------- power laws
class PowerLawFit(NamedTuple):
    """`y = c · x^beta`; `[ci_low, ci_high]` is the bootstrap confidence interval of `beta`."""

    c: float
    beta: float
    ci_low: float
    ci_high: float
    dropped: tuple[float, ...] = ()  # abscissae left out: no finite, positive mean


class BrokenPowerLawFit(NamedTuple):
    """Continuous two-segment power law with its breakpoint (the transition) at `x_break`.

    `y = c_break · (x / x_break)^beta_below` for `x ≤ x_break`, `^beta_above` above;
    `[ci_low, ci_high]` is the bootstrap confidence interval of `x_break`, `[beta_below_low,
    beta_below_high]` and `[beta_above_low, beta_above_high]` those of the two exponents (from the
    same resamples).
    """

    x_break: float
    ci_low: float
    ci_high: float
    beta_below: float
    beta_above: float
    c_break: float
    dropped: tuple[float, ...] = ()  # abscissae left out: no finite, positive mean
    beta_below_low: float = math.nan
    beta_below_high: float = math.nan
    beta_above_low: float = math.nan
    beta_above_high: float = math.nan


def _as_replicates(x, y, replicate_axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64)
    if y.ndim == 2:
        y = np.moveaxis(y, replicate_axis, -1)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must be (num_x,) or (num_x, num_replicates) with num_x = len(x) = {x.shape[0]}, "
            f"got {y.shape}; move the replicate (seed) axis last."
        )
    return x, y


def _replicate_means(y: np.ndarray) -> np.ndarray:
    finite = np.isfinite(y)
    count = finite.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, np.where(finite, y, 0.0).sum(axis=-1) / count, np.nan)


def _bootstrap(x: np.ndarray, y: np.ndarray, fit: Callable, num_bootstrap: int,
               confidence: float, seed: int, batch: int | None = None) -> tuple[float, float]:
    """Percentile interval of `fit(x, means)` (batched over leading axes of `means`) with the
    finite replicates at each x resampled independently (`scipy.stats.bootstrap`); NaN without
    replicates to resample. Resamples whose fit is undefined (NaN) are left out."""
    rows = [row[np.isfinite(row)] for row in y]
    keep = [i for i, r in enumerate(rows) if r.size]
    if num_bootstrap <= 0 or not any(rows[i].size > 1 for i in keep):
        return math.nan, math.nan
    xs = x[keep]
    # A single replicate always resamples to itself; scipy wants two observations per sample.
    samples = tuple(np.repeat(rows[i], 2) if rows[i].size == 1 else rows[i] for i in keep)

    def statistic(*data, axis=-1):
        return fit(xs, np.stack([np.mean(d, axis=axis) for d in data], axis=-1))

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # degenerate samples: NaN, handled below
        res = stats.bootstrap(samples, statistic, n_resamples=num_bootstrap, paired=False,
                              vectorized=True, confidence_level=confidence,
                              method="percentile", batch=batch,
                              rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    if np.isfinite(lo) and np.isfinite(hi):
        return float(lo), float(hi)
    return _interval(np.asarray(res.bootstrap_distribution, float), confidence)


def _loglog(x: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`ln x`, `ln y` and a 0/1 weight for the usable points (finite, positive)."""
    ok = np.isfinite(means) & (means > 0) & np.isfinite(x) & (x > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), 0.0)
        v = np.where(ok, np.log(np.where(ok, means, 1.0)), 0.0)
    return u, v, ok.astype(np.float64)


def _dropped(x: np.ndarray, w: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in x[w == 0])


def _weighted_line(u, v, w):
    """Least squares `v = a + b u` with 0/1 weights, batched over leading axes of `v`, `w`."""
    n = w.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        um = (w * u).sum(axis=-1) / n
        vm = (w * v).sum(axis=-1) / n
        du = u - um[..., None]
        sxx = (w * du**2).sum(axis=-1)
        b = (w * du * (v - vm[..., None])).sum(axis=-1) / sxx
        ok = (n >= 2) & (sxx > 0)
    return np.where(ok, vm - b * um, np.nan), np.where(ok, b, np.nan)


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return math.nan, math.nan
    lo, hi = np.percentile(samples, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(lo), float(hi)


def fit_power_law(
    x,
    y,
    *,
    replicate_axis: int = -1,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PowerLawFit:
    r"""Fit `y = c · x^β` by least squares in log-log, with a bootstrap interval for `β`.

    At each `x` the replicates (seeds) are averaged, `ȳ(x)`, and `ln ȳ = ln c + β ln x` is fitted
    to the points with `x > 0` and a finite, positive `ȳ`. The interval: `num_bootstrap` times,
    resample the finite replicates at each `x` with replacement, refit; percentile interval at
    `confidence`. NaN replicates are ignored; without replicates (1-D `y`, or one per `x`) the
    interval is NaN. Fewer than two usable points give NaN everywhere.

    Args:
        x: `(num_x,)` positive abscissae (widths, training-set sizes).
        y: `(num_x,)` or `(num_x, num_replicates)` (or `(num_replicates, num_x)` with
            `replicate_axis=0`).
        replicate_axis: the axis of a 2-D `y` that holds the replicates (seeds).
        num_bootstrap: bootstrap resamples (0: no interval).
        confidence: coverage of the interval.
        seed: seed of the bootstrap's numpy generator.

    Returns:
        `PowerLawFit(c, beta, ci_low, ci_high)`, the interval for `beta`.

    Example:
        >>> x = np.array([8.0, 32.0, 128.0, 512.0])
        >>> fit = fit_power_law(x, 3.0 * x[:, None] ** -0.5 * np.array([0.9, 1.0, 1.1]))
        >>> round(fit.c, 6), round(fit.beta, 6)
        (3.0, -0.5)
    """
    x, y = _as_replicates(x, y, replicate_axis)
    u, v, w = _loglog(x, _replicate_means(y))
    a, b = _weighted_line(u, v, w)
    lo, hi = _bootstrap(x, y, lambda xs, means: _weighted_line(*_loglog(xs, means))[1],
                        num_bootstrap, confidence, seed)
    return PowerLawFit(float(np.exp(a)), float(b), lo, hi, _dropped(x, w))


def _hinge_design(u: np.ndarray, breaks: np.ndarray) -> np.ndarray:
    """`(G, n, 3)` designs `[1, min(u − b, 0), max(u − b, 0)]` for each breakpoint `b`."""
    d = u[None, :] - breaks[:, None]
    return np.stack([np.ones_like(d), np.minimum(d, 0.0), np.maximum(d, 0.0)], axis=-1)


def _hinge_sse(u, v, w, breaks):
    """Least-squares hinge fits at every breakpoint, batched over rows of `v`, `w` `(B, n)`.

    Returns `theta (B, G, 3)` = `(ln c_break, β_below, β_above)` and `sse (B, G)`.
    """
    X = _hinge_design(u, breaks)  # (G, n, 3)
    num_g, n = X.shape[:2]
    xx = np.einsum("gni,gnj->ngij", X, X).reshape(n, num_g * 9)
    xv = X.transpose(1, 0, 2).reshape(n, num_g * 3)
    A = (w @ xx).reshape(-1, num_g, 3, 3) + 1e-12 * np.eye(3)
    rhs = ((w * v) @ xv).reshape(-1, num_g, 3)
    theta = np.linalg.solve(A, rhs[..., None])[..., 0]
    sse = (w * v * v).sum(axis=-1)[:, None] - np.einsum("bgi,bgi->bg", theta, rhs)
    return theta, sse


def fit_broken_power_law(
    x,
    y,
    *,
    replicate_axis: int = -1,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    num_grid: int = 256,
) -> BrokenPowerLawFit:
    r"""Fit a continuous two-segment power law and locate its breakpoint (the transition).

    In log-log, `ln ȳ = ln c_b + β₁ min(u − b, 0) + β₂ max(u − b, 0)` with `u = ln x` and the
    breakpoint `b = ln x_break` a free parameter: for each `b` on a grid of `num_grid` points
    between the second-smallest and second-largest `u` (each segment keeps at least two points)
    the other three parameters are linear least squares; the best grid point is refined by a
    bounded scalar minimization. `ȳ` is the mean over replicates, as in `fit_power_law`. The
    interval for `x_break` resamples replicates at each `x` (`num_bootstrap` times, breakpoint on
    the grid, whose spacing bounds its resolution) and takes percentiles at `confidence`; the
    exponents' intervals are those of the same resamples' fits at their grid breakpoints.

    Covers an `erank*` that grows as a power law and saturates (`β₂ ≈ 0`) and a trace ratio that is
    flat, then declines (`β₁ ≈ 0`, `β₂ < 0`). Needs at least 4 distinct usable `x`; else all NaN.

    Args:
        x: `(num_x,)` positive abscissae.
        y: `(num_x,)` or `(num_x, num_replicates)`.
        replicate_axis: the axis of a 2-D `y` that holds the replicates (seeds).
        num_bootstrap: bootstrap resamples (0: no interval).
        confidence: coverage of the interval.
        seed: seed of the bootstrap's numpy generator.
        num_grid: breakpoint grid size.

    Returns:
        `BrokenPowerLawFit(x_break, ci_low, ci_high, beta_below, beta_above, c_break)`.

    Example:
        >>> x = 2.0 ** np.arange(3, 13)
        >>> y = np.where(x < 256, (x / 256) ** 0.6, 1.0)
        >>> fit = fit_broken_power_law(x, y, num_bootstrap=0)
        >>> print(f"{fit.x_break:.1f} {fit.beta_below:.3f} {abs(fit.beta_above):.3f}")
        256.0 0.600 0.000
    """
    x, y = _as_replicates(x, y, replicate_axis)
    u, v, w = _loglog(x, _replicate_means(y))
    usable = np.unique(u[w > 0])
    if usable.size < 4:
        return BrokenPowerLawFit(*([math.nan] * 6), _dropped(x, w))
    lo_b, hi_b = usable[1], usable[-2]
    grid = np.linspace(lo_b, hi_b, num_grid)
    _, sse = _hinge_sse(u, v[None], w[None], grid)
    g = int(np.argmin(sse[0]))
    bracket = (grid[max(g - 1, 0)], grid[min(g + 1, num_grid - 1)])
    refined = optimize.minimize_scalar(
        lambda b: _hinge_sse(u, v[None], w[None], np.array([b]))[1][0, 0],
        bounds=bracket, method="bounded", options={"xatol": 1e-6},
    )
    b = float(refined.x) if refined.fun <= sse[0, g] else float(grid[g])
    theta, _ = _hinge_sse(u, v[None], w[None], np.array([b]))
    ln_c, beta_below, beta_above = theta[0, 0]
    def resampled(which):
        """The statistic `which` of each resample `(B, num_x)`: 0 `ln x_break` on the grid,
        1 `β_below`, 2 `β_above` at that breakpoint (NaN: fewer than 4 points)."""
        def statistic(xs, means):
            shape = means.shape[:-1]
            ub, vb, wb = _loglog(xs, means.reshape(-1, means.shape[-1]))
            theta_b, sse_b = _hinge_sse(ub, vb, wb, grid)
            best = np.argmin(sse_b, axis=-1)
            value = (grid[best] if which == 0
                     else theta_b[np.arange(best.size), best, which])
            enough = (wb > 0).sum(axis=-1) >= 4
            return np.where(enough, value, np.nan).reshape(shape)
        # Batches of 128 resamples bound the (B, G, 3, 3) memory of the grid search; one seed,
        # so the three intervals come from the same resamples.
        return _bootstrap(x, y, statistic, num_bootstrap, confidence, seed, 128)

    ci = tuple(math.exp(c) if np.isfinite(c) else math.nan for c in resampled(0))
    below, above = resampled(1), resampled(2)
    return BrokenPowerLawFit(math.exp(b), ci[0], ci[1], float(beta_below), float(beta_above),
                             float(math.exp(ln_c)), _dropped(x, w), *below, *above)

