"""Curvature records in sweeps (docs/definitions.md §16): the stored sharpness, preconditioned
sharpness and training-set NTK top eigenvalue against dense float64 references of the same
member and data, padded members against unpadded ones, resume bit for bit, and a sharded pack
against one device."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ntkbench
from ntkbench._train.member_step import member_inputs, member_loss
from ntkbench.models import member

from _reference import naive_ntk, to64

QUIET = ntkbench.Hooks(log=lambda s: None)


def _config(**kw):
    return ntkbench.preset("smoke", **{"widths": (6, 10), "n_train": (24,), "n_test": 5,
                                       "epochs": 6, "chunk_epochs": 3, "ntk_every": 0,
                                       "curvature_every": 3, "num_seeds": 2, "lr": 1e-2, **kw})


def _dense_references(model, x, y, w, loss):
    """Float64 top eigenvalues of the Hessian of the member's weighted loss and of `J Jᵀ W`."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    f = lambda th: member_loss(eqx.combine(unravel(th), static), x, y, w, loss=loss)[0]
    h = np.asarray(jax.hessian(f)(flat))
    o = model.out_size
    k = np.asarray(naive_ntk(model, x)).transpose(0, 2, 1, 3).reshape(x.shape[0] * o, -1)
    s = np.repeat(np.sqrt(np.asarray(w)), o)
    return np.linalg.eigvalsh(h)[-1], np.linalg.eigvalsh(s[:, None] * k * s[None])[-1]


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_recorded_curvature_at_init_matches_float64(loss, tmp_path):
    """Record 0 is the initialization: its sharpness and training-NTK top eigenvalue equal the
    dense float64 values of the member's own training loss and samples, to float32 Lanczos."""
    c = _config(loss=loss, widths=(6,), num_seeds=1)
    ntkbench.run(c, str(tmp_path / "w"), hooks=QUIET, runtime=ntkbench.Runtime())
    ds = ntkbench.load(str(tmp_path / "w"), summaries=False)
    ready = ntkbench.build_pack(c, runtime=ntkbench.Runtime())  # the sweep's own data
    with jax.enable_x64(True):
        model = to64(member(ready.model, 0))
        d = ready.data
        x, y = member_inputs(d, d.idx[0], None, slice(None))
        top_h, top_n = _dense_references(model, jnp.asarray(x, jnp.float64), y,
                                         jnp.asarray(d.weight[0], jnp.float64), loss)
    got = ds.isel(epoch=0).squeeze()
    np.testing.assert_allclose(float(got["sharpness"]), top_h, rtol=2e-4)
    np.testing.assert_allclose(float(got["train_ntk_top"]), top_n, rtol=2e-4)
    assert float(got["sharpness_residual"]) < 1e-3 * abs(top_h)
    assert np.isnan(float(got["precond_sharpness"]))  # no Adam step taken yet
    assert np.isfinite(ds["precond_sharpness"].isel(epoch=3).values).all()


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    root = tmp_path_factory.mktemp("curv")
    c = _config(min_pack_efficiency=0.01, max_packs_per_group=1)
    ntkbench.run(c, str(root / "joint"), hooks=QUIET)
    return root, c


def test_padded_member_equals_unpadded(joint, tmp_path):
    root, c = joint
    a = ntkbench.load(str(root / "joint"), summaries=False)
    alone = _config(widths=(6,))
    ntkbench.run(alone, str(tmp_path / "alone"), hooks=QUIET)
    b = ntkbench.load(str(tmp_path / "alone"), summaries=False)
    for v in ("sharpness", "train_ntk_top", "precond_sharpness"):
        x, y = a[v].sel(width=6).values, b[v].sel(width=6).values
        ok = np.isfinite(y)
        assert ok.sum() >= 4  # 3 records x 2 seeds (Adam's: none at init)
        # Float32 Lanczos in a 16-wide padded parameter space vs a 6-wide one.
        np.testing.assert_allclose(x[ok], y[ok], rtol=2e-4, err_msg=v)


def test_resume_is_bit_identical(joint, tmp_path):
    root, c = joint
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == 1

    w = str(tmp_path / "w")
    with pytest.raises(ntkbench.Interrupted):
        ntkbench.run(c, w, hooks=ntkbench.Hooks(log=lambda s: None, should_stop=stop))
    ntkbench.run(c, w, hooks=QUIET)
    a = ntkbench.load(str(root / "joint"), summaries=False)
    b = ntkbench.load(w, summaries=False)
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


def test_sharded_pack_equals_one_device(joint, tmp_path):
    root, c = joint
    runtime = ntkbench.Runtime.on(jax.devices()[:2])
    ntkbench.run(c, str(tmp_path / "two"), hooks=QUIET, runtime=runtime)
    a = ntkbench.load(str(root / "joint"), summaries=False)
    b = ntkbench.load(str(tmp_path / "two"), summaries=False)
    for v in ("sharpness", "train_ntk_top", "precond_sharpness"):
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=1e-4, equal_nan=True,
                                   err_msg=v)
