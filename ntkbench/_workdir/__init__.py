"""The workdir of a sweep as files: its lock, its manifest (config, data fingerprint, pack plan)
and the status file of every pack, written atomically.

Light on purpose (json and the standard library): `ntkbench status` reads a sweep through it
without starting JAX. Depends on `ntkbench._config`.
"""

from ntkbench._workdir.status import PackStatus, SweepStatus, sweep_status
from ntkbench._workdir.workdir import (
    MANIFEST,
    Workdir,
    atomic_json,
    check_data_fingerprint,
    known_fingerprints,
    manifest_digest,
    read_json,
)

__all__ = [
    "MANIFEST", "PackStatus", "SweepStatus", "sweep_status", "atomic_json", "check_data_fingerprint", "known_fingerprints", "manifest_digest", "read_json", "Workdir",
]
