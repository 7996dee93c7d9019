"""`write_comparison` (Figs. 2, 3, 7 across sweeps) and the completeness checks it shares.

Synthetic sweeps use the stored schema (all six sweep axes, the member variables and the attrs
`ntkbench.load` sets) with known laws: min test loss = 2·w^-0.5·n^-0.3·(1 + noise), T0 =
2·w^0.25, α = 0.4, erank* = min(w, 256)^0.5 and a trace ratio flat up to 256 then ∝ w^-0.5, each
member scaled by exp(0.02·N(0, 1)).
"""

import os
import shutil

import numpy as np
import pytest
import xarray as xr

import ntkbench
from ntkbench._analysis import (
    describe_incomplete,
    incomplete_members,
    require_complete,
)
from ntkbench._config import AXES
from ntkbench._report.compare import sweep_labels
from ntkbench.launchers.cli import main

WIDTHS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
E = 60  # epochs
K_MIN = 40  # the epoch of minimum test loss


def make_sweep(*, name="model", dataset="digits", model="mlp", depth=(3,), width=WIDTHS,
               n_train=(100,), noise=(0.0,), data_draw=(0,), seed=(0, 1, 2), ntk=True,
               negative_alpha=(), nan_erank=(), incomplete=(), rng_seed=0):
    """A results Dataset as `ntkbench.load(workdir, summaries=False)` returns it.

    `negative_alpha`: widths whose trace falls as the loss falls (α = −0.2 < 0);
    `nan_erank`: widths without a finite erank*; `incomplete`: member index tuples (over
    `AXES`) committed only up to epoch 30, masked as the store masks them.
    """
    rng = np.random.default_rng(rng_seed)
    coords = dict(zip(AXES, (("standard",), depth, width, n_train, noise, data_draw, seed)))
    coords = {a: np.asarray(v) for a, v in coords.items()}
    shape = tuple(v.size for v in coords.values())
    g = dict(zip(AXES, np.meshgrid(*coords.values(), indexing="ij")))
    w, n, nz = (g[a].astype(float) for a in ("width", "n_train", "noise"))
    rep = np.exp(0.02 * rng.normal(size=shape))
    k = np.arange(E + 1.0)
    train = 2.3 * np.exp(-k / 10) * np.ones(shape + (1,))
    min_loss = 2.0 * w**-0.5 * n**-0.3 * (1 + nz) * rep
    test = min_loss[..., None] * (1 + ((k - K_MIN) / 30) ** 2)
    t0 = 2.0 * w**0.25 * rep
    a = np.where(np.isin(w, negative_alpha), -0.2, 0.4)
    trace = t0[..., None] + a[..., None] * k / 10  # α = −dT/d ln L = a
    ratio = np.where(w <= 256, 1.0, (w / 256) ** -0.5) * rep
    erank = np.where(np.isin(w, nan_erank), np.nan, np.minimum(w, 256) ** 0.5 * rep)
    recorded = (k % 2 == 0) | (k == E)
    ntk_series = lambda v: np.where(recorded, v, np.nan)
    dims, mdims = AXES + ("epoch",), AXES
    data = {
        "train_loss": (dims, train), "test_loss": (dims, test),
        "train_accuracy": (dims, 1 - train / 3), "test_accuracy": (dims, 1 - test / 3),
        "k_star": (mdims, np.full(shape, K_MIN, np.int32)),
        "min_test_loss": (mdims, min_loss),
        "diverged": (mdims, np.zeros(shape, bool)),
        "last_record": (mdims, np.full(shape, E, np.int32)),
    }
    if ntk:
        data.update({
            "ntk_trace": (dims, ntk_series(trace)),
            "ntk_erank": (dims, ntk_series(erank[..., None] * np.ones(E + 1))),
            "best_ntk_trace": (mdims, t0 * (1 + ratio)),
            "best_ntk_erank": (mdims, erank)})
    ds = xr.Dataset(data, coords={**coords, "epoch": np.arange(E + 1)},
                    attrs={"name": name, "dataset": dataset, "model": model, "epochs": E,
                           "ntk_every": 2 if ntk else 0, "workdir": f"runs/{name}"})
    for idx in incomplete:  # what the results store reads for an unfinished member
        ds["last_record"][idx] = 30
        for v in ds.data_vars:
            if "epoch" in ds[v].dims:
                ds[v][idx] = np.where(np.arange(E + 1) <= 30, ds[v][idx].values, np.nan)
        ds["k_star"][idx] = -1
        for v in ("min_test_loss", "best_ntk_trace", "best_ntk_erank"):
            if v in ds:
                ds[v][idx] = np.nan
    return ds


def fit_rows(md: str) -> list[dict]:
    """The rows of the fits table of `compare.md` as dicts."""
    table = md.split("## Fits")[1].split("## Points")[0]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
            for line in lines[2:]]


def row(rows, **want) -> dict:
    found = [r for r in rows if all(r[k] == v for k, v in want.items())]
    assert len(found) == 1, (want, found)
    return found[0]


def estimate(r: dict) -> float:
    return float(r["estimate"].split("=")[1])


def interval(r: dict) -> tuple[float, float]:
    lo, hi = r["95% CI"].strip("[]").split(",")
    return float(lo), float(hi)


@pytest.fixture(scope="module")
def paper_set(tmp_path_factory):
    """Model scaling (two depths; and on MNIST), data scaling, dense and CNN noise sweeps."""
    sweeps = [
        make_sweep(name="model", depth=(3, 4)),
        make_sweep(name="data", depth=(4,), width=(8,), n_train=(16, 32, 64, 128, 256, 512),
                   data_draw=(0, 1, 2, 3), seed=(0,), rng_seed=1),
        make_sweep(name="mnist", dataset="mnist", negative_alpha=(4096,), nan_erank=(16,),
                   rng_seed=2),
        make_sweep(name="noise", dataset="cifar4", width=(256,), noise=(0.0, 0.2, 0.4),
                   rng_seed=3),
        make_sweep(name="noise_cnn", dataset="cifar4", model="cnn", width=(32,),
                   noise=(0.0, 0.2, 0.4), rng_seed=4),
    ]
    out = tmp_path_factory.mktemp("compare")
    paths = ntkbench.write_comparison(sweeps, out, num_bootstrap=200)
    return paths, (out / "compare.md").read_text()


def test_files_and_labels(paper_set):
    paths, md = paper_set
    assert [p.name for p in paths] == ["fig2_scaling.png", "fig3_transition.png",
                                       "fig7_noise.png", "compare.md"]
    for p in paths[:-1]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({p.name})" in md
    for label in ("digits / mlp / depth 3,4 (model)", "digits / mlp / depth 4 (data)", "mnist / mlp / depth 3",
                  "cifar4 / mlp / depth 3", "cifar4 / cnn / depth 3"):
        assert f"| {label} |" in md
    assert "## Skipped\n\nNothing." in md


def test_fits_recover_known_exponents(paper_set):
    _, md = paper_set
    rows = fit_rows(md)
    tol = 0.02  # member scatter is 2%: the fitted exponents are within ±0.02 of the laws
    for sweep, group, axis, quantity, beta in [
            ("digits / mlp / depth 3,4 (model)", "depth=3", "width", "min_test_loss", -0.5),
            ("digits / mlp / depth 3,4 (model)", "depth=4", "width", "T0", 0.25),
            ("digits / mlp / depth 4 (data)", "all", "n_train", "min_test_loss", -0.3),
            ("digits / mlp / depth 3,4 (model)", "depth=3", "width", "alpha_star", 0.0)]:
        r = row(rows, sweep=sweep, group=group, against=axis, quantity=quantity,
                fit="power law")
        assert abs(estimate(r) - beta) < tol, r
        lo, hi = interval(r)
        assert lo - 1e-9 <= estimate(r) <= hi + 1e-9, r
        used, total = r["points used"].split("/")
        assert used == total, r
    for quantity in ("erank_star", "trace_ratio"):  # the transition at w = 256, within ±15%
        for group in ("depth=3", "depth=4"):
            r = row(rows, sweep="digits / mlp / depth 3,4 (model)", group=group, quantity=quantity,
                    fit="transition width")
            assert abs(np.log(estimate(r) / 256)) < np.log(1.15), r
            assert r["points used"] == "9/9"


def test_dropped_points_are_listed(paper_set):
    _, md = paper_set
    rows = fit_rows(md)
    alpha = row(rows, sweep="mnist / mlp / depth 3", quantity="alpha_star")
    assert alpha["points used"] == "8/9" and alpha["dropped"] == "width=4096 (mean -0.2 <= 0)"
    for kind in ("power law", "transition width"):
        r = row(rows, sweep="mnist / mlp / depth 3", quantity="erank_star", fit=kind)
        assert r["points used"] == "8/9" and r["dropped"] == "width=16 (no finite value)"
    section = md.split("## Points left out of fits")[1].split("##")[0]
    assert ("- mnist / mlp / depth 3, alpha_star against width (power law): width=4096 "
            "(mean -0.2 <= 0)") in section
    assert section.count("width=16 (no finite value)") == 2
    assert "min_test_loss against width" not in section  # nothing dropped, nothing listed


def test_labels_collide_and_get_names():
    a, b = make_sweep(name="quick"), make_sweep(name="other")
    labels, _ = sweep_labels([a, b, make_sweep(name="x", dataset="mnist")])
    assert labels == ["digits / mlp / depth 3 (quick)", "digits / mlp / depth 3 (other)",
                      "mnist / mlp / depth 3"]
    same = sweep_labels([a, a.assign_attrs(workdir="elsewhere")])[0]
    assert same == ["digits / mlp / depth 3 (quick, quick)",  # the workdirs' folder names
                    "digits / mlp / depth 3 (quick, elsewhere)"]
    whole = sweep_labels([a, a.assign_attrs(workdir="other/quick")])[0]
    assert whole == ["digits / mlp / depth 3 (quick, runs/quick)",  # folder names collide too
                     "digits / mlp / depth 3 (quick, other/quick)"]
    assert len(set(sweep_labels([a, a])[0])) == 2
    # Sharing one depth is enough to collide: both would draw a "digits / mlp / depth 4" curve.
    two = sweep_labels([make_sweep(name="m", depth=(3, 4)), make_sweep(name="d", depth=(4,))])
    assert two[0] == ["digits / mlp / depth 3,4 (m)", "digits / mlp / depth 4 (d)"]
    assert sweep_labels([make_sweep(depth=(3,)), make_sweep(depth=(4,))])[0] == [
        "digits / mlp / depth 3", "digits / mlp / depth 4"]


def test_skip_reasons(tmp_path):
    noise = [make_sweep(name="n", width=(64,), noise=(0.0, 0.5))]
    paths = ntkbench.write_comparison(noise, tmp_path / "a", num_bootstrap=0)
    assert [p.name for p in paths] == ["fig7_noise.png", "compare.md"]
    md = paths[-1].read_text()
    assert "Fig. 2 (model vs data scaling) skipped: no sweep has a `width` or `n_train` axis" in md
    assert "Fig. 3 (width transition) skipped" in md and "Fig. 7" not in md.split("Skipped")[1]
    assert "None: no figure with fits could be drawn" in md

    no_ntk = [make_sweep(name="w", ntk=False, width=(8, 64, 512))]
    paths = ntkbench.write_comparison(no_ntk, tmp_path / "b", num_bootstrap=0)
    assert [p.name for p in paths] == ["fig2_scaling.png", "compare.md"]
    md = paths[-1].read_text()
    skipped = md.split("## Skipped")[1]
    assert "Fig. 3 (width transition) skipped: no sweep has a `width` axis with at least two " \
           "values and a recorded NTK" in skipped
    assert "Fig. 7 (dense vs CNN vs noise) skipped: no sweep has a `noise` axis" in skipped
    for q in ("T0", "alpha_star", "erank_star"):
        assert f"Fig. 2: {q} of digits / mlp / depth 3 has no finite value; not drawn or " \
               "fitted (no NTK recorded" in skipped
    r = row(fit_rows(md), quantity="min_test_loss")
    assert abs(estimate(r) + 0.5) < 0.02 and r["95% CI"] == "[n/a, n/a]"  # no bootstrap


def test_incomplete_members_refused_then_allowed(tmp_path):
    part = [(0, 0, 0, 0, 0, 0, s) for s in range(3)] + [(0, 0, 3, 0, 0, 0, 1)]  # width 16, 128
    ds = make_sweep(name="part", incomplete=part)
    bad = incomplete_members(ds)
    assert bad.dims == AXES and int(bad.sum()) == 4 and bool(bad[0, 0, 3, 0, 0, 0, 1])
    assert describe_incomplete(ds)[-1] == "width=128, seed=1: records 0..30 of 60"
    out = tmp_path / "c"
    with pytest.raises(ntkbench.ConfigError, match=r"runs/part: 4 of 27 members are incomplete"
                       r".*finish the run.*allow partial results") as info:
        ntkbench.write_comparison([make_sweep(), ds], out)
    assert info.value.option == "allow_partial"
    assert not out.exists()  # refused before anything was written
    assert require_complete(make_sweep()) is not None

    paths = ntkbench.write_comparison([make_sweep(name="full"), ds], out, allow_partial=True,
                             num_bootstrap=50)
    md = paths[-1].read_text()
    section = md.split("## Incomplete members (partial results allowed)")[1].split("##")[0]
    assert "- digits / mlp / depth 3 (part) (runs/part): 4 incomplete member(s)" in section
    assert "  - width=16, seed=0: records 0..30 of 60" in section
    r = row(fit_rows(md), sweep="digits / mlp / depth 3 (part)", quantity="min_test_loss")
    assert r["points used"] == "8/9" and r["dropped"] == "width=16 (no finite value)"
    assert abs(estimate(r) + 0.5) < 0.02
    assert "| digits / mlp / depth 3 (part) | part | digits | mlp |" in md
    assert "| 27 | 23 | 0 |" in md  # members, complete, diverged


@pytest.fixture(scope="module")
def real_sweeps(tmp_path_factory):
    """A real smoke sweep, stopped after its first chunk (partial copy kept), then finished."""
    root = tmp_path_factory.mktemp("real")
    config = ntkbench.preset("smoke", **{"epochs": 6,
                                        "ntk_every": 3, "chunk_epochs": 3})
    done, partial = str(root / "done"), str(root / "partial")
    with pytest.raises(ntkbench.Interrupted):
        ntkbench.run(config, done, hooks=ntkbench.Hooks(should_stop=lambda: True))
    shutil.copytree(done, partial)
    ntkbench.run(config, done)
    return done, partial


def test_real_sweeps_through_the_cli(real_sweeps, tmp_path, capsys):
    done, partial = real_sweeps
    out = tmp_path / "cmp"
    code = main(["ntkbench", "report", f"--workdir={done}", f"--workdir={partial}",
                 f"--out={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"{partial}: 4 of 4 members are incomplete" in err[0]
    assert "--allow_partial" in err[0] and not out.exists()

    # Six epochs put every k* at the last one: fit the flagged points too (this is about the
    # command's plumbing; the flags have their own tests).
    assert main(["ntkbench", "report", f"--workdir={done}", f"--workdir={partial}",
                 f"--out={out}", "--allow_partial", "--include_flagged"]) == 0
    printed = capsys.readouterr().out
    # The same sweep twice: nothing differs but the sweep points; then where the files went.
    assert printed == ("What differs between the sweeps (besides their sweep points):\n"
                       f"  nothing\nwrote 3 files to {out}:\n  fig2_scaling.png\n"
                       "  fig3_transition.png\n  compare.md\n")
    md = (out / "compare.md").read_text()
    assert "## What differs between the sweeps\n\nNothing beyond their sweep points" in md
    label = "synthetic / mlp / depth 2 (smoke, done)"
    rows = fit_rows(md)
    r = row(rows, sweep=label, quantity="min_test_loss")
    assert r["points used"] == "2/2" and np.isfinite(estimate(r))
    assert row(rows, sweep=label, quantity="erank_star", fit="transition width")[
        "estimate"] == "w_t = n/a"  # two widths cannot place a breakpoint
    assert "4 incomplete member(s)" in md
    assert "  - width=4, seed=1: records 0..2 of 6\n  - width=16, seed=0: no record " \
           "committed" in md  # the first chunk of the first pack only
    skipped = md.split("## Skipped")[1]
    partial_label = "synthetic / mlp / depth 2 (smoke, partial)"
    assert f"Fig. 2: min_test_loss of {partial_label} has no finite value; not drawn or " \
           "fitted" in skipped
    assert not [r for r in rows if r["sweep"] == partial_label]  # nothing to fit
    assert f"Fig. 2: alpha_star of {label} has no finite value" in skipped  # 6 < window


def test_real_sweep_beside_synthetic(real_sweeps, tmp_path):
    done, _ = real_sweeps
    real = ntkbench.load(done)
    assert not bool(incomplete_members(real).any())
    paths = ntkbench.write_comparison([real, make_sweep()], tmp_path, num_bootstrap=50,
                                      include_flagged=True)  # six epochs: k* at the last one
    md = paths[-1].read_text()
    rows = fit_rows(md)
    assert row(rows, sweep="synthetic / mlp / depth 2", quantity="T0")["points used"] == "2/2"
    assert abs(estimate(row(rows, sweep="digits / mlp / depth 3", quantity="T0",
                            fit="power law")) - 0.25) < 0.02


def test_compare_says_what_differs_and_writes_beside_neither_sweep(real_sweeps, tmp_path,
                                                                   monkeypatch, capsys):
    """Sweeps trained differently (epochs, lr, n_test) are compared with a word of it, on stdout
    and in compare.md; by default the files go to ./compare-<names>, not into a sweep."""
    done, _ = real_sweeps
    other = str(tmp_path / "longer")
    ntkbench.run(ntkbench.preset("smoke", epochs=8, ntk_every=4, lr=1e-2, n_test=8), other,
                 hooks=ntkbench.Hooks.quiet(), tensorboard=False)
    monkeypatch.chdir(tmp_path)
    assert main(["ntkbench", "report", f"--workdir={done}", f"--workdir={other}"]) == 0
    printed = capsys.readouterr().out
    for line in ("  epochs: 6 (done), 8 (longer)", "  lr: 0.003 (done), 0.01 (longer)",
                 "  n_test: 16 (done), 8 (longer)", "  ntk_every: 3 (done), 4 (longer)"):
        assert line + "\n" in printed, printed
    out = tmp_path / "compare-done-longer"
    assert f"wrote 3 files to {out}:" in printed
    md = (out / "compare.md").read_text()
    assert "- lr: 0.003 (done), 0.01 (longer)" in md
    assert not [p for p in os.listdir(done) if p.startswith("compare")]  # not into a sweep
