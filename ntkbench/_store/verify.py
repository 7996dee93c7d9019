"""Checking a sweep's stored results: every committed value present and readable.

A chunk file of the results store holds one member's series of one variable. After a crash, a
disk problem or a careless `rm`, a chunk can be missing (it then reads as fill values, which look
like "not recorded") or undecodable. `find_damage` lists such chunks for the members a sweep has
committed; `repair` (run by every `ntkbench run` before training) moves undecodable files aside,
and sends exactly the packs that own damaged members back to training from epoch 0: their
missing chunks are rewritten, and everything still stored is checked bit for bit as it is
rewritten.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence

from ntkbench._config import Group, SweepConfig, group_of
from ntkbench._store.store import ResultsStore
from ntkbench._train import Pack
from ntkbench._workdir import Workdir


@dataclasses.dataclass(frozen=True)
class Damage:
    name: str  # the variable
    index: tuple[int, ...]  # the member's grid index
    reason: str  # "missing" or "undecodable: ..."
    path: str  # the chunk file


def _chunk_keys(store: ResultsStore, name: str, index: tuple[int, ...]) -> list[str]:
    """The chunk files of one member's values of `name` (several for snapshots)."""
    arr = store.arrays[name]
    extra = arr.rank - len(index)
    if group_of(name) is Group.SNAPSHOT:
        return ["c/" + "/".join(map(str, index + (k, 0, 0))) for k in range(arr.shape[-3])]
    return ["c/" + "/".join(map(str, index + (0,) * extra))]


def _member_state(store: ResultsStore, packs: Sequence[Pack]) -> dict[tuple, int]:
    """`last_record` of every member of these packs (-1 where nothing is committed)."""
    out = {}
    arr = store.arrays["last_record"].read().result()
    for p in packs:
        for m in p.members:
            out[m.index] = int(arr[m.index])
    return out


def find_damage(wd: Workdir, store: ResultsStore, config: SweepConfig,
                packs: Sequence[Pack]) -> list[Damage]:
    """Missing or undecodable chunks of the values these packs have committed.

    A pack marked done whose members are not all committed to the last record counts as damaged
    too (its `last_record` chunks were lost).
    """
    last = _member_state(store, packs)
    damage = []
    done_packs = {p.pack_id for p in packs if wd.read_status(p.pack_id).get("status") == "done"}
    for p in packs:
        for m in p.members:
            if p.pack_id in done_packs and last[m.index] < config.epochs:
                damage.append(Damage("last_record", m.index, "missing",
                                     os.path.join(store.root, "last_record")))
    for name, arr in store.arrays.items():
        if name == "last_record":
            continue
        root = os.path.join(store.root, name)
        present = {k.decode() for k in arr.kvstore.list().result()}
        group = group_of(name)
        at_end = group in (Group.BEST, Group.MEMBER, Group.SNAPSHOT)
        for p in packs:
            for m in p.members:
                need = last[m.index] >= (config.epochs if at_end else 0)
                if group is Group.SNAPSHOT and last[m.index] >= 0 and not need:
                    keys = _chunk_keys(store, name, m.index)[:1]  # the init snapshot only
                elif need:
                    keys = _chunk_keys(store, name, m.index)
                else:
                    continue
                for key in keys:
                    path = os.path.join(root, key)
                    if key not in present:
                        damage.append(Damage(name, m.index, "missing", path))
                        continue
                    try:
                        arr[m.index].read().result()
                    except ValueError as e:
                        damage.append(Damage(name, m.index, f"undecodable: {str(e)[:120]}",
                                             path))
    return damage


def repair(wd: Workdir, store: ResultsStore, config: SweepConfig, packs: Sequence[Pack], *,
           log: Callable[[str], None], primary: bool) -> list[int]:
    """Send the packs that own damaged values back to training; return their ids."""
    damage = find_damage(wd, store, config, packs)
    if not damage:
        return []
    members = {d.index for d in damage}
    affected = [p for p in packs if any(m.index in members for m in p.members)]
    store.missing |= {(d.name, d.index) for d in damage}
    if primary:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for d in damage:
            if d.reason.startswith("undecodable") and os.path.exists(d.path):
                dest = os.path.join(store.root, ".damaged", stamp, d.name,
                                    os.path.relpath(d.path, os.path.join(store.root, d.name)))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.move(d.path, dest)
        for p in affected:
            ckpt = wd.checkpoints(p.pack_id)
            if os.path.exists(ckpt):
                shutil.move(ckpt, f"{ckpt}.damaged-{stamp}")
            wd.write_status(p.pack_id, status="pending", epochs_done=0, repaired=time.time())
    names = sorted({d.name for d in damage})
    log(f"results damaged: {len(damage)} chunk(s) of {', '.join(names[:6])} for "
        f"{len(members)} member(s) are missing or unreadable; retraining pack(s) "
        f"{', '.join(str(p.pack_id) for p in affected)} from epoch 0 to rewrite them (what is "
        "still stored is checked as it is rewritten)")
    return [p.pack_id for p in affected]


def describe(damage: Sequence[Damage], packs: Sequence[Pack]) -> str:
    """A short listing of damaged values for `ntkbench verify`."""
    by_pack: dict[int, int] = {}
    for p in packs:
        count = sum(1 for d in damage if d.index in {m.index for m in p.members})
        if count:
            by_pack[p.pack_id] = count
    names = sorted({d.name for d in damage})
    first = damage[0]
    return (f"{len(damage)} damaged chunk(s) in pack(s) "
            f"{', '.join(f'{k} ({v})' for k, v in by_pack.items())}: variables "
            f"{', '.join(names[:8])}; e.g. {first.path} is {first.reason}")

