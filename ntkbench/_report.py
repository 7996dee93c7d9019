"""Figures and a markdown report of a sweep: the paper's Figs. 1-4 and 8 (docs/definitions.md §11).

Every figure shows the mean over replicates (seeds, data draws) with a band of ±1 standard
deviation (diverged members left out); on logarithmic axes the band's lower edge is clipped at
the smallest replicate value so that it stays positive. Figures are drawn with matplotlib's
object API (`matplotlib.figure.Figure`, Agg canvas): no display and no pyplot state are used.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ntkbench._analysis import replicate_axes, summarize, sweep_axes
from ntkbench._fits import fit_broken_power_law, fit_power_law
from ntkbench._schema import REPLICATE_AXES

SCALING_AXES = ("width", "n_train")
"""Axes that Fig. 2 plots summaries against (those with at least two values)."""

_SCALING_VARIABLES = (
    ("min_test_loss", "min test loss"),
    ("erank_star", "erank*"),
    ("T0", "T0 (trace at init)"),
    ("alpha_star", "α* (adaptation rate at k*)"),
)
_TABLE_VARIABLES = ("min_test_loss", "k_star", "T0", "T_star", "trace_ratio", "erank_star",
                    "alpha_star")
_MAX_FACETS = 8  # dynamics figures: at most this many files per figure type


# ----------------------------------------------------------------------------- small helpers
def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


def _label(axis: str, value) -> str:
    value = value.item() if hasattr(value, "item") else value
    return f"{axis}={value:g}" if isinstance(value, (int, float)) else f"{axis}={value}"


@contextlib.contextmanager
def _quiet():
    """Silence numpy's all-NaN-slice warnings: NaN means "not recorded" here."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _mean_std(da: xr.DataArray, reps: Sequence[str]) -> tuple[xr.DataArray, xr.DataArray]:
    if not reps:
        return da, xr.zeros_like(da).where(np.isfinite(da))
    return da.mean(reps, skipna=True), da.std(reps, skipna=True)


def _band(ax, x, mean, std, color, log_y=False, low=None):
    lower = mean - std
    if log_y and low is not None:
        lower = np.maximum(lower, low)
    ax.fill_between(x, lower, mean + std, color=color, alpha=0.2, linewidth=0)


def _finite_xy(x, *ys):
    ok = np.isfinite(x)
    for y in ys:
        ok &= np.isfinite(y)
    return (x[ok],) + tuple(y[ok] for y in ys)


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]


def _widen_log_y(ax, min_decades: float = 1.0) -> None:
    """Make a log y axis span at least `min_decades` decades (a flat quantity stays readable)."""
    lo, hi = ax.get_ylim()
    if lo > 0 and hi > 0 and np.log10(hi / lo) < min_decades:
        mid = np.sqrt(lo * hi)
        ax.set_ylim(mid * 10 ** (-min_decades / 2), mid * 10 ** (min_decades / 2))


def _sweep_xticks(ax, x: np.ndarray) -> None:
    """Log x axis labelled at the sweep values themselves (thinned to at most 8 labels)."""
    x = np.unique(x[np.isfinite(x) & (x > 0)])
    ax.set_xscale("log")
    if x.size:
        ticks = x[:: int(np.ceil(x.size / 8))]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


class _Plan:
    """Which axes a figure draws as curves, which it splits into files, which it averages."""

    def __init__(self, ds: xr.Dataset):
        self.axes = sweep_axes(ds)
        self.reps = replicate_axes(ds)
        self.scaling = [a for a in SCALING_AXES if a in self.axes and ds.sizes[a] >= 2]
        others = [a for a in self.axes if a not in REPLICATE_AXES]
        multi = [a for a in others if ds.sizes[a] >= 2]
        # The axis drawn as one curve per value in the dynamics figures.
        self.curve = (self.scaling or [a for a in multi if a != "noise"] or
                      [a for a in multi] or [None])[0]

    def facets(self, ds: xr.Dataset, exclude: Sequence[str | None]) -> list[dict]:
        axes = [a for a in self.axes if a not in REPLICATE_AXES and a not in exclude]
        combos = itertools.product(*[range(ds.sizes[a]) for a in axes])
        return [dict(zip(axes, c)) for c in combos]


def _facet_name(ds: xr.Dataset, facet: dict) -> tuple[str, str]:
    """File-name suffix and a title for the non-trivial axes of a facet."""
    parts = [(a, ds[a].values[i] if a in ds.coords else i) for a, i in facet.items()
             if ds.sizes[a] > 1]
    suffix = "".join(f"_{a}{_label('', v)[1:]}" for a, v in parts)
    title = ", ".join(_label(a, v) for a, v in parts)
    return suffix, title


def _curves(ds: xr.Dataset, plan: _Plan, facet: dict, axis: str | None):
    """(label, member-selected Dataset) per value of `axis` within a facet."""
    sub = ds.isel(facet)
    if axis is None:
        return [("all", sub)]
    return [(_label(axis, sub[axis].values[i] if axis in sub.coords else i), sub.isel({axis: i}))
            for i in range(sub.sizes[axis])]


def _masked(ds: xr.Dataset) -> xr.Dataset:
    """Members that diverged set to NaN everywhere (so means and bands leave them out)."""
    if "diverged" not in ds:
        return ds
    keep = ~ds["diverged"].astype(bool)
    out = ds.copy()
    for name, da in ds.data_vars.items():
        if name != "diverged" and np.issubdtype(da.dtype, np.floating):
            out[name] = da.where(keep)
    return out


def _has(ds: xr.Dataset, name: str) -> bool:
    return name in ds and bool(np.isfinite(ds[name].values).any())


# ----------------------------------------------------------------------------- figures
def _fig_losses(ds, plan, facet, out_dir) -> Path:
    suffix, title = _facet_name(ds, facet)
    curves = _curves(ds, plan, facet, plan.curve)
    colors = _colors(len(curves))
    fig = Figure(figsize=(12, 3.6))
    axs = fig.subplots(1, 3)
    panels = [("train_loss", "train loss", True), ("test_loss", "test loss", True),
              ("test_accuracy", "test accuracy", False)]
    with _quiet():
        for ax, (name, ylabel, log_y) in zip(axs, panels):
            if name not in ds:
                ax.set_title(f"{ylabel}: not in the Dataset")
                continue
            for (label, sub), color in zip(curves, colors):
                mean, std = _mean_std(sub[name], plan.reps)
                e, m, sd = _finite_xy(sub["epoch"].values, mean.values, std.values)
                if not e.size:
                    continue
                ax.plot(e, m, color=color, label=label)
                low = np.nanmin(sub[name].values) if log_y else None
                _band(ax, e, m, sd, color, log_y, low)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            if log_y:
                ax.set_yscale("log")
        axs[0].legend(fontsize=7)
    fig.suptitle("Losses" + (f" ({title})" if title else ""))
    return _save(fig, out_dir / f"fig_losses{suffix}.png")


def _fig1_dynamics(ds, plan, facet, out_dir) -> Path:
    suffix, title = _facet_name(ds, facet)
    curves = _curves(ds, plan, facet, plan.curve)
    colors = _colors(len(curves))
    fig = Figure(figsize=(12, 3.8))
    ax_t, ax_a, ax_r = fig.subplots(1, 3)
    with _quiet():
        for (label, sub), color in zip(curves, colors):
            log_loss = np.log(sub["train_loss"])
            l_mean = np.exp(log_loss.mean(plan.reps, skipna=True) if plan.reps else log_loss)
            t_mean, t_std = _mean_std(sub["ntk_trace"], plan.reps)
            a_star, a_sd = _mean_std(sub["alpha_star"], plan.reps)
            lab = (f"{label}: α*={_fmt(float(a_star))}±{_fmt(float(a_sd), 2)}"
                   if np.isfinite(float(a_star)) else f"{label}: α* n/a (k* at window edge)")
            x, m, sd = _finite_xy(l_mean.values, t_mean.values, t_std.values)
            if x.size:
                ax_t.plot(x, m, ".-", color=color, label=lab, markersize=2)
                _band(ax_t, x, m, sd, color)
            a_mean, a_std = _mean_std(sub["adaptation_rate"], plan.reps)
            x, m, sd = _finite_xy(l_mean.values, a_mean.values, a_std.values)
            if x.size:
                ax_a.plot(x, m, color=color, label=label)
                _band(ax_a, x, m, sd, color)
            r_mean, r_std = _mean_std(sub["ntk_erank"], plan.reps)
            e, m, sd = _finite_xy(sub["epoch"].values, r_mean.values, r_std.values)
            if e.size:
                ax_r.plot(e, m, color=color, label=label)
                _band(ax_r, e, m, sd, color)
    for ax in (ax_t, ax_a):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.invert_xaxis()  # training runs left to right
        ax.set_xlabel("train loss (log scale)")
    ax_t.set_ylabel("NTK trace T")
    ax_t.set_title("trace vs log train loss")
    ax_t.legend(fontsize=7)
    ax_a.set_ylabel("α = −dT̄/d ln L̄")
    ax_a.ticklabel_format(axis="y", useOffset=False)
    lo, hi = min(ax_a.get_ylim()[0], 0.0), max(ax_a.get_ylim()[1], 0.0)
    ax_a.set_ylim(lo - 0.05 * (hi - lo), hi + 0.1 * (hi - lo))  # with 0: a flat α reads flat
    ax_a.set_title(f"adaptation rate ({ds.attrs.get('window_epochs', 20)}-epoch window)")
    ax_r.set_xlabel("epoch")
    ax_r.set_ylabel("effective rank")
    ax_r.set_title("effective rank")
    fig.suptitle("Fig. 1: NTK dynamics" + (f" ({title})" if title else ""))
    return _save(fig, out_dir / f"fig1_dynamics{suffix}.png")


def _power_fit_line(ax, x, y, color, group, fit_rows, key, num_bootstrap, seed):
    fit = fit_power_law(x, y, num_bootstrap=num_bootstrap, seed=seed)
    fit_rows.append((key, group, fit))
    if np.isfinite(fit.beta):
        xx = np.geomspace(np.nanmin(x), np.nanmax(x), 50)
        ax.plot(xx, fit.c * xx**fit.beta, "--", color=color, linewidth=1,
                label=(f"{group + ': ' if group else ''}β={fit.beta:.2f} "
                       f"[{_fmt(fit.ci_low)}, {_fmt(fit.ci_high)}]"))


def _fig2_scaling(ds, plan, axis, out_dir, fit_rows, num_bootstrap, seed) -> Path:
    groups = [f for f in plan.facets(ds, exclude=[axis])]
    colors = _colors(len(groups)) if len(groups) > 1 else ["C0"]
    fig = Figure(figsize=(13, 3.6))
    axs = fig.subplots(1, 4)
    x_all = np.asarray(ds[axis].values, float)
    with _quiet():
        for ax, (name, ylabel) in zip(axs, _SCALING_VARIABLES):
            if not _has(ds, name):
                ax.text(0.5, 0.5, f"{ylabel}:\nno finite values (NTK not recorded,\nor k* at a "
                        "window edge)", ha="center", va="center", transform=ax.transAxes)
                ax.set_title(ylabel)
                continue
            for facet, color in zip(groups, colors):
                _, title = _facet_name(ds, facet)
                sub = ds[name].isel(facet)
                mean, std = _mean_std(sub, plan.reps)
                x, m, sd = _finite_xy(x_all, mean.values, std.values)
                if not x.size:
                    continue
                ax.plot(x, m, "o", color=color, markersize=4)
                positive = sub.values[np.isfinite(sub.values) & (sub.values > 0)]
                _band(ax, x, m, sd, color, True, positive.min() if positive.size else None)
                y = np.asarray(sub.transpose(axis, *plan.reps).values, float).reshape(
                    x_all.size, -1)
                _power_fit_line(ax, x_all, y, color, title, fit_rows, (name, axis),
                                num_bootstrap, seed)
            ax.set_xscale("log")
            if np.any(np.asarray(ds[name].values) > 0):
                ax.set_yscale("log")
                _widen_log_y(ax)
            _sweep_xticks(ax, x_all)
            ax.set_xlabel(axis)
            ax.set_title(ylabel)
            ax.legend(fontsize=6)
    fig.suptitle(f"Fig. 2: scaling with {axis} (mean ± std over {', '.join(plan.reps) or '1'};"
                 " dashed: power-law fit, 95% bootstrap CI)")
    return _save(fig, out_dir / f"fig2_scaling_{axis}.png")


def _fig3_transition(ds, plan, out_dir, trans_rows, num_bootstrap, seed) -> Path:
    axis = "width"
    groups = plan.facets(ds, exclude=[axis])
    colors = _colors(len(groups)) if len(groups) > 1 else ["C0"]
    fig = Figure(figsize=(10, 4))
    axs = fig.subplots(1, 2)
    x_all = np.asarray(ds[axis].values, float)
    with _quiet():
        for ax, (name, ylabel) in zip(axs, [("trace_ratio", "trace ratio r = (T* − T0)/T0"),
                                            ("erank_star", "erank*")]):
            for facet, color in zip(groups, colors):
                _, title = _facet_name(ds, facet)
                sub = ds[name].isel(facet)
                mean, std = _mean_std(sub, plan.reps)
                x, m, sd = _finite_xy(x_all, mean.values, std.values)
                if not x.size:
                    continue
                ax.plot(x, m, "o-", color=color, markersize=4, linewidth=0.8)
                positive = sub.values[np.isfinite(sub.values) & (sub.values > 0)]
                _band(ax, x, m, sd, color, True, positive.min() if positive.size else None)
                y = np.asarray(sub.transpose(axis, *plan.reps).values, float).reshape(
                    x_all.size, -1)
                fit = fit_broken_power_law(x_all, y, num_bootstrap=num_bootstrap, seed=seed)
                trans_rows.append((name, title, fit))
                if not np.isfinite(fit.x_break):
                    continue
                xx = np.geomspace(x.min(), x.max(), 100)
                yy = fit.c_break * np.where(xx <= fit.x_break, (xx / fit.x_break) ** fit.beta_below,
                                            (xx / fit.x_break) ** fit.beta_above)
                ax.plot(xx, yy, "--", color=color, linewidth=1,
                        label=(f"{title + ': ' if title else ''}w_t={fit.x_break:.0f} "
                               f"[{_fmt(fit.ci_low)}, {_fmt(fit.ci_high)}], "
                               f"β={fit.beta_below:.2f}/{fit.beta_above:.2f}"))
                ax.axvline(fit.x_break, color=color, linewidth=1)
                if np.isfinite(fit.ci_low):
                    ax.axvspan(fit.ci_low, fit.ci_high, color=color, alpha=0.1)
            ax.set_xscale("log")
            if np.any(np.asarray(ds[name].values) > 0):
                ax.set_yscale("log")
                _widen_log_y(ax)
            _sweep_xticks(ax, x_all)
            ax.set_xlabel(axis)
            ax.set_title(ylabel)
            ax.legend(fontsize=7)
    fig.suptitle("Fig. 3: width transition (vertical line: broken-power-law breakpoint,"
                 " shaded: 95% bootstrap CI)")
    return _save(fig, out_dir / "fig3_transition.png")


def _fig4_noise(ds, plan, facet, out_dir) -> Path:
    suffix, title = _facet_name(ds, facet)
    curves = _curves(ds, plan, facet, "noise")
    colors = _colors(len(curves))
    fig = Figure(figsize=(12, 3.8))
    ax_r, ax_l, ax_s = fig.subplots(1, 3)
    with _quiet():
        for (label, sub), color in zip(curves, colors):
            for ax, name in ((ax_r, "ntk_erank"), (ax_l, "test_loss")):
                mean, std = _mean_std(sub[name], plan.reps)
                e, m, sd = _finite_xy(sub["epoch"].values, mean.values, std.values)
                if e.size:
                    ax.plot(e, m, color=color, label=label)
                    _band(ax, e, m, sd, color)
        sub = ds.isel(facet)
        noise = np.asarray(sub["noise"].values, float)
        for name, color, fmt in (("erank_star", "C0", "o-"), ("min_test_loss", "C3", "s--")):
            mean, std = _mean_std(sub[name], plan.reps)
            x, m, sd = _finite_xy(noise, mean.values, std.values)
            if x.size:
                target = ax_s if name == "erank_star" else ax_s.twinx()
                target.errorbar(x, m, sd, fmt=fmt, color=color, capsize=3, label=name)
                target.set_ylabel(name, color=color)
    ax_r.set_title("effective rank")
    ax_r.legend(fontsize=7)
    ax_l.set_title("test loss")
    ax_l.set_yscale("log")
    for ax in (ax_r, ax_l):
        ax.set_xlabel("epoch")
    ax_s.set_xlabel("noise (fraction of replaced samples)")
    ax_s.set_title("erank* and min test loss")
    fig.suptitle("Fig. 4: noise scaling" + (f" ({title})" if title else ""))
    return _save(fig, out_dir / f"fig4_noise{suffix}.png")


def _fig8_alignment(ds, plan, facet, out_dir) -> Path:
    suffix, title = _facet_name(ds, facet)
    curves = _curves(ds, plan, facet, plan.curve)
    colors = _colors(len(curves))
    fig = Figure(figsize=(12, 3.8))
    axs = fig.subplots(1, 3)
    panels = [("label_alignment", "label alignment <Θ, yyᵀ>", False),
              ("label_alignment_traced", "traced label alignment <Θ_tr, YYᵀ>", False),
              ("eigvec_misalignment", "top-n eigenvector misalignment", True)]
    with _quiet():
        for ax, (name, ylabel, log_y) in zip(axs, panels):
            if not _has(ds, name):
                ax.text(0.5, 0.5, "not recorded", ha="center", va="center",
                        transform=ax.transAxes)
            else:
                for (label, sub), color in zip(curves, colors):
                    mean, std = _mean_std(sub[name], plan.reps)
                    e, m, sd = _finite_xy(sub["epoch"].values, mean.values, std.values)
                    if log_y:
                        e, m, sd = e[m > 0], m[m > 0], sd[m > 0]
                    if not e.size:
                        continue
                    ax.plot(e, m, color=color, label=label)
                    positive = sub[name].values[np.isfinite(sub[name].values)
                                                & (sub[name].values > 0)]
                    _band(ax, e, m, sd, color, log_y, positive.min() if positive.size else None)
                ax.legend(fontsize=7)
                if log_y:
                    ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_title(ylabel)
    fig.suptitle("Fig. 8: alignment" + (f" ({title})" if title else ""))
    return _save(fig, out_dir / f"fig8_alignment{suffix}.png")


# ----------------------------------------------------------------------------- report
def _summary_table(ds: xr.Dataset, plan: _Plan) -> list[str]:
    points = [a for a in plan.axes if a not in REPLICATE_AXES]
    header = points + ["members", "diverged", "α* at edge"] + [f"{v}" for v in _TABLE_VARIABLES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with _quiet():
        for idx in itertools.product(*[range(ds.sizes[a]) for a in points]):
            sub = ds.isel(dict(zip(points, idx)))
            vals = [str(sub[a].values.item()) if a in sub.coords else str(i)
                    for a, i in zip(points, idx)]
            num = int(np.prod([sub.sizes[a] for a in plan.reps])) if plan.reps else 1
            div = int(sub["diverged"].values.sum()) if "diverged" in sub else 0
            edge = int(sub["alpha_star_at_edge"].values.sum())
            vals += [str(num), str(div), str(edge)]
            for v in _TABLE_VARIABLES:
                arr = np.asarray(sub[v].values, float)
                arr = arr[np.isfinite(arr)]
                vals.append(f"{arr.mean():.4g} ± {arr.std():.2g}" if arr.size else "n/a")
            lines.append("| " + " | ".join(vals) + " |")
    return lines


def write_report(
    ds: xr.Dataset,
    out_dir: str | Path,
    *,
    window: int = 20,
    num_bootstrap: int = 1000,
    seed: int = 0,
) -> list[Path]:
    r"""Write the paper's figures and a `report.md` for a sweep; return the paths written.

    Figures (PNG), each the mean over replicates with a ±1 std band:

    - `fig_losses*.png`: train/test loss and test accuracy against epoch (always);
    - `fig1_dynamics*.png`: trace against train loss (log) with `α*` in the legend, the
      adaptation rate, and the effective rank against epoch, one curve per width (or `n_train`);
    - `fig2_scaling_<axis>.png`: min test loss, `erank*`, `T0`, `α*` against `width` / `n_train`,
      log-log, with fitted power laws (exponent and 95% bootstrap interval in the legend);
    - `fig3_transition.png`: trace ratio and `erank*` against width with the broken-power-law
      transition width and its interval;
    - `fig4_noise*.png`: when the sweep has a `noise` axis;
    - `fig8_alignment*.png`: label alignments and eigenvector misalignment against epoch.

    Dynamics figures are split into one file per value of the remaining non-replicate axes
    (e.g. `_depth3`; at most 8 files each). Figures a sweep cannot support (a single width, no
    NTK recorded, no noise axis) are skipped and `report.md` says why. `report.md` lists the
    fitted exponents with intervals, the transition widths, a mean ± std table per sweep point,
    and links to the figures.

    Args:
        ds: sweep results (schema: `ntkbench.analysis`); summarized first if it lacks `k_star`.
        out_dir: directory to write into (created).
        window: adaptation-rate window in epochs, for `summarize`.
        num_bootstrap: bootstrap resamples of every fit.
        seed: seed of the bootstraps.

    Returns:
        Paths of the figures written, then `report.md`.

    Example:
        >>> paths = write_report(xr.open_zarr("results.zarr"), "report/")  # doctest: +SKIP
        >>> paths[-1].name  # doctest: +SKIP
        'report.md'
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "epoch" not in ds.dims:
        raise ValueError("write_report needs per-epoch results with an `epoch` dimension.")
    if "k_star" not in ds or "adaptation_rate" not in ds:
        ds = summarize(ds, window=window)
    ds = _masked(ds)
    plan = _Plan(ds)
    has_ntk = _has(ds, "ntk_trace")
    paths: list[Path] = []
    skipped: list[str] = []
    fit_rows: list = []
    trans_rows: list = []

    facets = plan.facets(ds, exclude=[plan.curve])
    if len(facets) > _MAX_FACETS:
        skipped.append(f"dynamics figures: only the first {_MAX_FACETS} of {len(facets)} "
                       "combinations of the other axes are drawn")
        facets = facets[:_MAX_FACETS]
    for facet in facets:
        paths.append(_fig_losses(ds, plan, facet, out_dir))
    if has_ntk:
        for facet in facets:
            paths.append(_fig1_dynamics(ds, plan, facet, out_dir))
    else:
        skipped.append("Fig. 1 (NTK dynamics): no NTK was recorded (ntk_trace is all NaN)")

    if plan.scaling:
        for axis in plan.scaling:
            paths.append(_fig2_scaling(ds, plan, axis, out_dir, fit_rows, num_bootstrap, seed))
    else:
        skipped.append("Fig. 2 (scaling): needs a `width` or `n_train` axis with at least two "
                       "values")

    if "width" in plan.axes and ds.sizes["width"] >= 4 and has_ntk:
        paths.append(_fig3_transition(ds, plan, out_dir, trans_rows, num_bootstrap, seed))
    else:
        why = ("no NTK was recorded" if not has_ntk else
               "needs a `width` axis with at least 4 values for a two-segment fit")
        skipped.append(f"Fig. 3 (width transition): {why}")

    if "noise" in plan.axes and ds.sizes["noise"] >= 2:
        noise_facets = plan.facets(ds, exclude=["noise"])[:_MAX_FACETS]
        for facet in noise_facets:
            paths.append(_fig4_noise(ds, plan, facet, out_dir))
    else:
        skipped.append("Fig. 4 (noise scaling): the sweep has no `noise` axis with two or more values")

    if has_ntk:
        for facet in facets:
            paths.append(_fig8_alignment(ds, plan, facet, out_dir))
    else:
        skipped.append("Fig. 8 (alignment): no NTK was recorded")

    report = out_dir / "report.md"
    report.write_text(_markdown(ds, plan, paths, skipped, fit_rows, trans_rows, num_bootstrap))
    return paths + [report]


def _markdown(ds, plan, paths, skipped, fit_rows, trans_rows, num_bootstrap) -> str:
    sizes = ", ".join(f"{a}={ds.sizes[a]}" for a in plan.axes)
    values = "; ".join(
        f"{a}: {', '.join(str(v) for v in ds[a].values)}" for a in plan.axes
        if a not in REPLICATE_AXES and a in ds.coords
    )
    num_members = int(np.prod([ds.sizes[a] for a in plan.axes])) if plan.axes else 1
    num_div = int(ds["diverged"].values.sum()) if "diverged" in ds else 0
    num_edge = int(ds["alpha_star_at_edge"].values.sum())
    epochs = ds["epoch"].values
    lines = [
        "# ntkbench sweep report",
        "",
        f"- Sweep axes: {sizes}; epochs {epochs.min()}..{epochs.max()}.",
        f"- Sweep values: {values or 'single point'}.",
        f"- Members: {num_members}, diverged: {num_div} (left out of means, bands and fits), "
        f"α* at a window edge (NaN, not extrapolated): {num_edge}.",
        f"- Replicates averaged over: {', '.join(plan.reps) or 'none'}; bands are ±1 std.",
        f"- k* = first NTK record with the minimum test loss among recorded epochs; adaptation "
        f"rate over a {ds.attrs.get('window_epochs', 20)}-epoch running window"
        + (f", NTK every {ds.attrs['ntk_every']} epochs" if "ntk_every" in ds.attrs else "")
        + ".",
        "",
        "## Fitted exponents",
        "",
    ]
    if fit_rows:
        lines += [f"Power law y = c·x^β, least squares in log-log on the replicate means; 95% "
                  f"bootstrap interval of β over replicates ({num_bootstrap} resamples).", "",
                  "| quantity | against | group | c | β | 95% CI |", "|---|---|---|---|---|---|"]
        for (name, axis), group, fit in fit_rows:
            lines.append(f"| {name} | {axis} | {group or 'all'} | {_fmt(fit.c)} | "
                         f"{_fmt(fit.beta)} | [{_fmt(fit.ci_low)}, {_fmt(fit.ci_high)}] |")
    else:
        lines.append("None: the sweep has no `width` or `n_train` axis with two or more values.")
    lines += ["", "## Transition widths", ""]
    if trans_rows:
        lines += ["Continuous two-segment power law in log-log, breakpoint fitted; 95% bootstrap "
                  "interval over replicates.", "",
                  "| quantity | group | transition width | 95% CI | β below | β above |",
                  "|---|---|---|---|---|---|"]
        for name, group, fit in trans_rows:
            lines.append(f"| {name} | {group or 'all'} | {_fmt(fit.x_break)} | "
                         f"[{_fmt(fit.ci_low)}, {_fmt(fit.ci_high)}] | {_fmt(fit.beta_below)} | "
                         f"{_fmt(fit.beta_above)} |")
    else:
        lines.append("None (see skipped figures).")
    lines += ["", "## Summaries per sweep point (mean ± std over replicates)", ""]
    lines += _summary_table(ds, plan)
    lines += ["", "## Figures", ""]
    for p in paths:
        lines.append(f"![{p.stem}]({p.name})")
        lines.append("")
    if skipped:
        lines += ["### Skipped", ""] + [f"- {s}" for s in skipped]
    return "\n".join(lines) + "\n"
