"""What a sweep is, and how it fails: the frozen config, the presets, every stored name, the
errors and their exit statuses.

The bottom of the library: it imports nothing else of ntkbench and nothing of JAX, so the
command line can check flags and configs, list presets and print help without starting JAX.
Every other group takes config fields, stored names and errors from here.
"""

from ntkbench._config.config import (
    DATASETS,
    EIGENSOLVERS,
    EXTENSIBLE,
    FIELDS,
    INITS,
    LOSSES,
    LR_AXES,
    MODELS,
    NOT_RESULTS,
    NTK_KERNELS,
    NTK_METHODS,
    NTK_SPECTRA,
    OPTIMIZERS,
    PARAMETRIZATIONS,
    RUN_SETTINGS,
    SLQ_METHODS,
    Eigensolver,
    NtkKernel,
    NtkSpectrum,
    Optimizer,
    Parametrization,
    SweepConfig,
    extend,
    format_lr_table,
    from_config_dict,
    parse_shard,
    same_sweep,
    stored,
    validate,
    with_run_settings,
)
from ntkbench._config.errors import (
    ConfigError,
    DatasetError,
    DatasetNotFoundError,
    ExitStatus,
    Hung,
    IntegrityError,
    Interrupted,
    NtkbenchError,
    ResourceError,
    StorageError,
    WorkdirError,
    storage_error,
    storage_guard,
)
from ntkbench._config.presets import PRESETS, get_config, preset
from ntkbench._config.schema import (
    ATTRS,
    AXES,
    BEST_SOURCES,
    BEST_VARIABLES,
    CURVATURE,
    CURVATURE_ADAM,
    EPOCH_VARIABLES,
    LAYER_VARIABLES,
    LINEARIZED,
    MEMBER_VARIABLES,
    NTK_EXACT,
    NTK_EXACT_ONLY,
    NTK_RECORD_KEYS,
    NTK_STDERR,
    NTK_VARIABLES,
    NTK_VELOCITY,
    REPLICATE_AXES,
    SETTING_VARIABLES,
    SNAPSHOTS,
    STORED_SUMMARIES,
    SUMMARY_SERIES,
    SUMMARY_VARIABLES,
    TEST_METRICS,
    Group,
    group_of,
    stored_variables,
)
from ntkbench._config.schema import (
    LOSSES as LOSS_VARIABLES,
)

__all__ = [
    "format_lr_table", "CURVATURE", "CURVATURE_ADAM", "NTK_KERNELS", "NtkKernel", "Optimizer", "Parametrization", "PARAMETRIZATIONS", "ATTRS", "STORED_SUMMARIES", "LR_AXES", "SETTING_VARIABLES", "NTK_EXACT_ONLY", "NTK_RECORD_KEYS", "SLQ_METHODS", "Eigensolver", "NtkSpectrum", "preset", "AXES", "BEST_SOURCES", "BEST_VARIABLES", "DATASETS", "EIGENSOLVERS", "EPOCH_VARIABLES",
    "EXIT_INTERRUPTED",
    "ExitStatus", "EXTENSIBLE", "FIELDS", "INITS", "LAYER_VARIABLES", "LINEARIZED",
    "LOSS_VARIABLES", "LOSSES", "MEMBER_VARIABLES", "MODELS", "NOT_RESULTS", "NTK_EXACT",
    "NTK_METHODS", "NTK_SPECTRA", "NTK_STDERR", "NTK_VARIABLES", "NTK_VELOCITY", "OPTIMIZERS",
    "PRESETS", "REPLICATE_AXES", "RUN_SETTINGS", "SNAPSHOTS", "SUMMARY_SERIES",
    "SUMMARY_VARIABLES", "TEST_METRICS", "ConfigError", "DatasetError", "DatasetNotFoundError",
    "extend", "from_config_dict", "get_config", "Group", "group_of", "Hung", "IntegrityError",
    "Interrupted", "NtkbenchError", "parse_shard", "ResourceError", "same_sweep", "storage_error",
    "storage_guard", "StorageError", "stored", "stored_variables", "SweepConfig", "validate",
    "with_run_settings", "WorkdirError",
]
