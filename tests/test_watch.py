"""No silent hang: the watchdog and the second signal (`ntkbench.launchers._watch`).

The end-to-end tests reproduce the real deadlock this project hit: NTK records of several
members per device run *batched* (`--sequential_members=false`) on more fake CPU devices than
XLA's CPU thread pool has threads, so jaxlib's batched LAPACK eigh blocks every pool thread
(docs/scaling.md). Where a machine does not deadlock (more cores than devices), they skip.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from ntkbench.launchers._watch import StopFlag, Watchdog

HUNG, INTERRUPTED = 70, 75


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _watchdog(**kw):
    """A watchdog on a fake clock; jumps of the clock are time the process ran (no gap limit)
    unless `max_gap` is given."""
    clock, left = _Clock(), []
    kw.setdefault("max_gap", float("inf"))
    dog = Watchdog(clock=clock, leave=lambda msg, status: left.append((msg, status)), **kw)
    dog._thread = object()  # no background thread: the test calls check() itself
    return dog, clock, left


def test_first_chunk_gets_the_compile_bound_later_ones_a_multiple_of_the_slowest():
    dog, clock, left = _watchdog(first_seconds=100, factor=10, min_seconds=5)
    dog.heartbeat(3, 0, "start")
    clock.t = 99
    dog.check()
    assert not left
    clock.t = 101
    dog.check()
    (msg, status), = left
    assert status == HUNG and "chunk 0 of pack 3" in msg and "no progress for 101s" in msg
    assert "had not finished a chunk yet" in msg
    dog, clock, left = _watchdog(first_seconds=100, factor=10, min_seconds=5)
    dog.heartbeat(3, 0, "start")
    clock.t = 2.0
    dog.heartbeat(3, 0, "end")  # the slowest chunk so far took 2 s: the bound is 20 s
    assert dog.bound(3) == 20 and dog.bound(4) == 100
    dog.heartbeat(3, 1, "start")
    clock.t = 21.0
    dog.check()
    assert not left
    clock.t = 22.5
    dog.check()
    assert left and "chunk 1 of pack 3" in left[0][0] and "at most 2.0s" in left[0][0]
    dog.heartbeat(3, 1, "end")  # nothing runs: nothing to watch
    clock.t = 1e6
    left.clear()
    dog.check()
    assert not left


def test_a_closed_watchdog_stops_its_thread():
    """`ntkbench run` closes its watchdog when the sweep returns: no thread outlives the run
    (an embedding process, a notebook or the tests, runs many sweeps)."""
    left = []
    dog = Watchdog(first_seconds=100, poll=0.01, leave=lambda m, s: left.append(s))
    dog.heartbeat(0, 0, "start")  # starts the thread, a chunk running
    thread = dog._thread
    assert thread.is_alive()
    dog.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and not left


def test_time_the_process_was_stopped_does_not_count():
    """SIGSTOP (or Ctrl-Z) for longer than the bound, then SIGCONT: no thread ran meanwhile, so
    the watchdog sees one long gap between two looks at the clock; it counts as one poll."""
    dog, clock, left = _watchdog(first_seconds=100, factor=10, min_seconds=120, poll=1,
                                 max_gap=10)
    dog.heartbeat(0, 0, "start")
    clock.t = 2.0
    dog.heartbeat(0, 0, "end")
    dog.heartbeat(0, 1, "start")
    for _ in range(50):  # 50 s of ticks
        clock.t += 1
        dog.check()
    clock.t += 500  # stopped for 500 s: no tick
    dog.check()
    assert not left and dog.suspended >= 499
    for _ in range(60):  # running again: 50 + 1 + 60 s < 120 s
        clock.t += 1
        dog.check()
    assert not left
    for _ in range(20):  # now really hung: past 120 s of running time
        clock.t += 1
        dog.check()
    (msg, status), = left[:1]
    assert status == HUNG and "chunk 1 of pack 0" in msg


_STOPPED_CHILD = """
import sys, time
from ntkbench.launchers._watch import Watchdog
dog = Watchdog(first_seconds=3, poll=0.05, max_gap=0.5)
dog.heartbeat(0, 0, "start")
print("started", flush=True)
t = time.monotonic()
while time.monotonic() - t < 2.0:  # 2 s of work (the parent stops us for 4 s meanwhile)
    time.sleep(0.01)
dog.heartbeat(0, 0, "end")
print("done", flush=True)
"""


def test_a_real_stopped_process_is_not_declared_hung():
    """A process running a chunk under a 3 s bound is stopped (SIGSTOP) for 4 s mid-chunk and
    continued: before, its watchdog left with status 70 on waking up; now it finishes."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", _STOPPED_CHILD], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.3)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(4.0)
    proc.send_signal(signal.SIGCONT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "done" in out and "hung" not in out, out


def test_second_signal_leaves_at_once_with_status_75():
    left = []
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        flag = StopFlag(leave=lambda msg, status: left.append((msg, status)))
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag() and not left
        os.kill(os.getpid(), signal.SIGINT)
        assert left and left[0][1] == INTERRUPTED and "leaving now" in left[0][0]
        flag = StopFlag(leave=lambda msg, status: left.append((msg, status)))
        os.kill(os.getpid(), signal.SIGHUP)  # a closed terminal stops like SIGTERM
        assert flag() and flag.signal == signal.SIGHUP
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _hanging_run(tmp_path, *extra):
    devices = max(4, os.cpu_count() or 1)
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "ntkbench.launchers.cli", "run", "--config=quick",
           "--config.widths=(8,)", f"--config.num_seeds={2 * devices}", "--config.epochs=20",
           f"--num_cpu_devices={devices}", "--sequential_members=false", "--progress=log",
           "--compilation_cache=none", f"--workdir={tmp_path / 'w'}", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


@pytest.mark.slow
def test_a_hung_chunk_ends_the_run_with_status_70(tmp_path):
    proc = _hanging_run(tmp_path, "--watchdog_seconds=40")
    try:
        out, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the watchdog did not end the hung run")
    if proc.returncode == 0:
        pytest.skip("this machine did not reproduce the batched-eigh deadlock")
    assert proc.returncode == HUNG, out[-2000:]
    line = [ln for ln in out.splitlines() if ln.startswith("ntkbench: error:")]
    assert line and "chunk 0 of pack 0" in line[0] and "hung" in line[0], out[-2000:]


@pytest.mark.slow
def test_a_second_sigterm_ends_a_hung_run_at_once(tmp_path):
    proc = _hanging_run(tmp_path, "--watchdog_seconds=0")
    time.sleep(45)  # compiled and hung in the first chunk (or finished, on a bigger machine)
    if proc.poll() is not None:
        pytest.skip("this machine did not reproduce the batched-eigh deadlock")
    proc.send_signal(signal.SIGTERM)
    time.sleep(3)
    if proc.poll() in (0, INTERRUPTED):  # it was only slow (a loaded machine), not hung
        pytest.skip("this machine did not reproduce the batched-eigh deadlock")
    assert proc.poll() is None  # the first signal waits for a chunk boundary that never comes
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == INTERRUPTED and time.time() - t0 < 10, out[-2000:]
    assert "leaving now" in out
