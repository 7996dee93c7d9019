"""Matrix-free records inside a sweep (`ntk_spectrum="slq"`): what is stored, against the exact
records of the same members, resume, and the `auto` choice."""

import numpy as np
import pytest

import ntkbench

NTK_EPOCHS = 3  # records at epochs 0, 5, 10


def _config(**kw):
    base = {**ntkbench.get_config("smoke").to_dict(), "widths": (8,), "epochs": 10,
            "chunk_epochs": 5,
            "n_test": 40, "slq_probes": 12, "slq_steps": 30, "slq_deflate": 10}
    return ntkbench.from_config_dict({**base, **kw})


def _records(ds, name):
    """The values of `name` at the NTK epochs (the record axis is last)."""
    return ds[name].sel(epoch=list(ds.attrs["ntk_epochs"])).values


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("slq")
    out = {}
    for mode in ("exact", "slq"):
        w = str(root / mode)
        ntkbench.run(_config(ntk_spectrum=mode), w)
        out[mode] = ntkbench.load(w, summaries=False)
    return out


def test_slq_stores_estimates_with_errors_and_nan_for_vectors(runs):
    ds = runs["slq"]
    for name in ("ntk_entropy_stderr", "ntk_erank_stderr", "label_alignment_stderr",
                 "kernel_distance_init_stderr"):
        assert name in ds, name
        v = _records(ds, name)
        assert v.shape[-1] == NTK_EPOCHS
        # kernel distance is exactly 0 at initialization, with a zero error.
        assert np.all(np.isfinite(v)) and np.all(v >= 0), name
    for name in ("eigvec_misalignment", "label_alignment_traced", "misalignment_clipped"):
        assert np.all(np.isnan(_records(ds, name))), name
    assert "ntk_entropy_stderr" not in runs["exact"]


def test_slq_matches_the_exact_records_of_the_same_members(runs):
    ex, mf = runs["exact"], runs["slq"]
    # Training does not depend on the record mode: the same members, the same losses.
    np.testing.assert_array_equal(ex["train_loss"].values, mf["train_loss"].values)
    # The trace is exact in both modes (float32 rounding of different summation orders).
    np.testing.assert_allclose(_records(mf, "ntk_trace"), _records(ex, "ntk_trace"), rtol=2e-5)
    for name in ("ntk_entropy", "label_alignment"):
        err = np.abs(_records(mf, name) - _records(ex, name))
        se = _records(mf, f"{name}_stderr")
        z = err / np.maximum(se, 1e-12)
        # Each estimate within 4 of its standard errors (probability ~1e-4 per value for a
        # Gaussian error); the median well inside 2.
        assert np.all(z < 4.0), (name, z.max())
        assert np.median(z) < 2.0, (name, np.median(z))
        assert np.all(se < 0.05 * np.abs(_records(ex, name))), name
    d_ex = _records(ex, "kernel_distance_init")[..., 1:]
    d_mf = _records(mf, "kernel_distance_init")[..., 1:]
    se = _records(mf, "kernel_distance_init_stderr")[..., 1:]
    assert np.all(np.abs(d_mf - d_ex) < 4.0 * se + 1e-6)


def test_slq_sweep_resumes_bit_identically(tmp_path, runs):
    w = str(tmp_path / "w")
    c = _config(ntk_spectrum="slq")
    with pytest.raises(ntkbench.Interrupted):  # stopped after its first chunk (5 epochs)
        ntkbench.run(c, w, hooks=ntkbench.Hooks(should_stop=lambda: True))
    ntkbench.run(c, w)
    ds = ntkbench.load(w, summaries=False)
    for name in ("ntk_entropy", "ntk_entropy_stderr", "label_alignment", "train_loss"):
        np.testing.assert_array_equal(ds[name].values, runs["slq"][name].values, err_msg=name)
    assert np.isfinite(_records(ds, "ntk_entropy")).all()


def test_auto_picks_slq_above_the_exact_limit():
    c = _config(ntk_spectrum="auto", ntk_exact_max=100)
    assert c.spectrum(10) == "slq" and c.spectrum(2) == "exact"  # M = 400 and M = 80
    from ntkbench._config import Group, stored_variables

    assert "ntk_entropy_stderr" in stored_variables(c, 10)[Group.NTK]
    assert not stored_variables(c, 10)[Group.SNAPSHOT]  # no formed kernel to keep
    assert "ntk_entropy_stderr" not in stored_variables(c, 2)[Group.NTK]


def test_slq_refuses_what_needs_the_formed_kernel():
    with pytest.raises(ntkbench.ConfigError, match="kernel_velocity"):
        _config(ntk_spectrum="slq", kernel_velocity=True)
    with pytest.raises(ntkbench.ConfigError, match="slq_probes"):
        _config(ntk_spectrum="slq", slq_probes=2)
