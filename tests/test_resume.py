"""Real processes, real signals: interrupted sweeps resume to bit-identical results."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import ntkbench

ARGS = ["--config=smoke", "--config.epochs=30", "--config.chunk_epochs=5",
        "--config.checkpoint_every_epochs=5", "--config.ntk_every=5", "--config.widths=(4,16)",
        "--config.checkpoint_max_overhead=0"]  # every due save is written (no budget)
INTERRUPTED = 75


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "ntkbench.launchers.cli", "run", *ARGS, f"--workdir={workdir}", *extra]


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


def _start(workdir):
    return subprocess.Popen(_cmd(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=_env())


def _wait_for_progress(proc, count=1, timeout=120):
    """Read output until `count` progress lines ("... epoch N/M ...") have appeared."""
    seen, t0, lines = 0, time.time(), []
    while seen < count and time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if " epoch " in line and "member-epochs/s" in line:
            seen += 1
    return seen, lines


def _all_arrays(workdir):
    ds = ntkbench.load(workdir, snapshots=True)
    return {k: np.asarray(ds[k].values) for k in ds.data_vars}


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    w = str(tmp_path_factory.mktemp("ref") / "w")
    subprocess.run(_cmd(w), check=True, env=_env(), capture_output=True)
    return _all_arrays(w)


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_bit_identical(tmp_path, reference):
    w = str(tmp_path / "w")
    rng = random.Random(0)
    # Kill 1: right after a chunk's records are committed and its checkpoint save has started
    # (async), i.e. during the checkpoint write. Kill 2: a random moment later in training.
    # Kill 3: just after a progress line, while the next chunk computes and writes results.
    for count, delay in [(1, 0.0), (1, rng.uniform(0.5, 3.0)), (2, rng.uniform(0.0, 0.3))]:
        proc = _start(w)
        seen, _ = _wait_for_progress(proc, count)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = subprocess.run(_cmd(w), env=_env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    _assert_identical(reference, _all_arrays(w))
    assert not any("orbax-checkpoint-tmp" in d for _, ds, _ in os.walk(w) for d in ds)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_75(tmp_path, reference):
    w = str(tmp_path / "w")
    proc = _start(w)
    _wait_for_progress(proc, 1)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    grace = time.time() - t0
    assert proc.returncode == INTERRUPTED, out[-2000:]
    assert "Rerun the same command to resume" in out
    statuses = [json.load(open(os.path.join(w, "packs", f))) for f in sorted(os.listdir(os.path.join(w, "packs")))]
    interrupted = [s for s in statuses if s["status"] == "interrupted"]
    assert len(interrupted) == 1
    epoch = interrupted[0]["epochs_done"]
    assert interrupted[0]["last_checkpoint_epoch"] == epoch
    ckpts = os.listdir(os.path.join(w, "checkpoints"))
    assert any(str(epoch) in os.listdir(os.path.join(w, "checkpoints", c)) for c in ckpts)
    assert grace < 60
    final = subprocess.run(_cmd(w), env=_env(), capture_output=True, text=True)
    assert final.returncode == 0 and "resuming from the checkpoint at epoch" in final.stdout + final.stderr
    _assert_identical(reference, _all_arrays(w))


def test_corrupt_newest_checkpoint_falls_back(tmp_path, reference):
    """Truncate every file of the newest checkpoint of an interrupted pack: the run warns, resumes
    from the previous checkpoint and still ends bit-identical."""
    w = str(tmp_path / "w")
    proc = _start(w)
    _wait_for_progress(proc, 3)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == INTERRUPTED
    cdir = os.path.join(w, "checkpoints")
    pack = sorted(os.listdir(cdir))[-1]
    steps = sorted((int(s) for s in os.listdir(os.path.join(cdir, pack)) if s.isdigit()))
    assert len(steps) == 2
    newest = os.path.join(cdir, pack, str(steps[-1]))
    for root, _, files in os.walk(newest):
        for f in files:
            if f.endswith(".json") or "ocdbt" in root or "d" == os.path.basename(root):
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(max(os.path.getsize(os.path.join(root, f)) // 2, 0))
    final = subprocess.run(_cmd(w), env=_env(), capture_output=True, text=True)
    log = final.stdout + final.stderr
    assert final.returncode == 0, log[-3000:]
    assert "Skipping the corrupt or incomplete checkpoint" in log
    assert f"resuming from the checkpoint at epoch {steps[0]}" in log
    _assert_identical(reference, _all_arrays(w))


def test_minibatch_sgd_resumes_bit_identical(tmp_path):
    """In-process stop after the first chunk (as SIGTERM would), then resume: the grain
    minibatch schedule continues from the checkpoint epoch, and the results are identical."""
    c = ntkbench.preset("smoke", **{"optimizer": "sgd",
                                   "batch_size": 8, "lr": 0.05, "epochs": 12, "chunk_epochs": 4,
                                   "checkpoint_every_epochs": 4, "widths": (8,)})
    ref, w = str(tmp_path / "ref"), str(tmp_path / "w")
    quiet = ntkbench.Hooks(log=lambda s: None)
    ntkbench.run(c, ref, hooks=quiet)
    calls = iter([False, True])
    with pytest.raises(ntkbench.Interrupted):
        ntkbench.run(c, w, hooks=ntkbench.Hooks(log=lambda s: None,
                                                should_stop=lambda: next(calls, False)))
    ntkbench.run(c, w, hooks=quiet)
    _assert_identical(_all_arrays(ref), _all_arrays(w))
