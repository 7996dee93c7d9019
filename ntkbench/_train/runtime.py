"""Where a sweep runs: its mesh, the devices' platform and memory, and the processes.

The command line builds a `Runtime` from its flags (it alone touches `jax.distributed`, meshes
and device queries); a notebook gets `Runtime.local()`. Everything the compiled programs depend
on is an explicit field here, passed down, never read from global state while tracing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

#: XLA flags that do not change what a program computes (dumps; the host device count is
#: recorded as `num_devices`).
_NEUTRAL_XLA_FLAGS = ("--xla_dump", "--xla_force_host_platform_device_count")


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
        device_kind: the devices' kind (`jax.Device.device_kind`, e.g. "cpu", "NVIDIA H100").
    """

    mesh: object = None
    platform: str = "cpu"
    sequential: bool = True
    device_memory: int | None = None
    num_processes: int = 1
    process_index: int = 0
    device_kind: str = ""

    @classmethod
    def local(cls) -> Runtime:
        """The default device of this process (a notebook's `ntkbench.run`)."""
        import jax

        device = jax.devices()[0]
        return cls(None, device.platform, device.platform == "cpu", device_memory(device),
                   jax.process_count(), jax.process_index(), device.device_kind)

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
                   jax.process_index(), devices[0].device_kind)

    @property
    def num_devices(self) -> int:
        return 1 if self.mesh is None else int(self.mesh.devices.size)

    @property
    def primary(self) -> bool:
        return self.process_index == 0

    def describe(self) -> dict:
        """What decides the bits this runtime computes: the devices (platform, kind, count,
        processes), how NTK records batch members, JAX's numeric options (x64, the default
        matmul precision), `XLA_FLAGS` (less dumps) and the versions of jax, jaxlib and
        ntkbench. Two runtimes with the same description reproduce each other's records bit
        for bit; with different ones they need not (docs/errors.md). `id` is its hash."""
        import importlib.metadata

        import jax
        import jaxlib

        try:
            version = importlib.metadata.version("ntkbench")
        except importlib.metadata.PackageNotFoundError:
            version = "0+unknown"
        flags = sorted(f for f in os.environ.get("XLA_FLAGS", "").split()
                       if not f.startswith(_NEUTRAL_XLA_FLAGS))
        out = {"platform": self.platform, "device_kind": self.device_kind,
               "num_devices": self.num_devices, "num_processes": self.num_processes,
               "sequential_members": self.sequential,
               "x64": bool(jax.config.jax_enable_x64),
               "matmul_precision": str(jax.config.jax_default_matmul_precision),
               "xla_flags": " ".join(flags), "jax": jax.__version__,
               "jaxlib": jaxlib.__version__, "ntkbench": version}
        return {**out, "id": runtime_id(out)}

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


def runtime_id(description: dict) -> str:
    """A short hash of a runtime's description (its `id` key left out)."""
    d = {k: v for k, v in description.items() if k != "id"}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def device_memory(device) -> int | None:
    """Bytes a device can hold: its allocator's limit, or, for a CPU, the memory this process
    may use (`host_memory_limit`)."""
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - not every backend reports memory
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        return host_memory_limit()[0]
    return None


#: cgroup limits at or above this mean "no limit" (v1 writes 2^63 rounded down to a page).
_UNLIMITED = 2**60


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # "max" (v2: no limit), or garbage
    value = int(text)
    return value if 0 < value < _UNLIMITED else None


def _cgroup_limit(path_in_root: str, root: str, filename: str) -> int | None:
    """The smallest `filename` limit from the process's cgroup up to the hierarchy's root (a
    parent's limit binds its children too); also `root/filename` itself, for a cgroup
    namespace whose own cgroup is the root of what is mounted."""
    limits = []
    parts = [p for p in path_in_root.strip("/").split("/") if p]
    for k in range(len(parts), -1, -1):
        limit = _read_int(os.path.join(root, *parts[:k], filename))
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def host_memory_limit(*, cgroup_root: str = "/sys/fs/cgroup",
                      proc_cgroup: str = "/proc/self/cgroup", environ=None,
                      physical: int | None = None) -> tuple[int | None, str]:
    """The memory this process may use, and where that bound comes from.

    The smallest of: the cgroup v2 limit (`memory.max` of the process's cgroup and its
    parents), the cgroup v1 limit (`memory/.../memory.limit_in_bytes`), SLURM's allocation
    (`SLURM_MEM_PER_NODE`, or `SLURM_MEM_PER_CPU` x the CPUs on the node; MiB), and the
    physical memory. A job over its cgroup limit is killed by the kernel without a word, so
    the sweep's estimate is checked against this before anything runs. The paths and the
    environment are arguments for tests.

    Returns:
        `(bytes or None, description)`, e.g. `(3221225472, "the cgroup v2 limit ...")`.
    """
    environ = os.environ if environ is None else environ
    found: list[tuple[int, str]] = []
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2 (the unified hierarchy)
            limit = _cgroup_limit(path, cgroup_root, "memory.max")
            if limit is None:  # a hybrid layout mounts v2 at unified/
                limit = _cgroup_limit(path, os.path.join(cgroup_root, "unified"), "memory.max")
            if limit is not None:
                found.append((limit, f"the cgroup v2 limit (memory.max of {path})"))
        elif "memory" in controllers.split(","):
            limit = _cgroup_limit(path, os.path.join(cgroup_root, "memory"),
                                  "memory.limit_in_bytes")
            if limit is not None:
                found.append((limit, f"the cgroup v1 limit (memory.limit_in_bytes of {path})"))
    mib = 2**20
    try:
        if environ.get("SLURM_MEM_PER_NODE"):
            found.append((int(environ["SLURM_MEM_PER_NODE"]) * mib,
                          "SLURM's allocation (SLURM_MEM_PER_NODE)"))
        elif environ.get("SLURM_MEM_PER_CPU"):
            cpus = environ.get("SLURM_CPUS_ON_NODE") or environ.get("SLURM_CPUS_PER_TASK") or "1"
            found.append((int(environ["SLURM_MEM_PER_CPU"]) * mib * int(cpus.split("(")[0]),
                          f"SLURM's allocation (SLURM_MEM_PER_CPU x {cpus} CPUs)"))
    except ValueError:
        pass  # not numbers: not a limit we can read
    if physical is None:
        try:
            physical = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError):
            physical = None
    if physical:
        found.append((physical, "the physical memory"))
    if not found:
        return None, "unknown"
    return min(found)
