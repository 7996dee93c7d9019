"""Device-parallel pieces that take devices or a mesh from the caller: large NTKs sharded by
rows, and the throughput of pack chunks over device counts (`ntkbench profile --devices=1,2,4`).

The library never looks up the devices itself; the CLI and launchers pass them in.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float

from ntkbench import kernels
from ntkbench._config import preset as preset_config
from ntkbench._data import load_dataset
from ntkbench._train import PackBuilder, Runtime


def sharded_ntk(model, x: Float[Array, "n *d"], mesh: Mesh, *, method: str = "auto",
                block_size: int | None = None) -> Float[Array, "n n o o"]:
    """The NTK of one model on `x`, its rows computed in blocks sharded over the mesh.

    Each device computes `Θ[rows_d, :]` for its share of the samples (and, with `block_size`,
    in blocks of that many rows), so a device never holds more than its rows of the kernel and
    one block of Jacobian rows. Equal to `kernels.ntk(model, x)` up to float reassociation.

    Args:
        model: one member (one example in, `O` logits out).
        x: `(n, ...)` inputs; `n` need not divide the device count (rows are padded).
        mesh: a 1-D mesh; its only axis shards the rows.
        method, block_size: as for `ntkbench.kernels.ntk`.

    Returns:
        `(n, n, O, O)`, sharded by rows over the mesh.
    """
    axis = mesh.axis_names[0]
    ndev = mesh.devices.size
    n = x.shape[0]
    pad = -n % ndev
    rows = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
    params, static = eqx.partition(model, eqx.is_array)

    def block(p, xr, xf):
        return kernels.ntk(eqx.combine(p, static), xr, xf, method=method, block_size=block_size)

    # check_vma=False: the blocked assembly carries a zero-initialised (unvarying) buffer through
    # a fori_loop whose updates vary per device; every output row block is device-local anyway.
    fn = jax.jit(jax.shard_map(block, mesh=mesh, in_specs=(P(), P(axis), P()), out_specs=P(axis),
                               check_vma=False))
    rows = jax.device_put(rows, NamedSharding(mesh, P(axis)))
    out = fn(params, rows, x)
    return out[:n] if pad else out


@dataclasses.dataclass(frozen=True)
class DeviceRow:
    devices: int
    member_epochs_per_s: float  # training and NTK records together, as a sweep runs them
    records_per_s: float  # member NTK records per second within those chunks
    chunk_seconds: float
    speedup: float


def profile_devices(device_counts: Sequence[int], devices: Sequence, *, preset: str = "quick",
                    width: int = 128, members: int = 8, epochs: int = 20, ntk_every: int = 5,
                    repeats: int = 3, trace_dir: str | None = None
                    ) -> tuple[list[DeviceRow], str]:
    """Throughput of whole pack chunks, NTK records included, on the first `k` devices.

    A pack of `members` MLPs of the preset `preset` (its dataset, depth and NTK size) at
    width `width` trains `epochs` epochs with an NTK record every `ntk_every` epochs, its member axis sharded
    over `k` devices (`Runtime.on`), exactly as `ntkbench run` would. Medians of `repeats`,
    compile excluded.

    Returns:
        `(rows, description of the workload)`.
    """
    c = preset_config(preset, widths=(width,), num_seeds=members, epochs=epochs,
                      ntk_every=ntk_every, chunk_epochs=epochs)
    data = load_dataset(c.dataset)
    rows, base = [], None
    for k in device_counts:
        if k > len(devices) or members % k:
            continue
        ready = PackBuilder(c, runtime=Runtime.on(devices[:k]), data=data).build(0)
        program, pdata, state0 = ready.program, ready.data, ready.state

        def chunk():
            st = jax.tree.map(lambda a: a.copy() if eqx.is_array(a) else a, state0)
            return program.train_chunk(pdata, st, epochs)

        t = _median_time(chunk, repeats, trace_dir if k == device_counts[-1] else None)
        records = members * len([e for e in c.ntk_epochs() if e < epochs])
        row = (members * epochs / t, records / t)
        base = base or row
        rows.append(DeviceRow(k, row[0], row[1], t, row[0] / base[0]))
    what = (f"pack of {members} MLPs (width {width}, depth {c.depth[0]}, {c.n_train[0]} "
            f"{c.dataset} samples), {epochs} epochs per chunk with an NTK record every "
            f"{ntk_every} (M = {c.n_test * data.num_classes})")
    return rows, what


def _median_time(fn, repeats: int, trace_dir: str | None = None) -> float:
    jax.block_until_ready(fn())
    times = []
    if trace_dir:
        jax.profiler.start_trace(trace_dir)
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    if trace_dir:
        jax.profiler.stop_trace()
    return float(np.median(times))


def format_device_table(rows: Sequence[DeviceRow]) -> str:
    lines = [f"{'devices':>7} {'member-epochs/s':>16} {'NTK records/s':>14} {'chunk s':>8} "
             f"{'x1':>6}"]
    for r in rows:
        lines.append(f"{r.devices:>7} {r.member_epochs_per_s:>16,.0f} {r.records_per_s:>14,.1f} "
                     f"{r.chunk_seconds:>8.2f} {r.speedup:>6.2f}")
    return "\n".join(lines)
