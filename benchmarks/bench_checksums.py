"""What the results' CRC32C checksums cost, on writing and on `ntkbench verify`, against a sweep.

In one process: a real sweep (`quick`'s grid, its NTK records and snapshots, a few epochs) is
timed; then its store's write stream (every member's records chunk by chunk, the per-member
values and the three snapshots, each committed) is replayed into fresh stores with and without
the `crc32c` codec, and `ntkbench.verify` is timed on the sweep's workdir and on a copy whose
arrays were rewritten without checksums (as an older ntkbench wrote them; `verify` then decodes
them with zarr-python too, as `ntkbench.load` does). Every timing is the fastest of
`--repeats`. docs/results.md quotes a run.

    python benchmarks/bench_checksums.py [--epochs=30] [--repeats=3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import tensorstore as ts

import ntkbench
from ntkbench._config import Group, group_of
from ntkbench._store import ResultsStore
from ntkbench._store import store as store_module
from ntkbench._train import packs_from_json


def _replay(config, packs, root: str, num_classes: int) -> float:
    """Seconds to write a sweep's results the way its packs write them."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    store = ResultsStore(root, config, num_classes)
    per_record = [n for n in store.arrays if group_of(n) in (Group.EPOCH, Group.NTK)]
    per_member = [n for n in store.arrays if group_of(n) is Group.BEST] + ["min_test_loss"]
    m = config.n_test * num_classes
    for p in packs:
        ids = [mb.index for mb in p.members]
        k = len(ids)
        for first in range(0, config.epochs, config.chunk_epochs):
            t = min(config.chunk_epochs, config.epochs - first)
            store.write_records(ids, first, {n: rng.normal(size=(t, k)) for n in per_record})
            store.commit(ids, first + t - 1, np.zeros(k, bool))
        store.write_records(ids, config.epochs, {n: rng.normal(size=(1, k)) for n in per_record})
        values = {n: rng.normal(size=k) for n in per_member}
        values["k_star"] = np.full(k, config.epochs // 2)
        store.write_members(ids, values, committed=[False] * k)
        for which in ("init", "best", "final"):
            store.write_snapshot(ids, which, rng.normal(size=(k, m, m)), committed=[False] * k)
        store.commit(ids, config.epochs, np.zeros(k, bool))
    return time.perf_counter() - start


def _strip_checksums(results: str) -> None:
    """Rewrite every array of a results store without the crc32c codec."""
    for name in sorted(os.listdir(results)):
        path = os.path.join(results, name)
        if not os.path.exists(os.path.join(path, "zarr.json")):
            continue
        values = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path}},
                         open=True).result().read().result()
        with open(os.path.join(path, "zarr.json")) as f:
            meta = json.load(f)
        meta["codecs"] = [c for c in meta["codecs"] if c["name"] != "crc32c"]
        for key in ("zarr_format", "node_type"):
            meta.pop(key)
        shutil.rmtree(path)
        arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path},
                       "metadata": meta, "store_data_equal_to_fill_value": True},
                      create=True).result()
        arr.write(values).result()


def _best(fn, repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = ntkbench.preset("quick", epochs=args.epochs, ntk_every=10, chunk_epochs=10)
    tmp = tempfile.mkdtemp(prefix="bench_checksums_")
    try:
        workdir = os.path.join(tmp, "sweep")
        t0 = time.perf_counter()
        ntkbench.run(config, workdir, hooks=ntkbench.Hooks(log=lambda s: None))
        sweep = time.perf_counter() - t0
        with open(os.path.join(workdir, "manifest.json")) as f:
            manifest = json.load(f)
        packs = packs_from_json(config, manifest["packs"])
        classes = manifest["data"]["num_classes"]
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
                   os.walk(os.path.join(workdir, "results")) for f in fs)

        def replay(codecs):
            def once():
                root = tempfile.mkdtemp(dir=tmp)
                saved, store_module.CODECS = store_module.CODECS, codecs
                try:
                    return _replay(config, packs, root, classes)
                finally:
                    store_module.CODECS = saved
                    shutil.rmtree(root)
            return once

        write_plain = _best(replay(store_module.LEGACY_CODECS), args.repeats)
        write_crc = _best(replay(store_module.CODECS), args.repeats)
        legacy = os.path.join(tmp, "legacy")
        shutil.copytree(workdir, legacy)
        _strip_checksums(os.path.join(legacy, "results"))
        verify_crc = _best(lambda: _timed(ntkbench.verify, workdir), args.repeats)
        verify_legacy = _best(lambda: _timed(ntkbench.verify, legacy), args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    members = config.num_members
    print(f"sweep: quick, {members} members, {config.epochs} epochs, NTK every 10 "
          f"(M = {config.n_test * classes}, snapshots on): {sweep:.1f} s; results "
          f"{size / 2**20:.1f} MiB")
    print(f"writing the results   without checksums {write_plain:6.2f} s   with "
          f"{write_crc:6.2f} s   checksums add {write_crc - write_plain:+.2f} s = "
          f"{(write_crc - write_plain) / sweep:+.2%} of the sweep")
    print(f"ntkbench verify       with checksums    {verify_crc:6.2f} s = "
          f"{verify_crc / sweep:.2%} of the sweep")
    print(f"ntkbench verify       older store (no checksums, two decoders) {verify_legacy:.2f} s = "
          f"{verify_legacy / sweep:.2%} of the sweep")


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    report = fn(*args)
    assert not report, report.describe()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
