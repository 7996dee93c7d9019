"""Image-classification datasets and on-device subset/noise helpers (SPEC.md §10).

Every dataset is returned as a `Dataset`: float32 channels-last pixels in `[0, 1]` and int32
labels, as host (NumPy) arrays. No file format here is ever unpickled.

Datasets:

- `digits`: built in (scikit-learn `load_digits`), needs no files. 1797 grayscale 8x8 images,
  pixel values `/16`. scikit-learn has no official split, so ntkbench fixes one: a stratified
  split with 500 test images. Each class `c` with `n_c` images gets `t_c` test images, the
  largest-remainder apportionment of 500 by class size; the test images of class `c` are the
  first `t_c` of that class in the order of `np.random.default_rng(0).permutation(1797)`. Both
  sets keep scikit-learn's original sample order.
- `synthetic`: procedurally generated for tests (`synthetic_dataset`): one random prototype image
  per class plus Gaussian pixel noise, clipped to `[0, 1]`; deterministic and learnable.
- `mnist`, `fashion_mnist`: the IDX files `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each plain or gzipped (`.gz`). Names
  with a dot before `idx` (`train-images.idx3-ubyte`) are accepted too.
- `cifar10`: the CIFAR-10 *binary* version (`data_batch_1.bin` ... `data_batch_5.bin`,
  `test_batch.bin`; records of 1 label byte + 3072 pixel bytes, channel-major 3x32x32),
  from https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz. The python version is pickled
  and is refused.
- `cifar4`: CIFAR-10 restricted to airplane, automobile, bird and cat (labels 0..3, unchanged).

Where files are looked for. The root is `data_dir`, else the environment variable
`NTKBENCH_DATA`. Inside the root these folders are tried in order, and the first one that holds
the complete set of files is used:

- `mnist`: `<root>/mnist`, `<root>/MNIST/raw`, `<root>/MNIST`, `<root>`
- `fashion_mnist`: `<root>/fashion_mnist`, `<root>/fashion-mnist`, `<root>/FashionMNIST/raw`,
  `<root>/FashionMNIST`, `<root>`
- `cifar10`, `cifar4`: `<root>/cifar-10-batches-bin`, `<root>/cifar10`, `<root>/cifar-10`,
  `<root>`

Within a folder a plain file is preferred to its `.gz`. The root itself comes last, so a root
that holds MNIST's files directly would also answer for `fashion_mnist`: keep the two datasets in
their own subfolders.

Validation. IDX magic numbers (2049 for labels, 2051 for images: unsigned bytes, big-endian
dimensions), file lengths against the header, equal image and label counts, labels in `0..9`,
CIFAR file lengths a multiple of 3073. Any violation raises `DatasetError` naming the file and
what was expected vs found; a dataset that is not there raises `DatasetNotFoundError`.

Subsets and noise (`draw_indices`, `noisy_replacement`, `apply_noisy_replacement`) are pure JAX:
jittable, vmappable over keys (and over noise fractions), with static output shapes.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

DATA_ENV_VAR = "NTKBENCH_DATA"
CIFAR10_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
DATASET_NAMES = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar4")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
DIGITS_NUM_TEST = 500
DIGITS_SPLIT_SEED = 0

_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_SUBDIRS = {
    "mnist": ("mnist", "MNIST/raw", "MNIST", "."),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw", "FashionMNIST", "."),
}
_CIFAR_SUBDIRS = ("cifar-10-batches-bin", "cifar10", "cifar-10", ".")
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch.bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR4_CLASSES = 4
_NUM_CLASSES = 10


class DatasetError(ValueError):
    """A dataset file is malformed: wrong magic number, truncated, inconsistent, bad labels."""


class DatasetNotFoundError(DatasetError):
    """The files of a dataset were not found (or only in a refused format)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An image-classification dataset held on the host.

    The arrays are made read-only, so a `Dataset` can be shared safely.

    Attributes:
        name: the name given to `load_dataset` (or `"synthetic"`).
        x_train: float32 `(N, H, W, C)` pixels in `[0, 1]`, channels last.
        y_train: int32 `(N,)` labels in `[0, num_classes)`.
        x_test: float32 `(M, H, W, C)`.
        y_test: int32 `(M,)`.
        num_classes: the number of classes `O`.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not (isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype == np.float32):
                raise TypeError(
                    f"Dataset {self.name!r}: x_{split} must be a float32 numpy array (N, H, W, C);"
                    f" got {type(x).__name__} {getattr(x, 'dtype', '')}"
                    f"{getattr(x, 'shape', '')}. Convert with np.asarray(x, np.float32)."
                )
            if not (isinstance(y, np.ndarray) and y.shape == x.shape[:1] and y.dtype == np.int32):
                raise TypeError(
                    f"Dataset {self.name!r}: y_{split} must be an int32 numpy array of shape"
                    f" {x.shape[:1]}; got {type(y).__name__} {getattr(y, 'dtype', '')}"
                    f"{getattr(y, 'shape', '')}."
                )
            x.flags.writeable = False
            y.flags.writeable = False
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"Dataset {self.name!r}: train images {self.x_train.shape[1:]} and test images"
                f" {self.x_test.shape[1:]} must have the same (H, W, C)."
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """`(H, W, C)` of one image."""
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def input_size(self) -> int:
        """`H * W * C`: the length of one flattened image (an MLP's input size)."""
        return int(np.prod(self.input_shape))

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)},"
            f" input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


# --------------------------------------------------------------------------------------------
# Loading.


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a dataset by name; see the module docstring for the formats and the search order.

    Args:
        name: one of `"digits"`, `"synthetic"`, `"mnist"`, `"fashion_mnist"`, `"cifar10"`,
            `"cifar4"`.
        data_dir: the root folder holding the dataset files; defaults to `$NTKBENCH_DATA`.
            Not used by `digits` and `synthetic`.

    Returns:
        The `Dataset`, with float32 `(N, H, W, C)` images in `[0, 1]` and int32 labels:
        `digits` 8x8x1 (1297 train / 500 test), `synthetic` 8x8x1, `mnist` and
        `fashion_mnist` 28x28x1 (60000 / 10000), `cifar10` 32x32x3 (50000 / 10000), `cifar4`
        32x32x3 (20000 / 4000).

    Raises:
        ValueError: unknown name.
        DatasetNotFoundError: the files are not there.
        DatasetError: a file is malformed.

    Example:
        >>> ds = load_dataset("digits")
        >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
        ((1297, 8, 8, 1), (500, 8, 8, 1), 10)
    """
    if name == "digits":
        return _load_digits()
    if name == "synthetic":
        return synthetic_dataset()
    if name in _IDX_SUBDIRS:
        return _load_idx_dataset(name, _resolve_root(data_dir))
    if name in ("cifar10", "cifar4"):
        return _load_cifar(name, _resolve_root(data_dir))
    raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}.")


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


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    bunch = load_digits()
    x = (np.asarray(bunch.images, np.float32) / 16.0)[..., None]
    y = np.asarray(bunch.target, np.int32)
    train, test = digits_split(y)
    return Dataset("digits", x[train], y[train], x[test], y[test], _NUM_CLASSES)


def _resolve_root(data_dir) -> Path | None:
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV_VAR) or None
    return None if data_dir is None else Path(data_dir).expanduser()


def _candidate_dirs(root: Path, subdirs: Sequence[str]) -> list[Path]:
    return [root if s == "." else root / s for s in subdirs]


def _not_found(name: str, root: Path | None, looked: Sequence[Path], files: str, extra=""):
    where = (
        f"looked in {', '.join(str(d) for d in looked)}"
        if root is not None
        else f"no data directory was given (data_dir=None and ${DATA_ENV_VAR} is unset)"
    )
    return DatasetNotFoundError(
        f"Dataset {name!r} not found: {where}; expected the files {files}{extra}. Pass"
        f" data_dir=... or set {DATA_ENV_VAR} to the folder that holds them (or use the built-in"
        f" 'digits' dataset, which needs no files)."
    )


# IDX (MNIST, Fashion-MNIST).


def _idx_file(directory: Path, stem: str) -> Path | None:
    variants = (stem, stem.replace("-idx", ".idx"))
    for base in variants:
        for name in (base, base + ".gz"):
            if (directory / name).is_file():
                return directory / name
    return None


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(
            f"{path}: expected a complete gzip file, found a damaged one ({e}); download it again."
        ) from None


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read and validate one unsigned-byte IDX file (plain or `.gz`).

    Args:
        path: the file.
        magic: the expected magic number: 2049 for labels (1 dimension), 2051 for images
            (3 dimensions).

    Returns:
        uint8 array of the shape in the header: `(n,)` for labels, `(n, rows, cols)` for images.

    Raises:
        DatasetError: wrong magic number, or a length that disagrees with the header.
    """
    path = Path(path)
    data = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise DatasetError(
            f"{path}: expected an IDX file with magic number {magic}, found only {len(data)} bytes."
        )
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(
            f"{path}: expected IDX magic number {magic} (unsigned bytes, {ndim}-d), found {found};"
            f" is this the right file (labels are 2049, images 2051)?"
        )
    if len(data) < header:
        raise DatasetError(
            f"{path}: expected a {header}-byte IDX header, found only {len(data)} bytes"
            f" (truncated)."
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DatasetError(
            f"{path}: expected {expected} bytes for dimensions {dims}, found {len(data)}"
            f" ({'truncated' if len(data) < expected else 'trailing data'})."
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and labels.max() >= num_classes:
        raise DatasetError(
            f"{path}: expected labels in 0..{num_classes - 1}, found {int(labels.max())}."
        )


def _load_idx_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, _IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, _IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DatasetError(
            f"{labels_path}: expected {len(images)} labels to match {images_path.name},"
            f" found {len(labels)}."
        )
    _check_labels(labels_path, labels, _NUM_CLASSES)
    x = (images.astype(np.float32) / 255.0)[..., None]
    return x, labels.astype(np.int32)


def _load_idx_dataset(name: str, root: Path | None) -> Dataset:
    looked = [] if root is None else _candidate_dirs(root, _IDX_SUBDIRS[name])
    partial = []
    for directory in looked:
        paths = {k: _idx_file(directory, stem) for k, stem in _IDX_STEMS.items()}
        if all(p is not None for p in paths.values()):
            x_train, y_train = _load_idx_split(paths["train_images"], paths["train_labels"])
            x_test, y_test = _load_idx_split(paths["test_images"], paths["test_labels"])
            if x_train.shape[1:] != x_test.shape[1:]:
                raise DatasetError(
                    f"{paths['test_images']}: expected images of {x_train.shape[1:3]} like the"
                    f" training set, found {x_test.shape[1:3]}."
                )
            return Dataset(name, x_train, y_train, x_test, y_test, _NUM_CLASSES)
        if any(p is not None for p in paths.values()):
            missing = [_IDX_STEMS[k] for k, p in paths.items() if p is None]
            partial.append(f"{directory} lacks {', '.join(missing)}")
    files = ", ".join(f"{s}[.gz]" for s in _IDX_STEMS.values())
    extra = f" ({'; '.join(partial)})" if partial else ""
    raise _not_found(name, root, looked, files, extra)


# CIFAR-10 binary.


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one CIFAR-10 binary batch file.

    Args:
        path: a `*.bin` file of records `<1 label byte><3072 pixel bytes: R, G, B planes, 32x32>`.

    Returns:
        `(images, labels)`: uint8 `(n, 32, 32, 3)` (channels last) and uint8 `(n,)`.

    Raises:
        DatasetError: a length that is not a positive multiple of 3073, or a label above 9.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise DatasetError(
            f"{path}: expected a positive multiple of {_CIFAR_RECORD} bytes (1 label + 3072 pixel"
            f" bytes per image), found {len(data)} (truncated or not a CIFAR-10 binary batch)."
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    _check_labels(path, labels, _NUM_CLASSES)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def _load_cifar(name: str, root: Path | None) -> Dataset:
    looked = [] if root is None else _candidate_dirs(root, _CIFAR_SUBDIRS)
    wanted = (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE)
    partial = []
    for directory in looked:
        present = [(directory / f).is_file() for f in wanted]
        if all(present):
            train = [read_cifar_batch(directory / f) for f in _CIFAR_TRAIN_FILES]
            x_train = np.concatenate([x for x, _ in train])
            y_train = np.concatenate([y for _, y in train])
            x_test, y_test = read_cifar_batch(directory / _CIFAR_TEST_FILE)
            num_classes = _NUM_CLASSES
            if name == "cifar4":
                num_classes = _CIFAR4_CLASSES
                keep_train, keep_test = y_train < num_classes, y_test < num_classes
                x_train, y_train = x_train[keep_train], y_train[keep_train]
                x_test, y_test = x_test[keep_test], y_test[keep_test]
            return Dataset(
                name,
                x_train.astype(np.float32) / np.float32(255.0),
                y_train.astype(np.int32),
                x_test.astype(np.float32) / np.float32(255.0),
                y_test.astype(np.int32),
                num_classes,
            )
        if any(present):
            missing = [f for f, p in zip(wanted, present) if not p]
            partial.append(f"{directory} lacks {', '.join(missing)}")
    if root is not None:
        for directory in [root / "cifar-10-batches-py", *looked]:
            if (directory / "data_batch_1").is_file() or (directory / "test_batch").is_file():
                raise DatasetNotFoundError(
                    f"Dataset {name!r}: found only the CIFAR-10 python (pickle) version in"
                    f" {directory}, which ntkbench never unpickles; download the binary version"
                    f" {CIFAR10_BINARY_URL} and extract it into {root} (it unpacks to"
                    f" cifar-10-batches-bin/)."
                )
    extra = f" ({'; '.join(partial)})" if partial else ""
    files = f"{', '.join(wanted)} (the binary version, {CIFAR10_BINARY_URL})"
    raise _not_found(name, root, looked, files, extra)


# --------------------------------------------------------------------------------------------
# Subsets and noise: pure JAX.


def draw_indices(
    key: PRNGKeyArray, labels: Int[ArrayLike, " n_total"], n: int
) -> Int[Array, " n"]:
    """`n` distinct training indices drawn uniformly at random, without replacement.

    One draw of the training data (SPEC.md §10 data scaling): every size-`n` subset is equally
    likely, classes are not balanced. Jittable (`n` static) and vmappable over `key`.

    Args:
        key: a PRNG key.
        labels: `(n_total,)` training labels; only their number is used.
        n: the subset size, a Python int with `0 <= n <= n_total`.

    Returns:
        int32 `(n,)` distinct indices into the training set, in random order.

    Example:
        >>> idx = draw_indices(jax.random.key(0), jnp.zeros(10, jnp.int32), 4)
        >>> idx.shape, len(set(idx.tolist()))
        ((4,), 4)
    """
    n_total = int(jnp.shape(labels)[0])
    n = int(n)
    if not 0 <= n <= n_total:
        raise ValueError(
            f"draw_indices: cannot draw n={n} distinct samples from a training set of {n_total};"
            f" use 0 <= n <= {n_total}."
        )
    return jax.random.permutation(key, n_total)[:n].astype(jnp.int32)


def check_noise_fractions(fraction: float | ArrayLike) -> np.ndarray:
    """Host-side check that each noise fraction lies in `[0, 1)`; call it before tracing.

    Args:
        fraction: a number or an array of them (e.g. the noise levels to vmap over).

    Returns:
        The fractions as a float64 NumPy array of the same shape.

    Raises:
        ValueError: a fraction outside `[0, 1)` or not finite.
    """
    f = np.asarray(fraction, np.float64)
    bad = f[~((f >= 0) & (f < 1))]
    if bad.size:
        raise ValueError(
            f"Noise fractions must lie in [0, 1) (0 = clean data; some sample of each class must"
            f" stay clean); got {bad.tolist()}."
        )
    return f


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def noisy_replacement(
    key: PRNGKeyArray,
    labels: Int[ArrayLike, " n"],
    fraction: float | Float[ArrayLike, ""],
    num_classes: int,
) -> tuple[Int[Array, " n"], Bool[Array, " n"]]:
    """Which samples to replace by noisy copies of other samples of their class (SPEC.md §10).

    In class `c` with `n_c` samples, `k_c = min(round(fraction * n_c), n_c - 1)` samples, chosen
    uniformly at random, are replaced (`round` halves to even; the cap keeps one clean source in
    a class so small that rounding would replace all of it). Each replaced sample independently
    copies a uniformly chosen non-replaced sample of the same class. The caller then forms

        x_noisy = x[src_idx] + noisy[:, None, ...] * std * normal

    (`apply_noisy_replacement` does exactly that). Output shapes do not depend on `fraction`, so
    this is jittable and vmappable over `key` and over a traced `fraction`; validate fractions
    on the host with `check_noise_fractions` (done here when `fraction` is concrete).

    Args:
        key: a PRNG key.
        labels: int `(n,)` labels in `[0, num_classes)`.
        fraction: the fraction of each class to replace, in `[0, 1)`; may be traced.
        num_classes: the number of classes (static).

    Returns:
        `(src_idx, noisy)`: int32 `(n,)` source of every sample (`i` itself when not replaced,
        else a non-replaced sample of the same class) and bool `(n,)` marking the replaced ones.
        `fraction = 0` gives `(arange(n), all False)`.

    Example:
        >>> labels = jnp.array([0, 0, 0, 0, 1, 1, 1, 1])
        >>> src, noisy = noisy_replacement(jax.random.key(0), labels, 0.5, 2)
        >>> int(noisy.sum()), bool(jnp.all(labels[src] == labels)), bool(jnp.any(noisy[src]))
        (4, True, False)
    """
    if _is_concrete(fraction):
        check_noise_fractions(fraction)
    if _is_concrete(labels):
        lab = np.asarray(labels)
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise ValueError(
                f"noisy_replacement: labels must lie in [0, {num_classes}) for num_classes="
                f"{num_classes}; found {int(lab.min())}..{int(lab.max())}."
            )
    labels = jnp.asarray(labels, jnp.int32)
    n = labels.shape[0]
    key_order, key_src = jax.random.split(key)
    # Sort by (class, random priority): inside each class, the first k_c are replaced.
    order = jnp.lexsort((jax.random.uniform(key_order, (n,)), labels))
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    counts = jnp.bincount(labels, length=num_classes).astype(jnp.int32)
    starts = jnp.cumsum(counts) - counts
    fraction = jnp.asarray(fraction, jnp.float32)
    k = jnp.round(fraction * counts.astype(jnp.float32)).astype(jnp.int32)
    k = jnp.clip(k, 0, jnp.maximum(counts - 1, 0))
    start, count, k_c = starts[labels], counts[labels], k[labels]
    noisy = rank - start < k_c
    # Sources: positions start + k_c .. start + count - 1 in the sorted order are the clean ones.
    num_clean = jnp.maximum(count - k_c, 1)
    offset = jnp.floor(jax.random.uniform(key_src, (n,)) * num_clean).astype(jnp.int32)
    offset = jnp.minimum(offset, num_clean - 1)
    src = jnp.where(noisy, order[jnp.minimum(start + k_c + offset, n - 1)], jnp.arange(n))
    return src.astype(jnp.int32), noisy


def apply_noisy_replacement(
    key: PRNGKeyArray,
    x: Float[ArrayLike, "n *shape"],
    labels: Int[ArrayLike, " n"],
    fraction: float | Float[ArrayLike, ""],
    num_classes: int,
    std: float = 0.01,
) -> Float[Array, "n *shape"]:
    """Replace a `fraction` of each class by noisy copies of its other samples (SPEC.md §10).

    `key` splits into `(k_replace, k_noise)`; the replacement is
    `noisy_replacement(k_replace, labels, fraction, num_classes)` (call it with that key to get
    the `noisy` mask) and the result is `x[src_idx] + noisy * std * normal(k_noise)`. Pixels are
    not clipped back to `[0, 1]`. Jittable and vmappable over `key` and `fraction`.

    Args:
        key: a PRNG key.
        x: float `(n, ...)` samples (images or flattened images).
        labels: int `(n,)` labels.
        fraction: the fraction of each class to replace, in `[0, 1)`; may be traced.
        num_classes: the number of classes (static).
        std: the standard deviation of the Gaussian noise (the paper: 0.01).

    Returns:
        float `(n, ...)`, the dtype of `x`: the new samples; labels are unchanged.

    Example:
        >>> x = jnp.arange(8.0)[:, None]
        >>> labels = jnp.array([0, 0, 0, 0, 1, 1, 1, 1])
        >>> apply_noisy_replacement(jax.random.key(0), x, labels, 0.0, 2).shape
        (8, 1)
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    key_replace, key_noise = jax.random.split(key)
    src, noisy = noisy_replacement(key_replace, labels, fraction, num_classes)
    mask = noisy.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
    noise = jax.random.normal(key_noise, x.shape, x.dtype)
    return x[src] + mask * jnp.asarray(std, x.dtype) * noise
