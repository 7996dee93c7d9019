"""Tests of the matrix-free spectra (`kernels/_slq.py`) against exact float64 eigendecompositions.

Stated error: the SLQ/Hutchinson estimates carry a standard error over probes; the tests require
the exact value within `Z = 3` standard errors (a fixed key, so the tests are deterministic).
Exact algebraic cases (diagonal matrices, full Krylov space) use float32 tolerances (`1e-5`).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkbench import kernels
from ntkbench.models import MLP

Z = 3.0
FAST_COMPILE = {"compiler_options": {"xla_backend_optimization_level": 0}}
jit = functools.partial(jax.jit, **FAST_COMPILE)


def exact_entropy(k4) -> tuple[float, float]:
    """docs/definitions.md §3 in float64: cosine normalization, eigh, floor 1e-14, entropy, exp."""
    k = np.asarray(kernels.as_matrix(jnp.asarray(k4)), np.float64)
    d = np.diag(k)
    ok = d > 0
    s = np.where(ok, 1.0 / np.sqrt(np.where(ok, d, 1.0)), 0.0)
    cos = s[:, None] * k * s[None, :]
    lam = np.maximum(np.linalg.eigvalsh((cos + cos.T) / 2), 1e-14)
    p = lam / lam.sum()
    h = -np.sum(p * np.log(p))
    return h, np.exp(h)


class WithDeadLogit(eqx.Module):
    """An MLP plus one constant logit: its gradient is zero, so D = 0 on a whole logit."""

    mlp: MLP

    def __call__(self, x):
        return jnp.concatenate([self.mlp(x), jnp.zeros((1,), x.dtype)])


def _random_psd(key, m, decay=0.7):
    q, _ = jnp.linalg.qr(jax.random.normal(key, (m, m)))
    lam = decay ** jnp.arange(m) * 10.0
    return (q * lam) @ q.T, lam


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def test_lanczos_full_space_recovers_eigenvalues(key):
    a, lam = _random_psd(key, 12)
    alpha, beta = kernels.lanczos(lambda v: a @ v, jax.random.normal(jax.random.key(1), (12,)), 12)
    t = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    np.testing.assert_allclose(
        jnp.sort(jnp.linalg.eigvalsh(t)), jnp.sort(lam), rtol=1e-4, atol=1e-4
    )


def test_lanczos_breakdown_gives_zero_weights():
    """An invariant subspace of dimension 2 is reached after 2 steps; later steps must not
    produce NaNs and the quadrature must stay exact."""
    a = jnp.diag(jnp.array([1.0, 1.0, 3.0, 3.0, 3.0]))
    v0 = jnp.ones(5)
    alpha, beta = kernels.lanczos(lambda v: a @ v, v0, 5)
    assert np.all(np.isfinite(alpha)) and np.all(np.isfinite(beta))
    est = kernels.slq(
        lambda v: a @ v, (5,), jnp.log, key=jax.random.key(0), num_probes=4, num_steps=5
    )
    np.testing.assert_allclose(est.estimate, 3 * np.log(3.0), rtol=1e-5)


def test_trace_estimators(key):
    a, lam = _random_psd(key, 40)
    exact = float(lam.sum())
    mv = lambda v: a @ v
    h = kernels.hutchinson_trace(mv, (40,), key=jax.random.key(1), num_probes=64)
    assert abs(float(h.estimate) - exact) <= Z * float(h.stderr)
    hpp = kernels.hutchpp_trace(mv, (40,), key=jax.random.key(2), num_probes=60)
    assert abs(float(hpp.estimate) - exact) <= Z * float(hpp.stderr) + 1e-4 * exact
    assert float(hpp.stderr) < float(h.stderr)  # the sketch removes the top of the spectrum
    diag = jnp.diag(jnp.arange(1.0, 6.0))
    np.testing.assert_allclose(
        kernels.hutchinson_trace(lambda v: diag @ v, (5,), key=key, num_probes=3).estimate,
        15.0,
        rtol=1e-6,
    )


def test_slq_exact_for_diagonal_operator(key):
    lam = jnp.linspace(0.5, 4.0, 7)
    est = kernels.slq(
        lambda v: lam * v, (7,), lambda t: t * jnp.log(t), key=key, num_probes=5, num_steps=7
    )
    np.testing.assert_allclose(est.estimate, jnp.sum(lam * jnp.log(lam)), rtol=1e-5)


def test_slq_matches_eigendecomposition(key):
    a, lam = _random_psd(key, 60, decay=0.9)
    fn = lambda t: t * jnp.log(jnp.maximum(t, 1e-14))
    exact = float(jnp.sum(fn(lam)))
    for trace in (None, jnp.sum(lam)):
        est = kernels.slq(
            lambda v: a @ v,
            (60,),
            fn,
            key=jax.random.key(3),
            num_probes=40,
            num_steps=30,
            trace=trace,
        )
        assert abs(float(est.estimate) - exact) <= Z * float(est.stderr), (est, exact)


# --------------------------------------------------------------------------------------------
# The NTK: cosine normalization, entropy, effective rank
# --------------------------------------------------------------------------------------------


def test_cosine_matvec_matches_dense(key):
    model = WithDeadLogit(MLP(10, 3, 12, 2, key=key))
    x = jax.random.normal(jax.random.key(1), (6, 10))
    v = jax.random.normal(jax.random.key(2), (6, 4))

    def run(m, a, v):
        mv, diag = kernels.cosine_ntk_vp_fn(m, a)
        return kernels.ntk(m, a), mv(v), diag

    k4, got, diag = jit(run)(model, x, v)
    k = np.asarray(kernels.as_matrix(k4), np.float64)
    d = np.diag(k)
    assert np.sum(d == 0) == 6  # the constant logit of every sample
    s = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    cos = s[:, None] * k * s[None, :]
    np.testing.assert_allclose(diag.reshape(-1), d, rtol=2e-5, atol=1e-6 * d.max())
    np.testing.assert_allclose(got.reshape(-1), cos @ np.asarray(v).reshape(-1), atol=2e-5)


# (model, N): N·O <= 2000 so that the exact eigendecomposition is cheap.
ENTROPY_CASES = {
    "mlp_w32_d3": (lambda k: MLP(20, 10, 32, 3, key=k), 120),
    "mlp_w6_pad16_d2": (lambda k: MLP(20, 10, 6, 2, key=k, pad_to=16), 60),
    "dead_logit": (lambda k: WithDeadLogit(MLP(20, 4, 24, 2, key=k)), 80),
}


@pytest.mark.parametrize("name", sorted(ENTROPY_CASES))
def test_slq_entropy_within_stated_error(name, key):
    make, n = ENTROPY_CASES[name]
    model = make(key)
    x = jax.random.normal(jax.random.key(1), (n, 20))
    k, est = jit(
        lambda m, a: (
            kernels.ntk(m, a),
            kernels.slq_entropy(m, a, key=jax.random.key(5), num_probes=32, num_steps=30),
        )
    )(model, x)
    h, erank = exact_entropy(k)
    o = model(x[0]).shape[0]
    np.testing.assert_allclose(est.trace, n * o - (n if name == "dead_logit" else 0))
    assert abs(float(est.entropy) - h) <= Z * float(est.entropy_stderr), (est, h)
    assert abs(float(est.effective_rank) - erank) <= Z * float(est.effective_rank_stderr)
    assert 1.0 <= float(est.effective_rank) <= n * o
    # The control variate makes the error bar useful: a few percent of the effective rank.
    assert float(est.effective_rank_stderr) < 0.05 * erank


def test_slq_entropy_vmapped_pack(key):
    keys = jax.random.split(key, 3)
    pack = eqx.filter_vmap(lambda k: MLP(20, 10, 8, 2, key=k, pad_to=12))(keys)
    x = jax.random.normal(jax.random.key(1), (30, 20))
    fn = eqx.filter_vmap(
        lambda m, a: kernels.slq_entropy(m, a, key=jax.random.key(5), num_probes=8, num_steps=20),
        in_axes=(eqx.if_array(0), None),
    )
    est = eqx.filter_jit(fn, **FAST_COMPILE)(pack, x)
    ntks = eqx.filter_jit(
        eqx.filter_vmap(kernels.ntk, in_axes=(eqx.if_array(0), None)), **FAST_COMPILE
    )(pack, x)
    assert est.entropy.shape == (3,)
    for i in range(3):
        h, _ = exact_entropy(ntks[i])
        assert abs(float(est.entropy[i]) - h) <= Z * float(est.entropy_stderr[i])
