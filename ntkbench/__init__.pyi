"""The public API of ntkbench (loaded lazily by `__init__.py`; this list is the one place that
names it). Groups of private modules implement it; docs/architecture.md shows how they fit."""

from . import checkpoints as checkpoints
from . import kernels as kernels
from . import models as models
from . import observables as observables
from . import parametrization as parametrization
from ._analysis import kstar_flags as kstar_flags
from ._analysis import summarize as summarize
from ._config import PRESETS as PRESETS
from ._config import ConfigError as ConfigError
from ._config import DatasetError as DatasetError
from ._config import ExitStatus as ExitStatus
from ._config import Hung as Hung
from ._config import IntegrityError as IntegrityError
from ._config import Interrupted as Interrupted
from ._config import NtkbenchError as NtkbenchError
from ._config import StorageError as StorageError
from ._config import SweepConfig as SweepConfig
from ._config import WorkdirError as WorkdirError
from ._config import from_config_dict as from_config_dict
from ._config import get_config as get_config
from ._config import parse_shard as parse_shard
from ._config import preset as preset
from ._profile import coordcheck as coordcheck
from ._profile import coordcheck_slopes as coordcheck_slopes
from ._profile import format_device_table as format_device_table
from ._profile import format_table as format_table
from ._profile import profile_devices as profile_devices
from ._profile import profile_kernels as profile_kernels
from ._profile import profile_model as profile_model
from ._profile import write_coordcheck as write_coordcheck
from ._report import sweep_differences as sweep_differences
from ._report import write_comparison as write_comparison
from ._report import write_report as write_report
from ._store import DamageReport as DamageReport
from ._store import load as load
from ._store import verify as verify
from ._sweep import Calibration as Calibration
from ._sweep import Hooks as Hooks
from ._sweep import Progress as Progress
from ._sweep import ProgressDisplay as ProgressDisplay
from ._sweep import SweepResult as SweepResult
from ._sweep import calibrate as calibrate
from ._sweep import run as run
from ._train import PackBuilder as PackBuilder
from ._train import ReadyPack as ReadyPack
from ._train import Runtime as Runtime
from ._train import build_pack as build_pack
from ._workdir import PackStatus as PackStatus
from ._workdir import SweepStatus as SweepStatus
from ._workdir import sweep_status as sweep_status
from .models import CNN as CNN
from .models import MLP as MLP

__version__: str
