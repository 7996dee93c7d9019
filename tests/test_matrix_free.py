"""Tests of the matrix-free NTK record (`ntkbench._record.matrix_free`) against exact float64 records.

Stated error. The record's `*_stderr` are probe standard errors; the documented 95% interval
is `estimate ± Z·stderr` with `Z = COVERAGE_Z = 2.3` (calibrated on realistic NTKs at
M = 1280 and 2560, where the Student-t quantile 2.1 of the residual probes covered only 93.4%
of trials for one quantity; docs/matrix_free.md). The coverage test runs `TRIALS`
independent probe keys on one realistic NTK (a trained ReLU MLP on digits, M = 400) and requires
the exact value inside the interval in all but at most `MAX_MISSES` trials. Binomial tolerance:
if the true coverage is 95%, `P(misses > MAX_MISSES) < 1e-3` (so the test is not flaky; its
keys are fixed, so it is deterministic anyway), while a coverage of 80% or less fails with
probability > 0.6.

Exact algebra (trace, products, vmap) uses float32 tolerances stated at each assertion.
"""

from __future__ import annotations

import functools
import re

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import adam_train, digits
from scipy import stats

from ntkbench import kernels
from ntkbench._record.matrix_free import (
    COVERAGE_Z,
    DEFAULT_NUM_DEFLATE,
    DEFAULT_NUM_PROBES,
    DEFAULT_NUM_STEPS,
    RECORD_KEYS,
    matrix_free_record,
)
from ntkbench.models import MLP, stack
from ntkbench.observables import spectral_record

FAST_COMPILE = {"compiler_options": {"xla_backend_optimization_level": 0}}
jit = functools.partial(jax.jit, **FAST_COMPILE)

TRIALS = 60
MAX_MISSES = 9  # P(Bin(60, 0.05) > 9) = 6e-4;  P(Bin(60, 0.20) > 9) = 0.66


def test_binomial_tolerance_is_as_stated():
    assert stats.binom.sf(MAX_MISSES, TRIALS, 0.05) < 1e-3
    assert stats.binom.sf(MAX_MISSES, TRIALS, 0.20) > 0.6


def _train(model, x, y, steps: int, lr: float = 3e-3):
    return adam_train(model, x, y, steps, lr)


def _ntk64(model, x) -> np.ndarray:
    with jax.enable_x64(True):
        m64 = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)
        return np.asarray(kernels.as_matrix(kernels.ntk(m64, jnp.asarray(x, jnp.float64))))


def _exact(k64: np.ndarray, y, k_ref64: np.ndarray | None = None) -> dict[str, float]:
    with jax.enable_x64(True):
        r = spectral_record(jnp.asarray(k64), jnp.asarray(y, jnp.float64))
    out = {k: float(v) for k, v in r.items() if k != "eigvecs"}
    if k_ref64 is not None:
        out["kernel_distance"] = 1.0 - float(
            np.sum(k64 * k_ref64) / (np.linalg.norm(k64) * np.linalg.norm(k_ref64))
        )
    return out


class Wrapped(eqx.Module):
    """An MLP behind a plain `__call__` (no structured protocol): the implicit path."""

    mlp: MLP

    def __call__(self, x):
        return self.mlp(x)


# ------------------------------------------------------------------------------------------------
# Exact parts
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["structured", "implicit"])
def test_diagonal_and_products_match_the_formed_ntk(method, key):
    model = MLP(64, 10, 24, 2, key=key, pad_to=32)  # padded units must contribute nothing
    x, _ = digits(30)
    v = jax.random.normal(jax.random.key(1), (30, 10))

    def run(m, a, v):
        diag, vp = kernels.ntk_diagonal_and_vp(m, a, method=method)
        return diag, vp(v)

    d, got = jit(run)(model, x, v)
    k = _ntk64(model, x)
    # float32 products against float64: relative to the largest entry.
    np.testing.assert_allclose(d.reshape(-1), np.diag(k), rtol=1e-5)
    want = k @ np.asarray(v, np.float64).reshape(-1)
    np.testing.assert_allclose(got.reshape(-1), want, atol=2e-6 * np.abs(want).max())


def test_trace_is_exact_and_nan_quantities(key):
    model = MLP(64, 10, 16, 2, key=key)
    x, y = digits(40)
    rec = jit(lambda m: matrix_free_record(m, x, y, key=jax.random.key(1)))(model)
    assert sorted(rec) == sorted(RECORD_KEYS)
    exact = _exact(_ntk64(model, x), y)
    np.testing.assert_allclose(rec["trace"], exact["trace"], rtol=1e-6)  # float32 rounding only
    assert np.isnan(rec["eigvec_misalignment"]) and np.isnan(rec["label_alignment_traced"])
    assert np.isnan(rec["kernel_distance"]) and np.isnan(rec["kernel_distance_stderr"])


def test_deflated_slq_is_exact_when_everything_is_deflated():
    lam = jnp.linspace(0.5, 4.0, 9)
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (9, 9)))
    a = (q * lam) @ q.T
    fn = lambda t: t * jnp.log(t)
    est = kernels.deflated_slq(
        lambda v: a @ v,
        (9,),
        fn,
        key=jax.random.key(1),
        num_probes=4,
        num_steps=9,
        num_deflate=9,
        trace=jnp.sum(lam),
    )
    np.testing.assert_allclose(est.estimate, jnp.sum(fn(lam)), rtol=1e-4)
    np.testing.assert_allclose(est.stderr, 0.0, atol=1e-5)


def test_bad_inputs_raise_with_a_fix(key):
    model = MLP(64, 10, 8, 1, key=key)
    x, y = digits(10)
    with pytest.raises(ValueError, match="one-hot labels"):
        matrix_free_record(model, x, y[:5], key=key)
    with pytest.raises(ValueError, match="num_probes must be >= 3"):
        matrix_free_record(model, x, y, key=key, num_probes=2)
    with pytest.raises(ValueError, match="method must be"):
        matrix_free_record(model, x, y, key=key, method="jacobian")


# ------------------------------------------------------------------------------------------------
# Coverage of the stated error
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_case():
    """A ReLU MLP (width 32, depth 3) after 40 Adam steps on 300 digits, its initialization, and
    the exact float64 values on 40 other digits (M = 400)."""
    init = MLP(64, 10, 32, 3, key=jax.random.key(0))
    xtr, ytr = digits(300, offset=100)
    model = _train(init, xtr, ytr, 40)
    x, y = digits(40)
    k, k0 = _ntk64(model, x), _ntk64(init, x)
    return model, init, x, y, _exact(k, y, k0)


def test_coverage_of_the_stated_error(trained_case):
    model, init, x, y, exact = trained_case
    keys = jax.random.split(jax.random.key(2024), TRIALS)
    fn = jit(jax.vmap(lambda k: matrix_free_record(model, x, y, key=k, reference=init)))
    rec = jax.device_get(fn(keys))
    report = {}
    for q in ("entropy", "erank", "label_alignment", "kernel_distance"):
        est, se = np.asarray(rec[q], np.float64), np.asarray(rec[q + "_stderr"], np.float64)
        assert np.all(se > 0) and np.all(np.isfinite(est)), q
        misses = int(np.sum(np.abs(est - exact[q]) > COVERAGE_Z * se))
        report[q] = (misses, float(np.median(se / abs(exact[q]))))
    assert all(m <= MAX_MISSES for m, _ in report.values()), report
    # The error bars are useful, not just honest (medians of the relative standard errors).
    assert report["entropy"][1] < 3e-3 and report["erank"][1] < 1e-2, report
    assert report["label_alignment"][1] < 3e-3, report
    assert report["kernel_distance"][1] < 3e-2, report


# ------------------------------------------------------------------------------------------------
# Packs and memory
# ------------------------------------------------------------------------------------------------


def test_vmap_over_a_pack_equals_per_member_calls():
    keys = jax.random.split(jax.random.key(0), 6)
    members = [MLP(64, 10, w, 2, key=k, pad_to=16) for w, k in zip((8, 12, 16), keys[:3])]
    refs = [MLP(64, 10, w, 2, key=k, pad_to=16) for w, k in zip((8, 12, 16), keys[3:])]
    pack, ref_pack = stack(members), stack(refs)
    x, y = digits(30)
    rec_fn = lambda m, r: matrix_free_record(
        m, x, y, key=jax.random.key(7), reference=r, num_probes=8, num_steps=20, num_deflate=8
    )
    batched = eqx.filter_jit(eqx.filter_vmap(rec_fn), **FAST_COMPILE)(pack, ref_pack)
    single = eqx.filter_jit(rec_fn, **FAST_COMPILE)
    for i, (m, r) in enumerate(zip(members, refs)):
        one = single(m, r)
        for q in RECORD_KEYS:
            # Batched and single programs differ by float reassociation only (measured: <= 1e-6
            # relative on the estimates, <= 2e-5 on the standard errors, spreads of probes).
            rtol = 1e-4 if q.endswith("stderr") else 1e-5
            np.testing.assert_allclose(batched[q][i], one[q], rtol=rtol, atol=1e-8, err_msg=q)


def _max_intermediate(jaxpr) -> tuple[int, tuple]:
    """Largest array (elements, shape) among all variables of a jaxpr and its sub-jaxprs."""
    best = (0, ())

    def visit(j):
        nonlocal best
        for v in list(j.invars) + list(j.constvars) + [o for e in j.eqns for o in e.outvars]:
            shape = getattr(v.aval, "shape", ())
            size = int(np.prod(shape)) if shape else 1
            best = max(best, (size, tuple(shape)))
        for e in j.eqns:
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    return best


@pytest.mark.parametrize("wrap", [False, True], ids=["structured", "implicit"])
def test_no_array_of_size_m_squared(wrap, key):
    n, o = 2000, 10  # M = 20,000: only traced, never run
    m_size = n * o
    model = MLP(64, o, 64, 3, key=key)
    model = Wrapped(model) if wrap else model
    x = jax.ShapeDtypeStruct((n, 64), jnp.float32)
    y = jax.ShapeDtypeStruct((n, o), jnp.float32)
    jaxpr = jax.make_jaxpr(
        lambda m, r, a, b: matrix_free_record(
            m, a, b, key=jax.random.key(0), reference=r, block_size=250 if wrap else None
        )
    )(model, model, x, y)
    size, shape = _max_intermediate(jaxpr)
    # The largest array is the Lanczos bases, (deflate + probes, M, steps + 1) = (40, M, 51) at
    # the defaults: 10% of M² at M = 20,000, and linear in M.
    assert size <= (DEFAULT_NUM_DEFLATE + DEFAULT_NUM_PROBES) * m_size * (DEFAULT_NUM_STEPS + 1), shape
    assert size < m_size**2 / 8, shape
    # The checker does see an (M, M) array when there is one: the exact record of a small case.
    xs = jax.ShapeDtypeStruct((50, 64), jnp.float32)
    dense = jax.make_jaxpr(lambda m, a: kernels.as_matrix(kernels.ntk(m, a)))(model, xs)
    assert _max_intermediate(dense)[0] >= (50 * o) ** 2


def _unordered_lapack_calls(hlo: str) -> tuple[list, int]:
    """Pairs of LAPACK custom calls of the compiled ENTRY computation with no data path between
    them (XLA's CPU executor may run such a pair at once), and the number of LAPACK calls."""
    entry = hlo[hlo.index("\nENTRY ") :]
    entry = entry[: entry.index("\n}")]
    deps, lapack = {}, []
    for line in entry.splitlines()[1:]:
        m = re.match(r"\s*(?:ROOT )?(%[\w.\-]+) = (.*)", line)
        if m:
            name, rest = m.groups()
            rest = rest.split(", metadata=")[0]
            deps[name] = set(re.findall(r"%[\w.\-]+", rest))
            if 'custom_call_target="lapack_' in rest:
                lapack.append(name)
    ancestors: dict[str, set] = {}
    for name, operands in deps.items():  # HLO text lists operands before their users
        ancestors[name] = set()
        for d in operands:
            if d in ancestors:
                ancestors[name] |= {d} | ancestors[d]
    pairs = [
        (a, b)
        for i, a in enumerate(lapack)
        for b in lapack[i + 1 :]
        if a not in ancestors[b] and b not in ancestors[a]
    ]
    return pairs, len(lapack)


def test_lapack_calls_are_chained_even_when_batched(key):
    """Two batched LAPACK calls in flight at once deadlock XLA's CPU pool on small hosts (see
    `record_from_products`): in the compiled pack program every pair must be ordered."""
    keys = jax.random.split(key, 2)
    pack = stack([MLP(64, 10, 8, 2, key=k) for k in keys])
    x, y = digits(20)
    fn = eqx.filter_vmap(
        lambda m, r: matrix_free_record(
            m, x, y, key=jax.random.key(1), reference=r, num_probes=4, num_steps=8, num_deflate=4
        )
    )
    arrays, static = eqx.partition(pack, eqx.is_array)
    program = jax.jit(lambda a, b: fn(eqx.combine(a, static), eqx.combine(b, static)))
    hlo = program.lower(arrays, arrays).compile().as_text()
    pairs, count = _unordered_lapack_calls(hlo)
    assert count >= 4 and count == hlo.count('custom_call_target="lapack_'), count
    assert not pairs, pairs
    # The checker does flag independent batched calls.
    a, b = jnp.ones((3, 5, 5)), jnp.ones((3, 9, 4))
    both = jax.jit(lambda a, b: jnp.linalg.eigh(a)[0].sum() + jnp.linalg.qr(b)[0].sum())
    assert _unordered_lapack_calls(both.lower(a, b).compile().as_text())[0]
