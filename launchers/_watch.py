"""Signals and the watchdog of `ntkbench run`: how a run stops, or notices it never will.

- The first SIGTERM, SIGINT or SIGHUP (a closed terminal) asks the sweep to stop at the next
  chunk boundary: it checkpoints, flushes its results and exits with status 75 (resumable).
- A second one exits at once with status 75: what the last checkpoint holds is kept (records
  committed after it are checked bit for bit when the rerun writes them again).
- The watchdog: a chunk (one compiled call) that has not returned after the bound exits the
  run with status 70 and one line naming the pack and chunk. The bound is `first_seconds` for a
  pack's first chunk (it compiles) and `max(min_seconds, factor x the slowest chunk of that
  pack so far)` afterwards. A hung XLA program cannot be interrupted from Python; leaving the
  process is the only way out, and the run resumes from its last checkpoint. Time the process
  spends stopped (SIGSTOP, Ctrl-Z) does not count: the watchdog's thread ticks every `poll`
  seconds, and a gap between two ticks longer than `max_gap` (no thread of the process ran)
  counts as one tick. A suspended machine does not count either (the monotonic clock stops).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from ntkbench import ExitStatus


def _leave(message: str, status: int) -> None:
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)
    os._exit(status)


class StopFlag:
    """Set by the first SIGTERM/SIGINT/SIGHUP; the second one leaves at once (status 75)."""

    def __init__(self, leave: Callable[[str, int], None] = _leave):
        self.set = False
        self.signal = None
        self._leave = leave
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        if self.set:
            self._leave(f"ntkbench: signal {signum} again: leaving now (status "
                        f"{ExitStatus.INTERRUPTED}); rerun the same command to resume from the last "
                        "checkpoint.", ExitStatus.INTERRUPTED)
            return
        print(f"ntkbench: signal {signum}: stopping at the next chunk boundary with a "
              f"checkpoint (status {ExitStatus.INTERRUPTED}, resumable); send it again to leave now.",
              file=sys.stderr, flush=True)
        self.set, self.signal = True, signum

    def __call__(self) -> bool:
        return self.set


class Watchdog:
    """Watches the heartbeats of a sweep (`ntkbench.Hooks.heartbeat`) from a daemon thread.

    Args:
        first_seconds: bound of a pack's first chunk (it includes compiling).
        factor: later chunks may take this many times the slowest chunk of the pack so far.
        min_seconds: lower bound for later chunks.
        max_gap: a gap between two looks at the clock longer than this means the process did
            not run (stopped, or starved): it counts as one `poll`.
        clock, leave, poll: injected in tests.
    """

    def __init__(self, first_seconds: float = 1800.0, factor: float = 10.0,
                 min_seconds: float = 120.0, *, clock: Callable[[], float] = time.monotonic,
                 leave: Callable[[str, int], None] = _leave, poll: float = 1.0,
                 max_gap: float = 10.0):
        self.first_seconds, self.factor, self.min_seconds = first_seconds, factor, min_seconds
        self._clock, self._leave, self._poll = clock, leave, poll
        self._max_gap = max(max_gap, 2 * poll)
        self._lock = threading.Lock()
        self._running: tuple[int, int, float] | None = None  # (pack, chunk, start time)
        self._slowest: dict[int, float] = {}
        self._thread: threading.Thread | None = None
        self._last = clock()  # the clock when last looked at
        self._awake = 0.0  # seconds the process ran (gaps beyond max_gap left out)
        self.suspended = 0.0  # seconds left out
        self._closed = threading.Event()

    def _now(self) -> float:
        """The process's running time (call with the lock held)."""
        now = self._clock()
        gap = now - self._last
        self._last = now
        if gap > self._max_gap:
            self.suspended += gap - self._poll
            gap = self._poll
        self._awake += max(gap, 0.0)
        return self._awake

    def bound(self, pack_id: int) -> float:
        slowest = self._slowest.get(pack_id)
        if slowest is None:
            return self.first_seconds
        return max(self.min_seconds, self.factor * slowest)

    def heartbeat(self, pack_id: int, chunk: int, what: str) -> None:
        with self._lock:
            now = self._now()
            if what == "start":
                self._running = (pack_id, chunk, now)
            elif self._running is not None:
                took = now - self._running[2]
                self._slowest[pack_id] = max(self._slowest.get(pack_id, 0.0), took)
                self._running = None
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="ntkbench-watchdog")
            self._thread.start()

    def check(self) -> None:
        """Leave (status 70) if the running chunk has outlived its bound."""
        with self._lock:
            now = self._now()
            if self._running is None:
                return
            pack_id, chunk, start = self._running
            waited, bound = now - start, self.bound(pack_id)
        if waited > bound:
            slowest = self._slowest.get(pack_id)
            seen = (f"its chunks took at most {slowest:.1f}s so far" if slowest is not None
                    else "it had not finished a chunk yet (compiling included)")
            self._leave(f"ntkbench: error: chunk {chunk} of pack {pack_id} made no progress for "
                        f"{waited:.0f}s ({seen}; the bound is {bound:.0f}s): the run is hung and "
                        f"leaves with status {ExitStatus.HUNG}; rerun to resume from the last "
                        "checkpoint (raise --watchdog_seconds if compiling is this slow).",
                        ExitStatus.HUNG)

    def close(self) -> None:
        """Stop watching (the run returned): the thread ends within one `poll`."""
        self._closed.set()

    def _watch(self) -> None:
        while not self._closed.wait(self._poll):
            self.check()
