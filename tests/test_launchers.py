"""Launcher scripts: the exact commands they would run (DRY_RUN=1) and, with fake programs in place
of ntkbench, srun, scontrol and scancel, what they really do: process ids, output prefixes, exit
statuses, signal forwarding and the exit-status-75 requeue. No JAX, no SLURM, no gcloud needed.
"""

import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

LAUNCHERS = Path(__file__).resolve().parent.parent / "launchers"
SCRIPTS = ["local_single.sh", "local_multiprocess.sh", "slurm.sbatch", "slurm_array.sbatch",
           "tpu_pod.sh"]

# A stand-in for `ntkbench`: records its argv, environment and pid, prints a line on stdout and
# one on stderr, then behaves as FAKE_MODE says. SIGTERM/SIGINT make it exit 75, like the CLI.
FAKE_NTKBENCH = """\
import json, os, signal, sys, time

args = sys.argv[1:]
rec = os.environ["FAKE_RECORD_DIR"]
ids = [a.split("=", 1)[1] for a in args if a.startswith("--process_id=")]
me = ids[0] if ids else "0"
mode = os.environ.get("FAKE_MODE", "ok")


def record(**extra):
    with open(os.path.join(rec, f"proc{me}.json"), "w") as f:
        json.dump({"argv": args, "pid": os.getpid(),
                   "jax_platforms": os.environ.get("JAX_PLATFORMS"), **extra}, f)


def on_signal(signum, frame):
    print(f"process {me} got signal {signum}", flush=True)
    record(signal=signum)
    sys.exit(75)


if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
record()
with open(os.path.join(rec, "task.pid"), "w") as f:
    f.write(str(os.getpid()))
print(f"hello from {me}", flush=True)
print(f"warning from {me}", file=sys.stderr, flush=True)
open(os.path.join(rec, f"ready{me}"), "w").close()
if mode == "fail" and me == "1":
    sys.exit(3)
if mode in ("fail", "wait", "stubborn"):
    time.sleep(60)
    sys.exit(9)  # not reached when the launcher does its job
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""

FAKE_SRUN = """#!/usr/bin/env bash
# Fake srun: log the options, drop them, run the command in this process.
printf '%s\\n' "$*" >> "$FAKE_RECORD_DIR/srun.log"
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
if [[ ${FAKE_UNSHARED:-0} == 1 && $1 == test ]]; then exit 1; fi  # another node would not see it
exec "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$FAKE_RECORD_DIR/scontrol.log"
"""
FAKE_SCANCEL = """#!/usr/bin/env bash
# Fake scancel: log, and deliver the signal to the (single) task like SLURM would.
printf '%s\\n' "$*" >> "$FAKE_RECORD_DIR/scancel.log"
kill -TERM "$(cat "$FAKE_RECORD_DIR/task.pid")"
"""


def _clean_env(**overrides):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "NTKBENCH_", "JAX_", "FAKE_"))
           and k not in ("DRY_RUN", "CONFIG", "WORKDIR", "TPU_NAME", "ZONE", "PROJECT",
                         "INSTALL", "REPO_URL", "REMOTE_DIR", "NUM_SHARDS", "LOCAL_DEVICE_IDS",
                         "MAX_RESTARTS")}
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def _run(script, *args, timeout=30, cwd=None, **env):
    return subprocess.run(["bash", str(LAUNCHERS / script), *args], env=_clean_env(**env),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)


def _dry(script, *args, cwd=None, **env):
    """The command lines a script prints with DRY_RUN=1 (comment lines dropped), as argv lists."""
    r = _run(script, *args, cwd=cwd, DRY_RUN=1, **env)
    assert r.returncode == 0, r.stderr
    return [shlex.split(line) for line in r.stdout.splitlines() if not line.startswith("#")]


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake(tmp_path):
    """A fake ntkbench (NTKBENCH_BIN), fake srun/scontrol/scancel on PATH, and the record dir."""
    rec = tmp_path / "rec"
    rec.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ntk = _executable(bindir / "fake-ntkbench", f"#!{sys.executable}\n{FAKE_NTKBENCH}")
    _executable(bindir / "srun", FAKE_SRUN)
    _executable(bindir / "scontrol", FAKE_SCONTROL)
    _executable(bindir / "scancel", FAKE_SCANCEL)
    env = {"NTKBENCH_BIN": ntk, "FAKE_RECORD_DIR": rec,
           "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return rec, env


def _records(rec: Path):
    return {p.stem: json.loads(p.read_text()) for p in rec.glob("proc*.json")}


def _wait_for(paths, timeout=15.0):
    end = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < end, f"timed out waiting for {paths}"
        time.sleep(0.05)


# ---- every script -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SCRIPTS)
def test_script_is_strict_executable_bash_that_opens_with_its_command(name):
    path = LAUNCHERS / name
    assert os.access(path, os.X_OK), f"chmod +x {path}"
    lines = path.read_text().splitlines()
    assert lines[0] in ("#!/bin/bash", "#!/usr/bin/env bash")
    assert lines[1].startswith("# ") and f"launchers/{name}" in lines[1]  # the command first, then what it does
    assert "set -euo pipefail" in lines
    assert "/work/" not in path.read_text()  # no workplace paths
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean():
    r = subprocess.run(["shellcheck", "--shell=bash", *(str(LAUNCHERS / s) for s in SCRIPTS)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout


def test_readme_covers_every_target():
    text = (LAUNCHERS / "README.md").read_text()
    for name in SCRIPTS:
        assert f"launchers/{name}" in text
    for needle in ('".[cuda]"', '".[tpu]"', "jax.distributed.initialize()", "75",
                   "JAX_LOCAL_DEVICE_IDS", "--worker=all", "--shard=", "--requeue"):
        assert needle in text, needle


# ---- local_single.sh ----------------------------------------------------------------------------

def test_local_single_dry_run():
    assert _dry("local_single.sh", "run", "--config=quick", "--workdir=runs/quick") == [
        ["ntkbench", "run", "--config=quick", "--workdir=runs/quick"]]
    assert _dry("local_single.sh", "report", "--workdir=a b", NTKBENCH_BIN="/opt/x/ntkbench") == [
        ["/opt/x/ntkbench", "report", "--workdir=a b"]]


def test_local_single_runs_the_program_and_keeps_its_status(fake, tmp_path):
    rec, env = fake
    r = _run("local_single.sh", "run", "--config=quick", f"--workdir={tmp_path}/w", FAKE_EXIT=75,
             **env)
    assert r.returncode == 75 and "hello from 0" in r.stdout
    assert _records(rec)["proc0"]["argv"] == ["run", "--config=quick", f"--workdir={tmp_path}/w"]
    r = _run("local_single.sh", "run", NTKBENCH_BIN=tmp_path / "missing")
    assert r.returncode == 2 and "NTKBENCH_BIN" in r.stderr
    assert _run("local_single.sh").returncode == 2


# ---- local_multiprocess.sh ----------------------------------------------------------------------

def test_local_multiprocess_dry_run_commands():
    cmds = _dry("local_multiprocess.sh", "3", "run", "--config=quick", "--workdir=runs/q r")
    assert len(cmds) == 3
    ports = set()
    for i, cmd in enumerate(cmds):
        assert cmd[0] == "JAX_PLATFORMS=cpu"
        assert cmd[1:5] == ["ntkbench", "run", "--config=quick", "--workdir=runs/q r"]
        assert cmd[5].startswith("--coordinator_address=127.0.0.1:")
        ports.add(int(cmd[5].rsplit(":", 1)[1]))
        assert cmd[6:] == ["--num_processes=3", f"--process_id={i}"]
    assert len(ports) == 1 and 1024 <= ports.pop() <= 65535


def test_local_multiprocess_port_platform_and_bin_overrides():
    cmds = _dry("local_multiprocess.sh", "2", "run", "--config=quick",
                NTKBENCH_COORDINATOR_PORT=12345, JAX_PLATFORMS="cuda", NTKBENCH_BIN="/x/ntk")
    assert cmds == [["JAX_PLATFORMS=cuda", "/x/ntk", "run", "--config=quick",
                     "--coordinator_address=127.0.0.1:12345", "--num_processes=2",
                     f"--process_id={i}"] for i in range(2)]
    # Set but empty is the user's choice too ("let JAX pick"): kept, not replaced by cpu.
    assert _dry("local_multiprocess.sh", "1", "run", JAX_PLATFORMS="")[0][0] == "JAX_PLATFORMS="


def test_local_multiprocess_picks_a_free_port():
    port = int(_dry("local_multiprocess.sh", "2", "run")[0][-3].rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free a moment ago, so most likely still free


@pytest.mark.parametrize("args", [["0", "run"], ["two", "run"], ["2"],
                                  ["2", "run", "--process_id=1"],
                                  ["2", "run", "--coordinator_address=h:1"]])
def test_local_multiprocess_bad_input_exits_2(args):
    r = _run("local_multiprocess.sh", *args)
    assert r.returncode == 2 and "error" in r.stderr


def test_local_multiprocess_bad_port_exits_2():
    r = _run("local_multiprocess.sh", "2", "run", NTKBENCH_COORDINATOR_PORT="http")
    assert r.returncode == 2 and "NTKBENCH_COORDINATOR_PORT" in r.stderr


def test_local_multiprocess_runs_n_processes_with_prefixed_output(fake):
    rec, env = fake
    r = _run("local_multiprocess.sh", "3", "run", "--config=quick", "--workdir=w x", **env)
    assert r.returncode == 0, r.stderr
    recs = _records(rec)
    assert sorted(recs) == ["proc0", "proc1", "proc2"]
    argvs = [recs[f"proc{i}"]["argv"] for i in range(3)]
    assert [a[-1] for a in argvs] == ["--process_id=0", "--process_id=1", "--process_id=2"]
    assert argvs[0][:-1] == argvs[1][:-1] == argvs[2][:-1]  # same arguments but the process id
    assert argvs[0][:3] == ["run", "--config=quick", "--workdir=w x"]
    assert argvs[0][3].startswith("--coordinator_address=127.0.0.1:")
    assert argvs[0][4] == "--num_processes=3"
    assert {recs[p]["jax_platforms"] for p in recs} == {"cpu"}
    lines = r.stdout.splitlines()
    for i in range(3):  # stdout and stderr of process i, each line prefixed with [i]
        assert f"[{i}] hello from {i}" in lines and f"[{i}] warning from {i}" in lines
    assert all(line[:4] in ("[0] ", "[1] ", "[2] ") for line in lines), lines


def test_local_multiprocess_failure_stops_the_others_and_is_the_exit_status(fake):
    rec, env = fake
    t = time.monotonic()
    r = _run("local_multiprocess.sh", "3", "run", FAKE_MODE="fail", NTKBENCH_KILL_GRACE=1, **env)
    assert r.returncode == 3, (r.stdout, r.stderr)  # the first non-zero status, not the others' 75
    assert time.monotonic() - t < 15  # the survivors were stopped, not waited for (60 s)
    assert "process 1 exited with status 3" in r.stderr
    recs = _records(rec)
    assert recs["proc0"]["signal"] == recs["proc2"]["signal"] == signal.SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_local_multiprocess_forwards_signals_to_every_process(fake, sig):
    rec, env = fake
    p = subprocess.Popen(["bash", str(LAUNCHERS / "local_multiprocess.sh"), "2", "run"],
                         env=_clean_env(FAKE_MODE="wait", **env), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait_for([rec / "ready0", rec / "ready1"])
        p.send_signal(sig)
        out, err = p.communicate(timeout=15)
    finally:
        p.kill()
    assert p.returncode == 75, (out, err)  # the CLI's "interrupted, resumable"
    for i in range(2):
        assert f"[{i}] process {i} got signal {int(sig)}" in out.splitlines()
        assert _records(rec)[f"proc{i}"]["signal"] == sig


def test_local_multiprocess_second_signal_kills(fake):
    rec, env = fake
    p = subprocess.Popen(["bash", str(LAUNCHERS / "local_multiprocess.sh"), "2", "run"],
                         env=_clean_env(FAKE_MODE="stubborn", **env), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait_for([rec / "ready0", rec / "ready1"])
        p.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert p.poll() is None  # the processes ignore SIGTERM
        end = time.monotonic() + 15
        while p.poll() is None and time.monotonic() < end:  # resend: signals may coalesce
            p.send_signal(signal.SIGTERM)
            time.sleep(0.5)
        _out, err = p.communicate(timeout=5)
    finally:
        p.kill()
    assert p.returncode == 128 + signal.SIGKILL, err
    for i in range(2):
        pid = _records(rec)[f"proc{i}"]["pid"]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# ---- slurm.sbatch -------------------------------------------------------------------------------

def _sbatch_options(name):
    return [line.split(None, 1)[1] for line in (LAUNCHERS / name).read_text().splitlines()
            if line.startswith("#SBATCH ")]


def test_slurm_header_asks_one_task_per_gpu_and_requeue():
    opts = _sbatch_options("slurm.sbatch")
    assert "--requeue" in opts and "--signal=TERM@120" in opts
    tasks = next(o for o in opts if o.startswith("--ntasks-per-node=")).split("=")[1]
    gpus = next(o for o in opts if o.startswith("--gpus-per-node=")).split("=")[1]
    assert tasks == gpus


def test_slurm_dry_run_default(tmp_path):
    cmds = _dry("slurm.sbatch", "--config.epochs=3", cwd=tmp_path)
    assert cmds == [["srun", "--label", "--kill-on-bad-exit=0", "--wait=120", "ntkbench", "run",
                     "--distributed", "--config=quick", f"--workdir={tmp_path}/runs/quick",
                     "--config.epochs=3"]]


def test_slurm_dry_run_in_a_fake_job():
    env = {"SLURM_JOB_ID": 4242, "SLURM_SUBMIT_DIR": "/shared/me", "SLURM_CPUS_PER_TASK": 8,
           "SLURM_NTASKS_PER_NODE": 8, "SLURM_GPUS_PER_NODE": "a100:8", "SLURM_RESTART_COUNT": 3,
           "CONFIG": "configs/big.py", "WORKDIR": "runs/big",
           "NTKBENCH_BIN": "/venv/bin/ntkbench"}
    r = _run("slurm.sbatch", DRY_RUN=1, **env)
    assert r.returncode == 0 and r.stderr == ""  # 8 tasks for 8 GPUs: nothing to warn about
    lines = r.stdout.splitlines()
    assert shlex.split(lines[0]) == [
        "srun", "--label", "--kill-on-bad-exit=0", "--wait=120", "--cpus-per-task=8",
        "/venv/bin/ntkbench", "run", "--distributed", "--config=configs/big.py",
        "--workdir=/shared/me/runs/big"]
    assert "scontrol requeue 4242" in lines[1] and "restart 3" in lines[1]


@pytest.mark.parametrize("env,flag", [
    # one GPU bound to each task: it is device 0 inside the task
    ({"SLURM_GPUS_PER_TASK": 1, "SLURM_NTASKS_PER_NODE": 4}, "--local_device_ids=0"),
    ({"SLURM_GPUS_PER_TASK": "h100:2"}, "--local_device_ids=0,1"),
    # one process per node drives all its GPUs
    ({"SLURM_NTASKS_PER_NODE": 1, "SLURM_GPUS_PER_NODE": 4}, "--local_device_ids=0,1,2,3"),
    ({"SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_GPUS_PER_NODE": "gpu:2"}, "--local_device_ids=0,1"),
    # the user decides
    ({"LOCAL_DEVICE_IDS": "2,3", "SLURM_NTASKS_PER_NODE": 8, "SLURM_GPUS_PER_NODE": 8},
     "--local_device_ids=2,3"),
    # one task per visible GPU: JAX's SLURM_LOCALID auto-detection is right
    ({"SLURM_NTASKS_PER_NODE": 4, "SLURM_GPUS_PER_NODE": 4}, None),
])
def test_slurm_local_device_ids(env, flag):
    cmd = _dry("slurm.sbatch", **env)[0]
    got = [a for a in cmd if a.startswith("--local_device_ids")]
    assert got == ([flag] if flag else [])


def test_slurm_warns_about_idle_gpus_and_exported_device_ids():
    r = _run("slurm.sbatch", DRY_RUN=1, SLURM_NTASKS_PER_NODE=2, SLURM_GPUS_PER_NODE=8,
             JAX_LOCAL_DEVICE_IDS=0)
    assert r.returncode == 0
    assert "--ntasks-per-node=8" in r.stderr and "JAX_LOCAL_DEVICE_IDS" in r.stderr


def test_slurm_outside_a_job_refuses(tmp_path):
    r = _run("slurm.sbatch", cwd=tmp_path)
    assert r.returncode == 2 and "sbatch" in r.stderr
    assert not (tmp_path / "runs").exists()


def _fake_job(tmp_path, env, **extra):
    return dict(env, SLURM_JOB_ID=777, SLURM_JOB_NUM_NODES=2, SLURM_SUBMIT_DIR=tmp_path,
                WORKDIR=tmp_path / "w", **extra)


@pytest.mark.parametrize("script,extra", [
    ("slurm.sbatch", {}),
    ("slurm_array.sbatch", {"SLURM_ARRAY_TASK_ID": 1, "SLURM_ARRAY_TASK_COUNT": 4}),
])
def test_sbatch_requeues_on_exit_75(fake, tmp_path, script, extra):
    rec, env = fake
    r = _run(script, "--config.epochs=2", **_fake_job(tmp_path, env, FAKE_EXIT=75, **extra))
    assert r.returncode == 0, r.stderr
    assert (rec / "scontrol.log").read_text().split() == ["requeue", "777"]
    argv = _records(rec)["proc0"]["argv"]
    assert argv[0] == "run" and argv[-1] == "--config.epochs=2"
    assert f"--workdir={tmp_path / 'w'}" in argv
    assert ("--shard=1/4" in argv) == (script == "slurm_array.sbatch")
    assert ("--distributed" in argv) == (script == "slurm.sbatch")


@pytest.mark.parametrize("script,extra", [
    ("slurm.sbatch", {}),
    ("slurm_array.sbatch", {"SLURM_ARRAY_TASK_ID": 0, "SLURM_ARRAY_TASK_COUNT": 2}),
])
@pytest.mark.parametrize("status,restarts,expected", [
    (0, 0, 0),     # done
    (2, 0, 2),     # bad input: no requeue
    (3, 0, 3),     # a failure: no requeue
    (75, 20, 75),  # interrupted, but MAX_RESTARTS reached: say "resumable" and stop
])
def test_sbatch_exit_status_without_requeue(fake, tmp_path, script, extra, status, restarts,
                                            expected):
    rec, env = fake
    r = _run(script, **_fake_job(tmp_path, env, FAKE_EXIT=status, SLURM_RESTART_COUNT=restarts,
                                 **extra))
    assert r.returncode == expected, r.stderr
    assert not (rec / "scontrol.log").exists()


def test_slurm_checks_that_the_workdir_is_shared(fake, tmp_path):
    rec, env = fake
    r = _run("slurm.sbatch", **_fake_job(tmp_path, env))
    assert r.returncode == 0, r.stderr
    srun_calls = (rec / "srun.log").read_text().splitlines()
    assert len(srun_calls) == 2 and srun_calls[0].endswith(".shared-check-777")
    assert "--ntasks-per-node=1" in srun_calls[0]
    assert not list((tmp_path / "w").glob(".shared-check-*"))


def test_slurm_refuses_a_workdir_that_is_not_shared(fake, tmp_path):
    rec, env = fake
    r = _run("slurm.sbatch", **_fake_job(tmp_path, env, FAKE_UNSHARED=1))
    assert r.returncode == 2 and "shared filesystem" in r.stderr
    assert not _records(rec)  # ntkbench never started
    assert not list((tmp_path / "w").glob(".shared-check-*"))


@pytest.mark.parametrize("script,extra", [
    ("slurm.sbatch", {}),
    ("slurm_array.sbatch", {"SLURM_ARRAY_TASK_ID": 0, "SLURM_ARRAY_TASK_COUNT": 2}),
])
def test_sbatch_keeps_waiting_when_slurm_signals_the_batch_shell(fake, tmp_path, script, extra):
    """Preemption signals the batch shell and the tasks: the script must outlive the first and
    requeue once the tasks have checkpointed and exited 75."""
    rec, env = fake
    p = subprocess.Popen(["bash", str(LAUNCHERS / script)],
                         env=_clean_env(**_fake_job(tmp_path, env, FAKE_MODE="wait", **extra)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for([rec / "ready0"])
        p.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert p.poll() is None  # still waiting for srun
        os.kill(int((rec / "task.pid").read_text()), signal.SIGTERM)  # SLURM signals the task
        _out, err = p.communicate(timeout=15)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert (rec / "scontrol.log").read_text().split() == ["requeue", "777"]
    assert not (rec / "scancel.log").exists()


@pytest.mark.parametrize("script,extra", [
    ("slurm.sbatch", {}),
    ("slurm_array.sbatch", {"SLURM_ARRAY_TASK_ID": 0, "SLURM_ARRAY_TASK_COUNT": 2}),
])
def test_sbatch_relays_batch_usr1_as_sigterm_to_the_tasks(fake, tmp_path, script, extra):
    rec, env = fake
    p = subprocess.Popen(["bash", str(LAUNCHERS / script)],
                         env=_clean_env(**_fake_job(tmp_path, env, FAKE_MODE="wait", **extra)),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for([rec / "ready0"])
        p.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 would send
        _out, err = p.communicate(timeout=15)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert (rec / "scancel.log").read_text().split() == ["--signal=TERM", "777"]
    assert _records(rec)["proc0"]["signal"] == signal.SIGTERM
    assert (rec / "scontrol.log").read_text().split() == ["requeue", "777"]


# ---- slurm_array.sbatch -------------------------------------------------------------------------

def test_slurm_array_dry_run_shard_from_the_task_id():
    cmds = _dry("slurm_array.sbatch", "--config.epochs=2", SLURM_ARRAY_TASK_ID=3,
                SLURM_ARRAY_TASK_COUNT=8, SLURM_SUBMIT_DIR="/shared", WORKDIR="/shared/w")
    assert cmds == [["srun", "--ntasks=1", "ntkbench", "run", "--config=quick",
                     "--workdir=/shared/w", "--shard=3/8", "--config.epochs=2"]]


def test_slurm_array_header_and_preview():
    opts = _sbatch_options("slurm_array.sbatch")
    assert "--array=0-7" in opts and "--requeue" in opts and "--signal=TERM@120" in opts
    # Outside SLURM the preview is task 0 of the array in the header.
    assert "--shard=0/8" in _dry("slurm_array.sbatch")[0]


def test_slurm_array_rerun_of_one_share_keeps_the_share_count():
    cmd = _dry("slurm_array.sbatch", SLURM_ARRAY_TASK_ID=5, SLURM_ARRAY_TASK_COUNT=1,
               NUM_SHARDS=8)[0]
    assert "--shard=5/8" in cmd


@pytest.mark.parametrize("env", [{"SLURM_ARRAY_TASK_ID": 8, "SLURM_ARRAY_TASK_COUNT": 8},
                                 {"SLURM_ARRAY_TASK_ID": 2, "SLURM_ARRAY_TASK_COUNT": 4,
                                      "NUM_SHARDS": "x"}])
def test_slurm_array_bad_shares_exit_2(env):
    r = _run("slurm_array.sbatch", DRY_RUN=1, **env)
    assert r.returncode == 2 and "error" in r.stderr


def test_slurm_array_outside_a_job_refuses(tmp_path):
    r = _run("slurm_array.sbatch", cwd=tmp_path)
    assert r.returncode == 2 and "submit" in r.stderr


def test_slurm_array_submit_adds_a_dependent_report_job():
    cmds = _dry("slurm_array.sbatch", "submit", "--config.epochs=2", NUM_SHARDS=16,
                WORKDIR="/shared/a b")
    script = str(LAUNCHERS / "slurm_array.sbatch")
    assert cmds[0] == ["sbatch", "--parsable", "--array=0-15", script, "--config.epochs=2"]
    report = cmds[1]
    assert report[:2] == ["sbatch", "--parsable"]
    assert "--dependency=afterok:ARRAY_JOB_ID" in report
    wrap = next(a for a in report if a.startswith("--wrap=")).split("=", 1)[1]
    assert shlex.split(wrap) == ["ntkbench", "report", "--workdir=/shared/a b"]


def test_slurm_array_submit_with_fake_sbatch(fake, tmp_path):
    rec, env = fake
    bindir = Path(str(env["PATH"]).split(os.pathsep)[0])
    _executable(bindir / "sbatch", '#!/usr/bin/env bash\nprintf \'%s\\n\' "$*" >> '
                '"$FAKE_RECORD_DIR/sbatch.log"\necho "123;cluster"\n')
    r = _run("slurm_array.sbatch", "submit", WORKDIR=tmp_path / "w", **env)
    assert r.returncode == 0, r.stderr
    calls = (rec / "sbatch.log").read_text().splitlines()
    assert len(calls) == 2 and "--dependency=afterok:123 " in calls[1]
    assert "array job 123" in r.stdout


# ---- tpu_pod.sh ---------------------------------------------------------------------------------

def _remote_commands(cmd):
    command = next(a for a in cmd if a.startswith("--command=")).split("=", 1)[1]
    return [shlex.split(part) for part in command.split("; ")]


def test_tpu_pod_dry_run():
    cmds = _dry("tpu_pod.sh", "--config=quick", "--workdir=/mnt/shared/q", TPU_NAME="pod-1",
                ZONE="us-central2-b")
    assert len(cmds) == 1
    cmd = cmds[0]
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-1"]
    assert "--zone=us-central2-b" in cmd and "--worker=all" in cmd
    remote = _remote_commands(cmd)
    assert ["cd", "ntkbench"] in remote
    assert remote[-1] == ["ntkbench", "run", "--distributed", "--config=quick",
                          "--workdir=/mnt/shared/q"]
    assert not any("pip" in part for part in remote)


def test_tpu_pod_install_step():
    cmd = _dry("tpu_pod.sh", "--workdir=/mnt/q", TPU_NAME="p", ZONE="z", PROJECT="proj",
               INSTALL=1, REPO_URL="https://example.com/ntkbench.git", REMOTE_DIR="src/ntk")[0]
    assert "--project=proj" in cmd
    remote = _remote_commands(cmd)
    joined = [" ".join(part) for part in remote]
    assert any("git clone https://example.com/ntkbench.git src/ntk" in j for j in joined)
    cd = joined.index("cd src/ntk")
    pip = joined.index("python3 -m pip install --quiet -e .[tpu]")
    assert cd < pip < len(remote) - 1  # install in the checkout, then run
    assert remote[-1][:3] == ["ntkbench", "run", "--distributed"]


@pytest.mark.parametrize("env,args", [
    ({"ZONE": "z"}, ["--workdir=/w"]),                          # no TPU_NAME
    ({"TPU_NAME": "p"}, ["--workdir=/w"]),                      # no ZONE
    ({"TPU_NAME": "p", "ZONE": "z"}, ["--config=quick"]),          # no workdir
    ({"TPU_NAME": "p", "ZONE": "z"}, ["--workdir=/w", "--process_id=1"]),
])
def test_tpu_pod_bad_input_exits_2(env, args):
    r = _run("tpu_pod.sh", *args, DRY_RUN=1, **env)
    assert r.returncode == 2 and "error" in r.stderr
