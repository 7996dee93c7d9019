"""The paper's composite figures across several sweeps, and `compare.md` with every fit.

`write_comparison` draws, from sweeps loaded with `ntkbench.load`:

- `fig2_scaling.png`: model vs data scaling, one column per dataset and scaling axis (`width`,
  `n_train`): min test loss, `T0`, `α*`, `erank*` log-log against the axis, replicate mean with
  a ±1 std band and a fitted power law (exponent and 95% bootstrap interval in the legend);
- `fig3_transition.png`: trace ratio and `erank*` against width, one column per dataset, one
  curve per sweep and depth, the broken-power-law transition width and its interval marked;
- `fig7_noise.png`: final and min test loss, final test accuracy and `erank*` against the noise
  fraction, one curve per sweep (dense vs CNN).

The quantities are those of docs/definitions.md; seeds and data draws are the replicates
(`ntkbench._analysis.fits`). Every fit is tabulated in `compare.md`, with the points a log-log fit leaves
out (non-positive or non-finite means) listed explicitly, and every figure the sweeps cannot
support is named there with the reason.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ntkbench._analysis import (
    describe_incomplete,
    fit_broken_power_law,
    flagged_reasons,
    usable_points,
    fit_power_law,
    replicate_axes,
    require_complete,
    summarize,
    sweep_axes,
)
from ntkbench._config import NOT_RESULTS, REPLICATE_AXES
from ntkbench._report.compare_figs import Curve, Panel, draw_grid, fmt, mean_std
from ntkbench._report.compare_md import FitRow, markdown

FIG2_QUANTITIES = (("min_test_loss", "min test loss"), ("T0", "T0 (NTK trace at init)"),
                   ("alpha_star", "α* (adaptation rate at k*)"), ("erank_star", "erank*"))
FIG3_QUANTITIES = (("trace_ratio", "trace ratio (T* − T0)/T0"), ("erank_star", "erank*"))
FIG7_QUANTITIES = (("final_test_loss", "final test loss", True),
                   ("min_test_loss", "min test loss", True),
                   ("final_test_accuracy", "final test accuracy", False),
                   ("erank_star", "erank*", False))

NO_VALUE = ("no NTK recorded, α* at a window edge, or every member diverged or unfinished")


@dataclasses.dataclass
class Sweep:
    """A prepared sweep: summarized, incomplete and diverged members masked, labelled."""

    ds: xr.Dataset
    label: str
    suffix: str  # what tells it apart from another sweep of the same base label
    incomplete: list[str]
    usable: xr.DataArray | None = None  # `usable_points`: which points may be fitted
    reasons: dict | None = None  # `flagged_reasons`: why the others are flagged

    def attr(self, key: str, default: str = "?") -> str:
        return str(self.ds.attrs.get(key, default))

    def size(self, axis: str) -> int:
        return self.ds.sizes[axis] if axis in sweep_axes(self.ds) else 0

    def curve_label(self, group: dict) -> str:
        depth = group.get("depth", _depths(self.ds))
        extra = ", ".join(f"{a}={v}" for a, v in group.items() if a != "depth")
        base = _base_label(self.ds, depth) + self.suffix
        return base + (f", {extra}" if extra else "")

    def curves(self, var: str, axis: str) -> list[Curve]:
        """One curve of `var` against `axis` per value of the other non-replicate axes."""
        ds = self.ds
        axes = [a for a in sweep_axes(ds) if a not in REPLICATE_AXES and a != axis]
        groups = [a for a in axes if ds.sizes[a] > 1]
        da = ds[var].isel({a: 0 for a in axes if a not in groups})
        reps = [a for a in replicate_axes(ds) if a in da.dims]
        x = np.asarray(ds[axis].values, np.float64)
        out = []
        for idx in itertools.product(*[range(ds.sizes[a]) for a in groups]):
            group = {a: _item(ds[a].values[i]) for a, i in zip(groups, idx)}
            sub = da.isel(dict(zip(groups, idx)))
            y = np.asarray(sub.transpose(axis, *reps).values, np.float64).reshape(x.size, -1)
            usable, reasons = self._flags(axes, groups, idx, axis, x.size)
            out.append(Curve(self.curve_label(group), self.label,
                             ", ".join(f"{a}={v}" for a, v in group.items()), x, y, usable,
                             reasons))
        return out

    def _flags(self, axes, groups, idx, axis, size):
        """`(usable (size,), reasons)` of the points of one curve along `axis`."""
        if self.usable is None:
            return None, ()
        at = {a: 0 for a in axes if a not in groups} | dict(zip(groups, idx))
        ok = np.asarray(self.usable.isel(at).transpose(axis).values, bool).reshape(size)
        reasons = []
        for point, why in (self.reasons or {}).items():
            p = dict(point)
            if all(p.get(a) == _item(self.ds[a].values[i]) for a, i in at.items()
                   if a in p and a in self.ds.coords):
                reasons.append(f"{axis}={p.get(axis)}: {why}")
        return ok, tuple(reasons)


def _item(v):
    return v.item() if hasattr(v, "item") else v


def _depths(ds: xr.Dataset) -> str:
    if "depth" not in ds.coords:
        return ""
    return ",".join(str(_item(d)) for d in ds["depth"].values)


def _base_label(ds: xr.Dataset, depth) -> str:
    parts = [str(ds.attrs.get("dataset", "?")), str(ds.attrs.get("model", "?"))]
    if depth != "":
        parts.append(f"depth {depth}")
    return " / ".join(parts)


def sweep_labels(datasets: Sequence[xr.Dataset]) -> tuple[list[str], list[str]]:
    """Labels `dataset / model / depth` of sweeps, made unique: `(labels, suffixes)`.

    Two sweeps collide when they share a dataset, a model and a depth (their curves would carry
    the same label); colliding sweeps get their names appended, then (if still equal) their
    workdirs' folder names, then their whole workdirs, then their positions.

    Example:
        >>> a = xr.Dataset(coords={"depth": [3]}, attrs=dict(dataset="digits", model="mlp",
        ...                                                  name="quick"))
        >>> b = a.assign_attrs(name="other")
        >>> sweep_labels([a, b])[0]
        ['digits / mlp / depth 3 (quick)', 'digits / mlp / depth 3 (other)']
    """
    depths = [[str(_item(d)) for d in ds["depth"].values] if "depth" in ds.coords else [""]
              for ds in datasets]
    suffix = [""] * len(datasets)
    for make in (lambda i, ds: f" ({ds.attrs.get('name', '?')})",
                 lambda i, ds: f" ({ds.attrs.get('name', '?')}, {short_name(ds)})",
                 lambda i, ds: f" ({ds.attrs.get('name', '?')}, {ds.attrs.get('workdir', '?')})",
                 lambda i, ds: f" (#{i + 1})"):
        keys = [{_base_label(ds, d) + s for d in ds_depths}
                for ds, ds_depths, s in zip(datasets, depths, suffix)]
        clash = [any(keys[i] & keys[j] for j in range(len(keys)) if j != i)
                 for i in range(len(keys))]
        if not any(clash):
            break
        suffix = [make(i, ds) if clash[i] else suffix[i] for i, ds in enumerate(datasets)]
    return [_base_label(ds, _depths(ds)) + s for ds, s in zip(datasets, suffix)], suffix


_GRID_FIELDS = ("widths", "depth", "n_train", "noise", "num_seeds", "num_data_draws")


def short_name(ds: xr.Dataset) -> str:
    """A sweep's workdir folder name (its config name when the workdir is unknown)."""
    workdir = ds.attrs.get("workdir")
    return os.path.basename(os.path.normpath(workdir)) if workdir else str(ds.attrs.get("name"))


def _short(v) -> str:
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(_short(x) for x in v) + ")"
    return f"{v:g}" if isinstance(v, float) else str(v)


def sweep_differences(datasets: Sequence[xr.Dataset]) -> list[str]:
    """What differs between the configs of sweeps (`ntkbench.load`'s, whose `config` attribute
    holds each one's): one line per field, `field: value (sweep), value (sweep)`, leaving out
    the fields of the grid (its axes: `compare.md` tabulates them) and those that do not change
    results (run settings, the name). Empty when they agree; one line
    saying so when a sweep carries no config.

    Example:
        >>> a = xr.Dataset(attrs=dict(workdir="runs/a", config='{"lr": 0.001, "epochs": 300}'))
        >>> b = xr.Dataset(attrs=dict(workdir="runs/b", config='{"lr": 0.003, "epochs": 300}'))
        >>> sweep_differences([a, b])
        ['lr: 0.001 (a), 0.003 (b)']
    """
    names = [short_name(ds) for ds in datasets]
    if len(set(names)) < len(names):
        names = [f"{n} #{i + 1}" for i, n in enumerate(names)]
    configs = []
    for ds, name in zip(datasets, names):
        if "config" not in ds.attrs:
            return [f"{name} carries no config (not loaded with ntkbench.load): not compared"]
        configs.append(json.loads(ds.attrs["config"]))
    fields = list(dict.fromkeys(k for c in configs for k in c))
    lines = []
    for field in fields:
        if field in NOT_RESULTS or field in _GRID_FIELDS:  # the grid: compare.md's sweep table
            continue
        values = [c.get(field, "-") for c in configs]
        if any(v != values[0] for v in values[1:]):
            lines.append(f"{field}: " + ", ".join(f"{_short(v)} ({n})"
                                                  for v, n in zip(values, names)))
    return lines


def _summarized(ds: xr.Dataset, window: int) -> xr.Dataset:
    """`ds` with the summaries (NTK quantities NaN when the sweep recorded no NTK)."""
    if "T0" not in ds or "erank_star" not in ds:
        filled = ds.copy()
        for name in ("ntk_trace", "ntk_erank"):
            if name not in filled:
                filled[name] = xr.full_like(filled["train_loss"], np.nan, dtype=np.float64)
        ds = summarize(filled, window=window)
    return ds


def prepare(ds: xr.Dataset, allow_partial: bool, window: int = 20) -> tuple[xr.Dataset, list]:
    """Refuse (or mask) incomplete members, summarize, mask diverged members, and add the
    final-epoch test metrics: `(prepared Dataset, lines describing the incomplete members)`."""
    incomplete = describe_incomplete(ds)
    ds = _summarized(require_complete(ds, allow_partial), window)
    keep = ~ds["diverged"].astype(bool) if "diverged" in ds else True
    for name in ("test_loss", "test_accuracy"):
        if name in ds:
            ds[f"final_{name}"] = ds[name].isel(epoch=-1, drop=True).where(keep)
    for name, _ in FIG2_QUANTITIES + FIG3_QUANTITIES:
        ds[name] = ds[name].where(keep)
    return ds, incomplete


def _fit_row(curve: Curve, quantity: str, axis: str, fit, kind: str) -> FitRow:
    mean, _ = mean_std(curve.y)
    reasons = []
    for x in fit.dropped:
        i = int(np.flatnonzero(curve.x == x)[0])
        why = ("no finite value" if not np.isfinite(mean[i]) else  # the root cause first
               "k* flagged" if not curve.ok()[i] else
               f"mean {fmt(mean[i])} <= 0" if mean[i] <= 0 else f"{axis} <= 0")
        reasons.append(f"{axis}={x:g} ({why})")
    estimate = fit.beta if kind == "power law" else fit.x_break
    return FitRow(curve.sweep, quantity, axis, curve.group, kind, estimate, fit.ci_low,
                  fit.ci_high, curve.x.size - len(fit.dropped), curve.x.size, reasons)


def _fitted_panels(sweeps, quantities, axis, fit_fn, kind, rows, notes, fig,
                   include_flagged=False):
    """One panel per quantity of the curves of `sweeps` against `axis`, each fitted."""
    panels = []
    for quantity, ylabel in quantities:
        scaling = {"width": "model scaling", "n_train": "data scaling"}.get(axis, axis)
        panel = Panel(f"{sweeps[0].attr('dataset')} ({scaling}): {ylabel}", axis, ylabel)
        for s in sweeps:
            for curve in s.curves(quantity, axis):
                if not np.isfinite(curve.y).any():
                    notes.append(f"{fig}: {quantity} of {curve.label} has no finite value; "
                                 f"not drawn or fitted ({NO_VALUE})")
                    continue
                with np.errstate(all="ignore"):
                    fit = fit_fn(curve.x, curve.fit_y(include_flagged))
                rows.append(_fit_row(curve, quantity, axis, fit, kind))
                panel.curves.append(curve)
                panel.fits.append(fit)
        panels.append(panel)
    return panels


def _by_dataset(sweeps: list[Sweep], axis: str) -> list[list[Sweep]]:
    eligible = [s for s in sweeps if s.size(axis) >= 2]
    names = list(dict.fromkeys(s.attr("dataset") for s in eligible))
    return [[s for s in eligible if s.attr("dataset") == n] for n in names]


def _fig2(sweeps, out_dir, rows, notes, num_bootstrap, seed, include_flagged):
    columns = [(axis, group) for axis in ("width", "n_train") for group in _by_dataset(sweeps,
                                                                                      axis)]
    if not columns:
        notes.append("Fig. 2 (model vs data scaling) skipped: no sweep has a `width` or "
                     "`n_train` axis with at least two values")
        return None
    fit = lambda x, y: fit_power_law(x, y, num_bootstrap=num_bootstrap, seed=seed)
    cols = [_fitted_panels(group, FIG2_QUANTITIES, axis, fit, "power law", rows, notes,
                           "Fig. 2", include_flagged) for axis, group in columns]
    grid = [list(r) for r in zip(*cols)]  # rows: quantities; columns: dataset x axis
    return draw_grid(grid, "Fig. 2: model vs data scaling (mean ± std over replicates; dashed: "
                     "power-law fit, exponent β with 95% bootstrap CI)",
                     out_dir / "fig2_scaling.png")


def _fig3(sweeps, out_dir, rows, notes, num_bootstrap, seed, include_flagged):
    groups = [[s for s in g if np.isfinite(s.ds["erank_star"].values).any()
               or np.isfinite(s.ds["trace_ratio"].values).any()]
              for g in _by_dataset(sweeps, "width")]
    groups = [g for g in groups if g]
    if not groups:
        notes.append("Fig. 3 (width transition) skipped: no sweep has a `width` axis with at "
                     "least two values and a recorded NTK (finite erank* or trace ratio)")
        return None
    fit = lambda x, y: fit_broken_power_law(x, y, num_bootstrap=num_bootstrap, seed=seed)
    cols = [_fitted_panels(g, FIG3_QUANTITIES, "width", fit, "transition width", rows, notes,
                           "Fig. 3", include_flagged) for g in groups]
    grid = [list(r) for r in zip(*cols)]
    return draw_grid(grid, "Fig. 3: width transition (vertical line: broken-power-law "
                     "transition width w_t, hatched: its 95% bootstrap CI)",
                     out_dir / "fig3_transition.png")


def _fig7(sweeps, out_dir, notes):
    eligible = [s for s in sweeps if s.size("noise") >= 2]
    if not eligible:
        notes.append("Fig. 7 (dense vs CNN vs noise) skipped: no sweep has a `noise` axis with "
                     "at least two values")
        return None
    row = []
    for quantity, ylabel, log_y in FIG7_QUANTITIES:
        panel = Panel(ylabel, "noise (fraction of replaced samples)", ylabel, log_x=False,
                      log_y=log_y)
        for s in eligible:
            if quantity not in s.ds:
                notes.append(f"Fig. 7: {s.label} has no {quantity}")
                continue
            for curve in s.curves(quantity, "noise"):
                if np.isfinite(curve.y).any():
                    panel.curves.append(curve)
                else:
                    notes.append(f"Fig. 7: {quantity} of {curve.label} has no finite value; "
                                 f"not drawn ({NO_VALUE})")
        row.append(panel)
    return draw_grid([row], "Fig. 7: performance and erank* against label-preserving noise "
                     "(mean ± std over replicates)", out_dir / "fig7_noise.png")


def write_comparison(datasets: Sequence[xr.Dataset], out_dir: str | Path, *,
                     allow_partial: bool = False, num_bootstrap: int = 1000, seed: int = 0,
                     window: int = 20, kstar_window: tuple[float, float] | None = None,
                     include_flagged: bool = False) -> list[Path]:
    r"""Draw the paper's composite figures (Figs. 2, 3, 7) for several sweeps; write `compare.md`.

    `compare.md` opens with what differs between the sweeps' configs (`sweep_differences`:
    epochs, learning rates, n_test, dataset, ...): overlaid curves of sweeps trained
    differently compare those differences too.

    Args:
        datasets: sweeps from `ntkbench.load(workdir)` (attrs `name`, `dataset`, `model`,
            `epochs`, `workdir`); each labelled `dataset / model / depth` (plus its name when
            two labels would collide).
        out_dir: directory to write into (created).
        allow_partial: use only the complete members of sweeps with unfinished members (listed
            in `compare.md`) instead of refusing.
        num_bootstrap: bootstrap resamples of every fit.
        seed: seed of the bootstraps.
        window: adaptation-rate window in epochs, for sweeps not yet summarized.
        kstar_window: `(first, last)` epochs where `k*` should fall (default: the last 60% of
            each sweep's run). Points outside it, at the last epoch or without k* are drawn
            hollow and left out of every fit (listed with their reasons in `compare.md`).
        include_flagged: fit the flagged points too (still drawn hollow; `compare.md` says so).

    Returns:
        The figures written, then `compare.md`.

    Raises:
        ConfigError: a sweep has incomplete members and `allow_partial` is False (nothing is
            written).

    Example:
        >>> ds = [ntkbench.load("runs/a"), ntkbench.load("runs/b")]  # doctest: +SKIP
        >>> write_comparison(ds, "compare-a-b")[-1].name  # doctest: +SKIP
        'compare.md'
    """
    datasets = list(datasets)
    if not datasets:
        raise ValueError("write_comparison needs at least one sweep (ntkbench.load(workdir)).")
    prepared = [prepare(ds, allow_partial, window) for ds in datasets]  # refuses before writing
    labels, suffixes = sweep_labels([ds for ds, _ in prepared])
    sweeps = [Sweep(ds, label, suffix, inc, usable_points(ds, kstar_window),
                    flagged_reasons(ds, kstar_window))
              for (ds, inc), label, suffix in zip(prepared, labels, suffixes)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[FitRow] = []
    notes: list[str] = []
    paths = [_fig2(sweeps, out_dir, rows, notes, num_bootstrap, seed, include_flagged),
             _fig3(sweeps, out_dir, rows, notes, num_bootstrap, seed, include_flagged),
             _fig7(sweeps, out_dir, notes)]
    paths = [p for p in paths if p is not None]
    report = out_dir / "compare.md"
    report.write_text(markdown(sweeps, rows, notes, paths, num_bootstrap, include_flagged,
                               sweep_differences(datasets)))
    return paths + [report]
