"""The SLURM launchers on a real one-node SLURM cluster on localhost (munged, slurmctld, slurmd).

The module starts its own MUNGE and SLURM daemons (config, key, state and spool directories under
pytest's tmp_path, free ports, node `localhost` at 127.0.0.1; linuxproc process tracking and no
task plugin, so no cgroups are needed), then

* submits `launchers/slurm.sbatch` as 2 tasks (2 JAX processes via `jax.distributed`, one CPU
  device each), preempts it with `scancel --signal=TERM` once its first checkpoint exists and
  checks that both tasks exited 75, that the script requeued the job, that the rerun resumed
  from the checkpoint and finished, and that its results equal an uninterrupted single-process
  run of the same sweep;
* submits `launchers/slurm_array.sbatch` as 2 shares with its `submit` command (the array, then
  the report job that waits for it) and checks the merged results against the same run.

It needs root (the daemons run as root, as in CI) and Debian's `slurm-wlm` and `munge`; it is
skipped, with the reason, where they are missing or cannot start. Every wait has a deadline, and
a finalizer stops the daemons and every process they started, pass or fail.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NTKBENCH = os.path.join(os.path.dirname(sys.executable), "ntkbench")
NODE = "localhost"  # the node name is the JAX coordinator's host name: it must resolve
# The sweep: smoke (synthetic data, NTK recorded every 5 epochs, chunks of 10 epochs) as 4 seeds
# of width 16 in 2 packs of 2 members (the 2 MB memory bound splits them), which share one
# compiled program: two processes hold one member of each pack each. A checkpoint is due every
# 10 epochs, so one exists after the first chunk; the rest of the sweep (the remaining chunks,
# compiling the evaluation, the second pack) leaves seconds to preempt it.
SWEEP = ["--config.widths=(16,)", "--config.num_seeds=4", "--config.pack_memory_mb=2",
         "--config.epochs=40", "--config.checkpoint_every_epochs=10"]
# Hard limits (seconds). The module takes 105-145 s on 2 cores shared with other jobs (load
# average 4-7); estimated: about a minute on 2 idle cores.
MODULE_TIMEOUT = 240
START_TIMEOUT = 30
# A requeued job may start again AuthInfo cred_expire seconds later (default 120).
CRED_EXPIRE = 5

# Tolerances against the single-process run (as in tests/test_scaleout.py): two processes shard
# each pack's members over 2 devices, which reassociates the float32 sums. Losses, traces and
# alignments: rtol 1e-6 (measured <= 2.3e-7). Quantities of the float32 eigendecomposition
# (entropy, effective rank, eigenvector misalignment) and the adaptation rate (a slope fitted to
# the trace against the loss): rtol 1e-5 (measured up to 1.4e-6 for erank, 2.7e-6 for the rate).
# Misalignment lies in [0, 1] and is often small: measured 1.0e-6 absolute (1.6e-5 relative),
# hence its atol of 1e-5. The array shares run the single process's programs: bit-identical.
RTOL = {"ntk_entropy": 1e-5, "ntk_erank": 1e-5, "erank_star": 1e-5, "adaptation_rate": 1e-5,
        "alpha_star": 1e-5, "eigvec_misalignment": 1e-5}
ATOL = {"eigvec_misalignment": 1e-5}


def _deadline(seconds, what):
    return (time.monotonic() + seconds, what)


def _left(deadline):
    t, what = deadline
    left = t - time.monotonic()
    if left <= 0:
        pytest.fail(f"timed out: {what}")
    return left


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")


def _tail(path, n=30):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


class Cluster:
    """A one-node SLURM cluster under `root`; `env` is what its clients and jobs run with."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.marker = f"NTKBENCH_SLURM_TEST={self.root}"  # in the environment of all we start
        # Nothing of a SLURM job this test may itself run in, no JAX/XLA settings of the caller;
        # the virtual environment first on PATH, as after `activate` (sbatch exports it).
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "JAX_", "XLA_"))}
        self.env.update(NTKBENCH_SLURM_TEST=str(self.root),
                        SLURM_CONF=str(self.root / "slurm.conf"),
                        PATH=os.path.dirname(sys.executable) + os.pathsep
                        + self.env.get("PATH", "/usr/bin:/bin"))

    # ---- daemons
    def start(self):
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir()
        (r / "munge").chmod(0o755)  # munged wants its socket's directory searchable by all
        # A Unix socket path has at most 107 bytes.
        sock = r / "munge" / "munge.sock"
        if len(str(sock)) > 100:
            pytest.skip(f"munge socket path too long for a Unix socket: {sock}")
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._spawn("munged", _which("munged"), "--foreground", "--force", f"--socket={sock}",
                    f"--key-file={key}", f"--pid-file={r / 'munge' / 'munged.pid'}",
                    f"--log-file={r / 'log' / 'munged.log'}",
                    f"--seed-file={r / 'munge' / 'munged.seed'}")
        deadline = _deadline(START_TIMEOUT, "munged")
        while not sock.exists():
            if self.procs[-1][1].poll() is not None or time.monotonic() > deadline[0]:
                pytest.skip("munged did not start:\n" + _tail(r / "log" / "munged.out", 8))
            time.sleep(0.1)

        ctld_port, d_port = _free_port(), _free_port()
        host = socket.gethostname().split(".")[0]  # slurmctld checks that it is SlurmctldHost
        (r / "slurm.conf").write_text(f"""\
ClusterName=ntkbtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire={CRED_EXPIRE}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=2
MinJobAge=600
SlurmdParameters=config_overrides
NodeName={NODE} NodeAddr=127.0.0.1 CPUs=16 State=UNKNOWN
PartitionName=test Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
        # No cgroup plugin is configured; an empty cgroup.conf beside slurm.conf keeps the
        # machine's own (if any) out.
        (r / "cgroup.conf").write_text("# linuxproc process tracking, no task plugin: no cgroups\n")
        conf = str(r / "slurm.conf")
        self._spawn("slurmctld", _which("slurmctld"), "-D", "-f", conf)
        self._spawn("slurmd", _which("slurmd"), "-D", "-N", NODE, "-f", conf)
        deadline = _deadline(START_TIMEOUT, "node idle")
        state = ""
        while state != "idle":
            for name, p in self.procs:
                if p.poll() is not None:
                    pytest.skip(f"{name} exited with status {p.returncode}:\n"
                                + _tail(r / "log" / f"{name}.out", 8))
            if time.monotonic() > deadline[0]:
                pytest.skip(f"node {NODE} not idle after {START_TIMEOUT}s (sinfo: {state!r}):\n"
                            + _tail(r / "log" / "slurmctld.out", 8) + "\n"
                            + _tail(r / "log" / "slurmd.out", 8))
            time.sleep(0.3)
            try:
                out = self.run("sinfo", "-h", "-n", NODE, "-o", "%t", check=False, timeout=5)
                state = out.stdout.strip()
            except subprocess.TimeoutExpired:
                state = "(sinfo timed out)"

    def _spawn(self, name, *cmd):
        with open(self.root / "log" / f"{name}.out", "wb") as log:
            p = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                                 start_new_session=True)
        self.procs.append((name, p))

    def stop(self):
        """Cancel every job, stop the daemons, then end whatever they left (by pid)."""
        if any(n == "slurmctld" and p.poll() is None for n, p in self.procs):
            try:
                self.run("scancel", "--user=root", check=False, timeout=10)
                end = time.monotonic() + 10
                while time.monotonic() < end:
                    q = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10)
                    if q.returncode != 0 or not q.stdout.strip():
                        break
                    time.sleep(0.5)
            except subprocess.TimeoutExpired:
                pass
        daemons = {p.pid for _, p in self.procs}
        self._kill_leftovers(exclude=daemons)
        for _, p in self.procs:
            if p.poll() is None:
                p.terminate()
        end = time.monotonic() + 3  # slurmd may linger after a job: 3 s, then SIGKILL
        for _, p in self.procs:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self._kill_leftovers(exclude=set())

    def _kill_leftovers(self, exclude):
        """SIGKILL what this cluster started: the processes whose environment carries its
        marker (jobs, tasks) or whose working directory is inside it (slurmstepd, which
        overwrites its environment with its title and ignores SIGTERM)."""
        mine = []
        for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
            if pid == os.getpid() or pid in exclude:
                continue
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if self.marker.encode() in env or Path(cwd).is_relative_to(self.root):
                mine.append(pid)
        for pid in mine:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # ---- clients
    def run(self, *cmd, check=True, timeout=30, cwd=None, **env):
        r = subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=timeout,
                           env={**self.env, **{k: str(v) for k, v in env.items()}},
                           cwd=cwd or self.root, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def jobs(self, job_id) -> list[dict]:
        """`scontrol show job` as dicts (one per array task)."""
        out = self.run("scontrol", "show", "-o", "job", str(job_id), timeout=10).stdout
        rows = []
        for line in out.splitlines():
            row, key = {}, None
            for tok in line.split(" "):
                k, eq, v = tok.partition("=")
                if eq and re.fullmatch(r"[A-Za-z][\w:/]*", k):
                    key, row[k] = k, v
                elif key:
                    row[key] += " " + tok
            if row:
                rows.append(row)
        return rows

    def log_tails(self):
        return "\n".join(f"--- {n}:\n" + _tail(self.root / "log" / f"{n}.out", 15)
                         for n in ("slurmctld", "slurmd"))


@pytest.fixture(scope="module")
def deadline():
    return _deadline(MODULE_TIMEOUT, f"tests/test_slurm.py within {MODULE_TIMEOUT}s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, deadline):
    if os.geteuid() != 0:
        pytest.skip("the SLURM test runs its own slurmctld/slurmd as root (as CI does)")
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol",
                           "scancel", "sinfo", "squeue") if _which(b) is None]
    if missing:
        pytest.skip(f"SLURM/MUNGE not installed (missing {', '.join(missing)}): "
                    "apt-get install slurm-wlm munge")
    if not os.path.exists(NTKBENCH):
        pytest.skip("needs the installed console script (pip install -e .)")
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


class Reference:
    """The same sweep, uninterrupted, as one process, run in the background (while the first
    job runs: alone, it would leave one of the two cores idle). It fills a compilation cache
    that the array shares reuse."""

    def __init__(self, cluster):
        self.workdir = cluster.root / "reference"
        self.log = cluster.root / "reference.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [NTKBENCH, "run", "--config=smoke", f"--workdir={self.workdir}", *SWEEP,
                 f"--compilation_cache={cluster.root / 'xla'}"],
                env={**cluster.env, "JAX_PLATFORMS": "cpu"}, cwd=cluster.root,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self._ds = None

    def results(self, deadline):
        import ntkbench as results

        if self._ds is None:
            try:
                rc = self.proc.wait(_left(deadline))
            except subprocess.TimeoutExpired:
                pytest.fail("timed out: the single-process reference run")
            assert rc == 0, _tail(self.log, 40)
            self._ds = results.load(str(self.workdir))
        return self._ds

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def reference(cluster):
    ref = Reference(cluster)
    try:
        yield ref
    finally:
        ref.stop()


def _compare(got, want, exact=False):
    """Every variable of `want` in `got`: equal NaN patterns, values within RTOL/ATOL."""
    assert sorted(got.data_vars) == sorted(want.data_vars)
    assert {"train_loss", "test_loss", "train_accuracy", "test_accuracy", "ntk_trace",
            "ntk_entropy", "ntk_erank", "label_alignment", "eigvec_misalignment"} <= set(want)
    for v in want.data_vars:
        x, y = got[v].values, want[v].values
        assert x.shape == y.shape, v
        if exact or x.dtype.kind not in "fc":
            np.testing.assert_array_equal(x, y, err_msg=v)  # NaNs compare equal here
        else:
            np.testing.assert_allclose(x, y, rtol=RTOL.get(v, 1e-6), atol=ATOL.get(v, 1e-7),
                                       err_msg=v)


def _wait_done(cluster, job_id, deadline, what):
    """Wait until every task of `job_id` has ended; return their rows."""
    while True:
        rows = cluster.jobs(job_id)
        if rows and all(r["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING",
                                              "REQUEUED", "SUSPENDED") for r in rows):
            return rows
        if time.monotonic() > deadline[0]:
            pytest.fail(f"timed out waiting for {what}: "
                        + "; ".join(f"{r['JobId']} {r['JobState']} {r.get('Reason')}"
                                    for r in rows) + "\n" + cluster.log_tails())
        time.sleep(0.5)


def _tasks_exited(text, status):
    """The task ids that srun reported as exited with `status` ("task 1", "tasks 0-1", ...)."""
    ids = set()
    for m in re.finditer(rf"^srun: error: {NODE}: tasks? ([\d,-]+): Exited with exit code "
                         rf"{status}$", text, re.MULTILINE):
        for part in m.group(1).split(","):
            a, _, b = part.partition("-")
            ids.update(range(int(a), int(b or a) + 1))
    return ids


def _checkpoints(workdir):
    """Finished Orbax checkpoints (step directories; a save in progress has a temporary name)."""
    return sorted(p for p in workdir.glob("checkpoints/pack_*/*") if p.name.isdigit())


def test_preempted_job_requeues_resumes_and_matches_one_process(cluster, reference, deadline):
    import ntkbench as results

    w = cluster.root / "job"
    env = {"CONFIG": "smoke", "WORKDIR": w, "NTKBENCH_BIN": NTKBENCH, "JAX_PLATFORMS": "cpu",
           "JAX_COORDINATOR_PORT": _free_port(), "NTKBENCH_COMPILATION_CACHE": "none",
           "SRUN_WAIT": 30}
    out = cluster.run("sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2",
                      "--gpus-per-node=0", "--output=job-%j.out",
                      str(ROOT / "launchers" / "slurm.sbatch"), *SWEEP, **env)
    job = out.stdout.strip().split(";")[0]
    log = cluster.root / f"job-{job}.out"

    # Preempt once the first checkpoint exists: SIGTERM to both tasks (not to srun).
    while not _checkpoints(w):
        state = cluster.jobs(job)[0]["JobState"]
        if state not in ("PENDING", "RUNNING", "CONFIGURING"):
            pytest.fail(f"job {job} {state} before its first checkpoint:\n" + _tail(log, 40))
        _left(deadline)
        time.sleep(0.2)
    cluster.run("scancel", "--signal=TERM", job)
    row = _wait_done(cluster, job, deadline, f"job {job} to be requeued and finish")[0]
    text = log.read_text(errors="replace")
    tail = text[-4000:]
    assert (row["JobState"], row["ExitCode"], row["Restarts"]) == ("COMPLETED", "0:0", "1"), (
        row, tail)

    # Both tasks checkpointed and exited 75 ("interrupted, resumable"); srun was not signalled
    # (it would have SIGKILLed them: "forcing job termination")...
    for task in (0, 1):
        assert re.search(rf"^{task}: ntkbench: interrupted at epoch \d+ of pack \d+", text,
                         re.MULTILINE), tail
    assert _tasks_exited(text, 75) == {0, 1}, tail
    assert "forcing job termination" not in text, tail
    # ...the script requeued the job, and the rerun resumed from the checkpoint and finished.
    assert f"interrupted (status 75); requeueing job {job} (restart 1 of at most" in text, tail
    assert f"job {job} on 1 nodes ({NODE}), restart 1;" in text, tail
    assert re.search(r"^0: .*resuming from the checkpoint at epoch \d+", text, re.MULTILINE), tail
    assert "[slurm.sbatch] done: results in" in text, tail
    assert "[slurm.sbatch] warning" not in text, tail  # e.g. about GPUs: this job has none
    _compare(results.load(str(w)), reference.results(deadline))


def test_array_shares_merge_to_one_process(cluster, reference, deadline):
    import ntkbench as results

    want = reference.results(deadline)  # first: the shares then find its compiled programs
    w = cluster.root / "array"
    # `submit` takes sbatch options only from the environment (its arguments go to ntkbench).
    out = cluster.run("bash", str(ROOT / "launchers" / "slurm_array.sbatch"), "submit", *SWEEP,
                      CONFIG="smoke", WORKDIR=w, NUM_SHARDS=2, NTKBENCH_BIN=NTKBENCH,
                      JAX_PLATFORMS="cpu", NTKBENCH_COMPILATION_CACHE=cluster.root / "xla",
                      SBATCH_GPUS_PER_TASK=0)
    m = re.fullmatch(r"array job (\d+) \(.*\); report job (\d+) runs when every share succeeded",
                     out.stdout.strip())
    assert m, out.stdout + out.stderr
    array, report = m.groups()
    rows = _wait_done(cluster, report, deadline, f"report job {report}")
    text = (cluster.root / f"ntkbench-report-{report}.out").read_text(errors="replace")
    assert rows[0]["JobState"] == "COMPLETED", (rows, text[-3000:])
    assert f"to {w / 'report'}:" in text and "report.md" in text.split(), text[-3000:]
    shares = cluster.jobs(array)
    assert sorted(r["ArrayTaskId"] for r in shares) == ["0", "1"]
    for r in shares:
        share_log = cluster.root / f"ntkbench-shard-{array}_{r['ArrayTaskId']}.out"
        assert r["JobState"] == "COMPLETED", (r, _tail(share_log, 30))
        assert f"share {r['ArrayTaskId']}/2 done" in share_log.read_text(), _tail(share_log, 30)
    # A share runs its packs exactly as the single process does (same programs, one device).
    _compare(results.load(str(w)), want, exact=True)
