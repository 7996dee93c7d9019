"""Per-member summaries, power-law fits and transition widths of a sweep (SPEC.md §5-7, §11).

A sweep's results are an `xarray.Dataset` with one dimension per sweep axis (a subset of
`SWEEP_AXES`, in that order; a dimension of length 1 may be present) and `epoch` (record index
`k = 0..E`, 0 = initialization). Per-epoch variables over `(*axes, epoch)`: `train_loss`,
`test_loss`, `train_accuracy`, `test_accuracy`, `ntk_trace`, `ntk_entropy`, `ntk_erank`,
`label_alignment`, `label_alignment_traced`, `eigvec_misalignment` (NaN where the NTK was not
recorded: every `s` epochs plus the final one); `diverged`, bool over the axes.

Everything here is numpy/scipy in float64 on host arrays; the jitted float32 observables live in
`ntkbench.observables`.

Decisions (SPEC.md leaves them open):

- `k*` is the first NTK record (an epoch where `ntk_trace` is not NaN) with the minimum test
  loss among the recorded epochs; with `s = 1` that is exactly `argmin` of the test loss. `T*`,
  `erank*` and `α*` are read at `k*`, so they are measured, never interpolated. `min_test_loss`
  is the minimum over all epochs (the scaling-law quantity), which can be lower than the test
  loss at `k*` when `s > 1`. A sweep that recorded no NTK gets `k*` = argmin over all epochs and
  NaN NTK summaries.
- The adaptation rate uses the recorded epochs only (trace and train loss at the same epochs),
  with a running-mean window of `window` epochs, i.e. `max(2, round(window / s))` records
  (`s` inferred as the most common spacing of the recorded epochs, or taken from
  `ds.attrs["ntk_every"]`). `α*` is NaN and `alpha_star_at_edge` True when `k*` lies in the first
  or last `⌈window_records / 2⌉` records, where the window does not fit (SPEC.md §7: flag, do not
  extrapolate).
- Diverged members get NaN summaries (`alpha_star_at_edge` False) and are left out of fits.
- Seeds and data draws (`REPLICATE_AXES`) are the replicates: fits average over them and
  bootstrap by resampling them; every other sweep axis is kept (one fit per depth, say).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import xarray as xr
from scipy import optimize

SWEEP_AXES = ("depth", "width", "n_train", "noise", "data_draw", "seed")
"""Sweep dimensions in their canonical order."""

REPLICATE_AXES = ("data_draw", "seed")
"""Sweep dimensions whose members are statistical replicates (averaged over, bootstrapped)."""

PER_EPOCH_VARIABLES = (
    "train_loss", "test_loss", "train_accuracy", "test_accuracy", "ntk_trace", "ntk_entropy",
    "ntk_erank", "label_alignment", "label_alignment_traced", "eigvec_misalignment",
)

SUMMARY_VARIABLES = (
    "T0", "k_star", "T_star", "trace_ratio", "erank_star", "alpha_star", "alpha_star_at_edge",
    "min_test_loss",
)


# ----------------------------------------------------------------------------- dataset helpers
def sweep_axes(ds: xr.Dataset) -> tuple[str, ...]:
    """The sweep dimensions of `ds`: the dimensions of its losses but `epoch`, canonical first.

    Dimensions that only some variables have (`layer` of the per-layer records, `row`/`col` of
    NTK snapshots) are not sweep axes.

    Example:
        >>> ds = xr.Dataset({"train_loss": (("seed", "width", "epoch"), np.ones((2, 3, 4)))})
        >>> sweep_axes(ds)
        ('width', 'seed')
    """
    source = next((ds[v].dims for v in ("test_loss", "train_loss") if v in ds), tuple(ds.dims))
    dims = [d for d in source if d != "epoch"]
    return tuple([a for a in SWEEP_AXES if a in dims] + [d for d in dims if d not in SWEEP_AXES])


def replicate_axes(ds: xr.Dataset) -> tuple[str, ...]:
    """The replicate dimensions (`data_draw`, `seed`) present in `ds`."""
    return tuple(a for a in sweep_axes(ds) if a in REPLICATE_AXES)


def _require(ds: xr.Dataset, names: Sequence[str], what: str) -> None:
    missing = [n for n in names if n not in ds]
    if missing:
        raise ValueError(
            f"{what} needs the variables {missing}, which the Dataset lacks (it has "
            f"{sorted(ds.data_vars)}). Results from ntkbench runs carry them; for hand-built "
            "Datasets fill unrecorded NTK quantities with NaN."
        )


def _member_array(ds: xr.Dataset, name: str, axes: Sequence[str]) -> np.ndarray:
    """`ds[name]` as float64 `(num_members, E + 1)` in the order of `axes`."""
    da = ds[name].transpose(*axes, "epoch")
    return np.asarray(da.values, np.float64).reshape(-1, da.sizes["epoch"])


# ----------------------------------------------------------------------------- adaptation rate
def adaptation_rate_np(trace: np.ndarray, train_loss: np.ndarray, window: int) -> np.ndarray:
    r"""float64 numpy twin of `ntkbench.observables.adaptation_rate` (same definition).

    Running means of `T` and `ℓ = ln L` over `window` records, placed at their centres; `α` is the
    ratio of their central differences at integer records, `−ΔT̄/Δℓ̄`. NaN in the first and last
    `⌈window/2⌉` records.

    Args:
        trace: `T` per record, `(K,)`.
        train_loss: `L_train` per record, `(K,)`.
        window: running-mean window in records, at least 2.

    Returns:
        `α`, `(K,)`.

    Example:
        >>> loss = np.exp(-np.linspace(0.0, 5.0, 30))
        >>> adaptation_rate_np(1.0 - 0.7 * np.log(loss), loss, 4)[2:-2].round(12).tolist()[:3]
        [0.7, 0.7, 0.7]
    """
    if window < 2:
        raise ValueError(f"window={window} records: use window >= 2.")
    trace = np.asarray(trace, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_loss = np.log(np.asarray(train_loss, np.float64))
    num, half = trace.shape[0], (window + 1) // 2
    out = np.full(num, np.nan)
    if num < 2 * half + 1:
        return out
    box = np.ones(window) / window
    t_bar, l_bar = np.convolve(trace, box, "valid"), np.convolve(log_loss, box, "valid")
    step = 1 if window % 2 == 0 else 2
    with np.errstate(divide="ignore", invalid="ignore"):
        out[half:num - half] = -(t_bar[step:] - t_bar[:-step]) / (l_bar[step:] - l_bar[:-step])
    return out


def _infer_ntk_every(recorded: np.ndarray) -> int:
    """Most common spacing of the recorded epoch indices (the final record may be off-grid)."""
    if recorded.size < 2:
        return 1
    gaps = np.diff(recorded)
    values, counts = np.unique(gaps, return_counts=True)
    return int(values[np.argmax(counts)])


# ----------------------------------------------------------------------------- summarize
def summarize(ds: xr.Dataset, window: int = 20, *, ntk_every: int | None = None) -> xr.Dataset:
    r"""Add the per-member summaries of SPEC.md §5-7 to a sweep Dataset.

    Added variables over the sweep axes (no `epoch`): `T0 = T(0)`, `k_star` (the epoch of `k*`,
    float, NaN when undefined), `T_star = T(k*)`, `trace_ratio = (T* − T0)/T0`,
    `erank_star = erank(k*)`, `alpha_star = α(k*)`, `alpha_star_at_edge` (bool), `min_test_loss`
    (over all epochs). Also `adaptation_rate` over `(*axes, epoch)`, the `α` of every record (NaN
    elsewhere). See the module docstring for the choice of `k*` and the windows.

    Args:
        ds: sweep results (schema in the module docstring); needs `train_loss`, `test_loss`,
            `ntk_trace`, `ntk_erank`; `diverged` is optional (default: none diverged).
        window: running-mean window of the adaptation rate in EPOCHS (paper: 20).
        ntk_every: NTK recording stride `s` in epochs; default `ds.attrs["ntk_every"]`, else
            inferred per member from where `ntk_trace` is finite.

    Returns:
        A copy of `ds` with the summaries added; attrs `window_epochs` records the window.

    Example:
        >>> e = np.arange(50.0)
        >>> ds = xr.Dataset(
        ...     {"train_loss": (("seed", "epoch"), np.exp(-e / 10)[None]),
        ...      "test_loss": (("seed", "epoch"), ((e - 30) ** 2 / 100 + 1)[None]),
        ...      "ntk_trace": (("seed", "epoch"), (1 + 0.5 * e / 10)[None]),
        ...      "ntk_erank": (("seed", "epoch"), np.full((1, 50), 7.0))},
        ...     coords={"seed": [0], "epoch": e})
        >>> s = summarize(ds, window=10)
        >>> float(s.k_star[0]), float(s.trace_ratio[0]), round(float(s.alpha_star[0]), 6)
        (30.0, 1.5, 0.5)
    """
    _require(ds, ("train_loss", "test_loss", "ntk_trace", "ntk_erank"), "summarize")
    if "epoch" not in ds.dims:
        raise ValueError("summarize needs an `epoch` dimension (record index, 0 = initialization).")
    if window < 1:
        raise ValueError(f"window={window} epochs: use a positive window (the paper uses 20).")
    axes = sweep_axes(ds)
    shape = tuple(ds.sizes[a] for a in axes)
    epochs = np.asarray(ds["epoch"].values, np.float64)
    train, test = _member_array(ds, "train_loss", axes), _member_array(ds, "test_loss", axes)
    trace, erank = _member_array(ds, "ntk_trace", axes), _member_array(ds, "ntk_erank", axes)
    num_members, num_epochs = train.shape
    if "diverged" in ds:
        diverged = np.asarray(ds["diverged"].transpose(*axes).values, bool).reshape(-1)
    else:
        diverged = np.zeros(num_members, bool)
    stride = ntk_every if ntk_every is not None else ds.attrs.get("ntk_every")

    out = {name: np.full(num_members, np.nan) for name in SUMMARY_VARIABLES}
    out["alpha_star_at_edge"] = np.zeros(num_members, bool)
    alpha_all = np.full((num_members, num_epochs), np.nan)
    for i in range(num_members):
        if diverged[i] or not np.any(np.isfinite(test[i])):
            continue
        out["min_test_loss"][i] = np.nanmin(test[i])
        recorded = np.flatnonzero(np.isfinite(trace[i]))
        candidates = recorded if recorded.size and np.any(np.isfinite(test[i, recorded])) else None
        if candidates is None:  # no NTK recorded: k* from the losses alone
            out["k_star"][i] = epochs[int(np.nanargmin(test[i]))]
            continue
        k = int(candidates[np.nanargmin(test[i, candidates])])  # first minimum among records
        out["k_star"][i] = epochs[k]
        out["T0"][i] = trace[i, 0]
        out["T_star"][i] = trace[i, k]
        out["erank_star"][i] = erank[i, k]
        s = int(stride) if stride else _infer_ntk_every(recorded)
        w = max(2, int(round(window / s)))
        alpha = adaptation_rate_np(trace[i, recorded], train[i, recorded], w)
        alpha_all[i, recorded] = alpha
        pos = int(np.searchsorted(recorded, k))
        half = (w + 1) // 2
        out["alpha_star_at_edge"][i] = pos < half or pos > recorded.size - 1 - half
        out["alpha_star"][i] = alpha[pos]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["trace_ratio"] = (out["T_star"] - out["T0"]) / out["T0"]

    result = ds.copy()
    coords = {a: ds[a] for a in axes if a in ds.coords}
    for name, values in out.items():
        result[name] = xr.DataArray(values.reshape(shape), dims=axes, coords=coords)
    result["adaptation_rate"] = xr.DataArray(
        alpha_all.reshape(shape + (num_epochs,)), dims=axes + ("epoch",),
        coords={**coords, "epoch": ds["epoch"]},
    )
    result.attrs["window_epochs"] = int(window)
    if stride:
        result.attrs["ntk_every"] = int(stride)
    return result


# ----------------------------------------------------------------------------- power laws
class PowerLawFit(NamedTuple):
    """`y = c · x^beta`; `[ci_low, ci_high]` is the bootstrap confidence interval of `beta`."""

    c: float
    beta: float
    ci_low: float
    ci_high: float


class BrokenPowerLawFit(NamedTuple):
    """Continuous two-segment power law with its breakpoint (the transition) at `x_break`.

    `y = c_break · (x / x_break)^beta_below` for `x ≤ x_break`, `^beta_above` above;
    `[ci_low, ci_high]` is the bootstrap confidence interval of `x_break`.
    """

    x_break: float
    ci_low: float
    ci_high: float
    beta_below: float
    beta_above: float
    c_break: float


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


def _bootstrap_means(y: np.ndarray, num_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """`(num_bootstrap, num_x)` means of replicates resampled with replacement at each x."""
    out = np.full((num_bootstrap, y.shape[0]), np.nan)
    for i, row in enumerate(y):
        vals = row[np.isfinite(row)]
        if vals.size:
            out[:, i] = vals[rng.integers(0, vals.size, (num_bootstrap, vals.size))].mean(axis=1)
    return out


def _loglog(x: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`ln x`, `ln y` and a 0/1 weight for the usable points (finite, positive)."""
    ok = np.isfinite(means) & (means > 0) & np.isfinite(x) & (x > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), 0.0)
        v = np.where(ok, np.log(np.where(ok, means, 1.0)), 0.0)
    return u, v, ok.astype(np.float64)


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
    lo = hi = math.nan
    if num_bootstrap > 0 and np.any(np.isfinite(y).sum(axis=-1) > 1):
        rng = np.random.default_rng(seed)
        ub, vb, wb = _loglog(x, _bootstrap_means(y, num_bootstrap, rng))
        lo, hi = _interval(_weighted_line(ub, vb, wb)[1], confidence)
    return PowerLawFit(float(np.exp(a)), float(b), lo, hi)


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
    the grid, whose spacing bounds its resolution) and takes percentiles at `confidence`.

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
    nan = BrokenPowerLawFit(*([math.nan] * 6))
    u, v, w = _loglog(x, _replicate_means(y))
    usable = np.unique(u[w > 0])
    if usable.size < 4:
        return nan
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
    ci = (math.nan, math.nan)
    if num_bootstrap > 0 and np.any(np.isfinite(y).sum(axis=-1) > 1):
        rng = np.random.default_rng(seed)
        ub, vb, wb = _loglog(x, _bootstrap_means(y, num_bootstrap, rng))
        breaks = np.full(num_bootstrap, np.nan)
        for start in range(0, num_bootstrap, 128):  # chunks bound the (B, G, 3, 3) memory
            sl = slice(start, start + 128)
            _, sse_b = _hinge_sse(ub, vb[sl], wb[sl], grid)
            enough = (wb[sl] > 0).sum(axis=-1) >= 4
            breaks[sl] = np.where(enough, grid[np.argmin(sse_b, axis=-1)], np.nan)
        ci = tuple(math.exp(c) if np.isfinite(c) else math.nan
                   for c in _interval(breaks, confidence))
    return BrokenPowerLawFit(math.exp(b), ci[0], ci[1], float(beta_below), float(beta_above),
                             float(math.exp(ln_c)))


# ----------------------------------------------------------------------------- sweep-level fits
def _group_axes(ds: xr.Dataset, axis: str) -> tuple[str, ...]:
    return tuple(a for a in sweep_axes(ds) if a != axis and a not in REPLICATE_AXES)


def _check_axis(ds: xr.Dataset, var: str, axis: str) -> None:
    if var not in ds:
        raise ValueError(
            f"No variable {var!r} in the Dataset; summaries come from ntkbench.analysis.summarize"
            f"(ds). Available: {sorted(ds.data_vars)}."
        )
    if axis not in sweep_axes(ds) or axis in REPLICATE_AXES:
        raise ValueError(
            f"Cannot fit against {axis!r}: choose one of the non-replicate sweep axes "
            f"{[a for a in sweep_axes(ds) if a not in REPLICATE_AXES]}."
        )


def _per_group(ds: xr.Dataset, var: str, axis: str, fit_fn, fields: Sequence[str]) -> xr.Dataset:
    _check_axis(ds, var, axis)
    groups = _group_axes(ds, axis)
    reps = replicate_axes(ds)
    x = np.asarray(ds[axis].values if axis in ds.coords else np.arange(ds.sizes[axis]), float)
    da = ds[var]
    if "diverged" in ds:
        da = da.where(~ds["diverged"].astype(bool))
    shape = tuple(ds.sizes[a] for a in groups)
    out = {f: np.full(shape, np.nan) for f in fields}
    for idx in itertools.product(*[range(n) for n in shape]):
        sel = da.isel(dict(zip(groups, idx)))
        y = np.asarray(sel.transpose(axis, *reps).values, np.float64).reshape(x.size, -1)
        fit = fit_fn(x, y)
        for f in fields:
            out[f][idx] = getattr(fit, f)
    coords = {a: ds[a] for a in groups if a in ds.coords}
    res = xr.Dataset({f: xr.DataArray(v, dims=groups, coords=coords) for f, v in out.items()})
    res.attrs.update(variable=var, axis=axis)
    return res


def fit_scaling(
    ds: xr.Dataset,
    var: str,
    axis: str,
    *,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> xr.Dataset:
    r"""`fit_power_law` of a summary against a sweep axis, separately per value of the others.

    For every combination of the non-replicate axes other than `axis` (e.g. each depth), the
    values of `var` over `(axis, replicates)` are fitted as `y = c · axis^β`, averaging over seeds
    and data draws and bootstrapping over them. Diverged members are left out.

    Args:
        ds: a summarized sweep (`summarize(ds)`), or any Dataset with `var` over the sweep axes.
        var: the summary to fit, e.g. `"min_test_loss"`, `"erank_star"`, `"T0"`, `"alpha_star"`.
        axis: the sweep axis to fit against, e.g. `"width"` or `"n_train"`.
        num_bootstrap, confidence, seed: as in `fit_power_law`.

    Returns:
        Dataset over the other non-replicate axes with `c`, `beta`, `ci_low`, `ci_high`; attrs
        `variable` and `axis`.

    Example:
        >>> w = np.array([16.0, 64.0, 256.0])
        >>> loss = 2.0 * w[None, :, None] ** np.array([-0.5, -0.3])[:, None, None] * np.ones(4)
        >>> ds = xr.Dataset({"min_test_loss": (("depth", "width", "seed"), loss)},
        ...                 coords={"depth": [3, 4], "width": w, "seed": np.arange(4)})
        >>> fit_scaling(ds, "min_test_loss", "width", num_bootstrap=10)["beta"].values.round(3)
        array([-0.5, -0.3])
    """
    fn = lambda x, y: fit_power_law(x, y, num_bootstrap=num_bootstrap, confidence=confidence,
                                    seed=seed)
    return _per_group(ds, var, axis, fn, PowerLawFit._fields)


def transition_width(
    ds: xr.Dataset,
    var: str = "erank_star",
    axis: str = "width",
    *,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> xr.Dataset:
    r"""`fit_broken_power_law` of a summary against width, separately for each value of the others.

    The paper's transition (SPEC.md §11): `erank*` grows as a power law, then saturates;
    `trace_ratio` is flat, then declines as a power law; the breakpoint is the transition width.

    Args:
        ds: a summarized sweep.
        var: `"erank_star"` or `"trace_ratio"` (any positive summary works).
        axis: the sweep axis, normally `"width"`.
        num_bootstrap, confidence, seed: as in `fit_broken_power_law`.

    Returns:
        Dataset over the other non-replicate axes with `x_break`, `ci_low`, `ci_high`,
        `beta_below`, `beta_above`, `c_break`.

    Example:
        >>> w = 2.0 ** np.arange(3, 13)
        >>> er = np.minimum(w, 512.0)[:, None] ** 0.5 * np.ones(3)
        >>> ds = xr.Dataset({"erank_star": (("width", "seed"), er)},
        ...                 coords={"width": w, "seed": np.arange(3)})
        >>> float(transition_width(ds, num_bootstrap=0)["x_break"].round())
        512.0
    """
    fn = lambda x, y: fit_broken_power_law(x, y, num_bootstrap=num_bootstrap,
                                           confidence=confidence, seed=seed)
    return _per_group(ds, var, axis, fn, BrokenPowerLawFit._fields)
