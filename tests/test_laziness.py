"""Laziness measures (docs/definitions.md §12): kernel distance and velocity, the linearized
model, against direct float64 computations and the closed form of linearized MSE training."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkbench
from ntkbench import kernels
from ntkbench._data import synthetic_dataset
from ntkbench._train.member_step import linearized
from ntkbench.models import member


def _config(**kw):
    return ntkbench.preset("smoke", **{"widths": (6,), "num_seeds": 2, "n_train": (24,),
                                      "n_test": 5, "epochs": 4, "chunk_epochs": 4, **kw})


def _pack(c, data=None):
    data = synthetic_dataset(100, 40, num_classes=3) if data is None else data
    ready = ntkbench.build_pack(c, data=data, runtime=ntkbench.Runtime())
    return ready.program, ready.model, ready.data


def _f64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree)


def _distance64(k, k0):
    k, k0 = np.asarray(k, np.float64), np.asarray(k0, np.float64)
    return 1 - np.sum(k * k0) / (np.linalg.norm(k) * np.linalg.norm(k0))


def test_kernel_distance_and_velocity_match_float64():
    c = _config(ntk_every=2, kernel_velocity=True)
    prog, model, pdata = _pack(c)
    state, out = prog.train_chunk(pdata, prog.init_state(pdata, model), 4)
    final, _, _ = prog.finish(pdata, state)
    x = np.asarray(pdata.x_ntk)
    with jax.enable_x64(True):
        k0 = [kernels.as_matrix(kernels.ntk(_f64(member(model, j)), jnp.asarray(x, jnp.float64)))
              for j in range(2)]
    # Record 0 is the initialization: distance 0, no velocity yet.
    np.testing.assert_allclose(out["kernel_distance_init"][0], 0.0, atol=1e-6)
    assert np.all(np.isnan(out["kernel_velocity"][0]))
    s2, _ = prog.train_chunk(pdata, prog.init_state(pdata, model), 2)  # the state at epoch 2
    prev = k0
    for models, values in ((s2.model, {k: v[2] for k, v in out.items()}), (state.model, final)):
        with jax.enable_x64(True):
            ks = [kernels.as_matrix(kernels.ntk(_f64(member(models, j)),
                                                jnp.asarray(x, jnp.float64)))
                  for j in range(2)]
        for j in range(2):
            want = _distance64(ks[j], k0[j])
            np.testing.assert_allclose(values["kernel_distance_init"][j], want, rtol=2e-3,
                                       atol=2e-7)
            np.testing.assert_allclose(values["kernel_velocity"][j],
                                       _distance64(ks[j], prev[j]) / 2, rtol=2e-3, atol=2e-7)
        prev = ks


def test_linearized_mse_gradient_descent_follows_the_initial_ntk():
    """For MSE and full-batch gradient descent the linearized model's outputs obey
    `f_{t+1}(x) = f_t(x) − η Θ0(x, X) w (f_t(X) − Y)` exactly: its train and test losses are
    predicted from the NTK at initialization alone."""
    c = _config(ntk_every=0, linearized=True, loss="mse", optimizer="sgd", momentum=0.0,
                lr=0.05, epochs=5, chunk_epochs=5)
    data = synthetic_dataset(100, 40, num_classes=3)
    prog, model, pdata = _pack(c, data)
    state, out = prog.train_chunk(pdata, prog.init_state(pdata, model), 5)
    keep = np.asarray(pdata.w_eval).reshape(-1) > 0
    x_eval = np.asarray(pdata.x_eval).reshape(-1, pdata.x_eval.shape[-1])[keep]
    y_eval = np.asarray(pdata.y_eval).reshape(-1)[keep]
    for j in range(2):
        n = int(np.sum(np.asarray(pdata.weight[j]) > 0))
        idx = np.asarray(pdata.idx[j])[:n]
        X, y = np.asarray(pdata.x)[idx], np.asarray(pdata.y)[idx]
        with jax.enable_x64(True):
            m = _f64(member(model, j))
            Xd, Xe = jnp.asarray(X, jnp.float64), jnp.asarray(x_eval, jnp.float64)
            k_tt = np.asarray(kernels.as_matrix(kernels.ntk(m, Xd)))
            k_et = np.asarray(kernels.as_matrix(kernels.ntk(m, Xe, Xd)))
            f_train = np.asarray(jax.vmap(m)(Xd)).reshape(-1)
            f_eval = np.asarray(jax.vmap(m)(Xe)).reshape(-1)
        yt = np.eye(3)[y].reshape(-1)
        ye = np.eye(3)[y_eval].reshape(-1)
        for t in range(5):
            train_loss = 0.5 * np.sum((f_train - yt) ** 2) / n
            test_loss = 0.5 * np.sum((f_eval - ye) ** 2) / len(y_eval)
            np.testing.assert_allclose(out["lin_train_loss"][t, j], train_loss, rtol=1e-4)
            np.testing.assert_allclose(out["lin_test_loss"][t, j], test_loss, rtol=1e-4)
            grad = (f_train - yt) / n
            f_train, f_eval = f_train - c.lr * k_tt @ grad, f_eval - c.lr * k_et @ grad


def test_output_gap_matches_a_direct_computation():
    c = _config(ntk_every=0, linearized=True, lr=0.01)
    prog, model, pdata = _pack(c)
    state, out = prog.train_chunk(pdata, prog.init_state(pdata, model), 4)
    final, _, _ = prog.finish(pdata, state)
    np.testing.assert_allclose(out["lin_output_gap"][0], 0.0, atol=1e-12)  # at init: f_lin = f
    x = jnp.asarray(pdata.x_ntk)
    for j in range(2):
        net = member(state.model, j)
        lin = jax.tree.map(lambda a: a[j], state.lin_params)
        init = jax.tree.map(lambda a: a[j], pdata.init)
        f = np.asarray(jax.vmap(net)(x), np.float64)
        f_lin = np.asarray(linearized(net, init)(lin, x), np.float64)
        want = np.sum((f - f_lin) ** 2) / np.sum(f**2)
        np.testing.assert_allclose(final["lin_output_gap"][j], want, rtol=1e-3)
        assert want > 0


@pytest.mark.slow
def test_padded_members_measure_what_their_unpadded_twins_do(tmp_path):
    """Width 4 in its own pack and padded to 16 beside width 16: every laziness quantity
    agrees (float reassociation only)."""
    common = dict(widths=(4, 16), epochs=6, chunk_epochs=3, ntk_every=3, linearized=True,
                  kernel_velocity=True)
    sep = _config(**common, min_pack_efficiency=1.0)
    joint = _config(**common, min_pack_efficiency=0.01, max_packs_per_group=1)
    quiet = ntkbench.Hooks(log=lambda s: None)
    ntkbench.run(sep, str(tmp_path / "a"), hooks=quiet)
    ntkbench.run(joint, str(tmp_path / "b"), hooks=quiet)
    a, b = ntkbench.load(str(tmp_path / "a")), ntkbench.load(str(tmp_path / "b"))
    for v in ("kernel_distance_init", "kernel_velocity", "lin_train_loss", "lin_test_loss",
              "lin_output_gap", "best_kernel_distance_init", "best_lin_output_gap",
              "kernel_distance_star", "lin_output_gap_star"):
        np.testing.assert_allclose(a[v].sel(width=4).values, b[v].sel(width=4).values,
                                   rtol=1e-4, atol=1e-7, equal_nan=True, err_msg=v)


def test_resume_is_bit_identical_with_the_laziness_carry(tmp_path):
    c = _config(widths=(6,), epochs=6, chunk_epochs=2, ntk_every=2, linearized=True,
                kernel_velocity=True, checkpoint_every_epochs=2)
    quiet = ntkbench.Hooks(log=lambda s: None)
    ref, w = str(tmp_path / "ref"), str(tmp_path / "w")
    ntkbench.run(c, ref, hooks=quiet)
    calls = iter([False, True])
    with pytest.raises(ntkbench.Interrupted):
        ntkbench.run(c, w, hooks=ntkbench.Hooks(log=lambda s: None,
                                                should_stop=lambda: next(calls, False)))
    ntkbench.run(c, w, hooks=quiet)
    a, b = ntkbench.load(ref), ntkbench.load(w)
    assert {"kernel_velocity", "lin_output_gap", "best_lin_output_gap"} <= set(a.data_vars)
    for v in a.data_vars:
        assert np.array_equal(a[v].values, b[v].values, equal_nan=True), v


def test_the_initial_ntk_is_not_checkpointed():
    """The kernel distance's reference (the NTK at init) is data, rebuilt on resume: the
    checkpointed state holds the top eigenvectors, not an (M, M) kernel."""
    c = _config(ntk_every=2)
    prog, model, pdata = _pack(c)
    state = prog.init_state(pdata, model)
    m = c.n_test * 3
    shapes = [leaf.shape for leaf in jax.tree.leaves(state.record)]
    assert all(np.prod(s) <= 2 * m * c.ntk_num_vectors + 2 for s in shapes), shapes
    assert pdata.record.ntk0.shape == (2, 1, m, m)
