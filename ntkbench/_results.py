"""The results store: a zarr v3 group written with Tensorstore, read as an `xarray.Dataset`.

Layout of `WORKDIR/results/` (a zarr v3 group that `xr.open_zarr(..., zarr_format=3)` opens):
- one coordinate array per sweep axis (`depth`, `width`, `n_train`, `noise`, `data_draw`, `seed`)
  and `epoch` (record index `k = 0..E`, 0 = initialization);
- per-record variables over `(*axes, epoch)`, float32, NaN where not (yet) recorded:
  `train_loss`, `test_loss`, `train_accuracy`, `test_accuracy` and the NTK quantities;
- `ntk_snapshot` over `(*axes, snapshot, row, col)` with `snapshot` in (init, best, final), the
  matrix-form NTK (SPEC.md §1) at initialization, at the best test loss among NTK records, and at
  the end;
- per-member `diverged` (uint8) and `epochs_done` (int32, -1 = nothing committed).

Crash safety: `epochs_done` of a member is written only after all of its records up to that epoch
have been written, and `load` masks every record past it, so a crash never exposes a half-written
epoch as data. A rewrite of an already committed record (after a resume) must reproduce the same
bits, or the write is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorstore as ts

from ntkbench._config import AXES, SweepConfig

PER_RECORD = (
    "train_loss", "test_loss", "train_accuracy", "test_accuracy",
    "ntk_trace", "ntk_entropy", "ntk_erank", "label_alignment", "label_alignment_traced",
    "eigvec_misalignment",
)
SNAPSHOTS = ("init", "best", "final")
#: Per-layer records (with `layer_ntks`), over `(*axes, epoch, layer)`; layers past a member's
#: depth + 1 read NaN.
LAYER_RECORD = ("layer_ntk_trace", "layer_ntk_erank", "layer_ck_trace", "layer_ck_erank")


class ResultsError(RuntimeError):
    """The results store is inconsistent with what is being written."""


def _spec(path: str, shape, dims, dtype: str, fill, chunks) -> dict:
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": path},
        "metadata": {
            "shape": list(shape),
            "data_type": dtype,
            "dimension_names": list(dims),
            "fill_value": fill,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "zstd", "configuration": {"level": 3}}],
        },
    }


def _open_existing(path: str) -> ts.TensorStore:
    """An existing zarr v3 array, with whatever shape its metadata holds."""
    return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}, open=True).result()


class ResultsStore:
    """Creates or opens the results group of a sweep.

    Args:
        root: the `results` directory.
        config: the sweep (defines the grid and the number of records).
        snapshot_size: `M = n_test * num_classes` of the NTK snapshots, or 0 for none.
    """

    def __init__(self, root: str, config: SweepConfig, snapshot_size: int = 0,
                 num_layers: int = 0):
        self.root = root
        self.config = config
        self.grid = config.grid_shape
        self.num_records = config.num_records
        os.makedirs(root, exist_ok=True)
        group = os.path.join(root, "zarr.json")
        attrs = {"ntkbench_fingerprint": config.fingerprint()}
        if not os.path.exists(group) or _read_json(group).get("attributes") != attrs:
            _atomic_json(group, {"zarr_format": 3, "node_type": "group", "attributes": attrs})
        ones = (1,) * len(AXES)
        dims = AXES + ("epoch",)
        self.arrays: dict[str, ts.TensorStore] = {}
        for name in PER_RECORD:
            self.arrays[name] = self._open(name, self.grid + (self.num_records,), dims, "float32",
                                           float("nan"), ones + (self.num_records,))
        for name in LAYER_RECORD if num_layers else ():
            self.arrays[name] = self._open(
                name, self.grid + (self.num_records, num_layers), dims + ("layer",), "float32",
                float("nan"), ones + (self.num_records, num_layers))
        self.arrays["diverged"] = self._open("diverged", self.grid, AXES, "uint8", 0, ones)
        self.arrays["epochs_done"] = self._open("epochs_done", self.grid, AXES, "int32", -1, ones)
        if snapshot_size:
            m = snapshot_size
            self.arrays["ntk_snapshot"] = self._open(
                "ntk_snapshot", self.grid + (len(SNAPSHOTS), m, m), AXES + ("snapshot", "row", "col"),
                "float32", float("nan"), ones + (1, m, m))
        self._write_coords(snapshot_size)

    def _open(self, name, shape, dims, dtype, fill, chunks) -> ts.TensorStore:
        """Create the array, or open it, growing it to `shape` for an extended sweep.

        Growing rewrites only the array's metadata (its chunks are 1 along the sweep axes), so
        no stored record is touched; an array can never shrink.
        """
        path = os.path.join(self.root, name)
        if not os.path.exists(os.path.join(path, "zarr.json")):
            return ts.open(_spec(path, shape, dims, dtype, fill, chunks), create=True, open=True).result()
        arr = _open_existing(path)
        have, labels = tuple(arr.shape), tuple(arr.domain.labels)
        if (labels != tuple(dims) or arr.dtype.name != dtype or len(have) != len(shape)
                or any(h > n for h, n in zip(have, shape))):
            raise ResultsError(
                f"The results array {path} has dimensions {labels} {have} {arr.dtype.name} but this"
                f" sweep needs {tuple(dims)} {tuple(shape)} {dtype}; the store belongs to another "
                "sweep or ntkbench version. Use a new --workdir.")
        if have != tuple(shape):
            arr = arr.resize(exclusive_max=list(shape), expand_only=True,
                             resize_metadata_only=True).result()
        return arr

    def _write_coords(self, snapshot_size: int) -> None:
        coords = {a: np.asarray(v) for a, v in self.config.axis_values().items()}
        coords["epoch"] = np.arange(self.num_records)
        if snapshot_size:
            # `snapshot` has no coordinate array (zarr v3 via Tensorstore stores no strings):
            # its index order is SNAPSHOTS = (init, best, final).
            coords["row"] = np.arange(snapshot_size)
            coords["col"] = np.arange(snapshot_size)
        for name, values in coords.items():
            path = os.path.join(self.root, name)
            if values.dtype.kind == "f":
                dtype, fill = "float64", 0.0
            else:
                dtype, fill = "int64", 0
                values = values.astype(np.int64)
            if not os.path.exists(os.path.join(path, "zarr.json")):
                arr = ts.open(_spec(path, values.shape, (name,), dtype, fill, values.shape),
                              create=True, open=True).result()
                arr.write(values).result()
                continue
            arr = _open_existing(path)
            have = arr.read().result()
            n = len(have)
            same = have == values[:n] if n <= len(values) else np.zeros(n, bool)
            k = n if same.all() else int(np.argmin(same))  # leading entries that agree
            # An extension appends values; a crash between growing and writing leaves fill
            # values after them, which are written now. Anything else is another sweep's.
            if n > len(values) or np.any(have[k:] != fill):
                raise ResultsError(
                    f"The coordinate {name} in {self.root} is {have.tolist()} but this sweep "
                    f"has {values.tolist()}; the store belongs to another sweep. Use a new --workdir.")
            if n < len(values):
                arr = arr.resize(exclusive_max=[len(values)], expand_only=True,
                                 resize_metadata_only=True).result()
            if k < len(values):
                arr[k:].write(values[k:]).result()

    # ------------------------------------------------------------------ writing
    def epochs_done(self, index: tuple[int, ...]) -> int:
        return int(self.arrays["epochs_done"][index].read().result())

    def write_records(self, member_indices: Sequence[tuple[int, ...]], start: int,
                      values: Mapping[str, np.ndarray], *, verify: bool = True) -> None:
        """Write records `start .. start + T - 1` of the given members.

        Args:
            member_indices: grid index of each member, in pack order (length m).
            start: first record index.
            values: name -> array `(T, m)`, or `(T, m, L)` for per-layer records.
            verify: refuse (ResultsError) to change a record that is already committed.
        """
        futures = []
        # One read of each member's committed epoch, shared by all variables.
        done_of = [self.epochs_done(index) if verify else -1 for index in member_indices]
        for name, arr in values.items():
            arr = np.asarray(arr, np.float32)
            t = arr.shape[0]
            extra = (slice(0, arr.shape[2]),) if arr.ndim == 3 else ()
            for j, index in enumerate(member_indices):
                target = self.arrays[name][index + (slice(start, start + t),) + extra]
                done = done_of[j]
                if done >= start:
                    n = min(done - start + 1, t)
                    # Tensorstore views keep absolute coordinates: index from `start`.
                    old = self.arrays[name][index + (slice(start, start + n),) + extra].read().result()
                    if not np.array_equal(old, arr[:n, j], equal_nan=True):
                        raise ResultsError(
                            f"Refusing to overwrite committed records {start}..{start + n - 1} "
                            f"of {name} at {index} with different values; the run is not "
                            "reproducing its earlier results (different machine or device "
                            "count?). Start a fresh workdir.")
                futures.append(target.write(arr[:, j]))
        for f in futures:
            f.result()

    def write_snapshot(self, member_indices, which: str, matrices: np.ndarray) -> None:
        k = SNAPSHOTS.index(which)
        futures = [self.arrays["ntk_snapshot"][index + (k,)].write(np.asarray(matrices[j], np.float32))
                   for j, index in enumerate(member_indices)]
        for f in futures:
            f.result()

    def commit(self, member_indices, epochs_done: int, diverged: np.ndarray | None = None) -> None:
        """Mark records `0..epochs_done` of these members as complete (after their writes)."""
        futures = []
        for j, index in enumerate(member_indices):
            if diverged is not None:
                futures.append(self.arrays["diverged"][index].write(np.uint8(bool(diverged[j]))))
        for f in futures:
            f.result()
        futures = [self.arrays["epochs_done"][index].write(np.int32(epochs_done))
                   for index in member_indices]
        for f in futures:
            f.result()


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _atomic_json(path: str, obj) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(workdir: str, *, summaries: bool = True, snapshots: bool = False):
    """The results of a sweep as an `xarray.Dataset`.

    Dimensions: one per sweep axis (`depth`, `width`, `n_train`, `noise`, `data_draw`, `seed`)
    and `epoch`, each sorted. Records past a member's committed epoch read NaN. With `summaries`, the per-member
    summaries of SPEC.md §5-7 (`T0`, `k_star`, `T_star`, `trace_ratio`, `erank_star`,
    `alpha_star`, ...) are added (see `ntkbench.analysis.summarize`).

    Example:
        >>> ds = ntkbench.results.load("runs/quick")  # doctest: +SKIP
        >>> ds.test_loss.sel(epoch=ds.epoch[-1]).mean("seed")  # doctest: +SKIP
    """
    import xarray as xr

    root = os.path.join(workdir, "results")
    if not os.path.exists(os.path.join(root, "zarr.json")):
        raise FileNotFoundError(f"No results in {workdir!r}; run `ntkbench run --workdir={workdir}` first.")
    ds = xr.open_zarr(root, consolidated=False, zarr_format=3)
    snapshot = ds["ntk_snapshot"] if (snapshots and "ntk_snapshot" in ds) else None
    ds = ds.drop_vars(["ntk_snapshot", "row", "col"], errors="ignore").load()
    done = ds["epochs_done"]
    mask = ds["epoch"] <= done
    for name in PER_RECORD + LAYER_RECORD:
        if name in ds:
            ds[name] = ds[name].where(mask)
    ds["diverged"] = ds["diverged"].astype(bool)
    # An extended sweep stores added axis values after the old ones; present them sorted.
    unsorted = [a for a in AXES if not ds.indexes[a].is_monotonic_increasing]
    if unsorted:
        ds = ds.sortby(unsorted)
        if snapshot is not None:
            snapshot = snapshot.sortby(unsorted)
    ds.attrs["ntk_every"] = int(_manifest_config(workdir).get("ntk_every", 0))
    if summaries:
        from ntkbench import analysis

        ds = analysis.summarize(ds)
    if snapshot is not None:
        # Lazily loaded (dask-free zarr backend): index it before calling .values on big sweeps.
        ds["ntk_snapshot"] = snapshot.where(done >= 0)
    return ds


def _manifest_config(workdir: str) -> dict:
    path = os.path.join(workdir, "manifest.json")
    if not os.path.exists(path):
        return {}
    return _read_json(path).get("config", {})
