"""Padded MLPs are exactly their unpadded twins: function, gradients, init and optimizer steps."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntkbench.models import CNN, MLP, member


def _loss(model, x, y):
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@pytest.mark.parametrize("width,pad,depth", [(5, 16, 1), (8, 64, 3), (32, 40, 4)])
def test_padded_equals_unpadded(width, pad, depth):
    key = jax.random.key(3)
    x = jax.random.uniform(jax.random.key(4), (7, 12))
    y = jnp.arange(7) % 3
    padded = MLP(12, 3, width, depth, key=key, pad_to=pad)
    plain = MLP(12, 3, width, depth, key=key)
    twin = padded.unpadded()
    # Same initial values: weights are drawn at the true shape, so padding does not change them.
    for a, b in zip(plain.weights, twin.weights):
        np.testing.assert_array_equal(a, b)
    # Same function (float reassociation of the padded zeros only; f64 makes it exact).
    np.testing.assert_allclose(jax.vmap(padded)(x), jax.vmap(plain)(x), rtol=1e-6, atol=1e-6)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, padded)
        u64 = p64.unpadded()
        x64 = x.astype(jnp.float64)
        np.testing.assert_allclose(jax.vmap(p64)(x64), jax.vmap(u64)(x64), rtol=1e-13, atol=1e-14)
    # Same gradients on the real parameters, exactly zero on the padding.
    gp = eqx.filter_grad(_loss)(padded, x, y)
    gu = eqx.filter_grad(_loss)(plain, x, y)
    for l, (a, b) in enumerate(zip(gp.weights, gu.weights)):
        r, c = b.shape
        np.testing.assert_allclose(a[:r, :c], b, rtol=1e-5, atol=1e-6)
        assert np.all(np.asarray(a)[r:, :] == 0) and np.all(np.asarray(a)[:, c:] == 0), l
    for a, b in zip(gp.biases, gu.biases):
        np.testing.assert_allclose(a[: b.shape[0]], b, rtol=1e-5, atol=1e-6)
        assert np.all(np.asarray(a)[b.shape[0]:] == 0)


@pytest.mark.parametrize("opt", [optax.adam(1e-2), optax.sgd(1e-1, momentum=0.9)])
def test_padding_never_moves(opt):
    model = MLP(6, 4, 3, 2, key=jax.random.key(0), pad_to=9)
    x = jax.random.normal(jax.random.key(1), (10, 6))
    y = jnp.arange(10) % 4
    params = eqx.filter(model, eqx.is_inexact_array)
    state = opt.init(params)
    for _ in range(5):
        grads = eqx.filter_grad(_loss)(model, x, y)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        model = eqx.apply_updates(model, updates)
    for w in model.weights:
        assert np.all(np.asarray(w)[3:, :] == 0) if w.shape[0] == 9 else True
    assert np.all(np.asarray(model.weights[1])[:, 3:] == 0)
    assert np.all(np.asarray(model.biases[0])[3:] == 0)


def test_masks_and_width_are_not_trainable():
    model = MLP(6, 4, 3, 2, key=jax.random.key(0), pad_to=9)
    trainable = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    assert len(trainable) == 2 * 3  # weights and biases of 3 layers only
    assert model.masks[0].dtype == jnp.bool_ and model.width.dtype == jnp.int32


def test_lecun_normal_statistics():
    """docs/definitions.md §9: truncated normal on [-2, 2] std units, std sqrt(1/fan_in) after truncation."""
    model = MLP(400, 10, 600, 1, key=jax.random.key(0))
    w = np.asarray(model.weights[0])
    assert abs(w.std() * np.sqrt(400) - 1) < 0.01  # 240k samples: sampling error ~0.15%
    # Truncation at 2 std of the untruncated normal, whose std is 1/0.8796 of the final one.
    assert np.abs(w).max() * np.sqrt(400) <= 2 / 0.87962566103423978 + 1e-5
    assert np.all(np.asarray(model.biases[0]) == 0)


def test_other_inits_and_errors():
    for init, bound in [("xavier_uniform", np.sqrt(6 / (400 + 300))), ("he_uniform", np.sqrt(6 / 400))]:
        w = np.asarray(MLP(400, 10, 300, 1, key=jax.random.key(0), init=init).weights[0])
        assert np.abs(w).max() <= bound + 1e-7 and np.abs(w).max() > 0.95 * bound
    with pytest.raises(ValueError, match="pad_to"):
        MLP(4, 2, 8, 1, key=jax.random.key(0), pad_to=4)
    with pytest.raises(ValueError, match="Unknown init"):
        MLP(4, 2, 8, 1, key=jax.random.key(0), init="orthogonal")


def test_ensemble_of_mixed_widths():
    keys = jax.random.split(jax.random.key(0), 3)
    a = eqx.filter_vmap(lambda k: MLP(5, 2, 3, 2, key=k, pad_to=8))(keys)
    b = eqx.filter_vmap(lambda k: MLP(5, 2, 8, 2, key=k, pad_to=8))(keys)
    both = jax.tree.map(lambda *xs: jnp.concatenate(xs) if eqx.is_array(xs[0]) else xs[0], a, b)
    x = jnp.ones((4, 5))
    out = eqx.filter_vmap(lambda m: jax.vmap(m)(x))(both)
    assert out.shape == (6, 4, 2)
    np.testing.assert_allclose(out[4], jax.vmap(MLP(5, 2, 8, 2, key=keys[1]))(x), rtol=1e-6)
    np.testing.assert_allclose(out[0], jax.vmap(member(both, 0).unpadded())(x), rtol=1e-6)


def test_cnn_ensemble():
    keys = jax.random.split(jax.random.key(0), 2)
    ens = eqx.filter_vmap(lambda k: CNN((16, 16, 3), 4, key=k))(keys)
    x = jax.random.uniform(jax.random.key(1), (5, 16, 16, 3))
    out = eqx.filter_vmap(lambda m: jax.vmap(m)(x))(ens)
    assert out.shape == (2, 5, 4) and np.all(np.isfinite(out))
    with pytest.raises(ValueError, match="too small"):
        CNN((4, 4, 1), 4, key=keys[0])


def test_padding_a_built_pack_equals_building_it_padded():
    keys = jax.random.split(jax.random.key(7), 3)
    built = eqx.filter_vmap(lambda k: MLP(6, 4, 5, 2, key=k, pad_to=12))(keys)
    late = eqx.filter_vmap(lambda k: MLP(6, 4, 5, 2, key=k))(keys).padded(12)
    a, sa = eqx.partition(built, eqx.is_array)
    b, sb = eqx.partition(late, eqx.is_array)
    assert sa == sb
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert u.dtype == v.dtype and np.array_equal(u, v)
    with pytest.raises(ValueError, match="smaller"):
        late.padded(8)
