"""Sweeps of users' own Equinox models (docs/models.md): the two example config files train
with NTK records, resume bit for bit and appear in the report."""

import os
import shutil

import numpy as np
import pytest

import ntkbench
from ntkbench.launchers.cli import main

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
ARGS = ["--config.epochs=6", "--config.chunk_epochs=3", "--config.ntk_every=3",
        "--config.n_test=12", "--config.num_seeds=2", "--config.checkpoint_every_epochs=3",
        "--config.checkpoint_max_overhead=0", "--progress=none", "--compilation_cache=none"]


def _run(name, workdir, *extra):
    path = os.path.join(EXAMPLES, f"{name}.py")
    return main(["ntkbench", "run", f"--config={path}", f"--workdir={workdir}", *ARGS, *extra])


@pytest.mark.slow
@pytest.mark.parametrize("name,widths", [("residual_mlp", "(8,16)"), ("mixer", "(8,)")])
def test_example_models_train_with_ntk_records_and_report(tmp_path, name, widths):
    w = str(tmp_path / "w")
    one_pack = ["--config.min_pack_efficiency=0.01", "--config.max_packs_per_group=1"]
    assert _run(name, w, f"--config.widths={widths}", *one_pack) == 0
    ds = ntkbench.load(w)
    assert ds.attrs["model"] == "custom"
    erank = ds["ntk_erank"].values
    assert np.isfinite(erank[..., ::3]).all() and np.isnan(erank[..., 1]).all()
    assert np.isfinite(ds["T_star"].values).all() and np.isfinite(ds["k_star"].values).all()
    assert main(["ntkbench", "report", f"--workdir={w}"]) == 0
    assert os.path.exists(os.path.join(w, "report", "fig1_dynamics.png"))
    if name == "residual_mlp":  # padded: both widths share one pack
        import json

        packs = json.load(open(os.path.join(w, "manifest.json")))["packs"]
        assert len(packs) == 1 and packs[0]["padded_width"] == 16


@pytest.mark.slow
def test_a_user_model_sweep_resumes_bit_identically(tmp_path):
    ref, w = str(tmp_path / "ref"), str(tmp_path / "w")
    assert _run("residual_mlp", ref, "--config.widths=(8,)") == 0
    # Interrupt after the first chunk (as SIGTERM would), then rerun the same command.
    from ntkbench.launchers import _watch

    calls = iter([False, True])
    original = _watch.StopFlag.__call__
    _watch.StopFlag.__call__ = lambda self: next(calls, False)
    try:
        assert _run("residual_mlp", w, "--config.widths=(8,)") == 75
    finally:
        _watch.StopFlag.__call__ = original
    assert _run("residual_mlp", w, "--config.widths=(8,)") == 0
    a, b = ntkbench.load(ref), ntkbench.load(w)
    for v in a.data_vars:
        assert np.array_equal(a[v].values, b[v].values, equal_nan=True), v


def test_an_edited_model_file_is_another_sweep(tmp_path, capsys):
    """The sweep is tied to the model file's content: editing it refuses the resume."""
    src = os.path.join(EXAMPLES, "residual_mlp.py")
    mine = tmp_path / "model.py"
    shutil.copy(src, mine)
    w = str(tmp_path / "w")
    args = [f"--config={mine}", f"--workdir={w}", "--config.widths=(8,)", *ARGS,
            "--config.epochs=3", "--config.ntk_every=0"]
    assert main(["ntkbench", "run", *args]) == 0
    mine.write_text(mine.read_text() + "\n# an edit\n")
    capsys.readouterr()
    assert main(["ntkbench", "run", *args]) == 2
    assert "model_digest" in capsys.readouterr().err
