"""Per-point learning rates (`lr_by`, `lr_table`): the table, packing, resume, the manifest and
the results, extension; the calibrator's one-lr-per-point proposal; and the report's exclusion
of the points whose k* it flags."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import xarray as xr

import ntkbench
from ntkbench._analysis import AT_END, EARLY, INSIDE, LATE, NONE, KStar, usable_points
from ntkbench._sweep.calibrate import propose_points
from ntkbench.launchers.cli import main

QUIET = ntkbench.Hooks(log=lambda s: None)


def _config(**kw):
    base = dict(widths=(12, 16), epochs=12, chunk_epochs=6, ntk_every=0, num_seeds=2)
    return ntkbench.preset("smoke", **{**base, **kw})


# ------------------------------------------------------------------------------ the table
def test_table_lookup_and_validation():
    c = ntkbench.preset("smoke", widths=(4, 8, 16), depth=(2, 3), lr_by="depth,width",
                        lr_table="3/8=5, 2/4=1, 2/8=2, 2/16=3, 3/4=4, 3/16=6, 9/9=7")
    assert c.lr_of({"depth": 3, "width": 8}) == 5
    assert list(c.lr_points()) == [(2, 4), (2, 8), (2, 16), (3, 4), (3, 8), (3, 16)]
    # Canonical: the sweep's points only, in grid order (the extra 9/9 is dropped).
    assert c.lr_table == "2/4=1.0, 2/8=2.0, 2/16=3.0, 3/4=4.0, 3/8=5.0, 3/16=6.0"
    # A preset's table still fits when the axis is overridden with fewer values.
    q = ntkbench.preset("quick", widths=(8, 512))
    assert q.lr_table == "8=0.003, 512=0.0002"
    assert ntkbench.preset("smoke").lr_of({"width": 4}) == ntkbench.preset("smoke").lr
    for kw, needle in [(dict(lr_by="width", lr_table="4=1e-3"), "no learning rate for 16"),
                       (dict(lr_by="seed", lr_table="0=1e-3"), "distinct axes among"),
                       (dict(lr_by="width,width", lr_table="4/4=1e-3"), "distinct axes"),
                       (dict(lr_table="4=1e-3"), "go together"),
                       (dict(lr_by="width", lr_table="4=1e-3, 16=-1"), "positive"),
                       (dict(lr_by="width", lr_table="4:1e-3"), "must read VALUE=LR"),
                       (dict(lr_by="width", lr_table="four=1e-3"), "must be values")]:
        with pytest.raises(ntkbench.ConfigError, match=needle):
            ntkbench.preset("smoke", **kw)
    # `dataclasses.replace` validates too: the table must cover a grown axis.
    with pytest.raises(ntkbench.ConfigError, match="no learning rate for 8"):
        dataclasses.replace(ntkbench.preset("smoke", lr_by="width", lr_table="4=1, 16=2"),
                            widths=(4, 8, 16))


# ------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One pack of widths 12 and 16 at two rates, and each width alone at its rate."""
    root = tmp_path_factory.mktemp("lr")
    table = dict(lr_by="width", lr_table="12=3e-3, 16=1e-2")
    joint = _config(**table, min_pack_efficiency=0.01, max_packs_per_group=1)
    ntkbench.run(joint, str(root / "joint"), hooks=QUIET)
    ntkbench.run(_config(widths=(16,), lr=1e-2), str(root / "w16"), hooks=QUIET)
    ntkbench.run(_config(widths=(12,), lr=3e-3), str(root / "w12"), hooks=QUIET)
    return root, joint


def test_packed_members_train_at_their_own_rate(runs):
    root, joint = runs
    manifest = json.loads((root / "joint" / "manifest.json").read_text())
    assert len(manifest["packs"]) == 1  # both widths share one program
    a = ntkbench.load(str(root / "joint"), summaries=False)
    alone16 = ntkbench.load(str(root / "w16"), summaries=False)
    alone12 = ntkbench.load(str(root / "w12"), summaries=False)
    for v in ("train_loss", "test_loss"):
        # Width 16 is the pack's width: the same program shape, so the same bits.
        np.testing.assert_array_equal(a[v].sel(width=16).values, alone16[v].values.squeeze(1))
        # Width 12 is padded to 16 in the pack: equal up to reassociation of padded zeros.
        np.testing.assert_allclose(a[v].sel(width=12).values, alone12[v].values.squeeze(1),
                                   rtol=2e-5, atol=1e-6)


def test_manifest_and_results_record_the_rates(runs):
    root, joint = runs
    manifest = json.loads((root / "joint" / "manifest.json").read_text())
    assert manifest["config"]["lr_by"] == "width"
    assert manifest["config"]["lr_table"] == "12=0.003, 16=0.01"
    ds = ntkbench.load(str(root / "joint"))
    assert ds["lr"].dims == tuple(d for d in ds["test_loss"].dims if d != "epoch")
    np.testing.assert_array_equal(ds["lr"].sel(width=12).values, np.float32(3e-3))
    np.testing.assert_array_equal(ds["lr"].sel(width=16).values, np.float32(1e-2))
    plain = xr.open_zarr(str(root / "joint" / "results"), consolidated=False, zarr_format=3)
    assert "lr" in plain


def test_resume_with_a_table_is_bit_identical(runs, tmp_path):
    root, joint = runs
    calls = {"n": 0}

    def stop():  # ask to stop after the first chunk
        calls["n"] += 1
        return calls["n"] == 1

    w = str(tmp_path / "w")
    with pytest.raises(ntkbench.Interrupted):
        ntkbench.run(joint, w, hooks=ntkbench.Hooks(log=lambda s: None, should_stop=stop))
    ntkbench.run(joint, w, hooks=QUIET)
    a = ntkbench.load(str(root / "joint"), summaries=False)
    b = ntkbench.load(w, summaries=False)
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


def test_extension_keeps_the_existing_rates(tmp_path):
    old = _config(widths=(12,), lr_by="width", lr_table="12=3e-3", epochs=4, chunk_epochs=4)
    w = str(tmp_path / "w")
    ntkbench.run(old, w, hooks=QUIET)
    grown = dataclasses.replace(old, widths=(12, 16), lr_table="12=3e-3, 16=1e-2")
    ntkbench.run(grown, w, hooks=QUIET, extend=True)
    ds = ntkbench.load(w, summaries=False)
    np.testing.assert_array_equal(ds["lr"].sel(width=16).values, np.float32(1e-2))
    changed = dataclasses.replace(old, widths=(12, 16, 20), lr_table="12=1e-3, 16=1e-2, 20=1e-2")
    with pytest.raises(ntkbench.WorkdirError, match="changes the learning rate of the existing"):
        ntkbench.run(changed, w, hooks=QUIET, extend=True)


# ------------------------------------------------------------------------------ calibrate
def _pilot(width, lr, mean, status, at_end=0):
    return KStar((("width", width),), mean, mean - 5, mean + 5, 2, 2, at_end, status, lr)


def test_one_lr_per_point():
    window, epochs = (120.0, 300.0), 300
    points = [
        # width 8: inside at 3e-3 (k* 150) and 1e-2 (k* 130): the one nearer the middle, 150
        _pilot(8, 1e-3, 300, AT_END, 2), _pilot(8, 3e-3, 150, INSIDE), _pilot(8, 1e-2, 130, INSIDE),
        # width 64: too late at 1e-3, too early at 3e-3: interpolated in log-log between them
        _pilot(64, 1e-3, 280, LATE), _pilot(64, 3e-3, 60, EARLY), _pilot(64, 1e-2, 20, EARLY),
        # width 512: early everywhere: not placed, the smallest pilot lr kept
        _pilot(512, 1e-3, 50, EARLY), _pilot(512, 3e-3, 20, EARLY), _pilot(512, 1e-2, 5, EARLY),
        # width 1024: diverged everywhere
        _pilot(1024, 1e-3, math.nan, NONE), _pilot(1024, 3e-3, math.nan, NONE),
        _pilot(1024, 1e-2, math.nan, NONE)]
    got = {p.point[0][1]: p for p in propose_points(points, ("width",), window, epochs)}
    assert (got[8].lr, got[8].placed, got[8].how) == (3e-3, True, "pilot")
    middle = math.sqrt(120 * 300)
    t = math.log(280 / middle) / math.log(280 / 60)
    assert got[64].placed and "interpolated" in got[64].how
    assert got[64].lr == pytest.approx(math.exp(math.log(1e-3) + t * math.log(3)), rel=2e-3)
    assert not got[512].placed and got[512].lr == 1e-3 and "too early" in got[512].how
    assert not got[1024].placed and "diverges" in got[1024].how


def test_calibrate_proposes_a_table_the_cli_can_apply(tmp_path, capsys):
    out_file = tmp_path / "calibrated.py"
    args = ["calibrate", "--config=smoke", "--config.epochs=8", "--lrs=1e-3,3e-2",
            "--window=2,8", f"--workdir={tmp_path / 'cal'}", f"--out={out_file}"]
    assert main(["ntkbench", *args]) == 0
    out = capsys.readouterr().out
    assert "one lr per point of width:" in out
    override = next(line.strip() for line in out.splitlines() if "--config.lr_table" in line)
    assert override.startswith("--config.lr_by=width --config.lr_table='4=")
    # The config file applies the same table, and a sweep runs from it.
    w = tmp_path / "run"
    assert main(["ntkbench", "run", f"--config={out_file}", f"--workdir={w}",
                 "--config.epochs=8", "--progress=none"]) == 0
    manifest = json.loads((w / "manifest.json").read_text())
    table = override.split("lr_table='")[1].rstrip("'")
    assert manifest["config"]["lr_table"] == table


# ------------------------------------------------------------------------------ the report
def _usable(ds) -> dict[int, bool]:
    return {int(w): bool(v) for w, v in zip(ds.width.values,
                                            usable_points(ds).values.reshape(-1))}


def _fig2_dropped(report_md: str, quantity: str) -> str:
    line = next(r for r in report_md.splitlines() if r.startswith(f"| {quantity} | width"))
    return line.rstrip(" |").rsplit("|", 1)[1].strip()


def test_report_leaves_flagged_points_out_of_fits(tmp_path):
    # Widths 8 and 16 reach k* at the last epoch in a seed, widths 4 and 32 inside the window.
    c = ntkbench.preset("smoke", widths=(4, 8, 16, 32), epochs=40, chunk_epochs=40,
                        ntk_every=10, num_seeds=2, lr=3e-2)
    w = str(tmp_path / "w")
    ntkbench.run(c, w, hooks=QUIET)
    ds = ntkbench.load(w)
    ok = _usable(ds)
    flagged = [int(wd) for wd, good in ok.items() if not good]
    usable = 4 - len(flagged)
    assert 0 < usable < 4, ok
    ntkbench.write_report(ds, tmp_path / "r", num_bootstrap=20, kstar_window=None)
    text = (tmp_path / "r" / "report.md").read_text()
    first = [line for line in text.splitlines() if line][1]
    assert first.startswith(f"**Usable points: {usable} of 4.**"), first
    dropped = _fig2_dropped(text, "min_test_loss")
    assert {int(v) for v in dropped.split(", ")} >= set(flagged), (dropped, flagged)
    ntkbench.write_report(ds, tmp_path / "all", num_bootstrap=20, kstar_window=None,
                          include_flagged=True)
    text_all = (tmp_path / "all" / "report.md").read_text()
    assert "fitted anyway, on request" in text_all
    assert _fig2_dropped(text_all, "min_test_loss") == "-"
    # The composite report says the same of each sweep.
    paths = ntkbench.write_comparison([ds], tmp_path / "cmp", num_bootstrap=20,
                                      kstar_window=None)
    md = paths[-1].read_text()
    assert f"{usable} of 4 points usable" in md
    row = next(r for r in md.splitlines() if "| min_test_loss | width" in r)
    assert f"{usable}/4" in row and "k* flagged" in row
    for p in paths[:-1]:
        assert os.path.getsize(p) > 0
