"""Readers of the standard dataset files: MNIST-style IDX and the CIFAR-10 binary version.

Where files are looked for: the root is `data_dir`, else the environment variable `NTKBENCH_DATA`.
Inside the root these folders are tried in order, and the first one holding the complete set of
files is used:

- `mnist`: `<root>/mnist`, `<root>/MNIST/raw`, `<root>/MNIST`, `<root>`
- `fashion_mnist`: `<root>/fashion_mnist`, `<root>/fashion-mnist`, `<root>/FashionMNIST/raw`,
  `<root>/FashionMNIST`, `<root>`
- `cifar10`, `cifar4`: `<root>/cifar-10-batches-bin`, `<root>/cifar10`, `<root>/cifar-10`,
  `<root>`

Within a folder a plain file is preferred to its `.gz`. The root itself comes last, so a root
that holds MNIST's files directly would also answer for `fashion_mnist`: keep the two datasets in
their own subfolders.

Validation: IDX magic numbers (2049 for labels, 2051 for images: unsigned bytes, big-endian
dimensions), file lengths against the header, equal image and label counts, labels in `0..9`,
CIFAR file lengths a multiple of 3073. Any violation raises `DatasetError` naming the file and
what was expected vs found; a dataset that is not there raises `DatasetNotFoundError`. No file
is ever unpickled: the CIFAR-10 python version is refused.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ntkbench._config import DatasetError, DatasetNotFoundError
from ntkbench._data.dataset import Dataset

DATA_ENV_VAR = "NTKBENCH_DATA"
CIFAR10_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

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


def resolve_root(data_dir) -> Path | None:
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


def _unreadable(path: Path, error: OSError) -> DatasetError:
    """A data file or folder that exists but cannot be read (permissions, an I/O error)."""
    why = error.strerror or type(error).__name__
    return DatasetError(
        f"{path}: cannot be read ({why}); give yourself read access to it (and to its folders),"
        f" or point data_dir at a readable copy."
    )


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError as e:  # a folder on the way that cannot be searched
        raise _unreadable(path.parent, e) from None


def _idx_file(directory: Path, stem: str) -> Path | None:
    variants = (stem, stem.replace("-idx", ".idx"))
    for base in variants:
        for name in (base, base + ".gz"):
            if _is_file(directory / name):
                return directory / name
    return None


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        try:
            return path.read_bytes()
        except OSError as e:
            raise _unreadable(path, e) from None
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (PermissionError, IsADirectoryError) as e:
        raise _unreadable(path, e) from None
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
    expected = header + math.prod(dims)  # Python integers: a product of large dims never wraps
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


def load_idx(name: str, root: Path | None) -> Dataset:
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
    data = _read_bytes(path)
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


def load_cifar(name: str, root: Path | None) -> Dataset:
    looked = [] if root is None else _candidate_dirs(root, _CIFAR_SUBDIRS)
    wanted = (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE)
    partial = []
    for directory in looked:
        present = [_is_file(directory / f) for f in wanted]
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
            if _is_file(directory / "data_batch_1") or _is_file(directory / "test_batch"):
                raise DatasetNotFoundError(
                    f"Dataset {name!r}: found only the CIFAR-10 python (pickle) version in"
                    f" {directory}, which ntkbench never unpickles; download the binary version"
                    f" {CIFAR10_BINARY_URL} and extract it into {root} (it unpacks to"
                    f" cifar-10-batches-bin/)."
                )
    extra = f" ({'; '.join(partial)})" if partial else ""
    files = f"{', '.join(wanted)} (the binary version, {CIFAR10_BINARY_URL})"
    raise _not_found(name, root, looked, files, extra)
