"""`ntkbench.write_report` on small synthetic sweeps with the results schema."""

import numpy as np
import pytest
import xarray as xr

from ntkbench import summarize, write_report

_PER_EPOCH = ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "ntk_trace",
              "ntk_entropy", "ntk_erank", "label_alignment", "label_alignment_traced",
              "eigvec_misalignment")


def make_results(*, depth=(3,), width=(16, 64, 256, 1024, 4096), n_train=None, noise=None,
                 data_draw=None, seed=(0, 1, 2), num_epochs=60, ntk_every=2, record_ntk=True,
                 diverged=(), rng_seed=0):
    """A results Dataset with the sweep schema and paper-like trends.

    Test loss ∝ width^-0.5 with its minimum near epoch 40; the trace is linear in ln L_train with
    T0 ∝ max(1, w/256) (so the trace ratio declines beyond 256); erank* ∝ w^0.5 up to 256, then
    flat. `diverged` lists index tuples over the sweep axes; those members get NaN losses.
    """
    rng = np.random.default_rng(rng_seed)
    axes = {"depth": depth, "width": width, "n_train": n_train, "noise": noise,
            "data_draw": data_draw, "seed": seed}
    axes = {k: np.asarray(v) for k, v in axes.items() if v is not None}
    shape = tuple(len(v) for v in axes.values())
    grids = np.meshgrid(*axes.values(), indexing="ij")
    get = lambda name, default: (grids[list(axes).index(name)][..., None].astype(float)
                                 if name in axes else default)
    w, dep, nz = get("width", 64.0), get("depth", 3.0), get("noise", 0.0)
    epochs = np.arange(num_epochs + 1)
    k = epochs.astype(float)
    noise_fn = lambda s: np.exp(s * rng.normal(size=shape + (num_epochs + 1,)))
    train = 2.3 * np.exp(-k / (8 + 2 * dep)) * noise_fn(0.02)
    k_min = 40.0
    test = (0.5 * w**-0.5 * (1 + nz) + 0.3) * (1 + ((k - k_min) / 30) ** 2) * noise_fn(0.01)
    t0 = 2.0 * np.maximum(1.0, w / 256.0) * np.exp(0.05 * rng.normal(size=shape + (1,)))
    trace = t0 - 0.4 * np.log(train / 2.3)
    sat = np.minimum(w, 256.0) ** 0.5 * (1 + nz)
    erank = sat * (2.0 - np.tanh(k / 10) + 0.5 * k / num_epochs)
    recorded = (epochs % ntk_every == 0) | (epochs == num_epochs)
    ntk = lambda a: np.where(recorded & record_ntk, a, np.nan)
    mis = np.where(k > 0, 0.5 * np.exp(-k / 10) + 1e-4, np.nan)
    div = np.zeros(shape, bool)
    for idx in diverged:
        div[idx] = True
    train = np.where(div[..., None], np.nan, train)
    test = np.where(div[..., None], np.nan, test)
    dims = tuple(axes) + ("epoch",)
    full = lambda a: np.broadcast_to(a, shape + (num_epochs + 1,)).copy()
    values = {
        "train_loss": train, "test_loss": test,
        "train_accuracy": 1 - train / 2.5, "test_accuracy": 1 - test / 2,
        "ntk_trace": ntk(trace), "ntk_entropy": ntk(np.log(erank)), "ntk_erank": ntk(erank),
        "label_alignment": ntk(0.2 + 0.05 * np.tanh(k / 20) + 0 * w),
        "label_alignment_traced": ntk(0.4 + 0.05 * np.tanh(k / 20) + 0 * w),
        "eigvec_misalignment": ntk(mis + 0 * w),
    }
    data = {name: (dims, full(values[name])) for name in _PER_EPOCH}
    data["diverged"] = (tuple(axes), div)
    return xr.Dataset(data, coords={**axes, "epoch": epochs}, attrs={"ntk_every": ntk_every})


def _names(paths):
    return sorted(p.name for p in paths)


def test_width_sweep_report(tmp_path):
    ds = make_results(diverged=[(0, 2, 1)])
    paths = write_report(ds, tmp_path, num_bootstrap=50)
    names = _names(paths)
    for want in ("fig_losses.png", "fig1_dynamics.png", "fig2_scaling_width.png",
                 "fig3_transition.png", "fig8_alignment.png", "report.md"):
        assert want in names
    assert not any(n.startswith("fig4") for n in names)
    for p in paths:
        assert p.exists() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "## Fitted exponents" in md and "| min_test_loss | width |" in md
    assert "## Transition widths" in md and "| erank_star |" in md and "| trace_ratio |" in md
    assert "Fig. 4 (noise scaling)" in md  # skipped, and said so
    assert "diverged: 1" in md
    for n in names:
        if n.endswith(".png"):
            assert f"({n})" in md
    # The loss exponent of the synthetic sweep is about −0.5 at small widths (plus a floor).
    assert "| 16 |" in md or "| 16 " in md


def test_single_width_without_ntk(tmp_path):
    ds = make_results(width=(64,), seed=(0, 1), record_ntk=False)
    paths = write_report(ds, tmp_path, num_bootstrap=20)
    assert _names(paths) == ["fig_losses.png", "report.md"]
    md = (tmp_path / "report.md").read_text()
    for skipped in ("Fig. 1", "Fig. 2", "Fig. 3", "Fig. 4", "Fig. 8"):
        assert skipped in md.split("### Skipped")[1]
    assert "n/a" in md  # NTK summaries are NaN


def test_data_scaling_with_noise_and_depth_facets(tmp_path):
    ds = make_results(depth=(3, 4), width=(8,), n_train=(50, 100, 200, 400), noise=(0.0, 0.5),
                      data_draw=(0, 1), seed=(0,), num_epochs=40, ntk_every=1,
                      diverged=[(1, 0, 3, 1, 1, 0)])
    paths = write_report(summarize(ds, window=10), tmp_path, num_bootstrap=20)
    names = _names(paths)
    assert "fig2_scaling_n_train.png" in names and "fig3_transition.png" not in names
    assert {"fig1_dynamics_depth3_noise0.png", "fig1_dynamics_depth4_noise0.5.png"} <= set(names)
    assert any(n.startswith("fig4_noise") for n in names)
    md = (tmp_path / "report.md").read_text()
    assert "| min_test_loss | n_train | depth=3, noise=0 |" in md
    assert "10-epoch" in md


def test_report_needs_epochs(tmp_path):
    ds = make_results().isel(epoch=0)
    with pytest.raises(ValueError, match="epoch"):
        write_report(ds, tmp_path)


def test_single_width_with_ntk_and_no_seed_axis(tmp_path):
    ds = make_results(width=(64,), seed=None, depth=None, num_epochs=50)
    paths = write_report(ds, tmp_path, num_bootstrap=20)
    assert _names(paths) == ["fig1_dynamics.png", "fig8_alignment.png", "fig_losses.png",
                             "report.md"]
    md = (tmp_path / "report.md").read_text()
    assert "Replicates averaged over: none" in md and "Fig. 2 (scaling)" in md


def test_laziness_figure_and_k_star_flags(tmp_path):
    ds = make_results()
    w = ds["width"].astype(float)
    ds["kernel_distance_init"] = ds["ntk_trace"] * 0 + 0.3 * w**-0.5
    ds["lin_output_gap"] = ds["ntk_trace"].fillna(1.0) * 0 + 0.1 * w**-1.0
    # Every k* (near 40) is before this window: flagged, and fitted only on request.
    paths = write_report(ds, tmp_path, num_bootstrap=50, kstar_window=(45, 60),
                         include_flagged=True)
    assert "fig_laziness.png" in _names(paths)
    md = (tmp_path / "report.md").read_text()
    assert "| kernel_distance_star | width |" in md and "| lin_output_gap_star | width |" in md
    row = [ln for ln in md.splitlines() if ln.startswith("| kernel_distance_star | width |")][0]
    assert "| -0.5 |" in row  # the fitted exponent of 0.3 w^-0.5
    flags = md.split("## Where k* falls")[1].split("##")[0]
    assert "width=16" in flags and "before the window" in flags  # k* near 40, window (45, 60)


def test_an_unfinished_sweep_is_refused_unless_partial_results_are_allowed(tmp_path):
    import ntkbench

    ds = make_results()
    last = np.full(tuple(ds.sizes[a] for a in ("depth", "width", "seed")), 60)
    last[0, 1, 2] = 35  # one member trained 35 of 60 epochs
    ds["last_record"] = (("depth", "width", "seed"), last)
    with pytest.raises(ntkbench.ConfigError, match="1 of 15 members are incomplete"):
        write_report(ds, tmp_path / "a", num_bootstrap=10)
    assert not (tmp_path / "a").exists()
    write_report(ds, tmp_path / "b", num_bootstrap=10, allow_partial=True)
    md = (tmp_path / "b" / "report.md").read_text()
    assert "## Incomplete members" in md and "width=64, seed=2: records 0..35 of 60" in md


def test_figures_label_every_panel_draw_only_what_was_recorded_and_tell_bands_from_intervals(
        tmp_path, monkeypatch):
    """What a referee checks: every scaling panel has a y label; the laziness figure has no
    empty "not recorded" panel (this sweep has no linearized model); ±1 std bands are filled,
    the transition's 95% interval is hatched, and a key under the panels names both."""
    from matplotlib.collections import FillBetweenPolyCollection, PolyCollection

    from ntkbench._report import figures
    from ntkbench._report import scaling_figures as scaling

    drawn = {}

    def keep(fig, path):
        drawn[path.name] = fig
        return path

    monkeypatch.setattr(scaling, "save", keep)
    monkeypatch.setattr(figures, "_save", keep)
    ds = make_results()
    w = ds["width"].astype(float)
    ds["kernel_distance_init"] = ds["ntk_trace"] * 0 + 0.3 * w**-0.5
    write_report(ds, tmp_path, num_bootstrap=20, kstar_window=(0, 60))
    md = (tmp_path / "report.md").read_text()
    for ax in drawn["fig2_scaling_width.png"].axes:
        assert ax.get_ylabel(), ax.get_title()
    lazy = drawn["fig_laziness.png"]
    assert [ax.get_title() for ax in lazy.axes] == ["kernel distance from init at k*",
                                                    "trace ratio"]
    assert "Laziness: no panel for linearized-model output gap at k*" in md
    for ax in lazy.axes:
        assert not [t for t in ax.texts if "not recorded" in t.get_text()]
    fig3 = drawn["fig3_transition.png"]
    spans = [p for ax in fig3.axes for p in ax.patches if p.get_hatch()]
    bands = [c for ax in fig3.axes for c in ax.collections
             if isinstance(c, (FillBetweenPolyCollection, PolyCollection)) and not c.get_hatch()]
    assert spans and bands
    assert all(p.get_facecolor()[3] == 0 for p in spans)  # hatched, not filled like a band
    labels = [t.get_text() for legend in fig3.legends for t in legend.get_texts()]
    assert any(t.startswith("band: ±1 std") for t in labels)
    assert "hatched: 95% bootstrap CI of w_t" in labels


def test_a_parametrization_axis_gets_the_composite_figure(tmp_path):
    """Three parametrizations side by side: one composite figure (trace ratio, erank*, kernel
    distance, k* against width) and a transition row per parametrization in report.md."""
    parts = [make_results(rng_seed=i, num_epochs=80) for i in range(3)]
    ds = xr.concat(parts, dim="parametrization").assign_coords(
        parametrization=["standard", "ntk", "mup"])
    ds = ds.transpose("parametrization", ...)
    paths = write_report(ds, tmp_path, num_bootstrap=20)
    assert "fig_parametrizations.png" in _names(paths)
    md = (tmp_path / "report.md").read_text()
    assert "(fig_parametrizations.png)" in md
    rows = [ln for ln in md.split("## Transition widths")[1].splitlines()
            if ln.startswith("| trace_ratio |")]
    assert len(rows) == 3 and all(f"parametrization={p}" in "".join(rows)
                                  for p in ("standard", "ntk", "mup"))
    # Without a parametrization axis there is no such figure.
    assert "fig_parametrizations.png" not in _names(write_report(
        parts[0], tmp_path / "one", num_bootstrap=20))
