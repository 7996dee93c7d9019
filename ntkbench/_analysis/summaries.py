"""Per-member summaries of a sweep: the points of reference of docs/definitions.md §5-7.

A sweep's results are an `xarray.Dataset` with one dimension per sweep axis (a subset of `AXES`;
a dimension of length 1 may be present) and `epoch` (record index `k = 0..E`, 0 =
initialization); `ntkbench._config.schema` names every variable. Everything here is numpy in float64 on
host arrays, except the adaptation rate, whose one definition is
`ntkbench.observables.adaptation_rate` (evaluated here in float64).

`k*` is the first epoch with the minimum test loss over all evaluated epochs. An ntkbench sweep
stores it, and the NTK quantities of the state at `k*` itself (`best_*`), computed when each
pack ends: `T*`, `erank*`, the kernel distance and output gap at `k*` are then exact, whatever
the NTK interval. For results without them (hand-built datasets, other tools), `k*` is the
first NTK record with the minimum test loss among NTK records (`attrs["k_star_source"]` says
which), so the quantities at `k*` are measured, never interpolated.

The adaptation rate uses the NTK records only (trace and train loss at the same epochs), with a
running-mean window of `window` epochs, i.e. `max(2, round(window / s))` records (`s` from
`ds.attrs["ntk_every"]` or the most common spacing of the records). `α*` is `α` at `k*`,
linearly interpolated between the two records around an off-grid `k*`; it is NaN and
`alpha_star_at_edge` True when `k*` lies outside the records where the window fits (the first
and last half-windows: flagged, not extrapolated). Diverged members get NaN summaries and are
left out of fits.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ntkbench._config import AXES, REPLICATE_AXES, SUMMARY_VARIABLES
from ntkbench.observables import adaptation_rate


def sweep_axes(ds: xr.Dataset) -> tuple[str, ...]:
    """The sweep dimensions of `ds`: the dimensions of its losses but `epoch`, canonical first.

    Example:
        >>> ds = xr.Dataset({"train_loss": (("seed", "width", "epoch"), np.ones((2, 3, 4)))})
        >>> sweep_axes(ds)
        ('width', 'seed')
    """
    source = next((ds[v].dims for v in ("test_loss", "train_loss") if v in ds), tuple(ds.dims))
    dims = [d for d in source if d != "epoch"]
    return tuple([a for a in AXES if a in dims] + [d for d in dims if d not in AXES])


def replicate_axes(ds: xr.Dataset) -> tuple[str, ...]:
    """The replicate dimensions (`data_draw`, `seed`) present in `ds`."""
    return tuple(a for a in sweep_axes(ds) if a in REPLICATE_AXES)


def _require(ds: xr.Dataset, names: Sequence[str], what: str) -> None:
    missing = [n for n in names if n not in ds]
    if missing:
        raise ValueError(
            f"{what} needs the variables {missing}, which the Dataset lacks (it has "
            f"{sorted(ds.data_vars)}). Results from ntkbench runs carry them; for hand-built "
            "Datasets fill unrecorded NTK quantities with NaN.")


def _member_array(ds: xr.Dataset, name: str, axes: Sequence[str]) -> np.ndarray:
    """`ds[name]` as float64 `(num_members, ...)` in the order of `axes`."""
    da = ds[name].transpose(*axes, ...)
    return np.asarray(da.values, np.float64).reshape((-1,) + da.shape[len(axes):])


def _infer_ntk_every(recorded: np.ndarray) -> int:
    """Most common spacing of the recorded epoch indices (the final record may be off-grid)."""
    if recorded.size < 2:
        return 1
    values, counts = np.unique(np.diff(recorded), return_counts=True)
    return int(values[np.argmax(counts)])


_alpha64 = jax.jit(adaptation_rate, static_argnums=2)


def alpha_series(trace: np.ndarray, train_loss: np.ndarray, window: int) -> np.ndarray:
    """`ntkbench.observables.adaptation_rate` in float64 on host arrays `(K,)`."""
    with jax.enable_x64(True):
        return np.asarray(_alpha64(jnp.asarray(trace, jnp.float64),
                                   jnp.asarray(train_loss, jnp.float64), int(window)))


def _alpha_at(epochs: np.ndarray, alpha: np.ndarray, k: float) -> tuple[float, bool]:
    """`α` at epoch `k` (interpolated between records) and whether `k` is outside its range."""
    ok = np.isfinite(alpha)
    if not ok.any() or k < epochs[ok][0] or k > epochs[ok][-1]:
        return np.nan, True
    return float(np.interp(k, epochs[ok], alpha[ok])), False


def summarize(ds: xr.Dataset, window: int = 20, *, ntk_every: int | None = None) -> xr.Dataset:
    r"""Add the per-member summaries (docs/definitions.md §5-7) to a sweep Dataset.

    Added over the sweep axes: `T0 = T(0)`, `k_star` (float epoch, NaN when undefined),
    `T_star`, `trace_ratio = (T* − T0)/T0`, `erank_star`, `alpha_star`, `alpha_star_at_edge`,
    `min_test_loss`, `kernel_distance_star`, `lin_output_gap_star`; and `adaptation_rate` over
    `(*axes, epoch)` (NaN off the NTK records). See the module docstring for `k*`.

    Args:
        ds: sweep results; needs `train_loss` and `test_loss`; the NTK summaries need
            `ntk_trace` and `ntk_erank` (NaN without them, e.g. with `ntk_every=0`).
        window: running-mean window of the adaptation rate in EPOCHS (the paper: 20).
        ntk_every: NTK stride `s` in epochs; default `ds.attrs["ntk_every"]`, else inferred.

    Returns:
        A copy of `ds` with the summaries; attrs `window_epochs` and `k_star_source`.

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
    _require(ds, ("train_loss", "test_loss"), "summarize")
    if "epoch" not in ds.dims:
        raise ValueError("summarize needs an `epoch` dimension (record index, 0 = initialization).")
    if window < 1:
        raise ValueError(f"window={window} epochs: use a positive window (the paper uses 20).")
    axes = sweep_axes(ds)
    shape = tuple(ds.sizes[a] for a in axes)
    epochs = np.asarray(ds["epoch"].values, np.float64)
    get = {n: _member_array(ds, n, axes) for n in ("train_loss", "test_loss")}
    for n in ("ntk_trace", "ntk_erank"):  # a sweep without NTK records: NaN NTK summaries
        get[n] = (_member_array(ds, n, axes) if n in ds
                  else np.full_like(get["train_loss"], np.nan))
    optional = {n: _member_array(ds, n, axes) for n in ("kernel_distance_init", "lin_output_gap",
                                                        "k_star", "min_test_loss")
                + tuple(f"best_{s}" for s in ("ntk_trace", "ntk_erank", "kernel_distance_init",
                                              "lin_output_gap")) if n in ds}
    exact = "k_star" in optional and "best_ntk_trace" in optional
    num = get["train_loss"].shape[0]
    diverged = (np.asarray(ds["diverged"].transpose(*axes).values, bool).reshape(-1)
                if "diverged" in ds else np.zeros(num, bool))
    stride = ntk_every if ntk_every is not None else ds.attrs.get("ntk_every")
    out = {name: np.full(num, np.nan) for name in SUMMARY_VARIABLES}
    out["alpha_star_at_edge"] = np.zeros(num, bool)
    alpha_all = np.full((num, len(epochs)), np.nan)
    for i in range(num):
        test, trace = get["test_loss"][i], get["ntk_trace"][i]
        if diverged[i] or not np.any(np.isfinite(test)):
            continue
        recorded = np.flatnonzero(np.isfinite(trace))
        if exact and optional["k_star"][i] >= 0:
            k, at = float(optional["k_star"][i]), {"ntk_trace": "best_ntk_trace",
                                                   "ntk_erank": "best_ntk_erank",
                                                   "kernel_distance_init":
                                                   "best_kernel_distance_init",
                                                   "lin_output_gap": "best_lin_output_gap"}
            out["min_test_loss"][i] = optional["min_test_loss"][i]
            star = {src: optional[dst][i] if dst in optional else np.nan
                    for src, dst in at.items()}
        else:
            pool = recorded if (recorded.size and np.isfinite(test[recorded]).any()) else \
                np.flatnonzero(np.isfinite(test))
            j = int(pool[np.nanargmin(test[pool])])  # the first minimum
            k = epochs[j]
            out["min_test_loss"][i] = np.nanmin(test)
            star = {n: (get[n][i, j] if n in get else optional[n][i, j])
                    for n in ("ntk_trace", "ntk_erank", "kernel_distance_init", "lin_output_gap")
                    if n in get or n in optional}
        out["k_star"][i] = k
        out["lin_output_gap_star"][i] = star.get("lin_output_gap", np.nan)
        if not recorded.size:
            continue
        out["T0"][i] = trace[0]
        out["T_star"][i] = star["ntk_trace"]
        out["erank_star"][i] = star["ntk_erank"]
        out["kernel_distance_star"][i] = star.get("kernel_distance_init", np.nan)
        s = int(stride) if stride else _infer_ntk_every(recorded)
        w = max(2, int(round(window / s)))
        alpha = alpha_series(trace[recorded], get["train_loss"][i, recorded], w)
        alpha_all[i, recorded] = alpha
        out["alpha_star"][i], out["alpha_star_at_edge"][i] = _alpha_at(epochs[recorded], alpha, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["trace_ratio"] = (out["T_star"] - out["T0"]) / out["T0"]

    result = ds.copy()
    coords = {a: ds[a] for a in axes if a in ds.coords}
    for name, values in out.items():
        result[name] = xr.DataArray(values.reshape(shape), dims=axes, coords=coords)
    result["adaptation_rate"] = xr.DataArray(
        alpha_all.reshape(shape + (len(epochs),)), dims=axes + ("epoch",),
        coords={**coords, "epoch": ds["epoch"]})
    result.attrs.update(window_epochs=int(window),
                        k_star_source="exact" if exact else "ntk_records")
    if stride:
        result.attrs["ntk_every"] = int(stride)
    return result
