"""No silent wrong result, and every failure in one line (docs/errors.md): fault injection.

Each test damages a workdir, its data or its environment the way a crash, a full disk or a
careless user would, then checks the exit status, that the message is one line without a
traceback, and that nothing already stored was lost or changed.
"""

import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import ntkbench
from ntkbench.launchers.cli import main

SMOKE = ["--config=smoke", "--config.epochs=6", "--config.chunk_epochs=3",
         "--config.ntk_every=3", "--config.checkpoint_every_epochs=3",
         "--config.checkpoint_max_overhead=0", "--progress=log", "--compilation_cache=none"]
BAD_INPUT, INTEGRITY, STORAGE, INTERRUPTED = 2, 65, 74, 75


def _cli(capsys, *args):
    code = main(["ntkbench", *args])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


def _error_line(err):
    """The one `ntkbench: error:` line, and no traceback anywhere."""
    assert not any("Traceback" in ln for ln in err), err
    errors = [ln for ln in err if ln.startswith("ntkbench: error:")]
    assert len(errors) == 1, err
    return errors[0]


def _files(workdir):
    """Every file of the results store and the manifest: path -> bytes."""
    out = {}
    for root in (os.path.join(workdir, "results"),):
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = os.path.join(dirpath, f)
                with open(p, "rb") as fh:
                    out[p] = fh.read()
    with open(os.path.join(workdir, "manifest.json"), "rb") as fh:
        out["manifest"] = fh.read()
    return out


def _arrays(workdir):
    ds = ntkbench.load(workdir)
    return {k: np.asarray(ds[k].values) for k in ds.data_vars}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=True), k


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished smoke sweep (2 packs), run through the CLI; copy it before damaging it."""
    w = str(tmp_path_factory.mktemp("finished") / "w")
    assert main(["ntkbench", "run", *SMOKE, f"--workdir={w}"]) == 0
    return w, _arrays(w)


def _copy(finished, tmp_path):
    w = str(tmp_path / "w")
    shutil.copytree(finished[0], w)
    return w


# ---------------------------------------------------------------- 1. data changed on resume
def _idx(array, magic):
    array = np.asarray(array, np.uint8)
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_mnist(directory, seed):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", 200), ("t10k", 60)):
        (directory / f"{stem}-images-idx3-ubyte").write_bytes(
            _idx(rng.integers(0, 256, (n, 8, 8)), 2051))
        (directory / f"{stem}-labels-idx1-ubyte").write_bytes(
            _idx(rng.integers(0, 10, n), 2049))


def test_changed_data_files_refuse_the_resume(tmp_path, capsys):
    data, w = tmp_path / "data", str(tmp_path / "w")
    _write_mnist(data / "mnist", seed=0)
    args = [*SMOKE, "--config.dataset=mnist", f"--config.data_dir={data}", f"--workdir={w}",
            "--config.n_train=(50,)"]
    c = ntkbench.preset("smoke", **{"epochs": 6,
                                   "chunk_epochs": 3, "ntk_every": 3, "dataset": "mnist",
                                   "data_dir": str(data), "n_train": (50,)})
    stop = iter([False, True])
    with pytest.raises(ntkbench.Interrupted):
        ntkbench.run(c, w, hooks=ntkbench.Hooks(log=lambda s: None,
                                                should_stop=lambda: next(stop, False)))
    before = _files(w)
    _write_mnist(data / "mnist", seed=1)  # other valid files
    code, err, _ = _cli(capsys, "run", *args)
    assert code == INTEGRITY
    line = _error_line(err)
    assert "'mnist'" in line and "differ" in line and "sha256" in line, line
    assert _files(w) == before


# ---------------------------------------------------------------- 2., 8. lost or broken chunks
@pytest.fixture
def logs(caplog):
    """The messages the CLI logged (absl logging, through Python's logging)."""
    import logging

    caplog.set_level(logging.INFO)
    return lambda: [r.getMessage() for r in caplog.records]


def test_a_deleted_chunk_is_found_and_its_pack_retrained(finished, tmp_path, capsys, logs):
    w = _copy(finished, tmp_path)
    chunk = os.path.join(w, "results", "train_loss", "c", "0", "0", "0", "0", "0", "0", "0")
    os.remove(chunk)
    code, err, out = _cli(capsys, "verify", f"--workdir={w}")
    assert code == INTEGRITY and "train_loss" in _error_line(err) and "pack(s) 0" in err[0]
    code, err, out = _cli(capsys, "run", *SMOKE, f"--workdir={w}")
    assert code == 0, err
    assert any("results damaged" in ln and "retraining pack(s) 0" in ln for ln in logs()), logs()
    assert "everything was already done" not in out  # pack 0 was trained again
    assert os.path.exists(chunk)
    _same(_arrays(w), finished[1])
    assert _cli(capsys, "verify", f"--workdir={w}")[0] == 0


def test_a_truncated_chunk_is_one_line_and_is_repaired(finished, tmp_path, capsys, logs):
    w = _copy(finished, tmp_path)
    chunk = os.path.join(w, "results", "ntk_erank", "c", "0", "1", "0", "0", "0", "1", "0")
    with open(chunk, "r+b") as f:
        f.truncate(5)
    code, err, _ = _cli(capsys, "report", f"--workdir={w}")
    assert code == INTEGRITY and "ntkbench verify" in _error_line(err)
    code, err, _ = _cli(capsys, "run", *SMOKE, f"--workdir={w}")
    assert code == 0 and any("retraining pack(s) 1" in ln for ln in logs()), err
    _same(_arrays(w), finished[1])
    quarantined = [d for d, _, fs in os.walk(os.path.join(w, "results", ".damaged")) if fs]
    assert quarantined  # the broken file is kept aside, not deleted


# ---------------------------------------------------------------- 3. restarted pack is checked
def test_a_restarted_pack_must_reproduce_its_stored_records(finished, tmp_path, capsys):
    w = _copy(finished, tmp_path)
    os.remove(os.path.join(w, "packs", "pack_0000.json"))
    code, err, _ = _cli(capsys, "run", *SMOKE, f"--workdir={w}")
    assert code == 0, err  # the same bits: accepted
    _same(_arrays(w), finished[1])
    # Now a stored value that the rerun cannot reproduce: the rewrite is refused.
    import tensorstore as ts

    arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file",
                                                  "path": os.path.join(w, "results", "test_loss")}},
                  open=True).result()
    arr[0, 0, 0, 0, 0, 0, 0, 5].write(np.float32(123.0)).result()
    before = _files(w)
    os.remove(os.path.join(w, "packs", "pack_0000.json"))
    code, err, _ = _cli(capsys, "run", *SMOKE, f"--workdir={w}")
    assert code == INTEGRITY and "Refusing to overwrite" in _error_line(err)
    after = _files(w)
    assert {k: v for k, v in after.items() if "test_loss" in k} == \
           {k: v for k, v in before.items() if "test_loss" in k}


# ---------------------------------------------------------------- 5. config files
@pytest.mark.parametrize("source,needle", [
    ("def get_config(:\n", "syntax error at line 1"),
    ("def get_config():\n    raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("def get_config():\n    return {'lr': 1}\n", "returned dict"),
    ("X = 1\n", "defines no get_config"),
    ("import nonexistent_module_xyz\n", "ModuleNotFoundError"),
])
def test_broken_config_files_are_one_line(tmp_path, capsys, source, needle):
    path = tmp_path / "cfg.py"
    path.write_text(source)
    code, err, _ = _cli(capsys, "run", f"--config={path}", f"--workdir={tmp_path / 'w'}")
    assert code == BAD_INPUT and needle in _error_line(err), err
    assert not (tmp_path / "w").exists()


def test_stray_positional_arguments_are_refused(tmp_path, capsys):
    code, err, _ = _cli(capsys, "run", "--config=smoke", f"--workdir={tmp_path / 'w'}", "quick")
    assert code == BAD_INPUT and "unexpected argument" in _error_line(err)


# ---------------------------------------------------------------- 6. unwritable workdirs
@contextlib.contextmanager
def _tmpfs(path, options):
    path.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                        capture_output=True).returncode == 0
    if not ok:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.parametrize("where", ["under_a_file", "proc", "read_only"])
def test_unwritable_workdirs_are_one_line(tmp_path, capsys, where):
    if where == "under_a_file":
        (tmp_path / "file").write_text("x")
        w = tmp_path / "file" / "w"
    elif where == "proc":
        w = "/proc/ntkbench-w"
    else:
        ctx = _tmpfs(tmp_path / "ro", "ro,size=1m")
        w = ctx.__enter__() / "w"
    try:
        code, err, _ = _cli(capsys, "run", *SMOKE, f"--workdir={w}")
    finally:
        if where == "read_only":
            ctx.__exit__(None, None, None)
    assert code in (STORAGE, BAD_INPUT), err
    assert "Cannot write" in _error_line(err) or "is a file" in err[0], err


def test_a_full_disk_is_one_line_and_resumes_after_freeing_space(finished, tmp_path, capsys):
    with _tmpfs(tmp_path / "small", "size=4m") as disk:
        w = str(disk / "w")
        filler = disk / "filler"
        with open(filler, "wb") as f:  # leave ~300 KB: the manifest and store fit, not all
            f.write(b"\0" * (4 * 2**20 - 300 * 2**10))
        code, err, _ = _cli(capsys, "run", *SMOKE, f"--workdir={w}")
        assert code == STORAGE, err
        assert "disk is full" in _error_line(err)
        filler.unlink()
        code, err, _ = _cli(capsys, "run", *SMOKE, f"--workdir={w}")
        assert code == 0, err
        _same(_arrays(w), finished[1])


# ---------------------------------------------------------------- 7. every checkpoint corrupt
def test_all_checkpoints_corrupt_restarts_the_pack(finished, tmp_path, capsys):
    """(The interrupted run uses every device, as the command line does: a resume must run
    on the device count it started with to reproduce its committed records bit for bit.)"""
    import jax

    w = str(tmp_path / "w")
    c = ntkbench.preset("smoke", **{"epochs": 6,
                                   "chunk_epochs": 3, "ntk_every": 3,
                                   "checkpoint_every_epochs": 3, "checkpoint_max_overhead": 0})
    stop = iter([False, True])
    with pytest.raises(ntkbench.Interrupted):
        ntkbench.run(c, w, runtime=ntkbench.Runtime.on(jax.devices()),
                     hooks=ntkbench.Hooks(log=lambda s: None,
                                          should_stop=lambda: next(stop, False)))
    ckpts = os.path.join(w, "checkpoints")
    for dirpath, _, files in os.walk(ckpts):
        for f in files:
            with open(os.path.join(dirpath, f), "r+b") as fh:
                fh.truncate(0)
    for _ in range(2):  # the first rerun repairs it; there is nothing left to repair after
        code, err, _ = _cli(capsys, "run", *SMOKE, f"--workdir={w}")
        assert code == 0 and not any("Traceback" in ln for ln in err), err
    _same(_arrays(w), finished[1])


# ---------------------------------------------------------------- 9. garbled JSON
def test_a_garbled_manifest_is_one_line(finished, tmp_path, capsys):
    w = _copy(finished, tmp_path)
    with open(os.path.join(w, "manifest.json"), "w") as f:
        f.write('{"config": {')
    before = _files(w)
    for command in (["run", *SMOKE], ["status"], ["report"], ["verify"]):
        code, err, _ = _cli(capsys, *command, f"--workdir={w}")
        assert code == INTEGRITY and "not valid JSON" in _error_line(err), (command, err)
    assert _files(w) == before


def test_a_garbled_pack_status_retrains_that_pack_checked(finished, tmp_path, capsys, logs):
    w = _copy(finished, tmp_path)
    with open(os.path.join(w, "packs", "pack_0001.json"), "w") as f:
        f.write("{nonsense")
    code, err, out = _cli(capsys, "run", *SMOKE, f"--workdir={w}")
    assert code == 0, err
    assert any("pack 1" in ln and "unreadable" in ln for ln in logs()), logs()
    _same(_arrays(w), finished[1])


# ---------------------------------------------------------------- 10. a width that cannot fit
def test_a_pack_larger_than_the_device_is_refused_before_anything_is_written(tmp_path, capsys):
    w = tmp_path / "w"
    code, err, _ = _cli(capsys, "run", "--config=smoke", "--config.widths=(300000,)",
                        f"--workdir={w}")
    line = _error_line(err)
    assert code == BAD_INPUT and "GiB of device memory" in line and "lower" in line, line
    assert not w.exists() or os.listdir(w) == []


# ---------------------------------------------------------------- 11., 12. signals and status
def _start(w, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, "-m", "ntkbench.launchers.cli", "run", *SMOKE,
                             "--config.epochs=60", f"--workdir={w}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for(proc, needle, timeout=180):
    t0, lines = time.time(), []
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    pytest.fail(f"no {needle!r} in {''.join(lines)[-2000:]}")


@pytest.mark.slow
def test_two_interrupts_exit_75_and_resume(tmp_path):
    w = str(tmp_path / "w")
    proc = _start(w)
    _wait_for(proc, "member-epochs/s")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == INTERRUPTED, out[-2000:]
    # The second signal leaves at once, or, when the first one already stopped the run at a
    # chunk boundary, finds it leaving: status 75 either way.
    assert ("leaving now" in out or "interrupted at epoch" in out) and "Traceback" not in out


@pytest.mark.slow
def test_status_says_interrupted_after_sigkill(tmp_path, capsys):
    w = str(tmp_path / "w")
    proc = _start(w)
    _wait_for(proc, "member-epochs/s")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    code, _, out = _cli(capsys, "status", f"--workdir={w}")
    assert code == 0 and "interrupted" in out and "running" not in out.split("\n", 1)[1], out


def test_summary_counts_diverged_members(tmp_path, capsys):
    w = tmp_path / "w"
    code, err, out = _cli(capsys, "run", "--config=smoke", "--config.epochs=3",
                          "--config.ntk_every=0", "--config.optimizer=sgd", "--config.lr=1e9",
                          f"--workdir={w}",
                          "--progress=none")
    assert code == 0, err
    header, *rows = [ln for ln in out.splitlines() if ln.strip()][:3]
    assert "diverged" in header
    ds = ntkbench.load(str(w), summaries=False)
    total = int(ds["diverged"].sum())
    assert total > 0 and sum(int(r.split()[-1].split("/")[0]) for r in rows) == total


def test_fallback_past_a_corrupt_checkpoint_prints_no_tracebacks(tmp_path):
    w = str(tmp_path / "w")
    proc = _start(w)
    _wait_for(proc, "epoch 12/60")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == INTERRUPTED
    cdir = os.path.join(w, "checkpoints")
    pack = sorted(os.listdir(cdir))[-1]
    newest = max((int(s) for s in os.listdir(os.path.join(cdir, pack)) if s.isdigit()))
    for dirpath, _, files in os.walk(os.path.join(cdir, pack, str(newest))):
        for f in files:
            if "ocdbt" in dirpath or f.endswith(".json"):
                with open(os.path.join(dirpath, f), "r+b") as fh:
                    fh.truncate(os.path.getsize(os.path.join(dirpath, f)) // 2)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    final = subprocess.run([sys.executable, "-m", "ntkbench.launchers.cli", "run", *SMOKE,
                            "--config.epochs=60", f"--workdir={w}"], capture_output=True,
                           text=True, env=env, timeout=300)
    log = final.stdout + final.stderr
    assert final.returncode == 0, log[-3000:]
    assert "Skipping the corrupt or incomplete checkpoint" in log
    assert "Exception ignored" not in log and "Traceback" not in log, log[-3000:]


def test_manifest_records_the_data_fingerprint(finished):
    manifest = json.load(open(os.path.join(finished[0], "manifest.json")))
    assert manifest["data"]["dataset"] == "synthetic" and len(manifest["data"]["sha256"]) == 64
