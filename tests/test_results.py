"""Results store: dimension names readable by xarray, crash-safe commits, no silent rewrites."""

import numpy as np
import pytest
import xarray as xr

import ntkbench
from ntkbench import IntegrityError as ResultsError
from ntkbench import load
from ntkbench._store import ResultsStore


def _store(tmp_path):
    c = ntkbench.preset("smoke", **{"epochs": 4})
    return c, ResultsStore(str(tmp_path / "results"), c, 10)


def test_open_directly_with_xarray(tmp_path):
    c, store = _store(tmp_path)
    ds = xr.open_zarr(str(tmp_path / "results"), consolidated=False, zarr_format=3)
    assert ds["train_loss"].dims == ("parametrization", "depth", "width", "n_train", "noise", "data_draw", "seed", "epoch")
    assert list(ds["width"].values) == list(c.widths)


def test_uncommitted_records_read_as_nan(tmp_path):
    c, store = _store(tmp_path)
    idx = [(0, 0, 0, 0, 0, 0, 0), (0, 0, 1, 0, 0, 0, 1)]
    store.write_records(idx, 0, {"train_loss": np.ones((3, 2))})
    store.commit(idx, 1)  # records 0 and 1 are complete; 2 was written but not committed
    ds = load(str(tmp_path), summaries=False)
    v = ds["train_loss"].values[0, 0, 0, 0, 0, 0, 0]
    assert v[0] == 1 and v[1] == 1 and np.isnan(v[2]) and np.isnan(v[3])


def test_rewrite_must_reproduce_committed_records(tmp_path):
    c, store = _store(tmp_path)
    idx = [(0, 0, 0, 0, 0, 0, 0)]
    store.write_records(idx, 0, {"test_loss": np.arange(3.0)[:, None]})
    store.commit(idx, 2)
    store.write_records(idx, 1, {"test_loss": np.array([[1.0], [2.0], [7.0]])})  # same bits: fine
    with pytest.raises(ResultsError, match="Refusing to overwrite"):
        store.write_records(idx, 1, {"test_loss": np.array([[1.5]])})
    assert store.arrays["test_loss"][idx[0]].read().result()[1] == 1.0
