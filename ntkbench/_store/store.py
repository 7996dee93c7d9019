"""The results store: a zarr v3 group written with Tensorstore (docs/results.md).

One array per stored variable (`ntkbench._config.schema`), each with the sweep axes first and chunks of
one member along them, so a member's series of one variable is one chunk file. Coordinate arrays
for every axis and `epoch` make the group open directly as an `xarray.Dataset`.

Crash safety: `last_record` of a member is written only after all its records up to that index
have been written, and readers mask everything past it. A rewrite of a committed record (a
resumed or restarted pack) must reproduce the same bits, or it is refused; `last_record` never
moves back. Chunk files found missing or undecodable (`ntkbench verify`) are rewritten by
retraining their packs without the bit check (there is nothing left to compare with); such a
chunk is held in memory and written once, whole, when its member's last record is computed, so
a crash during the repair leaves it missing (and found again), never half written.

Integrity: every chunk ends with a CRC32C checksum (the zarr v3 `crc32c` codec, after zstd), so a
flipped bit, appended bytes or a truncation make it undecodable rather than silently different.
Stores written before the checksums keep their codecs and still load (their arrays are checked by
decoding alone). Metadata (`zarr.json`), coordinates and the `lr` settings are functions of the
manifest: a run rebuilds them when they are damaged.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorstore as ts
import zarr

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
from ntkbench._workdir import atomic_json, read_json

_FILL = {"float32": float("nan"), "int32": -1, "uint8": 0}
_DTYPE = {"diverged": "uint8", "last_record": "int32", "k_star": "int32"}
#: Chunk codecs: little-endian bytes, zstd, and a CRC32C checksum of the compressed bytes (it
#: covers every byte of the file: flipped bits, appended garbage and truncation all fail it).
CODECS = ({"name": "bytes", "configuration": {"endian": "little"}},
          {"name": "zstd", "configuration": {"level": 3}},
          {"name": "crc32c"})
#: The codecs of stores written before the checksums (still read, never written anew).
LEGACY_CODECS = CODECS[:2]
DAMAGED = ".damaged"  # results/.damaged/<time>/...: files moved aside by a repair


def _spec(path: str, shape, dims, dtype: str, fill, chunks, codecs=None) -> dict:
    codecs = CODECS if codecs is None else codecs  # read when called (a benchmark swaps it)
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
            "codecs": [dict(c) for c in codecs],
        },
    }


def _io(path: str, fn, action: str = "write"):
    """Run a Tensorstore operation; its failures become one-line ntkbench errors."""
    try:
        return fn()
    except (ValueError, OSError, RuntimeError) as e:
        text = str(e)
        if any(s in text for s in ("No space left", "Read-only", "Permission denied",
                                   "Not a directory")) or isinstance(e, OSError):
            raise storage_error(path, e, action) from None
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


def open_array(path: str, *, read_only: bool = False) -> ts.TensorStore:
    """An existing zarr v3 array, with whatever shape its metadata holds."""
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path},
            "store_data_equal_to_fill_value": True}
    kw = {"read": True} if read_only else {}
    return _io(path, lambda: ts.open(spec, open=True, **kw).result(),
               "read" if read_only else "write")


def has_checksums(path: str) -> bool:
    """Whether the array at `path` stores a CRC32C checksum in every chunk (False for arrays
    written before the checksums, or when its metadata cannot be read)."""
    try:
        with open(os.path.join(path, "zarr.json")) as f:
            codecs = json.load(f).get("codecs", [])
    except (OSError, ValueError, AttributeError):
        return False
    return any(isinstance(c, dict) and c.get("name") == "crc32c" for c in codecs)


def chunk_files(path: str) -> list[str]:
    """The chunk keys (`c/...`) of the array at `path` that are regular files."""
    out = []
    for dirpath, _, files in os.walk(os.path.join(path, "c")):
        rel = os.path.relpath(dirpath, path)
        out += [f"{rel}/{f}".replace(os.sep, "/") for f in files if ".__lock" not in f]
    return sorted(out)


def _probe_codecs(path: str, shape, dims, dtype, fill, chunks):
    """The codecs the chunks of an array whose metadata is lost were written with: decode one
    stored chunk with the current codecs, then with the legacy ones (current when none
    decodes, or there is no chunk)."""
    keys = chunk_files(path)
    if not keys:
        return CODECS
    index = tuple(int(i) * c for i, c in zip(keys[0].split("/")[1:], chunks))
    region = tuple(slice(i, i + c) for i, c in zip(index, chunks))
    for codecs in (CODECS, LEGACY_CODECS):
        try:
            arr = ts.open(_spec(path, shape, dims, dtype, fill, chunks, codecs), open=True,
                          assume_metadata=True, read=True).result()
            arr[region].read().result()
            return codecs
        except (ValueError, OSError, RuntimeError, IndexError):
            continue
    return CODECS


def move_aside(root: str, path: str, stamp: str) -> str:
    """Move a damaged file or folder of the store at `root` to `root/.damaged/<stamp>/...`
    (kept for inspection, never read again); returns its new path."""
    dest = os.path.join(root, DAMAGED, stamp, os.path.relpath(path, root))
    try:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.move(path, dest)
    except OSError as e:
        raise storage_error(path, e) from None
    return dest


class ResultsStore:
    """Creates or opens the results group of a sweep.

    Args:
        root: the `results` directory.
        config: the sweep (its grid, number of records and optional variables).
        num_classes: logits per example (the snapshot size is `n_test·num_classes`).
        read_only: open what exists without writing anything (`ntkbench verify`): damaged
            metadata, coordinates or settings are listed in `damage` instead of rebuilt.
        fingerprints: earlier fingerprints of this sweep (before extensions, from the
            manifest's history): a group that records one of them is this sweep's.
        log: where rebuilds are reported (one line each).
    """

    def __init__(self, root: str, config: SweepConfig, num_classes: int = 0, *,
                 read_only: bool = False, fingerprints: Sequence[str] = (),
                 log: Callable[[str], None] = lambda s: None):
        self.root = root
        self.config = config
        self.grid = config.grid_shape
        self.num_records = config.num_records
        self.read_only = read_only
        self.log = log
        self.missing: set[tuple[str, tuple[int, ...]]] = set()  # chunks to rewrite unchecked
        # Members known to have committed records up to here although their `last_record`
        # chunk was lost (from the pack's status): what is stored up to it is checked.
        self.floor: dict[tuple[int, ...], int] = {}
        self._held: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        # (name, reason, path) of damaged metadata, coordinates or settings (read-only mode)
        self.damage: list[tuple[str, str, str]] = []
        self.checksums: dict[str, bool] = {}  # name -> its chunks carry a CRC32C
        # A runtime change the user allowed: committed values recomputed differently replace
        # the stored ones (counted in `replaced`) instead of being refused.
        self.relaxed = False
        self.replaced = 0
        self._stamp = time.strftime("%Y%m%dT%H%M%S")
        if not read_only:
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as e:
                raise storage_error(root, e) from None
        self._trusted = self._open_group(config.fingerprint(), fingerprints)
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

    # ------------------------------------------------------------------ opening
    def _open_group(self, fingerprint: str, known: Sequence[str]) -> bool:
        """Write (or check) the group's metadata; whether it is this sweep's (its recorded
        fingerprint is this sweep's, or one it had before an extension)."""
        group = os.path.join(self.root, "zarr.json")
        attrs, damaged = {}, None
        if os.path.exists(group):
            try:
                attrs = read_json(group, "The results group").get("attributes") or {}
            except IntegrityError as e:
                damaged = str(e).split(" (")[0]
        stored_fp = attrs.get("ntkbench_fingerprint")
        trusted = stored_fp in {fingerprint, *known}
        new = {**attrs, "ntkbench_fingerprint": fingerprint}
        if self.read_only:
            if damaged:
                self.damage.append(("zarr.json", "unreadable", group))
            return trusted
        if damaged:
            move_aside(self.root, group, self._stamp)
            self.log(f"results: the group metadata {group} was unreadable; rebuilt it from the "
                     "manifest (the damaged file is in results/.damaged)")
        if damaged or not os.path.exists(group) or attrs != new:
            atomic_json(group, {"zarr_format": 3, "node_type": "group", "attributes": new})
        return trusted

    def attributes(self) -> dict:
        """The group's attributes."""
        group = os.path.join(self.root, "zarr.json")
        return read_json(group, "The results group").get("attributes") or {}

    def add_attributes(self, **attrs) -> None:
        """Add to the group's attributes (e.g. a record of an allowed runtime change)."""
        group = os.path.join(self.root, "zarr.json")
        meta = read_json(group, "The results group")
        meta["attributes"] = {**(meta.get("attributes") or {}), **attrs}
        atomic_json(group, meta)

    def _write_settings(self) -> None:
        """The `SETTING` variables (each member's learning rate), a function of the config:
        at every opening the members whose stored value is missing or differs are written (an
        extension writes only its new members: one chunk per member, as every array); an
        unreadable array is rebuilt from the manifest; read-only, the damage is listed."""
        axes = self.config.axis_values()  # every member in row-major grid order
        points = itertools.product(*(axes[a] for a in AXES))
        values = np.asarray([self.config.lr_of(dict(zip(AXES, p))) for p in points],
                            np.float32).reshape(self.grid)
        path = os.path.join(self.root, "lr")
        have, reason = None, "missing"
        if os.path.exists(path):
            try:
                have = open_array(path, read_only=self.read_only).read().result()
                reason = "differs from the manifest"
            except (ValueError, OSError, RuntimeError, IntegrityError, StorageError) as e:
                reason = f"unreadable: {str(e)[:80]}"
        if have is not None and have.shape == values.shape and np.array_equal(have, values):
            if not self.read_only:
                set_attributes(path, "lr")
            return
        if self.read_only:
            if os.path.exists(os.path.join(self.root, "zarr.json")):
                self.damage.append(("lr", reason, path))
            return
        chunks = (1,) * len(AXES)
        if reason.startswith("unreadable"):
            spec = _spec(path, self.grid, AXES, "float32", _FILL["float32"], chunks)
            arr = _io(path, lambda: ts.open(spec, create=True, delete_existing=True).result())
            self.log(f"results: the learning rates lr were {reason}; rebuilt them from the "
                     "manifest")
        else:
            arr = self._open("lr", self.grid, AXES, "float32", _FILL["float32"], chunks)
        old = np.full(self.grid, np.nan, np.float32)
        if have is not None:
            old[tuple(slice(0, n) for n in have.shape)] = have
        futures = [(path, arr[tuple(i)].write(values[tuple(i)]))
                   for i in np.argwhere(~(old == values))]
        self._write_all(futures)
        set_attributes(path, "lr")

    def _open(self, name, shape, dims, dtype, fill, chunks) -> ts.TensorStore:
        """Create the array, or open it, growing it to `shape` for an extended sweep.

        Growing rewrites only the array's metadata (chunks are 1 along the sweep axes), so no
        stored record is touched; an array never shrinks. Metadata that is missing (with chunks
        left) or unreadable is rebuilt from the config, with the codecs its chunks were written
        with; read-only, the array is read with that metadata assumed, and the damage listed.
        """
        path = os.path.join(self.root, name)
        meta = os.path.join(path, "zarr.json")
        if not os.path.exists(meta) and not chunk_files(path):
            if self.read_only:  # never created (nothing committed), or lost with its chunks
                self.checksums[name] = True
                return self._assume(name, path, shape, dims, dtype, fill, chunks, CODECS)
            self.checksums[name] = True
            arr = _io(path, lambda: ts.open(_spec(path, shape, dims, dtype, fill, chunks),
                                            create=True, open=True).result())
            set_attributes(path, name)
            return arr
        try:
            arr = open_array(path, read_only=self.read_only)
        except StorageError:
            raise
        except IntegrityError as e:
            reason = ("missing" if not os.path.exists(meta) else
                      f"unreadable ({str(e).split(' (', 1)[-1].split(')')[0][:80]})")
            codecs = _probe_codecs(path, shape, dims, dtype, fill, chunks)
            self.checksums[name] = codecs is CODECS
            if self.read_only:
                self.damage.append((name, f"metadata {reason}", meta))
                return self._assume(name, path, shape, dims, dtype, fill, chunks, codecs)
            if os.path.exists(meta):
                move_aside(self.root, meta, self._stamp)
            self.log(f"results: the metadata of {name} ({meta}) was {reason}; rebuilt it from "
                     "the manifest (its chunks are kept and checked)")
            arr = _io(path, lambda: ts.open(_spec(path, shape, dims, dtype, fill, chunks,
                                                  codecs), create=True, open=True).result())
            set_attributes(path, name)
            return arr
        self.checksums[name] = has_checksums(path)
        have, labels = tuple(arr.shape), tuple(arr.domain.labels)
        if (labels != tuple(dims) or arr.dtype.name != dtype or len(have) != len(shape)
                or any(h > n for h, n in zip(have, shape))):
            raise IntegrityError(
                f"The results array {path} has dimensions {labels} {have} {arr.dtype.name} but "
                f"this sweep needs {tuple(dims)} {tuple(shape)} {dtype}; the store belongs to "
                "another sweep or ntkbench version. Use a new workdir.")
        if have != tuple(shape):
            if self.read_only:  # an extension that has not opened the store yet
                return self._assume(name, path, shape, dims, dtype, fill, chunks,
                                    CODECS if self.checksums[name] else LEGACY_CODECS)
            arr = _io(path, lambda: arr.resize(exclusive_max=list(shape), expand_only=True,
                                               resize_metadata_only=True).result())
        set_attributes(path, name)
        return arr

    def _assume(self, name, path, shape, dims, dtype, fill, chunks, codecs) -> ts.TensorStore:
        spec = _spec(path, shape, dims, dtype, fill, chunks, codecs)
        return _io(path, lambda: ts.open(spec, open=True, assume_metadata=True,
                                         read=True).result(), "read")

    def _write_coord(self, name: str, values: np.ndarray) -> None:
        """Write (or check) a coordinate: a function of the config. An extension appends
        values; one that disagrees otherwise, or cannot be read, is rebuilt from the manifest
        when the group is this sweep's, and belongs to another sweep when it is not."""
        path = os.path.join(self.root, name)
        if values.dtype.kind in "USO":
            return self._write_string_coord(name, path, values.astype(str))
        dtype, fill = ("float64", 0.0) if values.dtype.kind == "f" else ("int64", 0)
        values = values.astype(dtype)
        if not os.path.exists(os.path.join(path, "zarr.json")) and not chunk_files(path):
            if self.read_only:
                if os.path.exists(os.path.join(self.root, "zarr.json")):
                    self.damage.append((name, "missing", path))
                return
            self._create_coord(path, name, values, dtype, fill)
            return
        try:
            arr = open_array(path, read_only=self.read_only)
            have = _io(path, lambda: arr.read().result(), "read")
        except IntegrityError as e:
            self._damaged_coord(name, path, values, dtype, fill,
                                f"unreadable ({str(e).split(' (', 1)[-1][:80]}")
            return
        n = len(have)
        same = have == values[:n] if n <= len(values) else np.zeros(n, bool)
        k = n if same.all() else int(np.argmin(same))  # leading entries that agree
        # An extension appends values; a crash between growing and writing leaves fill values
        # after them, which are written now. Anything else is another sweep's, or damage.
        if n > len(values) or np.any(have[k:] != fill):
            if self._trusted and n == len(values):
                self._damaged_coord(name, path, values, dtype, fill,
                                    f"{have.tolist()} where the manifest has {values.tolist()}")
                return
            raise IntegrityError(f"The coordinate {name} in {self.root} is {have.tolist()} but "
                                 f"this sweep has {values.tolist()}; the store belongs to "
                                 "another sweep. Use a new workdir.")
        if self.read_only:
            return
        if n < len(values):
            arr = _io(path, lambda: arr.resize(exclusive_max=[len(values)], expand_only=True,
                                               resize_metadata_only=True).result())
        if k < len(values):
            _io(path, lambda: arr[k:].write(values[k:]).result())
        set_attributes(path, name)

    def _write_string_coord(self, name: str, path: str, values: np.ndarray) -> None:
        """A coordinate of names (the parametrizations). Tensorstore's zarr3 driver has no
        string type, so zarr-python writes it (zarr v3 `string`, `vlen-utf8`), which xarray
        reads; an extension appends names, anything else is another sweep's store."""
        if self.read_only:  # verify, status, load: look, never write
            try:
                have = np.asarray([str(v) for v in np.asarray(
                    zarr.open_group(self.root, mode="r", zarr_format=3)[name][:]).tolist()])
                if len(have) < len(values) or np.any(have[:len(values)] != values):
                    self.damage.append((name, "differs from the manifest", path))
            except (OSError, ValueError, KeyError) as e:
                self.damage.append((name, f"coordinate unreadable ({str(e)[:60]})", path))
            return
        try:
            group = zarr.open_group(self.root, mode="a", zarr_format=3)
            if name not in group:
                arr = group.create_array(name, shape=values.shape, dtype=str,
                                         dimension_names=[name], chunks=values.shape)
                arr[:] = values
            else:
                arr = group[name]
                have = np.asarray([str(v) for v in np.asarray(arr[:]).tolist()])
                if len(have) > len(values) or np.any(have != values[:len(have)]):
                    raise IntegrityError(
                        f"The coordinate {name} in {self.root} is {have.tolist()} but this "
                        f"sweep has {values.tolist()}; the store belongs to another sweep. Use "
                        "a new workdir.")
                if len(have) < len(values):
                    arr.resize(values.shape)
                    arr[:] = values
        except (OSError, ValueError, KeyError) as e:
            raise storage_error(path, e) if isinstance(e, OSError) else IntegrityError(
                f"The coordinate {path} cannot be read or written ({e}); run `ntkbench "
                "verify` on the workdir.") from None
        set_attributes(path, name)

    def _create_coord(self, path, name, values, dtype, fill) -> None:
        arr = _io(path, lambda: ts.open(_spec(path, values.shape, (name,), dtype, fill,
                                              values.shape), create=True, open=True).result())
        _io(path, lambda: arr.write(values).result())
        set_attributes(path, name)

    def _damaged_coord(self, name, path, values, dtype, fill, reason: str) -> None:
        if self.read_only:
            self.damage.append((name, f"coordinate {reason}", path))
            return
        move_aside(self.root, path, self._stamp)
        self._create_coord(path, name, values, dtype, fill)
        self.log(f"results: the coordinate {name} was {reason}; rebuilt it from the manifest "
                 "(the damaged files are in results/.damaged)")

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    # ------------------------------------------------------------------ writing
    def last_record(self, index: tuple[int, ...]) -> int:
        """The member's last committed record (at least what its pack's status vouches for
        when its `last_record` chunk was lost)."""
        arr = self.arrays["last_record"]
        if ("last_record", index) in self.missing:
            stored = -1  # lost: whatever the file holds now is not trusted
        else:
            stored = int(_io(self._path("last_record"), lambda: arr[index].read().result()))
        return max(stored, self.floor.get(index, -1))

    def _check(self, name, index, target, new, committed: bool) -> None:
        """Refuse to change committed values (a resumed run must reproduce them)."""
        if not committed or (name, index) in self.missing:
            return
        old = _io(self._path(name), lambda: target.read().result())
        if not np.array_equal(old, new, equal_nan=True):
            if self.relaxed:
                self.replaced += int(np.sum(~((old == new) | (np.isnan(old) & np.isnan(new)))
                                            if np.asarray(old).dtype.kind == "f"
                                            else np.asarray(old) != np.asarray(new)))
                return
            raise IntegrityError(
                f"Refusing to overwrite committed values of {name} at {index} with different "
                "ones; the run is not reproducing its earlier results (another machine, device "
                "count or ntkbench version?). Finish it where it started, or use a new workdir.")

    def _write_all(self, futures) -> None:
        for path, f in futures:
            _io(path, f.result)

    def _hold(self, name: str, index: tuple[int, ...], start: int, values: np.ndarray):
        """Keep records of a lost chunk until its member's last one is there; then the future
        writing it whole (None before)."""
        arr = self.arrays[name]
        key = (name, index)
        if key not in self._held:
            if start > 0:  # not retrained from the start: it stays lost (found again later)
                return None
            self._held[key] = np.full(arr[index].shape, _FILL["float32"], np.float32)
        held = self._held[key]
        held[(slice(start, start + values.shape[0]),)
             + tuple(slice(0, n) for n in values.shape[1:])] = values
        if start + values.shape[0] < self.num_records:
            return None
        del self._held[key]
        return arr[index].write(held)

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
                if (name, index) in self.missing:  # lost: written whole once complete
                    future = self._hold(name, index, start, arr[:, j])
                    if future is not None:
                        futures.append((self._path(name), future))
                    continue
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
        member's committed record never moves back.

        `diverged` describes the state at `last_record`: it is written when the member moves
        forward, checked when it re-commits its committed end, and left alone when a resumed
        member is still behind it (its stored value belongs to a later state).
        """
        futures = []
        done = [self.last_record(index) for index in member_indices]
        if last_record >= self.num_records - 1:  # complete: held chunks are whole by now
            mine = set(member_indices)
            for key in [k for k in self._held if k[1] in mine]:
                futures.append((self._path(key[0]),
                                self.arrays[key[0]][key[1]].write(self._held.pop(key))))
        if diverged is not None:
            for j, index in enumerate(member_indices):
                new = np.uint8(bool(diverged[j]))
                target = self.arrays["diverged"][index]
                if last_record > done[j] or ("diverged", index) in self.missing and (
                        last_record == done[j]):
                    futures.append((self.root, target.write(new)))
                elif last_record == done[j]:
                    self._check("diverged", index, target, new, True)
        self._write_all(futures)
        futures = [(self.root, self.arrays["last_record"][index].write(
            np.int32(max(last_record, done[j])))) for j, index in enumerate(member_indices)]
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
    ds = _io(root, lambda: xr.open_zarr(root, consolidated=False, zarr_format=3), "read")
    # The stored summaries are derived (`write_summaries`); `ntkbench.load` computes them.
    ds = ds.drop_vars([n for n in STORED_SUMMARIES if n in ds.variables])
    snapshot = ds["ntk_snapshot"] if (snapshots and "ntk_snapshot" in ds) else None
    ds = _io(root, lambda: ds.drop_vars(["ntk_snapshot", "row", "col"], errors="ignore").load(),
             "read")
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
    unsorted = [a for a in AXES if a in ds.indexes and ds[a].dtype.kind in "iuf"
                and not ds.indexes[a].is_monotonic_increasing]
    if unsorted:
        ds = ds.sortby(unsorted)
        snapshot = None if snapshot is None else snapshot.sortby(unsorted)
    if snapshot is not None:
        ds["ntk_snapshot"] = snapshot.where(last >= 0)
    return ds
