"""Extending a finished sweep with new members (`ntkbench run --extend`)."""

import dataclasses
import json
import os

import numpy as np
import pytest

import ntkbench
from ntkbench import IntegrityError, WorkdirError
from ntkbench import load as _load
from ntkbench._config import (AXES, EPOCH_VARIABLES, NTK_EXACT, SETTING_VARIABLES,
                              STORED_SUMMARIES)
from ntkbench._store import ResultsStore
from ntkbench.launchers.cli import main

BASE = dict(ntkbench.get_config("smoke").to_dict(), epochs=6, ntk_every=3, chunk_epochs=3,
            widths=(4, 16), num_seeds=2)
PER_RECORD = [v for v in EPOCH_VARIABLES + NTK_EXACT if not v.startswith("lin_")]


class results:  # noqa: N801 - the old module's name, for the assertions below
    load = staticmethod(_load)


def _config(**over):
    return ntkbench.from_config_dict({**BASE, **over})


def _run(config, workdir, **kw):
    return ntkbench.run(config, str(workdir), hooks=ntkbench.Hooks(log=lambda s: None), **kw)


def _record_files(workdir):
    """Every stored chunk of the results: path -> (mtime, bytes). Not metadata or coordinates,
    nor what is rewritten whole by design: the settings (`lr`, a function of the config, written
    when the store opens) and the summaries (derived, written when the sweep completes)."""
    root = os.path.join(workdir, "results")
    coords = set(AXES) | {"epoch", "row", "col"} | set(STORED_SUMMARIES) | set(SETTING_VARIABLES)
    out = {}
    for dirpath, _, files in os.walk(root):
        rel = os.path.relpath(dirpath, root).split(os.sep)[0]
        for f in files:
            if f == "zarr.json" or rel in coords:
                continue
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[p] = (os.stat(p).st_mtime_ns, fh.read())
    return out


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    w = tmp_path_factory.mktemp("extend") / "w"
    _run(_config(), w)
    before = results.load(str(w), snapshots=True)
    files = _record_files(str(w))
    manifest = json.loads((w / "manifest.json").read_text())
    grown = _config(widths=(4, 16, 8), num_seeds=3)
    out = _run(grown, w, extend=True)
    return w, before, files, manifest, out


def test_extension_trains_only_new_members_and_keeps_old_bits(extended):
    w, before, files, manifest, out = extended
    # 3 widths x 3 seeds = 9 members, of which 4 existed: 5 new members x 6 epochs.
    assert out.member_epochs == 5 * 6
    after = results.load(str(w), snapshots=True)
    assert list(after.width.values) == [4, 8, 16] and list(after.seed.values) == [0, 1, 2]
    old = dict(width=[4, 16], seed=[0, 1])
    for name in list(PER_RECORD) + ["ntk_snapshot", "last_record", "diverged", "k_star",
                                   "best_ntk_erank"]:
        a, b = before[name].values, after[name].sel(**old).values
        assert np.array_equal(a, b, equal_nan=True), name
    # Not one stored chunk of a finished member was rewritten.
    now = _record_files(str(w))
    for path, (mtime, data) in files.items():
        assert now[path] == (mtime, data), path
    assert (after.last_record == 6).all()
    # The old packs keep their ids and members; the new ones follow, recorded in the history.
    m2 = json.loads((w / "manifest.json").read_text())
    assert m2["packs"][: len(manifest["packs"])] == manifest["packs"]
    assert m2["history"][-1]["added_members"] == 5
    assert m2["config"]["widths"] == [4, 16, 8]


def test_new_members_match_a_fresh_sweep(extended, tmp_path):
    w, *_ = extended
    fresh = tmp_path / "fresh"
    _run(_config(widths=(4, 8, 16), num_seeds=3), fresh)
    a, b = results.load(str(w)), results.load(str(fresh))
    for name in PER_RECORD:
        # Bit-identical where a member lands in a pack of the same padded width; otherwise
        # float32 summation order differs slightly.
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=2e-4, atol=1e-5,
                                   equal_nan=True, err_msg=name)


def test_rerun_after_extension_resumes_in_any_value_order(extended):
    w, *_ = extended
    assert _run(_config(widths=(4, 16, 8), num_seeds=3), w).member_epochs == 0
    assert _run(_config(widths=(8, 4, 16), num_seeds=3), w).member_epochs == 0
    assert _run(_config(widths=(4, 16, 8), num_seeds=3), w, extend=True).member_epochs == 0


@pytest.mark.parametrize("over,needle", [
    (dict(widths=(4, 16, 8), lr=0.1), "lr: 0.003 -> 0.1"),
    (dict(widths=(16, 8)), "drops 4"),
    (dict(num_seeds=1, widths=(4, 16, 8)), "num_seeds=1 is smaller"),
])
def test_extension_that_would_change_members_is_refused(extended, over, needle):
    w, *_ = extended
    stamp = {p: os.stat(p).st_mtime_ns for p in _record_files(str(w))}
    manifest = (w / "manifest.json").read_text()
    with pytest.raises(WorkdirError, match="Cannot extend") as e:
        _run(_config(**over), w, extend=True)
    assert needle in str(e.value)
    assert (w / "manifest.json").read_text() == manifest
    assert {p: os.stat(p).st_mtime_ns for p in _record_files(str(w))} == stamp


def test_cli_suggests_extend_and_refuses_without_it(extended, capsys):
    w, *_ = extended
    code = main(["ntkbench", "run", "--config=smoke", f"--workdir={w}", "--config.epochs=6",
                 "--config.ntk_every=3", "--config.chunk_epochs=3", "--config.widths=(4,16,8,32)",
                 "--config.num_seeds=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pass --extend" in err[0], err


def test_store_grows_idempotently_and_repairs_an_interrupted_growth(tmp_path):
    small = _config(ntk_every=0)
    big = dataclasses.replace(small, widths=(4, 16, 8), num_seeds=3)
    store = ResultsStore(str(tmp_path), small, 10)
    store.write_records([(0, 0, 1, 0, 0, 0, 1)], 0, {"train_loss": np.ones((7, 1))})
    store.commit([(0, 0, 1, 0, 0, 0, 1)], 6)
    # A crash after growing the width coordinate but before writing its new value.
    import tensorstore as ts
    arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "width")}},
                  open=True).result()
    arr.resize(exclusive_max=[3], expand_only=True, resize_metadata_only=True).result()
    for _ in range(2):
        store = ResultsStore(str(tmp_path), big, 10)
    assert store.arrays["train_loss"].shape == (1, 1, 3, 1, 1, 1, 3, 7)
    assert store.last_record((0, 0, 1, 0, 0, 0, 1)) == 6
    assert store.last_record((0, 0, 2, 0, 0, 0, 2)) == -1
    got = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "width")}},
                  open=True).result().read().result()
    assert got.tolist() == [4, 16, 8]
    with pytest.raises(IntegrityError, match="another sweep"):
        ResultsStore(str(tmp_path), dataclasses.replace(small, widths=(4, 32)), 10)
    with pytest.raises(IntegrityError, match="another sweep"):
        ResultsStore(str(tmp_path), small, 10)  # never shrinks


def test_checkpoint_settings_may_change_between_runs(extended):
    w, *_ = extended
    again = _config(widths=(4, 16, 8), num_seeds=3, checkpoint_every_epochs=1,
                    checkpoint_every_minutes=0.5, checkpoint_max_overhead=0.2)
    assert _run(again, w).member_epochs == 0
    assert json.loads((w / "manifest.json").read_text())["config"]["checkpoint_every_epochs"] == 1
