"""Progress of a sweep for a person: the events (`Progress`), the time left (`Eta`) and a
display (`ProgressDisplay`): a live bar in a terminal or a notebook, one line per chunk
elsewhere (logs, CI, SLURM).

Packs are named by their id everywhere (`pack 3`: the plan, `ntkbench status`, the status and
checkpoint files); `[2/5]` counts the packs of this run.

The time left weights each pack's remaining epochs by its cost: a pack's measured seconds per
epoch once it has run a chunk after its first (the first one builds the pack and compiles its
programs), else the run's measured seconds per unit of estimated cost times the pack's cost
(its executed FLOPs per epoch: padded members x the model's FLOPs per example at the padded width
x the examples of an epoch, `sweep.pack_costs`), plus the compile time measured on earlier
packs for each program not compiled yet. Member-epochs alone undercount wide packs: a member
of width 512 costs about 64 of width 64.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Hashable, Mapping


@dataclasses.dataclass(frozen=True)
class Progress:
    """What a progress display needs, at the start of a pack and after each of its chunks."""

    pack_id: int
    pack_index: int  # position of the pack in this run's list (0-based)
    num_packs: int
    num_members: int
    padded_width: int
    epoch: int
    epochs: int
    member_epochs_done: int  # of this run's packs, including skipped and restored work
    member_epochs_total: int
    rate: float  # member-epochs per second trained by this run (wall time, compiling included)
    # "compile" (building the pack and compiling; nothing to show for a while), "train" (after
    # a chunk), "skip" (done in an earlier run), "done" (its results are written)
    phase: str
    seconds_left: float | None = None  # this run's time left (`Eta`); None until measured
    pack_epochs_per_second: float = 0.0  # this pack's epochs/s (0: no chunk yet)
    first_chunk: bool = False  # the rate is of the pack's first chunk, compiling included

    @property
    def count(self) -> str:
        """`[i/n]`: the pack's place among this run's packs."""
        return f"[{self.pack_index + 1}/{self.num_packs}]"


def fmt_time(s: float) -> str:
    """`h:mm:ss`."""
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_rate(r: float) -> str:
    """Three significant digits for slow sweeps (0.304), thousands separators for fast ones."""
    return f"{r:,.0f}" if r >= 100 else f"{r:.3g}"


class Eta:
    """The time left of a run's packs, each weighted by its cost (the module docstring).

    Args:
        costs: pack id -> estimated cost of one epoch (any unit: only ratios matter).
        epochs: epochs of every pack.
        programs: pack id -> the key of its compiled programs (packs of equal shapes share
            them); compile time is expected once per key not seen yet.
        chunk_epochs: epochs per chunk. When a pack has more than one chunk, no time is
            estimated from first chunks alone (compiling dominates them: the ETA reads "?"
            until a second chunk is measured); with one chunk per pack they are all there is.
    """

    def __init__(self, costs: Mapping[int, float], epochs: int,
                 programs: Mapping[int, Hashable] | None = None, chunk_epochs: int = 0):
        self.costs, self.epochs = dict(costs), epochs
        self.from_first = not 0 < chunk_epochs < epochs
        self.programs = dict(programs or {p: p for p in costs})
        self.left = {p: epochs for p in costs}
        self.steady: dict[int, list[float]] = {}  # pack -> [seconds, epochs] after the first
        self.first: dict[int, tuple[float, int]] = {}  # pack -> first chunk (build + compile)
        self.compiled: set[Hashable] = set()

    def resumed(self, pack_id: int, epochs_done: int) -> None:
        """The pack has `epochs_done` epochs already (a checkpoint, or done earlier)."""
        self.left[pack_id] = self.epochs - epochs_done

    def chunk(self, pack_id: int, epochs: int, seconds: float, first: bool) -> None:
        """A chunk of `epochs` took `seconds`; the `first` of a pack includes building it and
        compiling."""
        self.left[pack_id] = max(self.left[pack_id] - epochs, 0)
        if first:
            self.first[pack_id] = (seconds, epochs)
            self.compiled.add(self.programs[pack_id])
        else:
            s = self.steady.setdefault(pack_id, [0.0, 0])
            s[0] += seconds
            s[1] += epochs

    def _unit_seconds(self) -> float | None:
        """Seconds per unit of cost, from the chunks after the first (else the first ones)."""
        sources = [self.steady] + ([dict(self.first)] if self.from_first else [])
        for source in sources:
            seconds = sum(v[0] for v in source.values())
            units = sum(v[1] * self.costs[p] for p, v in source.items())
            if units > 0 and seconds > 0:
                return seconds / units
        return None

    def epoch_seconds(self, pack_id: int) -> float | None:
        """Seconds per epoch of a pack: measured when it ran a chunk after its first."""
        s = self.steady.get(pack_id)
        if s and s[1]:
            return s[0] / s[1]
        unit = self._unit_seconds()
        return None if unit is None else unit * self.costs[pack_id]

    def _compile_seconds(self) -> float:
        """Mean measured overhead of a first chunk over its epochs at the steady rate."""
        extra = [max(sec - n * self.steady[p][0] / self.steady[p][1], 0.0)
                 for p, (sec, n) in self.first.items() if self.steady.get(p, [0, 0])[1]]
        return sum(extra) / len(extra) if extra else 0.0

    def seconds_left(self) -> float | None:
        """Seconds until every pack of the run is trained; None before any measurement."""
        if self._unit_seconds() is None:
            return None
        total, pending = 0.0, set()
        for p, left in self.left.items():
            if left > 0:
                total += left * self.epoch_seconds(p)
                if self.programs[p] not in self.compiled:
                    pending.add(self.programs[p])
        return total + len(pending) * self._compile_seconds()


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (a notebook's bar is a widget)."""
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell is not None else None
    except Exception:  # noqa: BLE001 - any failure means: not a notebook
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _columns() -> int:
    """The width stderr's terminal reports (0 when it reports none or is not a terminal)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


class ProgressDisplay:
    """`progress(Progress)` and `log(str)` hooks that show a sweep to a person.

    Args:
        mode: "bar" (a bar per pack: tqdm, a widget in a notebook), "log" (one line per chunk)
            or "none"; "auto" is "bar" in a notebook or when stderr is a terminal, else "log".
        log: where log lines and messages go when no bar is shown (default: stderr).
    """

    def __init__(self, mode: str = "auto", log: Callable[[str], None] | None = None):
        if mode not in ("auto", "bar", "log", "none"):
            raise ValueError(f"mode={mode!r}: use 'auto', 'bar', 'log' or 'none'.")
        self._notebook = in_notebook()
        if mode == "auto":
            mode = "bar" if self._notebook or sys.stderr.isatty() else "log"
        self.mode = mode
        self._log = _stderr if log is None else log
        self._bar = None
        self._pack = None

    def log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            self._log(message)

    def __call__(self, p: Progress) -> None:
        if self.mode == "none":
            return
        if p.phase == "skip":
            self.log(f"{p.count} pack {p.pack_id}: done in an earlier run, skipped")
            return
        if self.mode == "log":
            if p.phase == "compile":
                self._log(f"{_head(p, 'width<=', 'members')}: building it and compiling (the "
                          "first chunk waits for it) ...")
            elif p.phase == "train":
                self._log(line(p))
            return
        self._bar_update(p)

    def _bar_update(self, p: Progress) -> None:
        if self._pack != p.pack_id:
            self.close()
            if self._notebook:
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm
            self._pack = p.pack_id
            # A terminal that reports no size (0 x 0: `script` from a non-terminal, some container
            # ttys) would get no bar at all (tqdm hides bars below the screen's 0 rows): 80 x 24.
            size = {"dynamic_ncols": True} if _columns() > 0 else {"ncols": 80, "nrows": 24}
            self._bar = tqdm(total=p.epochs, initial=p.epoch, desc=_head(p, "w≤", "m"),
                             unit="epoch", file=sys.stderr, leave=True, **size,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                        "epochs [{elapsed}{postfix}]")
        bar = self._bar
        if p.phase == "compile":
            bar.set_postfix_str("building and compiling ...", refresh=False)
        elif p.phase == "train":
            bar.set_postfix_str(_short_rates(p), refresh=False)
        if p.epoch < bar.n:  # resumed from a checkpoint older than the status file's count
            bar.n = p.epoch
        bar.update(p.epoch - bar.n)
        bar.refresh()
        if p.phase == "done":
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.refresh()
            self._bar.close()
            self._bar = None
            self._pack = None


def _head(p: Progress, width: str, members: str) -> str:
    return f"{p.count} pack {p.pack_id} ({width} {p.padded_width}, {p.num_members} {members})"


def _rates(p: Progress) -> str:
    eta = "?" if p.seconds_left is None else fmt_time(p.seconds_left)
    rate = (f"{fmt_rate(p.pack_epochs_per_second)} epochs/s = "
            f"{fmt_rate(p.pack_epochs_per_second * p.num_members)} member-epochs/s"
            + (" (first chunk, compiling included)" if p.first_chunk else ""))
    return f"{rate} | ETA {eta}"


def _short_rates(p: Progress) -> str:
    eta = "?" if p.seconds_left is None else fmt_time(p.seconds_left)
    if p.first_chunk:
        return f"compiled, ETA {eta}"
    return (f"{fmt_rate(p.pack_epochs_per_second)} epochs/s, "
            f"{fmt_rate(p.pack_epochs_per_second * p.num_members)} member-epochs/s, ETA {eta}")


def line(p: Progress) -> str:
    """The one-line form of a training event."""
    return f"{_head(p, 'width<=', 'members')} epoch {p.epoch}/{p.epochs} | {_rates(p)}"
