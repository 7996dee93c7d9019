"""Public dataset API: `load_dataset`, the `Dataset` container, and on-device subset/noise helpers.

See `ntkbench._datasets` for the formats, the file search order (`data_dir`, else
`$NTKBENCH_DATA`) and the fixed split of the built-in `digits` dataset.
"""

from ntkbench._datasets import CIFAR10_BINARY_URL as CIFAR10_BINARY_URL
from ntkbench._datasets import CIFAR10_CLASSES as CIFAR10_CLASSES
from ntkbench._datasets import DATA_ENV_VAR as DATA_ENV_VAR
from ntkbench._datasets import DATASET_NAMES as DATASET_NAMES
from ntkbench._datasets import Dataset as Dataset
from ntkbench._datasets import DatasetError as DatasetError
from ntkbench._datasets import DatasetNotFoundError as DatasetNotFoundError
from ntkbench._datasets import apply_noisy_replacement as apply_noisy_replacement
from ntkbench._datasets import check_noise_fractions as check_noise_fractions
from ntkbench._datasets import digits_split as digits_split
from ntkbench._datasets import draw_indices as draw_indices
from ntkbench._datasets import load_dataset as load_dataset
from ntkbench._datasets import noisy_replacement as noisy_replacement
from ntkbench._datasets import read_cifar_batch as read_cifar_batch
from ntkbench._datasets import read_idx as read_idx
from ntkbench._datasets import synthetic_dataset as synthetic_dataset
