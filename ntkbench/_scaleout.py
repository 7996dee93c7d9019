"""Device-parallel pieces that take a mesh from the caller: large NTKs sharded by rows, and the
throughput profile over device counts (`ntkbench profile --devices=1,2,4,8`).

The library never builds a mesh of all devices itself; the CLI/launchers pass one in.
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
    member_epochs_per_s: float
    ntks_per_s: float
    speedup_train: float
    speedup_ntk: float


def profile_devices(device_counts: Sequence[int], devices: Sequence, *, width: int = 128,
                    depth: int = 3, members: int = 8, n_train: int = 100, n_ntk: int = 64,
                    epochs: int = 20, repeats: int = 3) -> list[DeviceRow]:
    """Member-epochs/s of a pack and NTKs/s of the pack's members on 1..k devices.

    A pack of `members` MLPs (digits inputs, full-batch Adam) is trained for `epochs` epochs with
    its member axis sharded over the first `k` devices, and its members' NTKs on `n_ntk` samples
    are computed vmapped over the sharded members. Medians of `repeats`, compile excluded.
    """
    from ntkbench import config as cfg
    from ntkbench import ensemble
    from ntkbench._datasets import load_dataset
    from ntkbench._sweep import _put, _put_state, build_data, build_models, ntk_test_indices
    from ntkbench._training import PackProgram

    c = cfg.from_config_dict({**cfg.get_config("quick").to_dict(), "widths": (width,),
                              "depth": (depth,), "num_seeds": members, "n_train": (n_train,),
                              "n_test": n_ntk, "ntk_every": 0, "epochs": epochs})
    data = load_dataset("digits")
    pack = ensemble.plan(c, data.input_size, data.num_classes).packs[0]
    model = build_models(c, pack, data.input_size, data.input_shape, data.num_classes)
    pdata = build_data(c, pack, data, ntk_test_indices(c, data))
    program = PackProgram(c)
    ntk_fn = eqx.filter_jit(eqx.filter_vmap(lambda m, x: kernels.ntk(m, x),
                                            in_axes=(eqx.if_array(0), None)))
    rows, base = [], None
    for k in device_counts:
        if k > len(devices) or members % k:
            continue
        mesh = Mesh(np.asarray(devices[:k]), ("members",))
        shared = ("x", "y", "x_test", "y_test")
        d = pdata._replace(**{f: _put(getattr(pdata, f), mesh, P()) for f in shared},
                           **{f: _put(getattr(pdata, f), mesh, P("members"))
                              for f in pdata._fields if f not in shared})
        state0 = _put_state(program.init_state(model), mesh, P("members"), P())
        sharded_model = _put(model, mesh, P("members"))
        x_ntk = _put(pdata.x_test, mesh, P())

        def train():
            st = jax.tree.map(lambda a: a.copy() if eqx.is_array(a) else a, state0)
            return program.train_chunk(d, st, epochs)

        def ntks():
            return ntk_fn(sharded_model, x_ntk)

        t_train = _median_time(train, repeats)
        t_ntk = _median_time(ntks, repeats)
        row = (members * epochs / t_train, members / t_ntk)
        base = base or row
        rows.append(DeviceRow(k, row[0], row[1], row[0] / base[0], row[1] / base[1]))
    return rows


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def format_device_table(rows: Sequence[DeviceRow]) -> str:
    lines = [f"{'devices':>7} {'member-epochs/s':>16} {'x1':>6} {'NTKs/s':>9} {'x1':>6}"]
    for r in rows:
        lines.append(f"{r.devices:>7} {r.member_epochs_per_s:>16,.0f} {r.speedup_train:>6.2f} "
                     f"{r.ntks_per_s:>9,.1f} {r.speedup_ntk:>6.2f}")
    return "\n".join(lines)
