"""The results of a sweep: the zarr v3 store written with Tensorstore (`ResultsStore`), finding
and repairing damage (`find_damage`, `repair`), and reading it back (`load`, `verify`).

Depends on `ntkbench._config`, `ntkbench._workdir`, `ntkbench._data`, `ntkbench._train` (the
pack plan) and `ntkbench._analysis` (summaries added on load).
"""

from ntkbench._store.results import DamageReport, load, store_summaries, verify
from ntkbench._store.store import ResultsStore, read_dataset
from ntkbench._store.verify import Damage, describe, find_damage, load_repairs, repair

__all__ = [
    "DamageReport", "Damage", "describe", "find_damage", "load", "load_repairs", "read_dataset", "repair", "ResultsStore",
    "store_summaries", "verify",
]
