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


def test_every_stored_name_is_described():
    """Every variable a sweep can store (all options on), every coordinate and every stored
    summary has CF attributes: long_name, units and a description."""
    from ntkbench._config import ATTRS, AXES, STORED_SUMMARIES, stored_variables

    config = ntkbench.preset("smoke", linearized=True, kernel_velocity=True, layer_ntks=True,
                             curvature_every=1)
    names = [n for group in stored_variables(config, 10).values() for n in group]
    slq = ntkbench.preset("smoke", ntk_spectrum="slq")
    names += [n for group in stored_variables(slq, 10).values() for n in group]
    for name in {*names, *AXES, "epoch", "row", "col", "lr", *STORED_SUMMARIES}:
        assert set(ATTRS[name]) == {"long_name", "units", "description"}, name
        assert all(ATTRS[name].values()), name


def test_the_store_describes_itself_and_holds_the_summaries(tmp_path):
    """A plain xarray.open_zarr of a finished sweep shows units, descriptions and the
    summaries, equal to ntkbench.load's; load's own values are unchanged by them."""
    w = str(tmp_path / "w")
    config = ntkbench.preset("smoke", epochs=10)
    ntkbench.run(config, w, hooks=ntkbench.Hooks.quiet(), tensorboard=False)
    raw = xr.open_zarr(f"{w}/results", consolidated=False, zarr_format=3)
    for name in list(raw.data_vars) + list(raw.coords):
        assert {"long_name", "units", "description"} <= set(raw[name].attrs), name
    assert raw["test_loss"].attrs["long_name"] == "test loss"
    ds = ntkbench.load(w)
    for name in ("T0", "T_star", "trace_ratio", "erank_star", "alpha_star",
                 "alpha_star_at_edge", "kernel_distance_star", "adaptation_rate"):
        assert name in raw, name
        assert np.array_equal(raw[name].values, ds[name].transpose(*raw[name].dims).values,
                              equal_nan=True), name
    assert np.array_equal(raw["k_star"].values, ds["k_star"].values)  # stored by every pack
    assert "T0" not in ntkbench.load(w, summaries=False)  # derived: load computes them

    # An extension grows the grid: the old summaries go, the grown sweep's are stored.
    grown = ntkbench.preset("smoke", epochs=10, widths=(4, 16, 32))
    ntkbench.run(grown, w, hooks=ntkbench.Hooks.quiet(), tensorboard=False, extend=True)
    raw = xr.open_zarr(f"{w}/results", consolidated=False, zarr_format=3)
    assert raw["T0"].sizes["width"] == 3 and np.isfinite(raw["T0"].values).all()
