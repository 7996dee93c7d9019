"""Which members of a sweep are complete, and refusing (or masking) the incomplete ones.

A member is complete when its last committed record is the final epoch: `last_record == epochs`
(`ntkbench._config.schema`, group `MEMBER`). The single-sweep report and the comparison of several
sweeps both refuse a sweep with incomplete members unless asked to allow partial results; then
the incomplete members are masked (NaN) so that means, bands and fits use complete members only,
and the report lists them (`describe_incomplete`).
"""

from __future__ import annotations

import itertools

import numpy as np
import xarray as xr

from ntkbench._analysis.summaries import sweep_axes
from ntkbench._config import ConfigError


def final_epoch(ds: xr.Dataset) -> int:
    """The sweep's number of epochs `E`: `attrs["epochs"]`, else the largest `epoch` coordinate."""
    if "epochs" in ds.attrs:
        return int(ds.attrs["epochs"])
    return int(np.asarray(ds["epoch"].values).max())


def incomplete_members(ds: xr.Dataset) -> xr.DataArray:
    """True for every member whose last committed record is before the final epoch.

    Args:
        ds: sweep results (`ntkbench.load`). Without a `last_record` variable (a hand-built
            Dataset) every member counts as complete.

    Returns:
        Booleans over the sweep axes of `ds`.

    Example:
        >>> ds = xr.Dataset({"train_loss": (("width", "epoch"), np.ones((2, 4))),
        ...                  "last_record": (("width",), np.array([3, 1]))},
        ...                 coords={"width": [8, 64], "epoch": np.arange(4)})
        >>> incomplete_members(ds).values.tolist()
        [False, True]
    """
    axes = sweep_axes(ds)
    if "last_record" not in ds:
        shape = tuple(ds.sizes[a] for a in axes)
        coords = {a: ds[a] for a in axes if a in ds.coords}
        return xr.DataArray(np.zeros(shape, bool), dims=axes, coords=coords)
    last = ds["last_record"].transpose(*[a for a in axes if a in ds["last_record"].dims])
    return last < final_epoch(ds)


def describe_incomplete(ds: xr.Dataset) -> list[str]:
    """One line per incomplete member: its sweep coordinates and how far it got.

    Example:
        >>> ds = xr.Dataset({"train_loss": (("width", "epoch"), np.ones((2, 4))),
        ...                  "last_record": (("width",), np.array([3, 1]))},
        ...                 coords={"width": [8, 64], "epoch": np.arange(4)})
        >>> describe_incomplete(ds)
        ['width=64: records 0..1 of 3']
    """
    bad = incomplete_members(ds)
    epochs = final_epoch(ds)
    lines = []
    for idx in itertools.product(*[range(n) for n in bad.shape]):
        if not bool(bad.values[idx]):
            continue
        where = ", ".join(f"{a}={_value(bad, a, i)}" for a, i in zip(bad.dims, idx)
                          if bad.sizes[a] > 1) or "the only member"
        last = int(ds["last_record"].transpose(*bad.dims).values[idx])
        lines.append(f"{where}: " + ("no record committed" if last < 0 else
                                     f"records 0..{last} of {epochs}"))
    return lines


def _value(da: xr.DataArray, axis: str, i: int):
    v = da[axis].values[i] if axis in da.coords else i
    return v.item() if hasattr(v, "item") else v


def mask_incomplete(ds: xr.Dataset) -> xr.Dataset:
    """`ds` with every floating variable of the incomplete members set to NaN (stored integer
    `k_star` to -1), so that means, bands and fits leave them out."""
    bad = incomplete_members(ds)
    if not bool(bad.any()):
        return ds
    out = ds.copy()
    for name, da in ds.data_vars.items():
        if name == "last_record" or not set(bad.dims) <= set(da.dims):
            continue
        if np.issubdtype(da.dtype, np.floating):
            out[name] = da.where(~bad)
        elif name == "k_star":
            out[name] = da.where(~bad, -1)
    return out


def require_complete(ds: xr.Dataset, allow_partial: bool = False) -> xr.Dataset:
    """`ds` if every member is complete; with `allow_partial`, `ds` with the incomplete members
    masked (`mask_incomplete`); otherwise refuse.

    Example:
        >>> ds = xr.Dataset({"train_loss": (("width", "epoch"), np.ones((2, 4))),
        ...                  "last_record": (("width",), np.array([3, 1]))},
        ...                 coords={"width": [8, 64], "epoch": np.arange(4)})
        >>> require_complete(ds)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ntkbench._config.errors.ConfigError: the sweep: 1 of 2 members are incomplete ...
        >>> float(require_complete(ds, allow_partial=True).train_loss[1, 0])
        nan

    Raises:
        ConfigError: naming the workdir, how many members are incomplete, and what to do.
    """
    bad = incomplete_members(ds)
    num_bad = int(bad.sum())
    if num_bad == 0:
        return ds
    if allow_partial:
        return mask_incomplete(ds)
    where = ds.attrs.get("workdir") or ds.attrs.get("name") or "the sweep"
    raise ConfigError(
        f"{where}: {num_bad} of {bad.size} members are incomplete (fewer than "
        f"{final_epoch(ds)} epochs committed); finish the run (rerun its `ntkbench run` "
        "command, which resumes) or allow partial results (allow_partial=True), which uses "
        "the complete members only.", option="allow_partial")
