"""Dynamics figures of a single sweep's report (the paper's Figs. 1, 4 and 8) and their plan.

Every figure shows the mean over replicates (seeds, data draws) with a band of ±1 standard
deviation (diverged members left out); on logarithmic axes the band's lower edge is clipped at
the smallest replicate value so that it stays positive. The curves' legend sits right of the
panels (never over the data), a key under them says what the band is, and only recorded
quantities get a panel.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ntkbench._analysis import replicate_axes, sweep_axes
from ntkbench._config import REPLICATE_AXES
from ntkbench._report.plot import band as _band
from ntkbench._report.plot import colors as _colors
from ntkbench._report.plot import finite_xy as _finite_xy
from ntkbench._report.plot import fmt as _fmt
from ntkbench._report.plot import key as _key
from ntkbench._report.plot import label as _label
from ntkbench._report.plot import plain_log_ticks as _plain_log_ticks
from ntkbench._report.plot import quiet as _quiet
from ntkbench._report.plot import save as _save

SCALING_AXES = ("width", "n_train")
"""Axes that Fig. 2 plots summaries against (those with at least two values)."""

MAX_FACETS = 8  # dynamics figures: at most this many files per figure type


def mean_std(da: xr.DataArray, reps: Sequence[str]) -> tuple[xr.DataArray, xr.DataArray]:
    if not reps:
        return da, xr.zeros_like(da).where(np.isfinite(da))
    return da.mean(reps, skipna=True), da.std(reps, skipna=True)


class Plan:
    """Which axes a figure draws as curves, which it splits into files, which it averages."""

    def __init__(self, ds: xr.Dataset, usable: xr.DataArray | None = None,
                 include_flagged: bool = False):
        # `usable`: which sweep points may be fitted (`usable_points`); flagged ones are drawn
        # hollow and, unless `include_flagged`, left out of every fit.
        self.usable = usable
        self.include_flagged = include_flagged
        self.axes = sweep_axes(ds)
        self.reps = replicate_axes(ds)
        self.scaling = [a for a in SCALING_AXES if a in self.axes and ds.sizes[a] >= 2]
        others = [a for a in self.axes if a not in REPLICATE_AXES]
        multi = [a for a in others if ds.sizes[a] >= 2]
        # The axis drawn as one curve per value in the dynamics figures.
        self.curve = (self.scaling or [a for a in multi if a != "noise"] or
                      [a for a in multi] or [None])[0]

    def usable_along(self, facet: dict, axis: str, size: int) -> np.ndarray:
        """`(size,)` bool: which points along `axis` of `facet` are usable."""
        if self.usable is None:
            return np.ones(size, bool)
        sel = self.usable.isel({a: i for a, i in facet.items() if a in self.usable.dims})
        return np.asarray(sel.transpose(axis).values, bool).reshape(size)

    def flagged_in(self, facet: dict) -> bool:
        """Whether any point of `facet` (all values of the other axes) is flagged."""
        if self.usable is None:
            return False
        sel = self.usable.isel({a: i for a, i in facet.items() if a in self.usable.dims})
        return not bool(np.all(sel.values))

    def facets(self, ds: xr.Dataset, exclude: Sequence[str | None]) -> list[dict]:
        axes = [a for a in self.axes if a not in REPLICATE_AXES and a not in exclude]
        combos = itertools.product(*[range(ds.sizes[a]) for a in axes])
        return [dict(zip(axes, c)) for c in combos]


def facet_name(ds: xr.Dataset, facet: dict) -> tuple[str, str]:
    """File-name suffix and a title for the non-trivial axes of a facet."""
    parts = [(a, ds[a].values[i] if a in ds.coords else i) for a, i in facet.items()
             if ds.sizes[a] > 1]
    suffix = "".join(f"_{a}{_label('', v)[1:]}" for a, v in parts)
    title = ", ".join(_label(a, v) for a, v in parts)
    return suffix, title


def plan_curves(ds: xr.Dataset, plan: Plan, facet: dict, axis: str | None):
    """(label, member-selected Dataset) per value of `axis` within a facet; the label of a
    point whose k* the report flags says so."""
    sub = ds.isel(facet)
    if axis is None:
        return [("all" + (" (k* flagged)" if plan.flagged_in(facet) else ""), sub)]
    return [(_label(axis, sub[axis].values[i] if axis in sub.coords else i)
             + (" (k* flagged)" if plan.flagged_in({**facet, axis: i}) else ""),
             sub.isel({axis: i})) for i in range(sub.sizes[axis])]


def masked(ds: xr.Dataset) -> xr.Dataset:
    """Members that diverged set to NaN everywhere (so means and bands leave them out)."""
    if "diverged" not in ds:
        return ds
    keep = ~ds["diverged"].astype(bool)
    out = ds.copy()
    for name, da in ds.data_vars.items():
        if name != "diverged" and np.issubdtype(da.dtype, np.floating):
            out[name] = da.where(keep)
    return out


def has(ds: xr.Dataset, name: str) -> bool:
    return name in ds and bool(np.isfinite(ds[name].values).any())


def _finish(fig, axs, plan: Plan, title: str) -> None:
    """The curves' legend right of the panels, the band's key under them, the title."""
    seen = {}
    for ax in np.atleast_1d(axs):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize=7)
    _key(fig, band=f"±1 std over {', '.join(plan.reps) or 'replicates'}")
    for ax in np.atleast_1d(axs):
        _plain_log_ticks(ax, "y")
        _plain_log_ticks(ax, "x")
    fig.suptitle(title + (f" (mean over {', '.join(plan.reps)})" if plan.reps else ""))


# ----------------------------------------------------------------------------- figures
def fig_losses(ds, plan, facet, out_dir) -> Path:
    suffix, title = facet_name(ds, facet)
    curves = plan_curves(ds, plan, facet, plan.curve)
    colors = _colors(len(curves))
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    axs = fig.subplots(1, 3)
    panels = [("train_loss", "train loss", True), ("test_loss", "test loss", True),
              ("test_accuracy", "test accuracy", False)]
    with _quiet():
        for ax, (name, ylabel, log_y) in zip(axs, panels):
            if name not in ds:
                ax.set_title(f"{ylabel}: not in the Dataset")
                continue
            for (label, sub), color in zip(curves, colors):
                mean, std = mean_std(sub[name], plan.reps)
                e, m, sd = _finite_xy(sub["epoch"].values, mean.values, std.values)
                if not e.size:
                    continue
                ax.plot(e, m, color=color, label=label)
                low = np.nanmin(sub[name].values) if log_y else None
                _band(ax, e, m, sd, color, log_y, low)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.set_title(ylabel)
            if log_y:
                ax.set_yscale("log")
    _finish(fig, axs, plan, "Losses and accuracy" + (f", {title}" if title else ""))
    return _save(fig, out_dir / f"fig_losses{suffix}.png")


def fig1_dynamics(ds, plan, facet, out_dir) -> Path:
    suffix, title = facet_name(ds, facet)
    curves = plan_curves(ds, plan, facet, plan.curve)
    colors = _colors(len(curves))
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    ax_t, ax_a, ax_r = fig.subplots(1, 3)
    with _quiet():
        for (label, sub), color in zip(curves, colors):
            log_loss = np.log(sub["train_loss"])
            l_mean = np.exp(log_loss.mean(plan.reps, skipna=True) if plan.reps else log_loss)
            t_mean, t_std = mean_std(sub["ntk_trace"], plan.reps)
            a_star, a_sd = mean_std(sub["alpha_star"], plan.reps)
            sd = float(a_sd)
            lab = (f"{label}: α*={_fmt(float(a_star))} ± "
                   f"{float(f'{sd:.2g}'):g}"
                   if np.isfinite(float(a_star)) else f"{label}: α* n/a (k* at window edge)")
            x, m, sd = _finite_xy(l_mean.values, t_mean.values, t_std.values)
            if x.size:
                ax_t.plot(x, m, ".-", color=color, label=lab, markersize=2)
                _band(ax_t, x, m, sd, color)
            a_mean, a_std = mean_std(sub["adaptation_rate"], plan.reps)
            x, m, sd = _finite_xy(l_mean.values, a_mean.values, a_std.values)
            if x.size:
                ax_a.plot(x, m, color=color)
                _band(ax_a, x, m, sd, color)
            r_mean, r_std = mean_std(sub["ntk_erank"], plan.reps)
            e, m, sd = _finite_xy(sub["epoch"].values, r_mean.values, r_std.values)
            if e.size:
                ax_r.plot(e, m, color=color)
                _band(ax_r, e, m, sd, color)
    for ax in (ax_t, ax_a):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.invert_xaxis()  # training runs left to right
        ax.set_xlabel("train loss (log scale)")
    ax_t.set_ylabel("NTK trace T")
    ax_t.set_title("trace vs log train loss")
    ax_a.set_ylabel("α = −dT̄/d ln L̄")
    ax_a.ticklabel_format(axis="y", useOffset=False)
    lo, hi = min(ax_a.get_ylim()[0], 0.0), max(ax_a.get_ylim()[1], 0.0)
    ax_a.set_ylim(lo - 0.05 * (hi - lo), hi + 0.1 * (hi - lo))  # with 0: a flat α reads flat
    ax_a.set_title(f"adaptation rate ({ds.attrs.get('window_epochs', 20)}-epoch window)")
    ax_r.set_xlabel("epoch")
    ax_r.set_ylabel("effective rank")
    ax_r.set_title("effective rank")
    _finish(fig, (ax_t, ax_a, ax_r), plan, "Fig. 1: NTK dynamics" + (f", {title}" if title else ""))
    return _save(fig, out_dir / f"fig1_dynamics{suffix}.png")


def fig4_noise(ds, plan, facet, out_dir) -> Path:
    suffix, title = facet_name(ds, facet)
    curves = plan_curves(ds, plan, facet, "noise")
    colors = _colors(len(curves))
    fig = Figure(figsize=(14, 4.4), layout="constrained")
    ax_r, ax_l, ax_s = fig.subplots(1, 3)
    with _quiet():
        for (label, sub), color in zip(curves, colors):
            for ax, name in ((ax_r, "ntk_erank"), (ax_l, "test_loss")):
                mean, std = mean_std(sub[name], plan.reps)
                e, m, sd = _finite_xy(sub["epoch"].values, mean.values, std.values)
                if e.size:
                    ax.plot(e, m, color=color, label=label if ax is ax_r else None)
                    _band(ax, e, m, sd, color)
        sub = ds.isel(facet)
        noise = np.asarray(sub["noise"].values, float)
        for name, color, fmt in (("erank_star", "C0", "o-"), ("min_test_loss", "C3", "s--")):
            mean, std = mean_std(sub[name], plan.reps)
            x, m, sd = _finite_xy(noise, mean.values, std.values)
            if x.size:
                target = ax_s if name == "erank_star" else ax_s.twinx()
                target.errorbar(x, m, sd, fmt=fmt, color=color, capsize=3)
                target.set_ylabel(f"{name} (error bars: ±1 std)", color=color)
    ax_r.set_title("effective rank")
    ax_r.set_ylabel("effective rank")
    ax_l.set_title("test loss")
    ax_l.set_ylabel("test loss")
    ax_l.set_yscale("log")
    for ax in (ax_r, ax_l):
        ax.set_xlabel("epoch")
    ax_s.set_xlabel("noise (fraction of replaced samples)")
    ax_s.set_title("erank* (circles) and min test loss (squares)")
    _finish(fig, (ax_r, ax_l, ax_s), plan, "Fig. 4: noise scaling" + (f", {title}" if title else ""))
    return _save(fig, out_dir / f"fig4_noise{suffix}.png")


def fig8_alignment(ds, plan, facet, out_dir) -> Path:
    suffix, title = facet_name(ds, facet)
    curves = plan_curves(ds, plan, facet, plan.curve)
    colors = _colors(len(curves))
    panels = [(n, y, lg) for n, y, lg in (
        ("label_alignment", "label alignment <Θ, yyᵀ>", False),
        ("label_alignment_traced", "traced label alignment <Θ_tr, YYᵀ>", False),
        ("eigvec_misalignment", "top-n eigenvector misalignment", True)) if has(ds, n)]
    fig = Figure(figsize=(4.4 * len(panels) + 1.6, 4.4), layout="constrained")
    axs = np.atleast_1d(fig.subplots(1, len(panels)))
    with _quiet():
        for ax, (name, ylabel, log_y) in zip(axs, panels):
            for (label, sub), color in zip(curves, colors):
                mean, std = mean_std(sub[name], plan.reps)
                e, m, sd = _finite_xy(sub["epoch"].values, mean.values, std.values)
                if log_y:
                    e, m, sd = e[m > 0], m[m > 0], sd[m > 0]
                if not e.size:
                    continue
                ax.plot(e, m, color=color, label=label if ax is axs[0] else None)
                positive = sub[name].values[np.isfinite(sub[name].values)
                                            & (sub[name].values > 0)]
                _band(ax, e, m, sd, color, log_y, positive.min() if positive.size else None)
            if log_y:
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel.split(" <")[0])
            ax.set_title(ylabel)
    _finish(fig, axs, plan, "Fig. 8: alignment" + (f", {title}" if title else ""))
    return _save(fig, out_dir / f"fig8_alignment{suffix}.png")




def stability_thresholds(ds: xr.Dataset, lr: float) -> tuple[float, float]:
    """`(sharpness threshold, preconditioned threshold)` at learning rate `lr`
    (docs/definitions.md §16): gradient descent with heavy-ball momentum `β` is stable on a
    quadratic while `λ_max(H) < (2 + 2β)/η` (2/η for plain GD); Adam's preconditioned Hessian
    while `λ_max(D⁻¹H) < (2 + 2β₁)/((1 − β₁) η)` (38/η at `β₁ = 0.9`). NaN where the sweep's
    optimizer has no such threshold."""
    if ds.attrs.get("optimizer") == "sgd":
        beta = float(ds.attrs.get("momentum", 0.0))
        return (2 + 2 * beta) / lr, np.nan
    b1 = float(ds.attrs.get("b1", 0.9))
    return np.nan, (2 + 2 * b1) / ((1 - b1) * lr)


def fig_sharpness(ds, plan, facet, out_dir) -> Path:
    """Sharpness, Adam's preconditioned sharpness and the training-set NTK's top eigenvalue over
    training, one curve per value of the curve axis, each with its stability threshold (dashed,
    the same colour, from its own learning rate), beside the training loss."""
    suffix, title = facet_name(ds, facet)
    curves = plan_curves(ds, plan, facet, plan.curve)
    colors = _colors(len(curves))
    panels = [(name, ylabel) for name, ylabel in (
        ("sharpness", "sharpness λ_max(∇²L)"),
        ("precond_sharpness", "Adam: λ_max(λ D⁻¹ ∇²L)"),
        ("train_ntk_top", "training-set NTK λ_max(J Jᵀ/n)"),
        ("train_loss", "training loss")) if has(ds, name)]
    fig = Figure(figsize=(3.8 * len(panels), 3.8))
    axs = np.atleast_1d(fig.subplots(1, len(panels)))
    with _quiet():
        for ax, (name, ylabel) in zip(axs, panels):
            for (label, sub), color in zip(curves, colors):
                mean, std = mean_std(sub[name], plan.reps)
                e, m, sd = _finite_xy(sub["epoch"].values, mean.values, std.values)
                if not e.size:
                    continue
                ax.plot(e, m, color=color, label=label, marker="." if e.size < 60 else None)
                _band(ax, e, m, sd, color)
                lr = float(np.nanmean(sub["lr"].values)) if "lr" in sub else np.nan
                sharp, pre = stability_thresholds(ds, lr)
                level = {"sharpness": sharp, "train_ntk_top": sharp,
                         "precond_sharpness": pre}.get(name, np.nan)
                if np.isfinite(level):
                    ax.axhline(level, color=color, linestyle="--", linewidth=1)
            if name in ("train_loss",):
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.set_title(ylabel, fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    opt = ds.attrs.get("optimizer", "?")
    rule = ("dashed: 2(1+β)/η, the stability threshold of GD with momentum β" if opt == "sgd"
            else "dashed: 2(1+β₁)/((1−β₁)η), Adam's threshold (38/η at β₁ = 0.9)")
    fig.suptitle("Sharpness and the NTK's top eigenvalue" + (f" ({title})" if title else "")
                 + f"; {rule}", fontsize=9)
    return _save(fig, out_dir / f"fig_sharpness{suffix}.png")
