"""Checking a sweep's stored results: every committed value present and readable.

A chunk file of the results store holds one member's series of one variable. After a crash, a
disk problem or a careless `rm`, a chunk can be missing (it then reads as fill values, which look
like "not recorded"), undecodable (its checksum or its compression fails: a flipped bit, appended
bytes, a truncation), or not a file at all. `find_damage` lists such chunks for the members a
sweep has committed, the metadata and coordinates a read-only opening found damaged, and the
chunks of an unfinished repair.

`repair` (run by every `ntkbench run` before training) records what it will rewrite in the
status file of every pack it sends back to training (`"repair"`: the chunks, and how far members
whose `last_record` chunk was lost had committed), moves undecodable files aside, and resets those
packs to epoch 0. Every process then loads the records (`load_repairs`): the lost chunks are
rewritten unchecked, whole, when their member's last record is computed, and everything still
stored is checked bit for bit as it is rewritten. The record is removed when the pack is done;
until then `find_damage` reports its chunks, so a crash during a repair is seen by
`ntkbench verify` and repaired again by the next run, and no committed value is lost.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence

from ntkbench._config import Group, SweepConfig, group_of, storage_error
from ntkbench._store.store import ResultsStore, chunk_files, move_aside
from ntkbench._train import Pack
from ntkbench._workdir import Workdir


@dataclasses.dataclass(frozen=True)
class Damage:
    name: str  # the variable (or coordinate, or "zarr.json" for the group)
    index: tuple[int, ...]  # the member's grid index; () for metadata and coordinates
    reason: str  # "missing", "undecodable: ...", "not a file", ...
    path: str  # the chunk file (or metadata file)
    committed: int = -1  # for a lost `last_record`: the record its pack vouches for


_DECODE_ERRORS = (ValueError, RuntimeError, OSError)


def _regions(store: ResultsStore, name: str, index: tuple[int, ...]) -> list[tuple[str, tuple]]:
    """`(chunk key, index of the chunk's region)` of one member's values of `name` (one per
    snapshot for snapshots)."""
    arr = store.arrays[name]
    extra = arr.rank - len(index)
    if group_of(name) is Group.SNAPSHOT:
        return [("c/" + "/".join(map(str, index + (k, 0, 0))), index + (k,))
                for k in range(arr.shape[-3])]
    return [("c/" + "/".join(map(str, index + (0,) * extra)), index)]


def _first_line(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:120]


def _decode_errors(store: ResultsStore, name: str, regions: Sequence[tuple[str, tuple]]
                   ) -> dict[str, str]:
    """Chunk keys among `regions` that cannot be decoded, with why: by Tensorstore (what `run`
    reads, checksums included) and, for arrays written without checksums, by zarr-python too
    (what `ntkbench.load` reads; it refuses trailing bytes that Tensorstore's zstd ignores)."""
    arr = store.arrays[name]
    errors: dict[str, str] = {}
    whole = group_of(name) is not Group.SNAPSHOT  # small: read at once, localize on failure
    try:
        if not whole:
            raise ValueError
        arr.read().result()
    except _DECODE_ERRORS:
        for key, region in regions:
            try:
                arr[region].read().result()
            except _DECODE_ERRORS as e:
                errors[key] = _first_line(e)
    if store.checksums.get(name, False):
        return errors
    import zarr

    try:
        z = zarr.open_array(os.path.join(store.root, name), mode="r")
    except Exception:  # noqa: BLE001 - unreadable metadata: listed at opening
        return errors
    try:
        if not whole:
            raise ValueError
        z[...]
    except Exception:  # noqa: BLE001 - zarr-python's codecs raise many kinds
        for key, region in regions:
            if key in errors:
                continue
            try:
                z[region]
            except Exception as e:  # noqa: BLE001
                errors[key] = _first_line(e)
    return errors


def _lost(path: str, key: str, present: set[str], errors: dict[str, str]) -> str | None:
    """Why the chunk `key` of the array at `path` is lost, or None when it is fine."""
    if key in errors:
        return f"undecodable: {errors[key]}"
    if key in present:
        return None
    full = os.path.join(path, key)
    if os.path.lexists(full) and not os.path.isfile(full):
        return "not a file"
    return "missing"


def find_damage(wd: Workdir, store: ResultsStore, config: SweepConfig,
                packs: Sequence[Pack]) -> list[Damage]:
    """Damaged stored values of these packs: lost chunks of committed values, the chunks of an
    unfinished repair, and damaged metadata or coordinates (read-only openings).

    A pack marked done whose members are not all committed to the last record counts as damaged
    too (its `last_record` chunks were lost).
    """
    last_epoch = config.epochs
    statuses = {p.pack_id: wd.read_status(p.pack_id) for p in packs}
    damage = [Damage(name, (), reason, path) for name, reason, path in store.damage]
    seen: set[tuple[str, tuple]] = set()

    def add(d: Damage) -> None:
        if (d.name, d.index) not in seen:
            seen.add((d.name, d.index))
            damage.append(d)

    for p in packs:
        record = statuses[p.pack_id].get("repair") or {}
        for name, index in record.get("chunks", []):
            if name in store.arrays:
                key = _regions(store, name, tuple(index))[0][0]
                add(Damage(name, tuple(index), "not rewritten yet: a repair of pack "
                           f"{p.pack_id} was interrupted", os.path.join(store.root, name, key)))
    # How far every member has committed: `last_record`, or what its pack vouches for when
    # that chunk was lost.
    path = os.path.join(store.root, "last_record")
    regions = [r for p in packs for m in p.members for r in _regions(store, "last_record",
                                                                      m.index)]
    present = set(chunk_files(path))
    errors = _decode_errors(store, "last_record", [r for r in regions if r[0] in present])
    arr = store.arrays["last_record"]
    try:
        stored = arr.read().result()
    except _DECODE_ERRORS:  # some chunk is undecodable: read the others one by one
        stored = None
    last: dict[tuple, int] = {}
    for p in packs:
        st = statuses[p.pack_id]
        done = st.get("status") == "done" and not st.get("repair")
        floors = (st.get("repair") or {}).get("floors", {})
        vouched = last_epoch if done else int(st.get("epochs_done", 0) or 0) - 1
        for m in p.members:
            key = _regions(store, "last_record", m.index)[0][0]
            why = _lost(path, key, present, errors)
            value = -1 if why else int(arr[m.index].read().result() if stored is None
                                       else stored[m.index])
            floor = max(vouched, int(floors.get(_member_key(m.index), -1)))
            if why and floor >= 0:
                add(Damage("last_record", m.index, why, os.path.join(path, key), floor))
                value = floor
            elif why and why != "missing":
                add(Damage("last_record", m.index, why, os.path.join(path, key)))
            elif done and value < last_epoch:
                add(Damage("last_record", m.index, f"at record {value} of {last_epoch} "
                           f"although pack {p.pack_id} is done", os.path.join(path, key),
                           last_epoch))
                value = last_epoch
            last[m.index] = value
    for name in store.arrays:
        if name == "last_record":
            continue
        root = os.path.join(store.root, name)
        group = group_of(name)
        at_end = group in (Group.BEST, Group.MEMBER, Group.SNAPSHOT)
        needed = []
        for p in packs:
            for m in p.members:
                need = last[m.index] >= (last_epoch if at_end else 0)
                if group is Group.SNAPSHOT and last[m.index] >= 0 and not need:
                    needed.append((m.index, _regions(store, name, m.index)[:1]))  # init only
                elif need:
                    needed.append((m.index, _regions(store, name, m.index)))
        if not needed:
            continue
        present = set(chunk_files(root))
        errors = _decode_errors(store, name, [r for _, rs in needed for r in rs
                                              if r[0] in present])
        for index, rs in needed:
            for key, _ in rs:
                why = _lost(root, key, present, errors)
                if why:
                    add(Damage(name, index, why, os.path.join(root, key)))
    return damage


def _member_key(index: Sequence[int]) -> str:
    return ",".join(map(str, index))


def repair(wd: Workdir, store: ResultsStore, config: SweepConfig, packs: Sequence[Pack], *,
           log: Callable[[str], None]) -> list[int]:
    """Send the packs that own damaged values back to training (process 0 only); return their
    ids. What they must rewrite is recorded in their status files first (`load_repairs` reads
    it on every process)."""
    damage = [d for d in find_damage(wd, store, config, packs) if d.index]
    if not damage:
        return []
    members = {d.index for d in damage}
    affected = [p for p in packs if any(m.index in members for m in p.members)]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for p in affected:  # first the durable record, then anything is moved
        mine = {m.index for m in p.members}
        st = wd.read_status(p.pack_id)
        record = st.get("repair") or {}
        chunks = {(name, tuple(index)) for name, index in record.get("chunks", [])}
        chunks |= {(d.name, d.index) for d in damage if d.index in mine}
        floors = dict(record.get("floors", {}))
        for d in damage:
            if d.index in mine and d.name == "last_record" and d.committed >= 0:
                key = _member_key(d.index)
                floors[key] = max(d.committed, int(floors.get(key, -1)))
        wd.write_status(p.pack_id, status="pending", epochs_done=0, repaired=time.time(),
                        repair={"chunks": sorted([n, list(i)] for n, i in chunks),
                                "floors": floors, "since": record.get("since", time.time())})
    for d in damage:
        if d.reason.startswith(("undecodable", "not a file")) and os.path.lexists(d.path):
            move_aside(store.root, d.path, stamp)
    for p in affected:
        ckpt = wd.checkpoints(p.pack_id)
        if os.path.exists(ckpt):
            try:
                shutil.move(ckpt, f"{ckpt}.damaged-{stamp}")
            except OSError as e:
                raise storage_error(ckpt, e) from None
    names = sorted({d.name for d in damage})
    log(f"results damaged: {len(damage)} chunk(s) of {', '.join(names[:6])} for "
        f"{len(members)} member(s) are missing or unreadable; retraining pack(s) "
        f"{', '.join(str(p.pack_id) for p in affected)} from epoch 0 to rewrite them (what is "
        "still stored is checked as it is rewritten)")
    return [p.pack_id for p in affected]


def load_repairs(wd: Workdir, store: ResultsStore, packs: Sequence[Pack]) -> list[int]:
    """Load the repair records of these packs into `store`: their lost chunks are rewritten
    unchecked (held until complete), and members whose `last_record` was lost count as
    committed as far as their pack vouched. Returns the ids of the packs under repair."""
    ids = []
    for p in packs:
        record = wd.read_status(p.pack_id).get("repair")
        if not record:
            continue
        ids.append(p.pack_id)
        store.missing |= {(name, tuple(index)) for name, index in record.get("chunks", [])}
        for m in p.members:
            floor = int(record.get("floors", {}).get(_member_key(m.index), -1))
            if floor >= 0:
                store.floor[m.index] = max(floor, store.floor.get(m.index, -1))
    return ids


def describe(damage: Sequence[Damage], packs: Sequence[Pack]) -> str:
    """A short listing of damaged values for `ntkbench verify`."""
    by_pack: dict[int, int] = {}
    for p in packs:
        count = sum(1 for d in damage if d.index in {m.index for m in p.members})
        if count:
            by_pack[p.pack_id] = count
    names = sorted({d.name for d in damage})
    first = damage[0]
    where = [f"{len(damage)} damaged chunk(s) or file(s)"]
    if by_pack:
        where.append(f"in pack(s) {', '.join(f'{k} ({v})' for k, v in by_pack.items())}")
    meta = [d.name for d in damage if not d.index]
    if meta:
        where.append(f"{'and ' if by_pack else ''}in the metadata or coordinates of "
                     f"{', '.join(meta[:6])} (rebuilt from the manifest)")
    return (f"{' '.join(where)}: variables {', '.join(names[:8])}; e.g. {first.path} is "
            f"{first.reason}")
