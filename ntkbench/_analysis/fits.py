"""Sweep-level fits: power laws and transitions of sweep summaries against a sweep axis.

Seeds and data draws (`REPLICATE_AXES`) are the replicates: fits average over them and bootstrap
by resampling them; every other sweep axis is kept (one fit per depth, say). A log-log fit can
only use points with a positive mean: the points it drops are listed in the `dropped` attribute
of the result, never silently removed. The fits of one curve are in `power_laws.py`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import xarray as xr

from ntkbench._analysis.power_laws import (
    BrokenPowerLawFit,
    PowerLawFit,
    fit_broken_power_law,
    fit_power_law,
)
from ntkbench._analysis.summaries import replicate_axes, sweep_axes
from ntkbench._config import REPLICATE_AXES


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
    fields = [f for f in fields if f != "dropped"]
    out = {f: np.full(shape, np.nan) for f in fields}
    dropped = {}
    for idx in itertools.product(*[range(n) for n in shape]):
        sel = da.isel(dict(zip(groups, idx)))
        y = np.asarray(sel.transpose(axis, *reps).values, np.float64).reshape(x.size, -1)
        fit = fit_fn(x, y)
        for f in fields:
            out[f][idx] = getattr(fit, f)
        if fit.dropped:
            label = ", ".join(f"{a}={ds[a].values[i]}" for a, i in zip(groups, idx)) or "all"
            dropped[label] = list(fit.dropped)
    coords = {a: ds[a] for a in groups if a in ds.coords}
    res = xr.Dataset({f: xr.DataArray(v, dims=groups, coords=coords) for f, v in out.items()})
    res.attrs.update(variable=var, axis=axis, dropped=dropped)
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

    The paper's transition (docs/definitions.md §11): `erank*` grows as a power law, then saturates;
    `trace_ratio` is flat, then declines as a power law; the breakpoint is the transition width.

    Args:
        ds: a summarized sweep.
        var: `"erank_star"` or `"trace_ratio"` (any positive summary works).
        axis: the sweep axis, normally `"width"`.
        num_bootstrap, confidence, seed: as in `fit_broken_power_law`.

    Returns:
        Dataset over the other non-replicate axes with `x_break`, `ci_low`, `ci_high`,
        `beta_below`, `beta_above`, `c_break` and the exponents' intervals `beta_below_low`,
        `beta_below_high`, `beta_above_low`, `beta_above_high`.

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
