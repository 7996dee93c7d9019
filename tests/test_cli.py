"""Command line: bad input fails fast with one line and exit 2, and never touches the workdir."""

import os
import subprocess
import sys
import time

import pytest

from ntkbench._workdir import Workdir
from ntkbench.launchers.cli import main


def _run(capsys, *args):
    code = main(["ntkbench", *args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("args,needle", [
    (["run", "--config=nope"], "Unknown preset"),
    (["run", "--config=smoke", "--config.lr=abc"], "could not convert"),
    (["run", "--config=smoke", "--config.widths=(0,4)"], "positive"),
    (["run", "--config=smoke", "--config.num_seeds=0"], "num_seeds"),
    (["run", "--config=smoke", "--config.epochs=-3"], "epochs"),
    (["run", "--config=smoke", "--config.foo=1"], "unknown config field foo"),
    (["run", "--config=smoke", "--config.n_train=(5000,)"], "n_train=5000"),
    (["run", "--config=smoke", "--config.dataset=imagenet"], "dataset"),
    (["run", "--config=smoke", "--config.dataset=mnist", "--config.data_dir=/nonexistent"], "NTKBENCH_DATA"),
    (["frobnicate"], "unknown command"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, needle):
    workdir = tmp_path / "w"
    code, err = _run(capsys, *args, f"--workdir={workdir}")
    assert code == 2
    assert len(err) == 1 and needle in err[0], err
    assert not workdir.exists() or os.listdir(workdir) == []


def test_missing_workdir(capsys):
    code, err = _run(capsys, "run", "--config=smoke")
    assert code == 2 and "--workdir" in err[0]


def test_existing_workdir_with_other_sweep_is_refused(tmp_path, capsys):
    w = str(tmp_path / "w")
    assert main(["ntkbench", "run", "--config=smoke", f"--workdir={w}", "--config.epochs=2",
                 "--config.ntk_every=0"]) == 0
    before = {p: os.path.getmtime(os.path.join(dp, p)) for dp, _, fs in os.walk(w) for p in fs}
    code, err = _run(capsys, "run", "--config=smoke", f"--workdir={w}", "--config.epochs=3",
                     "--config.ntk_every=0")
    assert code == 2 and "different sweep" in err[0] and "epochs: 2 -> 3" in err[0]
    after = {p: os.path.getmtime(os.path.join(dp, p)) for dp, _, fs in os.walk(w) for p in fs}
    assert before == after
    # The same config resumes: every pack is done, nothing is retrained.
    t = time.perf_counter()
    assert main(["ntkbench", "run", "--config=smoke", f"--workdir={w}", "--config.epochs=2",
                 "--config.ntk_every=0"]) == 0
    assert time.perf_counter() - t < 30


def test_foreign_directory_is_refused(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    code, err = _run(capsys, "run", "--config=smoke", f"--workdir={tmp_path}")
    assert code == 2 and "not empty" in err[0]
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_second_process_is_refused(tmp_path, capsys):
    w = str(tmp_path / "w")
    os.makedirs(w)
    with Workdir(w).lock():
        code, err = _run(capsys, "run", "--config=smoke", f"--workdir={w}")
    assert code == 2 and "Another ntkbench process" in err[0]


def test_console_script_presets():
    out = subprocess.run([sys.executable, "-m", "ntkbench.launchers.cli", "presets"],
                         capture_output=True, text=True, check=True).stdout
    assert "quick" in out and "paper_model_scaling" in out


def test_help_lists_commands_and_each_commands_flags(capsys):
    assert main(["ntkbench", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("run", "status", "report", "verify", "profile", "75"))
    assert main(["ntkbench", "run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--workdir" in out and "--progress" in out and "--num_cpu_devices" in out
    assert main(["ntkbench", "status", "-h"]) == 0
    assert "--workdir" in capsys.readouterr().out


def test_version_has_one_source(capsys):
    """`ntkbench --version`, `ntkbench.__version__` and the installed distribution agree, and
    the installed metadata is that of pyproject.toml (a stale install would report another)."""
    import importlib.metadata
    import pathlib
    import tomllib

    import ntkbench

    installed = importlib.metadata.version("ntkbench")
    assert ntkbench.__version__ == installed
    assert main(["ntkbench", "--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ntkbench {installed}"
    out = subprocess.run([sys.executable, "-m", "ntkbench.launchers.cli", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"ntkbench {installed}"
    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert installed == declared, ("the installed metadata is stale: reinstall with "
                                   "`pip install -e .`")


def test_run_help_says_what_config_takes(capsys):
    """`--config` takes a preset name or a .py file; the fields are listed as FIELD=VALUE by
    topic, not as a YAML dump of a ConfigDict."""
    assert main(["ntkbench", "run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "preset name" in out and "get_config()" in out and "ntkbench presets" in out
    assert "!!python" not in out and "ConfigDict instance" not in out
    assert "widths=(8,16,32,64,128,256,512)" in out and "training:" in out
    assert "<auto|bar|log|none>" not in out  # absl's enum prefix, said once in the flag's head
    assert main(["ntkbench", "run", "--config=smoke", "--help"]) == 0
    assert "widths=(4,16)" in capsys.readouterr().out
