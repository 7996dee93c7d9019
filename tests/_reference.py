"""Shared test references: the textbook NTK from the full Jacobian, float64 copies of models,
the digits data and a plain Adam loop that makes realistic (trained) networks.

Imported by the test modules as `_reference` (pytest puts `tests/` on the path); nothing here
is a fixture, so every test module keeps its own fixtures and caches.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree


def to64(tree):
    """`tree` with every floating-point array leaf cast to float64 (call under `enable_x64`)."""
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree)


def naive_ntk(model, x1, x2=None, weights=None):
    """`J1 J2ᵀ` from the flattened parameter vector (the textbook definition,
    docs/definitions.md §1), `(n1, n2, o, o)`; with `weights` (a pytree shaped like the
    trainable parameters, leaves broadcastable to them) `J1 diag(w) J2ᵀ`."""
    x2 = x1 if x2 is None else x2
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)

    def f(theta, x):
        return eqx.combine(unravel(theta), static)(x)

    j1 = jax.vmap(jax.jacrev(f), in_axes=(None, 0))(flat, x1)
    j2 = jax.vmap(jax.jacrev(f), in_axes=(None, 0))(flat, x2)
    if weights is not None:
        full = jax.tree.map(
            lambda w, p: jnp.broadcast_to(w, p.shape).astype(p.dtype), weights, params
        )
        j1 = j1 * ravel_pytree(full)[0]
    return jnp.einsum("iap,jbp->ijab", j1, j2, precision=jax.lax.Precision.HIGHEST)


@functools.cache
def digits(n: int, offset: int = 0):
    """`n` scikit-learn digits from `offset`: pixels / 16 `(n, 64)` float32, one-hot `(n, 10)`."""
    from sklearn.datasets import load_digits

    b = load_digits()
    x = jnp.asarray(b.data[offset:offset + n] / 16.0, jnp.float32)
    return x, jax.nn.one_hot(jnp.asarray(b.target[offset:offset + n]), 10)


def adam_step(x, y, lr: float):
    """`(init, step)`: full-batch Adam on softmax cross-entropy over `(x, y)`;
    `state = init(model)`, `model, state = step(model, state)` (jitted)."""
    opt = optax.adam(lr)

    def init(model):
        return opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state):
        loss = lambda m: optax.softmax_cross_entropy(jax.vmap(m)(x), y).mean()
        grads = eqx.filter_grad(loss)(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state

    return init, step


def adam_train(model, x, y, steps: int, lr: float):
    """`model` after `steps` full-batch Adam steps (`adam_step`)."""
    init, step = adam_step(x, y, lr)
    state = init(model)
    for _ in range(steps):
        model, state = step(model, state)
    return model
