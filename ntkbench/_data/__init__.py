"""The data of a sweep: datasets in memory (`Dataset`, with a content fingerprint), the built-in
ones and the readers of the standard files, training subsets and the noisy replacement of the
noise-scaling experiment, and grain's per-member minibatch orders (docs/datasets.md).

Depends on `ntkbench._config` only.
"""

from ntkbench._data.dataset import Dataset
from ntkbench._data.datasets import check_data, digits_split, load_dataset, synthetic_dataset
from ntkbench._data.noise import apply_noisy_replacement, draw_indices, noisy_replacement
from ntkbench._data.pipeline import MinibatchSchedule
from ntkbench._data.readers import DATA_ENV_VAR, resolve_root

__all__ = [
    "DATA_ENV_VAR", "apply_noisy_replacement", "check_data", "Dataset", "digits_split",
    "draw_indices", "load_dataset", "MinibatchSchedule", "noisy_replacement", "resolve_root",
    "synthetic_dataset",
]
