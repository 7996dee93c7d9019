"""ntkbench: fast, exact, resumable studies of training dynamics through the empirical NTK.

The public API (README.md shows a notebook session; docs/ explains every quantity)::

    import ntkbench
    config = ntkbench.SweepConfig(widths=(8, 64, 512), num_seeds=4, epochs=300)
    ntkbench.run(config, "runs/mine")          # trains every member, records the NTK
    ds = ntkbench.load("runs/mine")            # an xarray.Dataset with the summaries
    ntkbench.write_report(ds, "runs/mine/report")

Modules: `ntkbench.kernels` (NTK kernels), `ntkbench.observables` (trace, entropy, effective
rank, alignments, kernel distance), `ntkbench.models` (MLP, CNN), `ntkbench.checkpoints`.
"""

from ntkbench import kernels, models, observables
from ntkbench._analysis import summarize
from ntkbench._config import SweepConfig, from_config_dict
from ntkbench._errors import (
    ConfigError,
    DatasetError,
    Hung,
    IntegrityError,
    Interrupted,
    NtkbenchError,
    StorageError,
    WorkdirError,
)
from ntkbench._presets import PRESETS, get_config
from ntkbench._report import write_report
from ntkbench._results import load, verify
from ntkbench._runner import Hooks, Progress
from ntkbench._runtime import Runtime
from ntkbench._sweep import SweepResult, run
from ntkbench.models import CNN, MLP

__version__ = "0.2.0"

__all__ = [
    "CNN", "MLP", "PRESETS", "ConfigError", "DatasetError", "Hooks", "Hung", "IntegrityError",
    "Interrupted", "NtkbenchError", "Progress", "Runtime", "StorageError", "SweepConfig",
    "SweepResult", "WorkdirError", "from_config_dict", "get_config", "kernels", "load",
    "models", "observables", "run", "summarize", "verify", "write_report",
]
