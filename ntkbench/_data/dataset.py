"""The in-memory form of a dataset: host arrays, read-only, with a content fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np


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

    def fingerprint(self) -> dict:
        """What identifies these arrays: the dataset name, the split sizes and a SHA-256 of
        every array's bytes (a resume refuses other data than a sweep was trained on)."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(np.ascontiguousarray(a).data)
        return {"dataset": self.name, "sha256": h.hexdigest(), "num_train": len(self.y_train),
                "num_test": len(self.y_test), "input_shape": list(self.input_shape),
                "num_classes": int(self.num_classes)}
