"""Progress of `ntkbench run` for a person: a live bar per pack on a terminal, log lines else.

On a terminal (stderr is a TTY) each pack gets a tqdm bar over its epochs, with the sweep's
overall member-epoch rate and ETA beside it. Elsewhere (CI, SLURM logs) every chunk prints one
line: `pack P/N (width<= W, M members) epoch E/T | R member-epochs/s | ETA h:mm:ss`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm

import ntkbench


def fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _rate(r: float) -> str:
    """Three significant digits for slow sweeps (0.304), thousands separators for fast ones."""
    return f"{r:,.0f}" if r >= 100 else f"{r:.3g}"


def line(p: ntkbench.Progress) -> str:
    """The one-line form of a progress event."""
    left = p.member_epochs_total - p.member_epochs_done
    eta = fmt_time(left / p.rate) if p.rate > 0 else "?"
    return (f"pack {p.pack_index + 1}/{p.num_packs} (width<= {p.padded_width}, "
            f"{p.num_members} members) epoch {p.epoch}/{p.epochs} | {_rate(p.rate)} "
            f"member-epochs/s | ETA {eta}")


class ProgressDisplay:
    """`progress(Progress)` and `log(str)` hooks for a sweep.

    Args:
        mode: "bar" (a tqdm bar per pack), "log" (one line per chunk) or "none"; "auto" is
            "bar" when stderr is a terminal, else "log".
        log: where log-mode lines and messages go (absl logging in the CLI).
    """

    def __init__(self, mode: str = "auto", log: Callable[[str], None] = print):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self._log = log
        self._bar = None
        self._pack = None

    def log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            self._log(message)

    def __call__(self, p: ntkbench.Progress) -> None:
        if self.mode == "none":
            return
        if self.mode == "log":
            if p.phase == "train":
                self._log(line(p))
            elif p.phase == "skip":
                self._log(f"pack {p.pack_id}: done in an earlier run, skipped")
            return
        self._bar_update(p)

    def _bar_update(self, p: ntkbench.Progress) -> None:
        if self._pack != p.pack_id:
            self.close()
            self._pack = p.pack_id
            self._bar = tqdm(total=p.epochs, desc=f"pack {p.pack_index + 1}/{p.num_packs} "
                             f"(w<={p.padded_width}, {p.num_members} m)", unit="epoch",
                             file=sys.stderr, leave=True, dynamic_ncols=True)
        left = p.member_epochs_total - p.member_epochs_done
        self._bar.n = p.epoch
        self._bar.set_postfix_str(f"{p.rate:,.0f} m-ep/s, sweep ETA "
                                  f"{fmt_time(left / p.rate) if p.rate > 0 else '?'}")
        if p.phase in ("done", "skip"):
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.refresh()
            self._bar.close()
            self._bar = None
