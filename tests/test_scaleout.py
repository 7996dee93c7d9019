"""One device, four fake devices and two processes give the same sweep."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from ntkbench import config as cfg
from ntkbench import results, sweep
from ntkbench.recording import make_record

NTKBENCH = os.path.join(os.path.dirname(sys.executable), "ntkbench")
VARS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "ntk_trace", "ntk_entropy",
        "ntk_erank", "label_alignment", "label_alignment_traced")
ARGS = ["--config=smoke", "--config.epochs=10", "--config.ntk_every=5", "--config.widths=(4,16)",
        "--config.num_seeds=3"]


def _config():
    return cfg.from_config_dict({**cfg.get_config("smoke").to_dict(), "epochs": 10, "ntk_every": 5,
                                 "widths": (4, 16), "num_seeds": 3})


# Losses, traces and alignments agree to 1e-6 relative. Entropy and effective rank come from a
# float32 eigendecomposition whose own accuracy is ~1e-6..1e-5 relative (see
# ntkbench/_observables.py); a different device layout reassociates its sums, so they are held
# to 1e-5 (measured: 1.2e-6 for 2 processes vs 1).
RTOL = {"ntk_entropy": 1e-5, "ntk_erank": 1e-5}


def _close(a, b):
    for v in VARS:
        x, y = a[v].values, b[v].values
        assert np.array_equal(np.isnan(x), np.isnan(y)), v
        np.testing.assert_allclose(x, y, rtol=RTOL.get(v, 1e-6), atol=1e-7, err_msg=v)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    w = str(tmp_path_factory.mktemp("one") / "w")
    sweep.run_sweep(_config(), w, log=lambda s: None, make_record=make_record)
    return results.load(w)


def test_four_devices_match_one(tmp_path, single):
    assert len(jax.devices()) == 4  # tests/conftest.py
    mesh = Mesh(np.asarray(jax.devices()), ("members",))
    w = str(tmp_path / "w")
    out = sweep.run_sweep(_config(), w, log=lambda s: None, make_record=make_record, mesh=mesh)
    # 3 seeds per width: packs of 3 members padded to 4 slots (one masked member each).
    assert all(p.num_members == 3 for p in out.plan.packs)
    _close(single, results.load(w))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(NTKBENCH), reason="needs the installed console script")
def test_two_local_processes_match_one(tmp_path, single):
    w = str(tmp_path / "w")
    _two_processes(*ARGS, f"--workdir={w}")
    _close(single, results.load(w))


def _two_processes(*args):
    """`ntkbench run ARGS` as two local processes (launchers/local_multiprocess.sh)."""
    launcher = os.path.join(os.path.dirname(__file__), "..", "launchers", "local_multiprocess.sh")
    env = dict(os.environ, JAX_PLATFORMS="cpu", NTKBENCH_BIN=NTKBENCH)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(["bash", launcher, "2", "run", *args], capture_output=True, text=True,
                          env=env, timeout=600)
    out = (proc.stdout + proc.stderr).splitlines()
    tails = ["\n".join([ln for ln in out if ln.startswith(f"[{i}]")][-25:]) for i in (0, 1)]
    assert proc.returncode == 0, "\n--- process 0:\n" + tails[0] + "\n--- process 1:\n" + tails[1]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(NTKBENCH), reason="needs the installed console script")
def test_two_local_processes_extend_a_sweep(tmp_path, single):
    """Both processes plan the extension alike (one of them rewrites the manifest meanwhile)."""
    w = str(tmp_path / "w")
    first = [a for a in ARGS if not a.startswith("--config.widths")] + ["--config.widths=(4,)"]
    _two_processes(*first, f"--workdir={w}")
    _two_processes(*ARGS, "--extend", f"--workdir={w}")
    _close(single, results.load(w))


def test_shares_split_packs_and_merge(tmp_path, single):
    w = str(tmp_path / "w")
    done = []
    for i in range(2):
        out = sweep.run_sweep(_config(), w, log=lambda s: None, make_record=make_record, shard=f"{i}/2")
        done.append(out.member_epochs)
    assert all(d > 0 for d in done)  # each share trained something
    _close(single, results.load(w))
    with pytest.raises(cfg.ConfigError, match="I/N"):
        sweep.run_sweep(_config(), w, shard="2")
