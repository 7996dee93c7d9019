"""Pack training: recording convention (docs/definitions.md §4), divergence isolation, optimizers, losses."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ntkbench
from ntkbench._data import synthetic_dataset
from ntkbench._record import Recorder
from ntkbench._train import PackProgram, minibatch_schedule
from ntkbench._train.member_step import per_sample_loss
from ntkbench.models import member


def _setup(**kw):
    c = ntkbench.preset("smoke", **{"ntk_every": 0, **kw})
    ready = ntkbench.build_pack(c, -1, data=synthetic_dataset(200, 100),
                                runtime=ntkbench.Runtime())
    return c, ready.pack, ready.model, ready.data


def _eval_split(pdata):
    """The evaluation split of a pack, unchunked (real samples only)."""
    keep = np.asarray(pdata.w_eval).reshape(-1) > 0
    x = np.asarray(pdata.x_eval).reshape(-1, pdata.x_eval.shape[-1])[keep]
    return x, np.asarray(pdata.y_eval).reshape(-1)[keep]


def _loss_of(c, model, x, y):
    return float(jnp.mean(per_sample_loss(c.loss, jax.vmap(model)(x), y)))


@pytest.mark.parametrize("optimizer,batch", [("adam", 0), ("sgd", 8)])
def test_records_follow_spec(optimizer, batch):
    c, pack, model, pdata = _setup(optimizer=optimizer, batch_size=batch, lr=1e-2, epochs=6)
    prog = PackProgram(c)
    state = prog.init_state(pdata, model)
    schedule = minibatch_schedule(c, pack)
    batches = None if schedule is None else np.swapaxes(schedule.next_chunk(4), 0, 1)
    state, out = prog.train_chunk(pdata, state, 4, batches)
    assert out["train_loss"].shape == (4, pack.num_members)
    # Record 0 is the initialization.
    x0 = pdata.x[pdata.idx[0]]
    y0 = pdata.y[pdata.idx[0]]
    np.testing.assert_allclose(out["train_loss"][0, 0], _loss_of(c, member(model, 0), x0, y0), rtol=1e-5)
    # The test loss is measured on the evaluation split (the whole test split by default).
    x_eval, y_eval = _eval_split(pdata)
    assert len(y_eval) == 100
    np.testing.assert_allclose(out["test_loss"][0, 0],
                               _loss_of(c, member(model, 0), x_eval, y_eval), rtol=1e-5)
    # The final state is recorded by finish, and equals the loss of the trained parameters.
    final, _, _ = prog.finish(pdata, state)
    np.testing.assert_allclose(final["train_loss"][0], _loss_of(c, member(state.model, 0), x0, y0), rtol=1e-5)
    assert int(state.epoch) == 4
    assert np.all(np.diff(out["train_loss"], axis=0)[1:].mean(axis=1) < 0)  # it learns


def test_full_batch_adam_matches_a_plain_optax_loop():
    c, pack, model, pdata = _setup(lr=3e-3)
    prog = PackProgram(c)
    state, out = prog.train_chunk(pdata, prog.init_state(pdata, model), 3)
    m = member(model, 1)
    x, y = pdata.x[pdata.idx[1]], pdata.y[pdata.idx[1]]
    opt = optax.adam(c.lr, b1=c.b1, b2=c.b2)
    s = opt.init(eqx.filter(m, eqx.is_inexact_array))
    losses = []
    for _ in range(3):
        loss, g = eqx.filter_value_and_grad(lambda mm: jnp.mean(per_sample_loss(c.loss, jax.vmap(mm)(x), y)))(m)
        losses.append(float(loss))
        u, s = opt.update(g, s, eqx.filter(m, eqx.is_inexact_array))
        m = eqx.apply_updates(m, u)
    np.testing.assert_allclose(out["train_loss"][:, 1], losses, rtol=1e-5)
    for a, b in zip(member(state.model, 1).weights, m.weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_diverged_member_is_frozen_and_isolated():
    c, pack, model, pdata = _setup(lr=1e-2)
    bad = eqx.tree_at(lambda m: m.weights[0], model, model.weights[0].at[0, 0, 0].set(jnp.inf))
    prog = PackProgram(c)
    s_good, out_good = prog.train_chunk(pdata, prog.init_state(pdata, model), 5)
    s_bad, out_bad = prog.train_chunk(pdata, prog.init_state(pdata, bad), 5)
    assert bool(s_bad.diverged[0]) and not bool(jnp.any(s_bad.diverged[1:]))
    assert np.all(np.isnan(out_bad["train_loss"][1:, 0]))
    # Frozen: parameters of the diverged member never change.
    np.testing.assert_array_equal(member(s_bad.model, 0).weights[1], member(bad, 0).weights[1])
    # The rest of the pack is unchanged by its neighbour's divergence.
    for k in out_good:
        np.testing.assert_array_equal(out_good[k][:, 1:], out_bad[k][:, 1:])


def test_mse_loss():
    logits = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(per_sample_loss("mse", logits, jnp.array([0, 1])), [0.0, 0.5])


def test_layer_records_sum_to_the_trace(tmp_path):
    c = ntkbench.preset("smoke", **{"epochs": 5,
                                   "layer_ntks": True, "widths": (6,), "num_seeds": 1,
                                   "ntk_every": 5})
    ntkbench.run(c, str(tmp_path / "w"), hooks=ntkbench.Hooks(log=lambda s: None))
    ds = ntkbench.load(str(tmp_path / "w"))
    parts = ds["layer_ntk_trace"].sum("layer", skipna=False)
    np.testing.assert_allclose(parts.values, ds["ntk_trace"].values, rtol=1e-5)
    assert ds["layer_ck_erank"].sizes["layer"] == c.depth[0] + 1


def test_ntk_quantities_average_over_test_draws():
    """Noise scaling (docs/definitions.md §10): NTK quantities are means over test draws."""
    from ntkbench import kernels, observables
    from ntkbench.models import MLP

    c = ntkbench.preset("smoke", **{"n_test": 6,
                                   "ntk_test_draws": 2})
    rec = Recorder(c, 3)
    model = MLP(5, 3, 7, 2, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (12, 5))
    y = jnp.arange(12) % 3
    pack = jax.tree.map(lambda a: a[None] if eqx.is_array(a) else a, model)
    inputs = rec.prepare(pack, x, jax.random.split(jax.random.key(2), 1), sequential=True)
    one = jax.tree.map(lambda a: a[0], inputs)
    out, carry = rec.record(model, x, y, rec.init_carry(one), one, jnp.asarray(0))
    eranks = [observables.effective_rank(kernels.as_matrix(kernels.ntk(model, x[i * 6:(i + 1) * 6])))
              for i in range(2)]
    np.testing.assert_allclose(out["ntk_erank"], np.mean(eranks), rtol=1e-5)
    np.testing.assert_allclose(carry.erank, eranks, rtol=1e-5)
    # The initial NTK of each draw is a per-member constant of the record (never carried).
    np.testing.assert_allclose(one.ntk0[0], kernels.as_matrix(kernels.ntk(model, x[:6])), rtol=1e-6)


@pytest.mark.slow
def test_exact_k_star_does_not_depend_on_the_ntk_interval(tmp_path):
    """k* is the argmin over all epochs of the test loss, and T*, erank* are measured at the
    state of k* itself: with an NTK every 5 epochs they equal those of an NTK every epoch."""
    base = {**ntkbench.get_config("smoke").to_dict(), "epochs": 40, "chunk_epochs": 40,
            "widths": (4, 16), "lr": 0.01, "n_train": (16,)}
    quiet = ntkbench.Hooks(log=lambda s: None)
    out = {}
    for every in (1, 5):
        w = str(tmp_path / f"s{every}")
        ntkbench.run(ntkbench.from_config_dict({**base, "ntk_every": every}), w, hooks=quiet)
        out[every] = ntkbench.load(w)
    a, b = out[1], out[5]
    np.testing.assert_array_equal(a["k_star"].values, b["k_star"].values)
    k = a["k_star"].values
    assert np.any(k % 5 != 0) and np.all((k > 0) & (k < 40))  # off the grid, inside the run
    for name in ("T_star", "erank_star", "kernel_distance_star"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-5, err_msg=name)
    # ... and with an NTK every epoch, T* is the recorded trace at k*.
    traced = a["ntk_trace"].sel(epoch=a["k_star"].astype(int))
    np.testing.assert_allclose(a["T_star"].values, traced.values, rtol=1e-5)
    assert b.attrs["k_star_source"] == "exact"
