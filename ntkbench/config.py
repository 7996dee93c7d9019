"""Public config API: presets, the frozen `SweepConfig` and its validation."""

from ntkbench._config import AXES as AXES
from ntkbench._config import PRESETS as PRESETS
from ntkbench._config import ConfigError as ConfigError
from ntkbench._config import SweepConfig as SweepConfig
from ntkbench._config import from_config_dict as from_config_dict
from ntkbench._config import get_config as get_config
from ntkbench._config import validate as validate
from ntkbench._config import extend as extend
from ntkbench._config import same_sweep as same_sweep
