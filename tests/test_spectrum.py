"""`ntkbench._record.spectrum`: every method against a float64 `numpy.linalg.eigh` reference.

NTKs: ReLU MLPs (`ntkbench.models.MLP`, `ntkbench.kernels.ntk`) on 64 digits (M = 640), widths 8 to
512, at init and after 20 Adam steps; the misalignment is between the NTKs before and after one
more step. Plus constructed spectra: the identity, exactly degenerate `A ⊗ I_O` kernels (each
eigenvalue O-fold, as at infinite width), near-degenerate ones, rank-deficient ones (a width-1
member; zero rows from padded samples), and non-finite ones.

The reference is float64 `eigh` of the SAME float32 NTK (symmetrized, cosine-normalized in
float64), so the errors are the float32 spectral step's own. Tolerances (float32 step):
- entropy and effective rank: relative 1e-5;
- eigenvalues: absolute 2e-6·λ_max;
- eigenvectors: residual ‖Θ̃v − λv‖ ≤ 1e-5·λ_max, orthonormality |VᵀV − I| ≤ 1e-4 (MRRR's
  float32 orthogonality is ~1e-5 at M = 1280);
- misalignment, where the top-n subspace is well defined (n at the largest relative eigengap
  g >= 0.01 in [5, 40] of both records): absolute 1e-8 + 5e-9·sqrt(m)/g. The float32 limit of
  any eigensolver (today's `eigh` included) grows like sqrt(m)/g: measured <= 3e-9 at g >= 0.2,
  ~3e-8 at g ~ 0.01-0.02 with m ~ 0.03-0.3.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import adam_step, digits

from ntkbench import kernels
from ntkbench._config import Eigensolver
from ntkbench._record.spectrum import (
    Spectrum,
    cosine_spectrum,
    resolve_spectrum_method,
    top_misalignment,
)
from ntkbench.models import MLP

K_VECTORS = 48  # n_max
METHODS = (Eigensolver.HOST_LAPACK, Eigensolver.SUBSPACE, Eigensolver.EIGH)
ENTROPY_RTOL = 1e-5
EIG_ATOL = 2e-6  # times lambda_max
RESIDUAL_TOL = 1e-5  # times lambda_max
ORTHO_TOL = 1e-4


# ---------------------------------------------------------------------------------- helpers


@functools.cache
def _mlp_ntks(width: int, depth: int, steps: int, n: int = 64, lr: float = 1e-2):
    """Float32 NTKs `(10n, 10n)` on n test digits before and after one more Adam step."""
    model = MLP(64, 10, width, depth, key=jax.random.key(width + depth))
    x, y = digits(200, 500)
    x_test, _ = digits(n, 0)
    init, step = adam_step(x, y, lr)
    state = init(model)
    ntk = eqx.filter_jit(lambda m: kernels.as_matrix(kernels.ntk(m, x_test)))
    for _ in range(steps):
        model, state = step(model, state)
    before = np.asarray(ntk(model))
    model, state = step(model, state)
    return before, np.asarray(ntk(model))


def _reference(K: np.ndarray):
    """float64 `Θ̃`, ascending eigenvalues and eigenvectors in DESCENDING order."""
    K = np.asarray(K, np.float64)
    K = 0.5 * (K + K.T)
    d = np.diagonal(K)
    inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    theta = K * inv[:, None] * inv[None, :]
    w, v = np.linalg.eigh(theta)
    return theta, w, v[:, ::-1]


def _entropy(w: np.ndarray) -> float:
    lam = np.maximum(w, 1e-14)
    p = lam / lam.sum()
    return float(-(p * np.log(p)).sum())


def _misalignment(u: np.ndarray, v: np.ndarray, n: int) -> float:
    u, v = u[:, :n], v[:, :n]
    r = u - v @ (v.T @ u)
    return float((r * r).sum() / n)


def _best_gap(*ws: np.ndarray, lo: int = 5, hi: int = 40) -> tuple[int, float]:
    """The n in [lo, hi] with the largest relative gap λ_n − λ_{n+1} common to all spectra."""
    gaps = np.min([(w[::-1][lo - 1:hi] - w[::-1][lo:hi + 1]) / w[-1] for w in ws], axis=0)
    i = int(np.argmax(gaps))
    return lo + i, float(gaps[i])


def _spectrum(K, method, prev: Spectrum | None = None, k: int = K_VECTORS, **kw) -> Spectrum:
    """One jitted `cosine_spectrum` call, results as numpy."""
    arrays = {} if prev is None else {"prev_vectors": jnp.asarray(prev.vectors),
                                      "prev_erank": jnp.asarray(prev.erank)}
    fn = jax.jit(lambda K, arrays: cosine_spectrum(K, k, method=method, **arrays, **kw))
    return jax.tree.map(np.asarray, fn(jnp.asarray(K), arrays))


def _check_spectrum(s: Spectrum, K: np.ndarray, columns: int | None = None):
    """Eigenvalues, entropy, erank and the first `columns` vectors against float64."""
    theta, w, _ = _reference(K)
    lam_max = w[-1]
    np.testing.assert_allclose(s.eigenvalues, w, rtol=0, atol=EIG_ATOL * lam_max)
    h = _entropy(w)
    np.testing.assert_allclose(s.entropy, h, rtol=ENTROPY_RTOL)
    np.testing.assert_allclose(s.erank, np.exp(h), rtol=ENTROPY_RTOL)
    v = np.asarray(s.vectors, np.float64)[:, :columns]
    top = w[::-1][: v.shape[1]]
    residual = np.linalg.norm(theta @ v - v * top, axis=0) / lam_max
    assert residual.max() <= RESIDUAL_TOL, residual.max()
    assert np.abs(v.T @ v - np.eye(v.shape[1])).max() <= ORTHO_TOL


def _tested(method, s0: Spectrum, s1: Spectrum) -> int | None:
    """Columns the method guarantees: all, or for `SUBSPACE` (unless it fell back) the ones its
    residual test covers, those the two misalignments read."""
    if method is not Eigensolver.SUBSPACE or s1.fallback:
        return None
    return int(min(max(round(float(s1.erank)), round(float(s0.erank))), s1.vectors.shape[1]))


MLP_CASES = [(8, 3, 0), (8, 3, 20), (64, 3, 0), (64, 3, 20), (512, 2, 0), (512, 2, 20)]


# ---------------------------------------------------------------------------- realistic NTKs


@pytest.mark.parametrize("case", MLP_CASES, ids=lambda c: f"w{c[0]}d{c[1]}s{c[2]}")
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
def test_spectrum_and_misalignment_match_float64(method, case):
    """Entropy, erank, eigenvalues and vectors of every method on MLP NTKs; the misalignment
    where the top-n subspace is well defined (n at the largest common eigengap)."""
    K0, K1 = _mlp_ntks(*case)
    s0 = _spectrum(K0, Eigensolver.HOST_LAPACK)
    s1 = _spectrum(K1, method, prev=s0)
    assert not s1.fallback or method is Eigensolver.SUBSPACE
    _check_spectrum(s1, K1, columns=_tested(method, s0, s1))
    _, w0, v0 = _reference(K0)
    _, w1, v1 = _reference(K1)
    n, gap = _best_gap(w0, w1)
    assert gap >= 0.01, (n, gap)  # the case defines its top-n subspace
    m_ref = _misalignment(v0, v1, n)
    m = float(top_misalignment(jnp.asarray(s0.vectors), float(n), jnp.asarray(s1.vectors)))
    assert abs(m - m_ref) <= 1e-8 + 5e-9 * np.sqrt(m_ref) / gap, (n, gap, m, m_ref)


# ------------------------------------------------------- degenerate and rank-deficient spectra


def _kron_ntk(seed: int, n: int = 40, o: int = 10, noise: float = 0.0) -> np.ndarray:
    """`A ⊗ I_o` from a digits kernel `A` (every eigenvalue exactly o-fold), optionally split by
    a small output-dependent perturbation `noise·(B ⊗ diag(1..o))`."""
    x = np.asarray(digits(n, 300 + seed)[0], np.float64)
    a = x @ x.T + 1.0
    a = a + 0.05 * seed * np.outer(x[:, 10 + seed], x[:, 10 + seed])
    K = np.kron(a, np.eye(o))
    if noise:
        K = K + noise * np.kron(x[:, :8] @ x[:, :8].T, np.diag(np.arange(1.0, o + 1)))
    return K.astype(np.float32)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
def test_identity(method):
    """All eigenvalues 1 (entropy ln M, erank M); any orthonormal block is an eigenbasis."""
    M = 300
    s = _spectrum(3.0 * np.eye(M, dtype=np.float32), method, k=8)
    np.testing.assert_allclose(s.eigenvalues, 1.0, atol=1e-6)
    np.testing.assert_allclose(s.entropy, np.log(M), rtol=ENTROPY_RTOL)
    np.testing.assert_allclose(s.erank, M, rtol=ENTROPY_RTOL)
    assert np.abs(s.vectors.T @ s.vectors - np.eye(8)).max() <= ORTHO_TOL


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
def test_exactly_degenerate_kron(method):
    """`A ⊗ I_10`: eigenvalues in exact 10-fold clusters. The top-n subspace is well defined
    for n = 10, 20 (cluster boundaries), where the misalignment matches float64; for n = 15 it is
    not (documented: `m` is that of whichever basis of the cluster the solver returned)."""
    K0, K1 = _kron_ntk(0), _kron_ntk(1)
    s0 = _spectrum(K0, Eigensolver.HOST_LAPACK, k=30)
    s1 = _spectrum(K1, method, prev=s0, k=30)
    _check_spectrum(s1, K1, columns=20)
    clusters = s1.eigenvalues[::-1][:30].reshape(3, 10)
    assert np.ptp(clusters, axis=1).max() <= EIG_ATOL * clusters.max()
    _, _, v0 = _reference(K0)
    _, _, v1 = _reference(K1)
    for n in (10, 20):
        m = float(top_misalignment(jnp.asarray(s0.vectors), float(n), jnp.asarray(s1.vectors)))
        assert abs(m - _misalignment(v0, v1, n)) <= 1e-8, n
    m15 = float(top_misalignment(jnp.asarray(s0.vectors), 15.0, jnp.asarray(s1.vectors)))
    assert 0.0 <= m15 <= 1.0


def test_misalignment_inside_a_degenerate_cluster_is_not_unique():
    """Two exact eigenbases of one 4-fold cluster, rotated against each other: `m` is 0 for
    n = 4 (the cluster) and not 0 for n = 2 (inside it): the documented non-uniqueness."""
    u = jnp.eye(8)[:, :4]
    c, s = np.cos(0.7), np.sin(0.7)
    rot = jnp.asarray([[c, 0, -s, 0], [0, 1, 0, 0], [s, 0, c, 0], [0, 0, 0, 1]], jnp.float32)
    v = u @ rot
    assert float(top_misalignment(u, 4.0, v)) <= 1e-12
    assert float(top_misalignment(u, 2.0, v)) == pytest.approx(s**2 / 2, rel=1e-5)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
def test_near_degenerate(method):
    """Clusters split by ~1e-6 relative: the vectors inside a cluster are ill-conditioned, but
    the eigenvalues, the entropy and the cluster's subspace (n = 10) are accurate."""
    K0, K1 = _kron_ntk(0, noise=2e-6), _kron_ntk(1, noise=2e-6)
    _, w1, v1 = _reference(K1)
    split = np.ptp(w1[::-1][:10]) / w1[-1]
    assert 0 < split < 1e-5, split
    s0 = _spectrum(K0, Eigensolver.HOST_LAPACK, k=30)
    s1 = _spectrum(K1, method, prev=s0, k=30)
    _check_spectrum(s1, K1, columns=20)
    _, _, v0 = _reference(K0)
    m = float(top_misalignment(jnp.asarray(s0.vectors), 10.0, jnp.asarray(s1.vectors)))
    assert abs(m - _misalignment(v0, v1, 10)) <= 1e-8


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
def test_rank_deficient_narrow_member(method):
    """A width-1 MLP: the NTK has rank <= 85 (its parameter count) of M = 640, so >= 555
    eigenvalues are zero up to rounding (the -δ ln δ terms of the entropy)."""
    K0, K1 = _mlp_ntks(1, 1, 5)
    _, w1, _ = _reference(K1)
    assert (w1 < 1e-10 * w1[-1]).sum() >= 555
    s0 = _spectrum(K0, Eigensolver.HOST_LAPACK, k=16)
    _check_spectrum(_spectrum(K1, method, prev=s0, k=16), K1, columns=8)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
def test_zero_rows_of_padded_samples(method):
    """Padded samples (zero NTK rows and columns, e.g. masked members' test points): their
    entries of `Θ̃` are 0, so 400 eigenvalues are exactly 0 (the Householder reflectors there
    are identities, tau = 0); the rest equals the unpadded kernel's spectrum."""
    K0, K1 = (k.copy() for k in _mlp_ntks(64, 3, 20))
    for K in (K0, K1):
        K[240:, :] = 0.0
        K[:, 240:] = 0.0
    s0 = _spectrum(K0, Eigensolver.HOST_LAPACK)
    s1 = _spectrum(K1, method, prev=s0)
    _check_spectrum(s1, K1, columns=_tested(method, s0, s1))
    assert np.abs(s1.eigenvalues[:400]).max() <= EIG_ATOL * s1.eigenvalues[-1]
    assert np.abs(s1.vectors[240:]).max() <= 1e-6
    unpadded = _spectrum(K1[:240, :240], Eigensolver.HOST_LAPACK)
    np.testing.assert_allclose(s1.erank, unpadded.erank, rtol=ENTROPY_RTOL)


def test_non_finite_ntk_gives_nan():
    """A diverged member (NaN in its NTK): NaN spectrum and vectors, flagged, no hang."""
    K = np.eye(64, dtype=np.float32)
    K[3, 5] = np.nan
    s = _spectrum(K, Eigensolver.HOST_LAPACK, k=4)
    assert np.isnan(s.eigenvalues).all() and np.isnan(s.vectors).all() and bool(s.fallback)
    assert np.isnan(s.erank)


# ---------------------------------------------------------------------- subspace iteration


def test_subspace_warm_start_residual_stop_and_fallback():
    """Warm start from the previous record converges in a few iterations to the residual
    tolerance; a loose tolerance stops at once; a bad start with a tiny iteration cap, a zero
    start and no start fall back to the full eigh (and are still exact)."""
    K0, K1 = _mlp_ntks(64, 3, 20)
    s0 = _spectrum(K0, Eigensolver.HOST_LAPACK)
    warm = _spectrum(K1, Eigensolver.SUBSPACE, prev=s0)
    assert not warm.fallback and 1 <= warm.iterations <= 3 and warm.residual <= 2e-6
    loose = _spectrum(K1, Eigensolver.SUBSPACE, prev=s0, tol=1.0)
    assert loose.iterations == 0 and not loose.fallback
    strict = _spectrum(K1, Eigensolver.SUBSPACE, prev=s0, tol=1e-7, max_iterations=2)
    assert strict.fallback and strict.iterations == 2 and strict.residual > 1e-7
    _check_spectrum(strict, K1)
    bad = np.linalg.qr(np.random.default_rng(0).standard_normal(s0.vectors.shape))[0]
    for start in (bad, np.zeros_like(bad), np.full_like(bad, np.nan)):
        prev = s0._replace(vectors=start.astype(np.float32))
        s = _spectrum(K1, Eigensolver.SUBSPACE, prev=prev, max_iterations=1)
        assert s.fallback, start[0, 0]
        _check_spectrum(s, K1)
    none = _spectrum(K1, Eigensolver.SUBSPACE)
    assert none.fallback and none.iterations == 0
    _check_spectrum(none, K1)


# ----------------------------------------------------------------------- misalignment rules


def test_top_misalignment_conventions():
    """NaN for a NaN previous erank and for n > k; n = round(erank) clipped below at 1; sign
    flips and rotations inside the subspace do not change it; n traced under vmap."""
    rng = np.random.default_rng(1)
    q = np.linalg.qr(rng.standard_normal((50, 12)))[0].astype(np.float32)
    u = jnp.asarray(q[:, :6])
    assert np.isnan(float(top_misalignment(u, jnp.nan, u)))
    assert np.isnan(float(top_misalignment(u, 6.6, u)))  # n = 7 > k = 6
    assert float(top_misalignment(u, 6.4, u)) <= 1e-12
    v = jnp.asarray(q[:, [1, 0, 2, 3, 4, 5]] * np.array([1, -1, 1, -1, 1, 1], np.float32))
    assert float(top_misalignment(u, 2.0, v)) <= 1e-12  # swap + sign flips within the top 2
    assert float(top_misalignment(u, 0.2, v)) == pytest.approx(1.0)  # n = 1: u0 ⟂ u1
    w = jnp.asarray(q[:, 6:12])  # orthogonal to u
    assert float(top_misalignment(u, 3.0, w)) == pytest.approx(1.0)
    half = jnp.asarray(np.concatenate([q[:, :3], q[:, 6:9]], axis=1))
    ms = jax.jit(jax.vmap(top_misalignment, in_axes=(None, 0, None)))(u, jnp.array([3.0, 6.0]),
                                                                     half)
    np.testing.assert_allclose(ms, [0.0, 0.5], atol=1e-6)
    with pytest.raises(ValueError, match="must both be one member"):
        top_misalignment(u, 2.0, jnp.asarray(q))


# ------------------------------------------------------------------------ API and precision


def test_resolve_and_argument_errors():
    assert resolve_spectrum_method("auto", "cpu") is Eigensolver.HOST_LAPACK
    assert resolve_spectrum_method("auto", "cuda") is Eigensolver.EIGH
    assert resolve_spectrum_method("auto", "tpu") is Eigensolver.EIGH
    assert resolve_spectrum_method("subspace", None) is Eigensolver.SUBSPACE
    with pytest.raises(ValueError, match="needs the platform"):
        resolve_spectrum_method("auto", None)
    with pytest.raises(ValueError, match="Unknown spectrum method"):
        resolve_spectrum_method("lanczos", "cpu")
    K = jnp.eye(6)
    with pytest.raises(ValueError, match="num_vectors"):
        cosine_spectrum(K, 7, method="eigh")
    with pytest.raises(ValueError, match="matrix form"):
        cosine_spectrum(jnp.ones((2, 3, 3)), 1, method="eigh")
    with pytest.raises(ValueError, match="needs jax.enable_x64"):
        cosine_spectrum(K, 2, method="eigh", dtype=jnp.float64)
    with pytest.raises(ValueError, match="previous record's vectors"):
        cosine_spectrum(K, 2, method="subspace", prev_vectors=jnp.ones((6, 3)))


def test_host_errors_surface_as_exceptions():
    """An exception inside the host handler becomes an XLA error, not a crash or a hang."""
    from ntkbench._record.host_ffi import _ffi_target

    call = jax.ffi.ffi_call(_ffi_target(np.dtype(np.float32))[0],
                            (jax.ShapeDtypeStruct((4,), jnp.float32),
                             jax.ShapeDtypeStruct((4, 2), jnp.float32),
                             jax.ShapeDtypeStruct((), jnp.bool_)))
    with pytest.raises(Exception, match="ntkbench host spectrum failed"):
        jax.block_until_ready(call(jnp.ones((4, 5), jnp.float32)))  # not square


def test_float64_step_cuts_the_misalignment_error():
    """A wide network after small steps, n = round(erank) (gap ~1e-3, where float32 is at its
    limit: measured 1e-8 to 3e-8, today's eigh 3e-8 to 4e-8): `dtype=float64` on the host (no
    x64 needed; results rounded to float32) cuts the misalignment error by >= 10x (measured
    ~100x, to ~1e-10); under x64 the results are float64 (error ~1e-16)."""
    K0, K1 = _mlp_ntks(512, 2, 3, lr=1e-4)
    _, w0, v0 = _reference(K0)
    _, w1, v1 = _reference(K1)
    n = round(np.exp(_entropy(w0)))
    m_ref = _misalignment(v0, v1, n)
    errors = {}
    for dtype in (jnp.float32, jnp.float64):
        s0 = _spectrum(K0, Eigensolver.HOST_LAPACK, k=64, dtype=dtype)
        s1 = _spectrum(K1, Eigensolver.HOST_LAPACK, k=64, dtype=dtype)
        assert s1.vectors.dtype == np.float32
        m = float(top_misalignment(jnp.asarray(s0.vectors), float(n), jnp.asarray(s1.vectors)))
        errors[dtype] = abs(m - m_ref)
    assert errors[jnp.float64] <= 1e-9 and errors[jnp.float64] * 10 <= errors[jnp.float32], (
        m_ref, errors)
    with jax.enable_x64(True):
        s0, s1 = (cosine_spectrum(jnp.asarray(K, jnp.float64), 64, method="host_lapack",
                                  dtype=jnp.float64) for K in (K0, K1))
        assert s1.vectors.dtype == jnp.float64 and s1.eigenvalues.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(s1.eigenvalues), w1, rtol=0, atol=1e-12 * w1[-1])
        assert abs(float(top_misalignment(s0.vectors, float(n), s1.vectors)) - m_ref) <= 1e-13


# ---------------------------------------------------------------- transformations, no hangs


def _pack(num: int = 4, M: int = 256):
    """Wishart kernels with ~6 dominant directions (erank ~ 6 < k) and a full-rank tail."""
    keys = jax.random.split(jax.random.key(3), num)
    j = jax.vmap(lambda k: jax.random.normal(k, (M, M // 4)))(keys)
    j = j * jnp.where(jnp.arange(M // 4) < 6, 1.0, 0.03)
    return jnp.einsum("bik,bjk->bij", j, j, precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
def test_vmap_lax_map_and_cond_in_scan_match_single_calls(method):
    Ks = _pack()
    k = 16
    single = [cosine_spectrum(K, k, method="host_lapack") for K in Ks]
    prev_v = jnp.stack([s.vectors for s in single])
    prev_e = jnp.stack([s.erank for s in single])
    fn = lambda K, v, e: cosine_spectrum(K, k, method=method, prev_vectors=v, prev_erank=e)
    vm = jax.jit(jax.vmap(fn))(Ks, prev_v, prev_e)
    lm = jax.jit(lambda *a: jax.lax.map(lambda a: fn(*a), a))(Ks, prev_v, prev_e)

    def body(carry, K):
        v, e = carry
        s = jax.vmap(lambda K, v, e: jax.lax.cond(
            jnp.isnan(e), lambda: fn(K, v, jnp.zeros_like(e)), lambda: fn(K, v, e)))(K, v, e)
        return (s.vectors, s.erank), (s.erank, jax.vmap(top_misalignment)(v, e, s.vectors))

    _, (eranks, ms) = jax.jit(lambda Ks: jax.lax.scan(body, (prev_v, prev_e), Ks))(
        jnp.stack([Ks, Ks]))
    for i, K in enumerate(Ks):
        one = fn(K, prev_v[i], prev_e[i])
        for got in (jax.tree.map(lambda a, i=i: a[i], vm), jax.tree.map(lambda a, i=i: a[i], lm)):
            np.testing.assert_allclose(got.eigenvalues, one.eigenvalues, rtol=1e-6, atol=1e-5)
            assert float(top_misalignment(one.vectors, 6.0, got.vectors)) <= 1e-9
        np.testing.assert_allclose(eranks[:, i], one.erank, rtol=1e-6)
    assert np.all(np.asarray(ms) <= 1e-6)  # the same NTK twice: no misalignment


def test_no_batched_lapack_call_on_cpu():
    """Under vmap, `EIGH`/`SUBSPACE` on CPU run LAPACK one member at a time (the batched-eigh
    deadlock), and `HOST_LAPACK` makes ONE host call for the whole batch."""
    Ks = _pack(num=2, M=64)
    for method, expect in (("eigh", "64x64xf32"), ("host_lapack", "2x64x64xf32")):
        text = jax.jit(jax.vmap(lambda K, m=method: cosine_spectrum(K, 4, method=m))).lower(
            Ks).as_text()
        calls = [line for line in text.splitlines() if "custom_call" in line and (
            "syevd" in line or "ntkbench" in line)]
        assert calls and all(expect in line for line in calls), calls


_SHARD_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_num_cpu_devices", 4)
    from jax.sharding import NamedSharding, PartitionSpec as P, AxisType
    from ntkbench._record.spectrum import cosine_spectrum, top_misalignment
    mesh = jax.make_mesh((4,), ("m",), axis_types=(AxisType.Auto,))
    j = jax.random.normal(jax.random.key(0), (8, 256, 64)) * jnp.where(jnp.arange(64) < 5, 1, .03)
    Ks = jnp.einsum("bik,bjk->bij", j, j)  # erank ~ 5 < k
    k = 8
    first = jax.jit(jax.vmap(lambda K: cosine_spectrum(K, k, method="host_lapack")))(Ks)
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("m")))
    Ks, v0, e0 = put(Ks), put(first.vectors), put(first.erank)
    for method in ("host_lapack", "subspace", "eigh"):
        fn = lambda K, v, e: cosine_spectrum(K, k, method=method, prev_vectors=v, prev_erank=e)
        def body(carry, K):
            v, e = carry
            s = jax.vmap(lambda K, v, e: jax.lax.cond(
                e > 0, lambda: fn(K, v, e), lambda: fn(K, v, e + 1)))(K, v, e)
            return (s.vectors, s.erank), jax.vmap(top_misalignment)(v, e, s.vectors)
        step = jax.jit(jax.shard_map(lambda Ks, v, e: jax.lax.scan(body, (v, e), Ks)[1],
                                     mesh=mesh, in_specs=(P(None, "m"), P("m"), P("m")),
                                     out_specs=P(None, "m")))
        for _ in range(3):
            m = np.asarray(jax.block_until_ready(step(jnp.stack([Ks, Ks, Ks]), v0, e0)))
            assert m.shape == (3, 8) and np.all(m <= 1e-6), m
        print(method, "ok", flush=True)
    # plain jit with the member axis sharded (GSPMD): the host call is batch-partitioned
    gspmd = jax.jit(jax.vmap(lambda K: cosine_spectrum(K, k, method="host_lapack").erank))
    for _ in range(5):
        np.testing.assert_allclose(np.asarray(jax.block_until_ready(gspmd(Ks))),
                                   np.asarray(first.erank), rtol=1e-6)
    print("gspmd ok", flush=True)
""")


def test_shard_map_four_devices_two_members_each_does_not_hang():
    """4 fake CPU devices x 2 members, M = 256 (above LAPACK's inline threshold), every method
    inside `lax.cond` inside `lax.scan` inside `shard_map`, 3 runs each, plus the host method
    under GSPMD. In a subprocess with a timeout, so that a hang fails fast."""
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    out = subprocess.run([sys.executable, "-c", _SHARD_SCRIPT], capture_output=True, text=True,
                         timeout=400, env=env, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["host_lapack", "ok", "subspace", "ok", "eigh", "ok", "gspmd",
                                  "ok"], out.stdout
