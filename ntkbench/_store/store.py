"""The results store: a zarr v3 group written with Tensorstore (docs/results.md).

One array per stored variable (`ntkbench._config.schema`), each with the sweep axes first and chunks of
one member along them, so a member's series of one variable is one chunk file. Coordinate arrays
for every axis and `epoch` make the group open directly as an `xarray.Dataset`.

Crash safety: `last_record` of a member is written only after all its records up to that index
have been written, and readers mask everything past it. A rewrite of a committed record (a
resumed or restarted pack) must reproduce the same bits, or it is refused; `last_record` never
moves back. Chunk files found missing or undecodable (`ntkbench verify`) are rewritten by
retraining their packs without the bit check (there is nothing left to compare with).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence

import numpy as np
import tensorstore as ts

from ntkbench._config import (
    ATTRS,
    AXES,
    SNAPSHOTS,
    STORED_SUMMARIES,
    SUMMARY_SERIES,
    Group,
    IntegrityError,
    StorageError,
    SweepConfig,
    group_of,
    storage_error,
    stored_variables,
)
from ntkbench._train import members
from ntkbench._workdir import atomic_json, read_json

_FILL = {"float32": float("nan"), "int32": -1, "uint8": 0}
_DTYPE = {"diverged": "uint8", "last_record": "int32", "k_star": "int32"}


def _spec(path: str, shape, dims, dtype: str, fill, chunks) -> dict:
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": path},
        # Chunks equal to the fill value are stored too: a missing chunk file then always means
        # a lost one (`ntkbench verify`), never "all NaN" or "not diverged".
        "store_data_equal_to_fill_value": True,
        "metadata": {
            "shape": list(shape), "data_type": dtype, "dimension_names": list(dims),
            "fill_value": fill,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "zstd", "configuration": {"level": 3}}],
        },
    }


def _io(path: str, fn):
    """Run a Tensorstore operation; its failures become one-line ntkbench errors."""
    try:
        return fn()
    except (ValueError, OSError, RuntimeError) as e:
        text = str(e)
        if any(s in text for s in ("No space left", "Read-only", "Permission denied",
                                   "Not a directory")) or isinstance(e, OSError):
            raise storage_error(path, e) from None
        first = text.splitlines()[0] if text else type(e).__name__
        raise IntegrityError(f"The results file {path} cannot be read ({first[:160]}); run "
                             "`ntkbench verify` on the workdir to find and repair the damage."
                             ) from None


def set_attributes(path: str, name: str) -> None:
    """Give the array at `path` the CF attributes of the variable `name` (`ATTRS`: long_name,
    units, description) in its zarr.json, where xarray and zarr readers find them."""
    attrs = ATTRS.get(name)
    meta_path = os.path.join(path, "zarr.json")
    if attrs is None or not os.path.exists(meta_path):
        return
    meta = read_json(meta_path, "The results array's metadata")
    have = meta.get("attributes") or {}
    if any(have.get(k) != v for k, v in attrs.items()):
        meta["attributes"] = {**have, **attrs}
        try:
            atomic_json(meta_path, meta)
        except OSError as e:
            raise storage_error(meta_path, e) from None


def open_array(path: str) -> ts.TensorStore:
    """An existing zarr v3 array, with whatever shape its metadata holds."""
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path},
            "store_data_equal_to_fill_value": True}
    return _io(path, lambda: ts.open(spec, open=True).result())


class ResultsStore:
    """Creates or opens the results group of a sweep.

    Args:
        root: the `results` directory.
        config: the sweep (its grid, number of records and optional variables).
        num_classes: logits per example (the snapshot size is `n_test·num_classes`).
    """

    def __init__(self, root: str, config: SweepConfig, num_classes: int = 0):
        self.root = root
        self.config = config
        self.grid = config.grid_shape
        self.num_records = config.num_records
        self.missing: set[tuple[str, tuple[int, ...]]] = set()  # chunks to rewrite unchecked
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as e:
            raise storage_error(root, e) from None
        group = os.path.join(root, "zarr.json")
        attrs = {"ntkbench_fingerprint": config.fingerprint()}
        if not os.path.exists(group) or read_json(group, "The results group").get(
                "attributes") != attrs:
            atomic_json(group, {"zarr_format": 3, "node_type": "group", "attributes": attrs})
        self.arrays: dict[str, ts.TensorStore] = {}
        names = stored_variables(config, num_classes)
        ones = (1,) * len(AXES)
        e, m = self.num_records, config.n_test * num_classes
        layers = max(config.depth) + 1
        shapes = {Group.EPOCH: ((e,), ("epoch",)), Group.NTK: ((e,), ("epoch",)),
                  Group.LAYER: ((e, layers), ("epoch", "layer")), Group.BEST: ((), ()),
                  Group.MEMBER: ((), ()),
                  Group.SNAPSHOT: ((len(SNAPSHOTS), m, m), ("snapshot", "row", "col"))}
        for group_kind, group_names in names.items():
            extra, dims = shapes[group_kind]
            for name in group_names:
                dtype = _DTYPE.get(name, "float32")
                chunks = ones + ((1, m, m) if group_kind is Group.SNAPSHOT else extra)
                self.arrays[name] = self._open(name, self.grid + extra, AXES + dims, dtype,
                                               _FILL[dtype], chunks)
        coords = {a: np.asarray(v) for a, v in config.axis_values().items()}
        coords["epoch"] = np.arange(e)
        if names[Group.SNAPSHOT]:  # `snapshot` has no coordinate: its order is SNAPSHOTS
            coords["row"] = coords["col"] = np.arange(m)
        for name, values in coords.items():
            self._write_coord(name, values)
        self._write_settings()
        self._drop_stale_summaries()

    def _drop_stale_summaries(self) -> None:
        """The stored summaries of a grid this sweep has grown out of (an extension): removed
        (they are written again when the grown sweep is complete; until then the group still
        opens as one `xarray.Dataset`)."""
        for name in STORED_SUMMARIES:
            meta = os.path.join(self.root, name, "zarr.json")
            if os.path.exists(meta) and tuple(read_json(meta, "The results array's metadata")
                                              .get("shape", ())[:len(AXES)]) != self.grid:
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def write_summaries(self, ds) -> None:
        """Store the summaries of a complete sweep (`ds`: `ntkbench.load`'s, summarized), each
        as one chunk over the sweep axes in storage order (and `epoch` for a series), with its
        attributes; derived values, rewritten whole each time."""
        coords = {a: np.asarray(v) for a, v in self.config.axis_values().items()}
        for name in STORED_SUMMARIES:
            if name not in ds:
                continue
            da = ds[name].sel({a: coords[a] for a in AXES}).transpose(*AXES, ...)
            values = np.asarray(da.values)
            dtype, fill = (("bool", False) if values.dtype == bool
                           else ("float64", float("nan")))
            values = values.astype(dtype)
            dims = AXES + (("epoch",) if name in SUMMARY_SERIES else ())
            path = self._path(name)
            spec = _spec(path, values.shape, dims, dtype, fill, values.shape)
            arr = _io(path, lambda s=spec: ts.open(s, create=True, delete_existing=True).result())
            _io(path, lambda a=arr, v=values: a.write(v).result())
            set_attributes(path, name)

    def _write_settings(self) -> None:
        """The `SETTING` variables (each member's learning rate), a function of the config:
        (re)written whole at every opening, one chunk, so they always match the manifest."""
        values = np.asarray([self.config.lr_of(m) for m in members(self.config)],
                            np.float32).reshape(self.grid)
        path = os.path.join(self.root, "lr")
        try:
            if np.array_equal(open_array(path).read().result(), values):
                set_attributes(path, "lr")
                return
        except (ValueError, OSError, RuntimeError):
            pass  # missing, damaged or of another shape: written anew
        spec = _spec(path, self.grid, AXES, "float32", _FILL["float32"], self.grid)
        arr = _io(path, lambda: ts.open(spec, create=True, delete_existing=True).result())
        _io(path, lambda: arr.write(values).result())
        set_attributes(path, "lr")

    def _open(self, name, shape, dims, dtype, fill, chunks) -> ts.TensorStore:
        """Create the array, or open it, growing it to `shape` for an extended sweep.

        Growing rewrites only the array's metadata (chunks are 1 along the sweep axes), so no
        stored record is touched; an array never shrinks.
        """
        path = os.path.join(self.root, name)
        if not os.path.exists(os.path.join(path, "zarr.json")):
            arr = _io(path, lambda: ts.open(_spec(path, shape, dims, dtype, fill, chunks),
                                            create=True, open=True).result())
            set_attributes(path, name)
            return arr
        arr = open_array(path)
        have, labels = tuple(arr.shape), tuple(arr.domain.labels)
        if (labels != tuple(dims) or arr.dtype.name != dtype or len(have) != len(shape)
                or any(h > n for h, n in zip(have, shape))):
            raise IntegrityError(
                f"The results array {path} has dimensions {labels} {have} {arr.dtype.name} but "
                f"this sweep needs {tuple(dims)} {tuple(shape)} {dtype}; the store belongs to "
                "another sweep or ntkbench version. Use a new workdir.")
        if have != tuple(shape):
            arr = _io(path, lambda: arr.resize(exclusive_max=list(shape), expand_only=True,
                                               resize_metadata_only=True).result())
        set_attributes(path, name)
        return arr

    def _write_coord(self, name: str, values: np.ndarray) -> None:
        path = os.path.join(self.root, name)
        dtype, fill = ("float64", 0.0) if values.dtype.kind == "f" else ("int64", 0)
        values = values.astype(dtype)
        if not os.path.exists(os.path.join(path, "zarr.json")):
            arr = _io(path, lambda: ts.open(_spec(path, values.shape, (name,), dtype, fill,
                                                  values.shape), create=True, open=True).result())
            _io(path, lambda: arr.write(values).result())
            set_attributes(path, name)
            return
        arr = open_array(path)
        have = _io(path, lambda: arr.read().result())
        n = len(have)
        same = have == values[:n] if n <= len(values) else np.zeros(n, bool)
        k = n if same.all() else int(np.argmin(same))  # leading entries that agree
        # An extension appends values; a crash between growing and writing leaves fill values
        # after them, which are written now. Anything else is another sweep's.
        if n > len(values) or np.any(have[k:] != fill):
            raise IntegrityError(f"The coordinate {name} in {self.root} is {have.tolist()} but "
                                 f"this sweep has {values.tolist()}; the store belongs to "
                                 "another sweep. Use a new workdir.")
        if n < len(values):
            arr = _io(path, lambda: arr.resize(exclusive_max=[len(values)], expand_only=True,
                                               resize_metadata_only=True).result())
        if k < len(values):
            _io(path, lambda: arr[k:].write(values[k:]).result())
        set_attributes(path, name)

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    # ------------------------------------------------------------------ writing
    def last_record(self, index: tuple[int, ...]) -> int:
        arr = self.arrays["last_record"]
        return int(_io(self._path("last_record"), lambda: arr[index].read().result()))

    def _check(self, name, index, target, new, committed: bool) -> None:
        """Refuse to change committed values (a resumed run must reproduce them)."""
        if not committed or (name, index) in self.missing:
            return
        old = _io(self._path(name), lambda: target.read().result())
        if not np.array_equal(old, new, equal_nan=True):
            raise IntegrityError(
                f"Refusing to overwrite committed values of {name} at {index} with different "
                "ones; the run is not reproducing its earlier results (another machine, device "
                "count or ntkbench version?). Finish it where it started, or use a new workdir.")

    def _write_all(self, futures) -> None:
        for path, f in futures:
            _io(path, f.result)

    def write_records(self, member_indices: Sequence[tuple[int, ...]], start: int,
                      values: Mapping[str, np.ndarray]) -> None:
        """Write records `start .. start + T - 1` of the given members.

        Args:
            member_indices: grid index of each member, in pack order (length m).
            start: first record index.
            values: name -> array `(T, m)`, or `(T, m, L)` for per-layer records.
        """
        done = [self.last_record(index) for index in member_indices]
        futures = []
        for name, arr in values.items():
            arr = np.asarray(arr, np.float32)
            t = arr.shape[0]
            extra = (slice(0, arr.shape[2]),) if arr.ndim == 3 else ()
            for j, index in enumerate(member_indices):
                if done[j] >= start:
                    n = min(done[j] - start + 1, t)
                    view = self.arrays[name][index + (slice(start, start + n),) + extra]
                    self._check(name, index, view, arr[:n, j], True)
                target = self.arrays[name][index + (slice(start, start + t),) + extra]
                futures.append((self._path(name), target.write(arr[:, j])))
        self._write_all(futures)

    def write_members(self, member_indices, values: Mapping[str, np.ndarray], *,
                      committed: Sequence[bool]) -> None:
        """Per-member values (`BEST`, `MEMBER` groups, snapshots `(m, S?, M, M)`): name ->
        array with the member axis first. Values of `committed` members are checked, not
        changed."""
        futures = []
        for name, arr in values.items():
            dtype = self.arrays[name].dtype.numpy_dtype
            arr = np.asarray(arr).astype(dtype)
            for j, index in enumerate(member_indices):
                target = self.arrays[name][index]
                self._check(name, index, target, arr[j], committed[j])
                futures.append((self._path(name), target.write(arr[j])))
        self._write_all(futures)

    def write_snapshot(self, member_indices, which: str, matrices: np.ndarray, *,
                       committed: Sequence[bool]) -> None:
        k = SNAPSHOTS.index(which)
        futures = []
        for j, index in enumerate(member_indices):
            target = self.arrays["ntk_snapshot"][index + (k,)]
            new = np.asarray(matrices[j], np.float32)
            self._check("ntk_snapshot", index, target, new, committed[j])
            futures.append((self._path("ntk_snapshot"), target.write(new)))
        self._write_all(futures)

    def commit(self, member_indices, last_record: int, diverged: np.ndarray | None = None
               ) -> None:
        """Mark records `0..last_record` of these members complete (after their writes); a
        member's committed record never moves back."""
        futures = []
        if diverged is not None:
            for j, index in enumerate(member_indices):
                futures.append((self.root, self.arrays["diverged"][index].write(
                    np.uint8(bool(diverged[j])))))
        self._write_all(futures)
        futures = [(self.root, self.arrays["last_record"][index].write(
            np.int32(max(last_record, self.last_record(index))))) for index in member_indices]
        self._write_all(futures)


def check_writable(root: str) -> None:
    """Fail early with one line when the store cannot be written."""
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise storage_error(root, e) from None
    if not os.access(root, os.W_OK):
        raise StorageError(f"Cannot write {root}: permission denied; choose a writable workdir.")


def read_dataset(root: str, *, snapshots: bool = False):
    """The stored results as an `xarray.Dataset`, every uncommitted value masked (NaN).

    Records past a member's `last_record` read NaN; the per-member values written when a pack
    ends (`k_star`, `min_test_loss`, `best_*`) read NaN (`k_star` -1) until the member is
    complete. Axes are sorted (an extended sweep stores added values after the old ones).
    `ntk_snapshot` stays lazy (index it before `.values` on big sweeps).
    """
    import xarray as xr

    if not os.path.exists(os.path.join(root, "zarr.json")):
        raise FileNotFoundError(root)
    ds = _io(root, lambda: xr.open_zarr(root, consolidated=False, zarr_format=3))
    # The stored summaries are derived (`write_summaries`); `ntkbench.load` computes them.
    ds = ds.drop_vars([n for n in STORED_SUMMARIES if n in ds.variables])
    snapshot = ds["ntk_snapshot"] if (snapshots and "ntk_snapshot" in ds) else None
    ds = _io(root, lambda: ds.drop_vars(["ntk_snapshot", "row", "col"], errors="ignore").load())
    last = ds["last_record"]
    complete = last >= ds.sizes["epoch"] - 1
    for name in list(ds.data_vars):
        group = group_of(name)
        if group in (Group.EPOCH, Group.NTK, Group.LAYER):
            ds[name] = ds[name].where(ds["epoch"] <= last)
        elif group is Group.BEST or name == "min_test_loss":
            ds[name] = ds[name].where(complete)
        elif name == "k_star":
            ds[name] = ds[name].where(complete, -1)
    ds["diverged"] = ds["diverged"].astype(bool)
    unsorted = [a for a in AXES if not ds.indexes[a].is_monotonic_increasing]
    if unsorted:
        ds = ds.sortby(unsorted)
        snapshot = None if snapshot is None else snapshot.sortby(unsorted)
    if snapshot is not None:
        ds["ntk_snapshot"] = snapshot.where(last >= 0)
    return ds
