"""Where a sweep runs: its mesh, the devices' platform and memory, and the processes.

The command line builds a `Runtime` from its flags (it alone touches `jax.distributed`, meshes
and device queries); a notebook gets `Runtime.local()`. Everything the compiled programs depend
on is an explicit field here, passed down, never read from global state while tracing.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Runtime:
    """The devices of a sweep and the runtime choices that follow from them.

    Attributes:
        mesh: a 1-D `jax.sharding.Mesh` over which every pack's member axis is sharded (packs
            are padded with masked members to use every device), or None for one device.
        platform: "cpu", "gpu" or "tpu": picks the eigensolver of NTK records.
        sequential: run each device's members one at a time in NTK records (`lax.map`) rather
            than batched. True on CPUs (no parallelism is lost; batched LAPACK calls on several
            CPU devices of one process can deadlock), False on accelerators.
        device_memory: bytes of memory per device, or None when unknown (then no check).
        num_processes: processes of the run (`jax.process_count()`).
        process_index: this process (`jax.process_index()`); process 0 writes shared files.
    """

    mesh: object = None
    platform: str = "cpu"
    sequential: bool = True
    device_memory: int | None = None
    num_processes: int = 1
    process_index: int = 0

    @classmethod
    def local(cls) -> Runtime:
        """The default device of this process (a notebook's `ntkbench.run`)."""
        import jax

        device = jax.devices()[0]
        return cls(None, device.platform, device.platform == "cpu", device_memory(device),
                   jax.process_count(), jax.process_index())

    @classmethod
    def on(cls, devices, *, sequential: bool | None = None) -> Runtime:
        """A runtime over `devices` (all of a job's devices, in any process), with a mesh when
        there is more than one."""
        import jax
        from jax.sharding import Mesh

        devices = list(devices)
        platform = devices[0].platform
        mesh = Mesh(np.asarray(devices), ("members",)) if len(devices) > 1 else None
        local = [d for d in devices if d.process_index == jax.process_index()]
        return cls(mesh, platform, platform == "cpu" if sequential is None else sequential,
                   device_memory(local[0] if local else devices[0]), jax.process_count(),
                   jax.process_index())

    @property
    def num_devices(self) -> int:
        return 1 if self.mesh is None else int(self.mesh.devices.size)

    @property
    def primary(self) -> bool:
        return self.process_index == 0

    def sync(self, name: str) -> None:
        """A barrier across the processes of the run (nothing with one process)."""
        if self.num_processes > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    def agree(self, flag: bool) -> bool:
        """True on every process when `flag` is True on any (e.g. a stop request)."""
        if self.num_processes == 1:
            return bool(flag)
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def device_memory(device) -> int | None:
    """Bytes a device can hold: its allocator's limit, or the host's memory for a CPU."""
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - not every backend reports memory
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        import os

        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError):
            return None
    return None
