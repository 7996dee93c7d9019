"""The bootstrap intervals of the fits: scipy.stats.bootstrap (what `ntkbench/_analysis/
power_laws.py` uses) against the hand-written resampling it replaced (kept here), for speed and
for the intervals they give.

    python benchmarks/bench_bootstrap.py [--resamples=1000] [--repeats=5]

Both are the same percentile bootstrap: the replicates (seeds) at each abscissa are resampled
with replacement, independently per abscissa, the replicate means refitted, and the 2.5% and
97.5% percentiles of the refitted statistic taken. scipy's is `scipy.stats.bootstrap` with one
sample per abscissa (`paired=False`: a stratified resampling), `method="percentile"` and a
vectorized statistic. Measured for the power-law exponent (a closed-form slope) and for the
broken power law's breakpoint (a grid search over 256 breakpoints per resample), on a sweep of
10 widths x 20 seeds like `paper_model_scaling`'s. The table gives the fastest of `--repeats`
calls and the two intervals; a report makes one such fit per quantity and curve (dozens).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ntkbench._analysis import power_laws as pl


def _sweep(rng, widths, seeds):
    x = np.asarray(widths, float)
    y = 3.0 * x[:, None] ** -0.5 * np.exp(0.1 * rng.normal(size=(x.size, seeds)))
    brk = np.where(x[:, None] < 256, (x[:, None] / 256) ** 0.6, 1.0) * np.exp(
        0.05 * rng.normal(size=(x.size, seeds)))
    return x, y, brk


def _hand_written(x, y, fit, resamples, seed, batch=None):
    """The replaced resampling: per x, `rng.integers` indices into its finite replicates."""
    del batch
    rng = np.random.default_rng(seed)
    means = np.full((resamples, y.shape[0]), np.nan)
    for i, row in enumerate(y):
        vals = row[np.isfinite(row)]
        if vals.size:
            means[:, i] = vals[rng.integers(0, vals.size, (resamples, vals.size))].mean(axis=1)
    out = np.concatenate([fit(x, means[s:s + 128]) for s in range(0, resamples, 128)])
    return pl._interval(out, 0.95)


def _slope(xs, means):
    return pl._weighted_line(*pl._loglog(xs, means))[1]


def _breaks(grid):
    def fit(xs, means):
        shape = means.shape[:-1]
        u, v, w = pl._loglog(xs, means.reshape(-1, means.shape[-1]))
        _, sse = pl._hinge_sse(u, v, w, grid)
        return grid[np.argmin(sse, axis=-1)].reshape(shape)
    return fit


def _fastest(fn, repeats):
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    widths = [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    x, y, brk = _sweep(rng, widths, 20)
    usable = np.unique(np.log(x))
    grid = np.linspace(usable[1], usable[-2], 256)
    n = args.resamples
    rows = [
        ("power law, hand-written", lambda: _hand_written(x, y, _slope, n, 0)),
        ("power law, scipy.stats.bootstrap", lambda: pl._bootstrap(x, y, _slope, n, 0.95, 0)),
        ("breakpoint, hand-written", lambda: np.exp(_hand_written(x, brk, _breaks(grid), n, 0))),
        ("breakpoint, scipy.stats.bootstrap",
         lambda: np.exp(pl._bootstrap(x, brk, _breaks(grid), n, 0.95, 0, 128))),
    ]
    print(f"{n} resamples, {x.size} abscissae x 20 replicates; fastest of {args.repeats}")
    print(f"{'fit':36} {'seconds':>9}  95% interval")
    for name, fn in rows:
        seconds, (lo, hi) = _fastest(fn, args.repeats)
        print(f"{name:36} {seconds:9.4f}  [{lo:.4g}, {hi:.4g}]")


if __name__ == "__main__":
    main()
