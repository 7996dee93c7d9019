"""Parametrizations in models and sweeps: padded members equal unpadded ones under each
parametrization, the recorded NTK (parameter-space and learning-rate-weighted) against a float64
Jacobian reference, a sweep over all three that trains, resumes bit for bit and reports, the
standard one unchanged, and the coordinate check on the built-in MLP."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkbench
from ntkbench import kernels
from ntkbench._record import Recorder
from ntkbench.models import MLP, stack

from _reference import naive_ntk, to64

PARAMS = ("standard", "ntk", "mup")
QUIET = ntkbench.Hooks(log=lambda s: None)


@pytest.mark.parametrize("parametrization", PARAMS)
def test_padded_member_equals_unpadded(parametrization):
    """Multipliers and learning rates use each member's true width, never the padded one."""
    kw = dict(key=jax.random.key(3), parametrization=parametrization, base_width=8)
    with jax.enable_x64(True):
        small = to64(MLP(5, 3, width=12, depth=2, **kw))
        padded = to64(MLP(5, 3, width=12, depth=2, pad_to=32, **kw))
        wide = to64(MLP(5, 3, width=32, depth=2, **kw))
        x = jax.random.normal(jax.random.key(4), (6, 5), jnp.float64)
        np.testing.assert_allclose(jax.vmap(padded)(x), jax.vmap(small)(x), rtol=1e-12)
        for opt in ("adam", "sgd"):
            lr_s, lr_p = small.lr_multipliers(opt), padded.lr_multipliers(opt)
            np.testing.assert_array_equal(jax.tree.leaves(lr_s), jax.tree.leaves(lr_p))
        # A stacked pack of a width-12 (padded) and a width-32 member: each its own scales.
        pack = stack([padded, wide])
        per = eqx.filter_vmap(lambda m: m.lr_multipliers("adam"))(pack)
        for got, a, b in zip(jax.tree.leaves(per), jax.tree.leaves(small.lr_multipliers("adam")),
                             jax.tree.leaves(wide.lr_multipliers("adam"))):
            np.testing.assert_allclose(got, [a, b], rtol=1e-12)
        out = eqx.filter_vmap(lambda m: jax.vmap(m)(x))(pack)
        np.testing.assert_allclose(out[0], jax.vmap(small)(x), rtol=1e-12)
        w = small.lr_multipliers("adam")
        wp = padded.lr_multipliers("adam")
        np.testing.assert_allclose(kernels.ntk(padded, x, weights=wp),
                                   kernels.ntk(small, x, weights=w), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("parametrization", ("ntk", "mup"))
@pytest.mark.parametrize("kernel", ("lr_weighted", "parameter"))
def test_recorded_ntk_matches_a_float64_jacobian(parametrization, kernel):
    """The record's kernel is `J diag(w) Jᵀ` with `w` the learning-rate multipliers (or none),
    of the function with its multipliers, to 1e-10 in float64 (docs/definitions.md)."""
    c = ntkbench.preset("smoke", parametrization=(parametrization,), base_width=8,
                        ntk_kernel=kernel, optimizer="adam", n_test=4)
    rec = Recorder(c, 3)
    with jax.enable_x64(True):
        model = to64(MLP(5, 3, width=24, depth=2, key=jax.random.key(5), pad_to=32,
                         parametrization=parametrization, base_width=8))
        x = jax.random.normal(jax.random.key(6), (4, 5), jnp.float64)
        got = rec._ntk(model, x)
        weights = model.lr_multipliers("adam") if kernel == "lr_weighted" else None
        want = kernels.as_matrix(naive_ntk(model, x, weights=weights))
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        if kernel == "lr_weighted":  # the two kernels differ where the rates differ
            plain = kernels.as_matrix(naive_ntk(model, x))
            assert not np.allclose(got, plain, rtol=1e-3)


def _sweep(**kw):
    return ntkbench.preset("smoke", **{"widths": (4, 16), "epochs": 8, "chunk_epochs": 4,
                                       "ntk_every": 4, "base_width": 4, **kw})


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    root = tmp_path_factory.mktemp("param")
    c = _sweep(parametrization=PARAMS)
    ntkbench.run(c, str(root / "all"), hooks=QUIET)
    return root, c


def test_a_sweep_over_three_parametrizations(three, tmp_path):
    root, c = three
    ds = ntkbench.load(str(root / "all"))
    assert list(ds["parametrization"].values) == list(PARAMS)
    assert np.isfinite(ds["ntk_trace"].sel(epoch=8)).all()
    # At the base width the three coincide (the same draws, SP-equivalent scales).
    base = ds["test_loss"].sel(width=4)
    np.testing.assert_allclose(base.sel(parametrization="ntk"), base.sel(
        parametrization="standard"), rtol=2e-5)
    np.testing.assert_array_equal(base.sel(parametrization="mup"),
                                  base.sel(parametrization="standard"))
    # Away from it they differ.
    wide = ds["test_loss"].sel(width=16, epoch=8)
    assert not np.allclose(wide.sel(parametrization="mup"), wide.sel(parametrization="ntk"))
    # The standard members equal a standard-only sweep's, bit for bit.
    ntkbench.run(_sweep(), str(tmp_path / "sp"), hooks=QUIET)
    sp = ntkbench.load(str(tmp_path / "sp"), summaries=False)
    for v in ("train_loss", "test_loss", "ntk_trace", "ntk_erank"):
        np.testing.assert_array_equal(ds[v].sel(parametrization="standard").values,
                                      sp[v].sel(parametrization="standard").values, err_msg=v)
    # It reports, one facet per parametrization.
    paths = ntkbench.write_report(ds, tmp_path / "report", num_bootstrap=10,
                                  include_flagged=True)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "parametrization: standard, ntk, mup" in md
    assert any("parametrizationmup" in p.name or "mup" in p.name for p in paths)


def test_a_three_parametrization_sweep_resumes_bit_for_bit(three, tmp_path):
    root, c = three
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == 2  # in the middle of the second pack

    w = str(tmp_path / "w")
    with pytest.raises(ntkbench.Interrupted):
        ntkbench.run(c, w, hooks=ntkbench.Hooks(log=lambda s: None, should_stop=stop))
    ntkbench.run(c, w, hooks=QUIET)
    a = ntkbench.load(str(root / "all"), summaries=False)
    b = ntkbench.load(w, summaries=False)
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


def test_coordinate_check_is_flat_under_mup():
    """The μP diagnostic on the built-in MLP, widths 64..2048: activations flat in width under
    μP after training steps, growing under SP with Adam."""
    c = ntkbench.preset("quick", parametrization=("standard", "mup"), lr=1e-2, base_width=64)
    ds = ntkbench.coordcheck(c, widths=(64, 256, 1024, 2048), steps=2, num_seeds=1)
    slopes = ntkbench.coordcheck_slopes(ds)
    mup = slopes.sel(parametrization="mup", step=[1, 2])
    assert float(np.abs(mup).max()) < 0.15, mup.values
    sp = slopes.sel(parametrization="standard", step=1, layer="logits")
    assert float(sp) > 1.0, float(sp)


def test_a_custom_model_without_parametrization_support_is_refused(tmp_path):
    def model_fn(width, key, *, input_shape, num_classes):
        return MLP(int(np.prod(input_shape)), num_classes, width, 2, key=key)

    c = dataclasses.replace(ntkbench.preset("smoke"), model="custom", model_file="f.py",
                            parametrization=("mup",))
    with pytest.raises(ntkbench.ConfigError, match="needs a model_fn that accepts"):
        ntkbench.run(c, str(tmp_path / "w"), hooks=QUIET, model_fn=model_fn)
