"""Where a sweep stands, read from its workdir's files alone (no JAX, no results store).

`sweep_status(workdir)` is what `ntkbench status` prints: every pack's status, epochs done,
rate, and the age of its last checkpoint. A pack marked running while no process holds the
workdir was interrupted (e.g. killed); a pack whose damaged results a run is rewriting (its
status file holds a repair record) is "repairing" until it is done again.
"""

from __future__ import annotations

import dataclasses
import time

from ntkbench._config import WorkdirError
from ntkbench._workdir.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class PackStatus:
    """One pack of a sweep, as its status file says.

    Attributes:
        pack_id: the pack's id in the manifest's plan.
        status: "pending", "running", "interrupted", "repairing" or "done" ("running" only
            while a process holds the workdir; "repairing": a run found its stored results
            damaged and retrains it to rewrite them, `ntkbench verify` lists what).
        num_members: members of the pack.
        padded_width: the width its members are padded to.
        epochs_done: epochs trained (a resumed pack counts from its checkpoint).
        rate: member-epochs per second while it trained (None before its first chunk).
        seconds_left: at that rate (None when unknown or done).
        last_checkpoint_age: seconds since its last checkpoint (None: none, or done).
    """

    pack_id: int
    status: str
    num_members: int
    padded_width: int
    epochs_done: int
    rate: float | None
    seconds_left: float | None
    last_checkpoint_age: float | None


@dataclasses.dataclass(frozen=True)
class SweepStatus:
    """A sweep's packs and what is left (`ntkbench.sweep_status`)."""

    workdir: str
    name: str
    epochs: int
    locked: bool | None  # a process holds the workdir now; None: `.lock` is unreadable
    packs: tuple[PackStatus, ...]

    @property
    def member_epochs_left(self) -> int:
        return sum(p.num_members * (self.epochs - p.epochs_done) for p in self.packs
                   if p.status != "done")

    @property
    def stale(self) -> bool:
        """Packs were running when their process died: rerun the same `ntkbench run`."""
        return any(p.status == "interrupted" for p in self.packs)


def sweep_status(workdir: str) -> SweepStatus:
    """Where the sweep in `workdir` stands, from its manifest and pack status files.

    Example:
        >>> st = ntkbench.sweep_status("runs/quick")  # doctest: +SKIP
        >>> [p.status for p in st.packs]  # doctest: +SKIP
        ['done', 'done', 'running']

    Raises:
        WorkdirError: `workdir` holds no ntkbench sweep.
    """
    wd = Workdir(workdir)
    manifest = wd.read_manifest()
    if manifest is None:
        raise WorkdirError(f"{workdir!r} holds no ntkbench sweep; pass the --workdir of a "
                           "sweep started with `ntkbench run`.")
    epochs = manifest["config"]["epochs"]
    now, locked = time.time(), wd.is_locked()
    packs = []
    for p in manifest["packs"]:
        st = wd.read_status(p["pack_id"])
        status = st.get("status", "pending")
        if status == "running" and locked is False:
            status = "interrupted"
        if st.get("repair") and status != "done":
            status = "repairing"
        done, members = st.get("epochs_done", 0), len(p["members"])
        rate = left = None
        if st.get("started") and done and status != "done":
            rate = members * done / max(st.get("updated", now) - st["started"], 1e-9)
            left = members * (epochs - done) / rate
        ck = st.get("last_checkpoint_time")
        packs.append(PackStatus(p["pack_id"], status, members, p["padded_width"], done, rate,
                                left, now - ck if ck and status != "done" else None))
    return SweepStatus(wd.path, manifest["config"].get("name", ""), epochs, locked,
                       tuple(packs))
