"""Datasets: real on-disk formats written byte by byte, clear errors, JAX subset/noise ops."""

import gzip
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkbench._config import DATASETS as DATASET_NAMES
from ntkbench import DatasetError
from ntkbench._config import DatasetNotFoundError
from ntkbench._data import Dataset, digits_split, load_dataset, synthetic_dataset
from ntkbench._data.noise import (
    apply_noisy_replacement,
    check_noise_fractions,
    draw_indices,
    noisy_replacement,
)
from ntkbench._data.readers import CIFAR10_BINARY_URL

IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("NTKBENCH_DATA", raising=False)


# ------------------------------------------------------------------------------------------
# Writers for the exact real formats.


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An unsigned-byte IDX file: big-endian magic (0x0000 08 ndim), big-endian dims, data."""
    array = np.asarray(array, np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write(path, data: bytes, gz: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_idx_dir(directory, gz=False, n_train=7, n_test=3, rows=5, cols=4, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train_images"][0, 0, 0] = 255  # so the scaling reaches exactly 1
    arrays["train_images"][0, 0, 1] = 0
    paths = {k: write(directory / IDX_STEMS[k], idx_bytes(a), gz) for k, a in arrays.items()}
    return arrays, paths


def cifar_bytes(labels, images_chw) -> bytes:
    """CIFAR-10 binary records: <1 label byte><1024 R><1024 G><1024 B>, rows of 32 pixels."""
    images_chw = np.asarray(images_chw, np.uint8).reshape(len(labels), 3072)
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None], images_chw], axis=1)
    return records.tobytes()


def make_cifar_dir(directory, per_batch=6, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    batches = []
    for i in range(1, 6):
        labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        write(directory / f"data_batch_{i}.bin", cifar_bytes(labels, images))
        batches.append((labels, images))
    test_labels = np.arange(n_test, dtype=np.uint8) % 10
    test_images = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    write(directory / "test_batch.bin", cifar_bytes(test_labels, test_images))
    train_labels = np.concatenate([b[0] for b in batches])
    train_images = np.concatenate([b[1] for b in batches])
    return (train_images, train_labels), (test_images, test_labels)


def assert_one_line(err: Exception, *needles: str):
    msg = str(err)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


# ------------------------------------------------------------------------------------------
# IDX: MNIST and Fashion-MNIST.


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, gz):
    arrays, _ = make_idx_dir(tmp_path / "mnist", gz=gz)
    ds = load_dataset("mnist", tmp_path)
    assert isinstance(ds, Dataset) and ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (7, 5, 4, 1) and ds.x_test.shape == (3, 5, 4, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.input_shape == (5, 4, 1) and ds.input_size == 20
    np.testing.assert_array_equal(ds.x_train[..., 0] * 255, arrays["train_images"])
    np.testing.assert_array_equal(ds.x_test[..., 0] * 255, arrays["test_images"])
    np.testing.assert_array_equal(ds.y_train, arrays["train_labels"])
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


def test_fashion_mnist_from_env_var_and_torchvision_layout(tmp_path, monkeypatch):
    arrays, _ = make_idx_dir(tmp_path / "FashionMNIST" / "raw", gz=True, seed=1)
    make_idx_dir(tmp_path / "mnist", seed=2)  # a different dataset next to it is not picked
    monkeypatch.setenv("NTKBENCH_DATA", str(tmp_path))
    ds = load_dataset("fashion_mnist")
    assert ds.name == "fashion_mnist"
    np.testing.assert_array_equal(ds.y_train, arrays["train_labels"])
    np.testing.assert_array_equal(ds.x_test[..., 0] * 255, arrays["test_images"])


def test_idx_in_data_dir_itself_mixed_gz_and_dot_names(tmp_path):
    arrays, paths = make_idx_dir(tmp_path)
    gz_path = write(paths["train_labels"], idx_bytes(arrays["train_labels"]), gz=True)
    paths["train_labels"].unlink()
    assert gz_path.exists()
    dotted = tmp_path / "t10k-images.idx3-ubyte"
    paths["test_images"].rename(dotted)
    ds = load_dataset("mnist", data_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.y_train, arrays["train_labels"])
    np.testing.assert_array_equal(ds.x_test[..., 0] * 255, arrays["test_images"])


def test_idx_truncated_file(tmp_path):
    _, paths = make_idx_dir(tmp_path / "mnist")
    data = paths["train_images"].read_bytes()
    paths["train_images"].write_bytes(data[:-3])
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path)
    assert_one_line(err.value, "train-images-idx3-ubyte", f"expected {len(data)} bytes",
                    f"found {len(data) - 3}", "truncated")  # fmt: skip


def test_idx_truncated_header(tmp_path):
    _, paths = make_idx_dir(tmp_path / "mnist")
    paths["test_labels"].write_bytes(paths["test_labels"].read_bytes()[:6])
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path)
    assert_one_line(err.value, "t10k-labels-idx1-ubyte", "header")


def test_idx_truncated_gzip(tmp_path):
    _, paths = make_idx_dir(tmp_path / "mnist", gz=True)
    data = paths["test_images"].read_bytes()
    paths["test_images"].write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path)
    assert_one_line(err.value, "t10k-images-idx3-ubyte.gz", "gzip")


def test_idx_wrong_magic(tmp_path):
    arrays, paths = make_idx_dir(tmp_path / "mnist")
    # A labels file where the images file should be.
    paths["train_images"].write_bytes(idx_bytes(arrays["train_labels"]))
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path)
    assert_one_line(err.value, "train-images-idx3-ubyte", "2051", "found 2049")


def test_idx_little_endian_dims_rejected(tmp_path):
    arrays, paths = make_idx_dir(tmp_path / "mnist")
    labels = arrays["test_labels"]
    paths["test_labels"].write_bytes(
        struct.pack(">I", 2049) + struct.pack("<I", len(labels)) + labels.tobytes()
    )
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte: expected"):
        load_dataset("mnist", tmp_path)


def test_idx_bad_labels(tmp_path):
    arrays, paths = make_idx_dir(tmp_path / "mnist")
    labels = arrays["train_labels"].copy()
    labels[2] = 10
    paths["train_labels"].write_bytes(idx_bytes(labels))
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path)
    assert_one_line(err.value, "train-labels-idx1-ubyte", "0..9", "found 10")


def test_idx_count_mismatch(tmp_path):
    arrays, paths = make_idx_dir(tmp_path / "mnist")
    paths["test_labels"].write_bytes(idx_bytes(arrays["test_labels"][:2]))
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", tmp_path)
    assert_one_line(err.value, "t10k-labels-idx1-ubyte", "expected 3 labels", "found 2")


def test_idx_missing_file_is_reported(tmp_path):
    _, paths = make_idx_dir(tmp_path / "mnist")
    paths["test_images"].unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", tmp_path)
    assert_one_line(err.value, str(tmp_path / "mnist"), "lacks t10k-images-idx3-ubyte",
                    "NTKBENCH_DATA", "digits")  # fmt: skip


# ------------------------------------------------------------------------------------------
# CIFAR-10 binary.


def test_cifar10_round_trip(tmp_path):
    (x_tr, y_tr), (x_te, y_te) = make_cifar_dir(tmp_path / "cifar-10-batches-bin")
    ds = load_dataset("cifar10", tmp_path)
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (30, 32, 32, 3) and ds.x_test.shape == (5, 32, 32, 3)
    assert ds.input_shape == (32, 32, 3) and ds.input_size == 3072
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int32
    # Batches 1..5 in order; channel-major records become channels-last images.
    np.testing.assert_array_equal(ds.y_train, y_tr)
    np.testing.assert_array_equal(ds.y_test, y_te)
    np.testing.assert_array_equal(ds.x_train * 255, x_tr.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(ds.x_test * 255, x_te.transpose(0, 2, 3, 1))
    # Pixel (row 1, col 2) of the green plane is byte 1 + 1024 + 32 + 2 of the first record.
    raw = (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()
    assert ds.x_train[0, 1, 2, 1] == np.float32(raw[1 + 1024 + 32 + 2] / 255.0)
    assert ds.y_train[1] == raw[3073]
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_cifar4_filters_and_keeps_order(tmp_path):
    (x_tr, y_tr), (x_te, y_te) = make_cifar_dir(tmp_path / "cifar10", n_test=12)
    ds = load_dataset("cifar4", tmp_path)
    assert ds.name == "cifar4" and ds.num_classes == 4
    keep = y_tr < 4
    assert 0 < keep.sum() < len(y_tr)
    np.testing.assert_array_equal(ds.y_train, y_tr[keep])
    np.testing.assert_array_equal(ds.x_train * 255, x_tr[keep].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(ds.y_test, [0, 1, 2, 3, 0, 1])  # test labels were i % 10
    assert set(np.unique(ds.y_train)) <= {0, 1, 2, 3}


def test_cifar_truncated(tmp_path):
    make_cifar_dir(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", tmp_path)
    assert_one_line(err.value, "data_batch_3.bin", "multiple of 3073", f"found {6 * 3073 - 100}")


def test_cifar_bad_label(tmp_path):
    make_cifar_dir(tmp_path)
    path = tmp_path / "test_batch.bin"
    data = bytearray(path.read_bytes())
    data[3073] = 11
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar4", tmp_path)
    assert_one_line(err.value, "test_batch.bin", "0..9", "found 11")


def test_cifar_python_version_is_refused(tmp_path):
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (py / name).write_bytes(b"\x80\x04 not unpickled")
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", tmp_path)
    assert_one_line(err.value, "python", CIFAR10_BINARY_URL, str(py))


def test_cifar_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", tmp_path)
    assert_one_line(err.value, str(tmp_path / "cifar-10-batches-bin"), "test_batch.bin",
                    CIFAR10_BINARY_URL, "NTKBENCH_DATA", "digits")  # fmt: skip


# ------------------------------------------------------------------------------------------
# Missing data, unknown names.


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar4"])
def test_missing_without_data_dir_mentions_env_var(name):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(name)
    assert_one_line(err.value, "NTKBENCH_DATA", "data_dir", "'digits'")
    assert isinstance(err.value, ValueError)


def test_missing_in_empty_dir_lists_places_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("NTKBENCH_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion_mnist")
    assert_one_line(err.value, str(tmp_path / "FashionMNIST" / "raw"), "train-images-idx3-ubyte",
                    "t10k-labels-idx1-ubyte", "NTKBENCH_DATA")  # fmt: skip


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        load_dataset("imagenet")
    assert_one_line(err.value, "imagenet", *DATASET_NAMES)


# ------------------------------------------------------------------------------------------
# Built-in datasets.


def test_digits_shapes_range_and_deterministic_split():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1297, 8, 8, 1) and ds.x_test.shape == (500, 8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 10 and ds.input_size == 64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    again = load_dataset("digits")
    np.testing.assert_array_equal(ds.x_test, again.x_test)
    np.testing.assert_array_equal(ds.y_train, again.y_train)
    # Stratified: each class's test share is within one sample of its proportional quota.
    counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10)
    assert np.all(np.abs(np.bincount(ds.y_test, minlength=10) - 500 * counts / 1797) < 1)


def test_digits_split_partitions():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train, test = digits_split(labels)
    assert len(test) == 500 and len(train) == 1297
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    np.testing.assert_array_equal(digits_split(labels)[1], test)


def test_synthetic_deterministic_and_learnable():
    a, b = synthetic_dataset(), load_dataset("synthetic")
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.x_train.shape == (1000, 8, 8, 1) and a.num_classes == 10
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    assert np.all(np.bincount(a.y_train) == 100)
    other = synthetic_dataset(seed=1)
    assert not np.array_equal(a.x_train, other.x_train)
    # Nearest class mean of the training set classifies the test set.
    x_tr, x_te = a.x_train.reshape(1000, -1), a.x_test.reshape(500, -1)
    means = np.stack([x_tr[a.y_train == c].mean(0) for c in range(10)])
    pred = np.argmin(((x_te[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == a.y_test).mean() > 0.9
    small = synthetic_dataset(12, 6, image_shape=(4, 3, 2), num_classes=3)
    assert small.x_train.shape == (12, 4, 3, 2) and small.input_size == 24


def test_dataset_validates_and_is_read_only():
    ds = synthetic_dataset(10, 5)
    with pytest.raises(ValueError):
        ds.x_train[0, 0, 0, 0] = 2.0
    with pytest.raises(TypeError, match="float32"):
        Dataset("bad", ds.x_train.astype(np.float64), ds.y_train, ds.x_test, ds.y_test, 10)
    with pytest.raises(TypeError, match="int32"):
        Dataset("bad", ds.x_train, ds.y_train.astype(np.int64), ds.x_test, ds.y_test, 10)
    assert "train=10" in repr(ds)


# ------------------------------------------------------------------------------------------
# draw_indices.


def test_draw_indices_unique_deterministic_vmap(key):
    labels = jnp.arange(50) % 10
    idx = draw_indices(key, labels, 20)
    assert idx.dtype == jnp.int32 and idx.shape == (20,)
    assert len(np.unique(np.asarray(idx))) == 20 and 0 <= idx.min() and idx.max() < 50
    np.testing.assert_array_equal(idx, draw_indices(key, labels, 20))
    keys = jax.random.split(key, 8)
    batched = jax.jit(jax.vmap(draw_indices, in_axes=(0, None, None)), static_argnums=2)(
        keys, labels, 20
    )
    assert batched.shape == (8, 20)
    for k, row in zip(keys, batched):
        np.testing.assert_array_equal(row, draw_indices(k, labels, 20))
        assert len(np.unique(np.asarray(row))) == 20
    assert len({tuple(np.sort(np.asarray(r))) for r in batched}) == 8
    np.testing.assert_array_equal(np.sort(draw_indices(key, labels, 50)), np.arange(50))


def test_draw_indices_too_many(key):
    with pytest.raises(ValueError, match="n=11.*10"):
        draw_indices(key, jnp.zeros(10, jnp.int32), 11)


# ------------------------------------------------------------------------------------------
# Noisy replacement (docs/definitions.md §10 noise scaling).

LABELS = np.array([0] * 20 + [1] * 7 + [2] * 3 + [3] * 1 + [4] * 9, np.int32)
NUM_CLASSES = 6  # class 5 is empty


def expected_counts(fraction, labels=LABELS, num_classes=NUM_CLASSES):
    counts = np.bincount(labels, minlength=num_classes)
    k = np.round(np.float32(fraction) * counts.astype(np.float32)).astype(int)
    return np.clip(k, 0, np.maximum(counts - 1, 0))


def check_replacement(src, noisy, fraction, labels=LABELS):
    src, noisy = np.asarray(src), np.asarray(noisy)
    assert src.dtype == np.int32 and noisy.dtype == bool and src.shape == noisy.shape
    n = len(labels)
    np.testing.assert_array_equal(src[~noisy], np.arange(n)[~noisy])  # clean ones stay
    np.testing.assert_array_equal(labels[src], labels)  # sources from the same class
    assert not noisy[src].any()  # sources are never themselves replaced
    np.testing.assert_array_equal(
        np.bincount(labels[noisy], minlength=NUM_CLASSES), expected_counts(fraction, labels)
    )


def test_noisy_replacement_fraction_zero_is_identity(key):
    src, noisy = noisy_replacement(key, LABELS, 0.0, NUM_CLASSES)
    np.testing.assert_array_equal(src, np.arange(len(LABELS)))
    assert not np.asarray(noisy).any()


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.6, 0.9, 0.99])
def test_noisy_replacement_invariants(key, fraction):
    src, noisy = noisy_replacement(key, jnp.asarray(LABELS), fraction, NUM_CLASSES)
    check_replacement(src, noisy, fraction)


def test_noisy_replacement_is_random_over_samples_and_sources(key):
    labels = np.repeat(np.arange(2, dtype=np.int32), 200)
    keys = jax.random.split(key, 20)
    src, noisy = jax.vmap(noisy_replacement, in_axes=(0, None, None, None))(keys, labels, 0.5, 2)
    assert np.asarray(noisy).sum(1).tolist() == [200] * 20
    # Every sample is replaced in some draws and kept in others; many distinct sources are used.
    freq = np.asarray(noisy).mean(0)
    assert 0.1 < freq.min() and freq.max() < 0.9
    assert len(np.unique(np.asarray(src)[0][np.asarray(noisy)[0]])) > 50


def test_noisy_replacement_vmap_over_fractions(key):
    fractions = jnp.array([0.0, 0.05, 0.25, 0.5, 0.8])
    fn = jax.jit(jax.vmap(noisy_replacement, in_axes=(None, None, 0, None)), static_argnums=3)
    src, noisy = fn(key, LABELS, fractions, NUM_CLASSES)
    assert src.shape == noisy.shape == (5, len(LABELS))
    for f, s, m in zip(np.asarray(fractions), src, noisy):
        check_replacement(s, m, f)
        s1, m1 = noisy_replacement(key, LABELS, float(f), NUM_CLASSES)
        np.testing.assert_array_equal(s, s1)
        np.testing.assert_array_equal(m, m1)
    np.testing.assert_array_equal(src[0], np.arange(len(LABELS)))


def test_noisy_replacement_validation(key):
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            noisy_replacement(key, LABELS, bad, NUM_CLASSES)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        check_noise_fractions([0.0, 0.5, 1.2])
    np.testing.assert_array_equal(check_noise_fractions([0.0, 0.5]), [0.0, 0.5])
    with pytest.raises(ValueError, match="labels must lie in"):
        noisy_replacement(key, LABELS, 0.5, 4)


def test_apply_noisy_replacement(key):
    x = jax.random.uniform(jax.random.key(1), (len(LABELS), 4, 4, 2))
    np.testing.assert_array_equal(apply_noisy_replacement(key, x, LABELS, 0.0, NUM_CLASSES), x)
    out = apply_noisy_replacement(key, x, LABELS, 0.5, NUM_CLASSES, std=0.01)
    src, noisy = noisy_replacement(jax.random.split(key)[0], LABELS, 0.5, NUM_CLASSES)
    src, noisy = np.asarray(src), np.asarray(noisy)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(out)[~noisy], np.asarray(x)[~noisy])
    diff = np.asarray(out)[noisy] - np.asarray(x)[src[noisy]]
    assert 0.005 < diff.std() < 0.02 and np.all(diff != 0)
    # vmapped over fractions and keys at once.
    fractions = jnp.array([0.0, 0.5])
    keys = jax.random.split(key, 2)
    fn = jax.vmap(apply_noisy_replacement, in_axes=(0, None, None, 0, None))
    both = fn(keys, x, LABELS, fractions, NUM_CLASSES)
    assert both.shape == (2, *x.shape)
    np.testing.assert_array_equal(both[0], x)
    np.testing.assert_allclose(both[1], apply_noisy_replacement(keys[1], x, LABELS, 0.5, 6))
