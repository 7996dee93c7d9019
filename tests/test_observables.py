"""Known answers and naive float64 references for `ntkbench.observables` (docs/definitions.md §2-8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import block_diag

from ntkbench import observables as obs


# ----------------------------------------------------------------------------- naive references
def _np_cosine(K):
    K = np.asarray(K, np.float64)
    d = np.diag(K)
    out = np.zeros_like(K)
    for i in range(K.shape[0]):
        for j in range(K.shape[0]):
            if d[i] * d[j] > 0:
                out[i, j] = K[i, j] / np.sqrt(d[i] * d[j])
    return out


def _np_entropy(K):
    lam = np.maximum(np.linalg.eigvalsh(_np_cosine(K)), 1e-14)
    p = lam / lam.sum()
    return float(-np.sum(p * np.log(p)))


def _np_misalignment(K0, K1, n=None):
    w0, u0 = np.linalg.eigh(_np_cosine(K0))
    _, u1 = np.linalg.eigh(_np_cosine(K1))
    if n is None:
        n = int(np.clip(np.round(np.exp(_np_entropy(K0))), 1, K0.shape[0]))
    return 1.0 - np.sum((u0[:, -n:].T @ u1[:, -n:]) ** 2) / n


def _random_ntk(key, m, p):
    """A PSD Gram `J Jᵀ` with correlated rows, like an NTK (rank min(m, p))."""
    k1, k2 = jax.random.split(key)
    j = jax.random.normal(k1, (m, p)) + 0.7 * jax.random.normal(k2, (1, p))
    j = j * jnp.linspace(0.5, 2.0, m)[:, None]
    return j @ j.T


# ----------------------------------------------------------------------------- trace, normalization
def test_trace_is_mean_diagonal():
    K = jnp.diag(jnp.arange(1.0, 7.0))
    np.testing.assert_allclose(obs.ntk_trace(K), 3.5)


def test_cosine_normalize_matches_naive_and_zeroes_dead_rows(key):
    K = np.array(_random_ntk(key, 6, 10))
    K[2, :] = K[:, 2] = 0.0  # a zero gradient
    got = np.asarray(obs.cosine_normalize(jnp.asarray(K)))
    np.testing.assert_allclose(got, _np_cosine(K), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], 0.0)
    np.testing.assert_allclose(np.delete(np.diag(got), 2), 1.0, rtol=1e-6)


def test_square_check_says_how_to_fix():
    with pytest.raises(ValueError, match="reshape|Reshape"):
        obs.effective_rank(jnp.ones((2, 2, 3, 3)))


# ----------------------------------------------------------------------------- entropy, erank
@pytest.mark.parametrize("m", [1, 7, 64])
def test_identity_has_full_rank(m):
    np.testing.assert_allclose(obs.effective_rank(jnp.eye(m)), m, rtol=1e-5)
    np.testing.assert_allclose(obs.entropy(3.0 * jnp.eye(m)), np.log(m), atol=1e-5)


def test_scaled_diagonal_is_normalized_away():
    # Appendix B.3: gradient magnitudes do not count, only directions.
    np.testing.assert_allclose(obs.effective_rank(jnp.diag(jnp.array([1e-3, 1.0, 50.0]))), 3.0,
                               rtol=1e-5)


@pytest.mark.parametrize("signs", [False, True])
def test_rank_one_has_rank_one(signs):
    v = jnp.linspace(0.5, 3.0, 40)
    if signs:
        v = v * jnp.where(jnp.arange(40) % 3 == 0, -1.0, 1.0)
    # float32: the 39 zero eigenvalues come out as ±1e-6 noise, which adds ~1e-5 to H (a zero
    # eigenvalue perturbed by δ adds -δ ln δ); float64 is exact to ~1e-12.
    np.testing.assert_allclose(obs.effective_rank(jnp.outer(v, v)), 1.0, rtol=1e-4)
    with jax.enable_x64(True):
        v64 = jnp.asarray(np.asarray(v), jnp.float64)
        np.testing.assert_allclose(obs.effective_rank(jnp.outer(v64, v64)), 1.0, rtol=1e-10)


def test_block_structure_entropy():
    # Blocks c·11ᵀ of sizes s: Θ̃ has eigenvalues s (and zeros), so H = −Σ (s/M) ln(s/M).
    sizes = [1, 2, 3, 4, 6]
    K = block_diag(*[(1.0 + s) * np.ones((s, s)) for s in sizes])
    m = sum(sizes)
    p = np.array(sizes) / m
    np.testing.assert_allclose(obs.entropy(jnp.asarray(K)), -np.sum(p * np.log(p)), atol=2e-6)
    # A dead row contributes a zero eigenvalue, clipped to 1e-14: erank unchanged.
    K0 = block_diag(K, np.zeros((1, 1)))
    np.testing.assert_allclose(obs.entropy(jnp.asarray(K0)), -np.sum(p * np.log(p)), atol=2e-6)


def test_entropy_matches_float64_reference(key):
    K = _random_ntk(key, 96, 40)  # rank-deficient: 56 zero eigenvalues
    with jax.enable_x64(True):
        K64 = jnp.asarray(np.asarray(K), jnp.float64)
        got64 = float(obs.entropy(K64))
    np.testing.assert_allclose(got64, _np_entropy(K), rtol=1e-12)
    np.testing.assert_allclose(float(obs.entropy(K)), _np_entropy(K), rtol=1e-5)


# ----------------------------------------------------------------------------- trace ratio, alpha
def test_trace_ratio():
    np.testing.assert_allclose(obs.trace_ratio(jnp.array([2.0, 4.0]), jnp.array([3.0, 4.0])),
                               [0.5, 0.0])


def _np_adaptation_rate(trace, loss, window):
    """Running means over `window` records, placed at their centres; α by central differences."""
    t = np.convolve(trace, np.ones(window) / window, "valid")
    l = np.convolve(np.log(loss), np.ones(window) / window, "valid")
    centres = np.arange(len(t)) + (window - 1) / 2
    out = np.full(len(trace), np.nan)
    half = (window + 1) // 2
    for k in range(half, len(trace) - half):
        lo, hi = (k - 0.5, k + 0.5) if window % 2 == 0 else (k - 1, k + 1)
        a, b = np.flatnonzero(centres == lo)[0], np.flatnonzero(centres == hi)[0]
        out[k] = -(t[b] - t[a]) / (l[b] - l[a])
    return out


@pytest.mark.parametrize("window", [2, 5, 20])
def test_adaptation_rate_of_trace_linear_in_log_loss(window):
    k = np.arange(200.0)
    loss = np.exp(-0.3 * k**0.7) * (1 + 0.05 * np.sin(k))  # not a straight line in k
    alpha = np.asarray(obs.adaptation_rate(jnp.asarray(5.0 - 1.7 * np.log(loss)),
                                           jnp.asarray(loss), window))
    half = (window + 1) // 2
    assert np.all(np.isnan(alpha[:half])) and np.all(np.isnan(alpha[-half:]))
    np.testing.assert_allclose(alpha[half:-half], 1.7, rtol=1e-3)


@pytest.mark.parametrize("window", [4, 7])
def test_adaptation_rate_matches_naive(window):
    rng = np.random.default_rng(0)
    loss = np.exp(-np.linspace(0, 4, 60)) * np.exp(0.01 * rng.normal(size=60))
    trace = 3 - 2 * np.log(loss) + 0.1 * rng.normal(size=60)
    with jax.enable_x64(True):
        got = np.asarray(obs.adaptation_rate(jnp.asarray(trace), jnp.asarray(loss), window))
    np.testing.assert_allclose(got, _np_adaptation_rate(trace, loss, window), rtol=1e-10)


def test_adaptation_rate_short_and_bad_window():
    assert np.all(np.isnan(obs.adaptation_rate(jnp.ones(5), jnp.ones(5), 20)))
    with pytest.raises(ValueError, match="window >= 2"):
        obs.adaptation_rate(jnp.ones(5), jnp.ones(5), 1)


# ----------------------------------------------------------------------------- alignment
def test_label_alignment_known_answers(key):
    y = jax.nn.one_hot(jnp.array([0, 2, 1, 1, 0]), 3)
    v = y.reshape(-1)
    np.testing.assert_allclose(obs.label_alignment(jnp.outer(v, v), y), 1.0, rtol=1e-6)
    K = np.asarray(_random_ntk(key, 15, 30), np.float64)
    L = np.outer(v, v)
    want = np.sum(K * L) / (np.linalg.norm(K) * np.linalg.norm(L))
    np.testing.assert_allclose(obs.label_alignment(jnp.asarray(K, jnp.float32), y), want,
                               rtol=1e-5)


def test_label_alignment_traced_known_answers(key):
    y = jax.nn.one_hot(jnp.array([0, 2, 1, 1, 0]), 3)
    yy = y @ y.T
    np.testing.assert_allclose(
        obs.label_alignment_traced(jnp.einsum("ij,ab->ijab", yy, jnp.eye(3)), y), 1.0, rtol=1e-6)
    K = np.asarray(_random_ntk(key, 15, 30), np.float64)
    K4 = K.reshape(5, 3, 5, 3).transpose(0, 2, 1, 3)
    ktr = np.einsum("ijaa->ij", K4)
    yy = np.asarray(yy, np.float64)
    want = np.sum(ktr * yy) / (np.linalg.norm(ktr) * np.linalg.norm(yy))
    np.testing.assert_allclose(obs.label_alignment_traced(jnp.asarray(K4, jnp.float32), y), want,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="rank-4"):
        obs.label_alignment_traced(jnp.asarray(K, jnp.float32), y)


# ----------------------------------------------------------------------------- misalignment
def _blocks(m, *blocks):
    """Identity plus all-ones blocks on the index sets: Θ̃'s eigenvectors are block indicators."""
    K = np.eye(m)
    for idx in blocks:
        K[np.ix_(idx, idx)] = 1.0
    return jnp.asarray(K)


def test_misalignment_same_subspace_is_zero_and_orthogonal_is_one():
    before = _blocks(10, [0, 1, 2], [3, 4])  # top-2 eigenvalues 3, 2
    after = _blocks(10, [5, 6, 7], [8, 9])
    np.testing.assert_allclose(obs.eigvec_misalignment(before, before, n=2), 0.0, atol=1e-6)
    np.testing.assert_allclose(obs.eigvec_misalignment(before, after, n=2), 1.0, atol=1e-6)
    # top-1: 1_{012}/√3 against 1_{0123}/2, overlap² = 3/4.
    partial = _blocks(10, [0, 1, 2, 3])
    np.testing.assert_allclose(obs.eigvec_misalignment(before, partial, n=1), 0.25, atol=1e-6)


def test_misalignment_invariant_to_signs_and_rotations(key):
    K = _random_ntk(key, 24, 30)
    r0 = obs.spectral_record(K, jnp.ones((6, 4)))
    n = int(round(float(r0["erank"])))
    v = r0["eigvecs"]
    # Flip signs of every other vector and rotate the top-n block by a random orthogonal matrix.
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(3), (n, n)))
    v_rot = v * jnp.where(jnp.arange(24) % 2 == 0, -1.0, 1.0)
    v_rot = v_rot.at[:, -n:].set(v_rot[:, -n:] @ q)
    r1 = obs.spectral_record(K, jnp.ones((6, 4)), v_rot, r0["erank"])
    np.testing.assert_allclose(r1["eigvec_misalignment"], 0.0, atol=1e-5)


def test_misalignment_default_n_matches_reference(key):
    k1, k2 = jax.random.split(key)
    K0 = _random_ntk(k1, 40, 60)
    K1 = K0 + 0.3 * _random_ntk(k2, 40, 60)
    want = _np_misalignment(K0, K1)
    assert 0.0 < want < 1.0
    np.testing.assert_allclose(obs.eigvec_misalignment(K0, K1), want, atol=1e-5)
    with jax.enable_x64(True):
        got = obs.eigvec_misalignment(jnp.asarray(np.asarray(K0), jnp.float64),
                                      jnp.asarray(np.asarray(K1), jnp.float64))
    np.testing.assert_allclose(got, want, atol=1e-12)


# ----------------------------------------------------------------------------- spectral_record
def test_spectral_record_vmapped_with_per_member_n(key):
    num, n_samples, n_out = 3, 8, 4
    m = n_samples * n_out
    keys = jax.random.split(key, 2 * num)
    K0 = jnp.stack([_random_ntk(k, m, 20 + 10 * i) for i, k in enumerate(keys[:num])])
    K1 = K0 + 0.2 * jnp.stack([_random_ntk(k, m, 50) for k in keys[num:]])
    y = jax.nn.one_hot(jnp.arange(n_samples) % n_out, n_out)

    first = jax.jit(jax.vmap(lambda k, y: obs.spectral_record(k, y), in_axes=(0, None)))(K0, y)
    assert np.all(np.isnan(first["eigvec_misalignment"]))
    prev_erank = first["erank"].at[1].set(jnp.nan)  # member 1: no previous record
    step = jax.jit(jax.vmap(obs.spectral_record, in_axes=(0, None, 0, 0)))
    rec = step(K1, y, first["eigvecs"], prev_erank)
    assert len({int(round(float(e))) for e in first["erank"]}) > 1  # n differs between members
    for i in range(num):
        assert np.isnan(rec["eigvec_misalignment"][i]) == (i == 1)
        if i != 1:
            np.testing.assert_allclose(rec["eigvec_misalignment"][i],
                                       _np_misalignment(K0[i], K1[i]), atol=1e-5)
        np.testing.assert_allclose(rec["erank"][i], np.exp(_np_entropy(K1[i])), rtol=1e-5)
        np.testing.assert_allclose(rec["entropy"][i], _np_entropy(K1[i]), rtol=1e-5)
        np.testing.assert_allclose(rec["trace"][i], np.trace(np.asarray(K1[i])) / m, rtol=1e-6)
        np.testing.assert_allclose(rec["label_alignment"][i], obs.label_alignment(K1[i], y),
                                   rtol=1e-5)
        K4 = K1[i].reshape(n_samples, n_out, n_samples, n_out).transpose(0, 2, 1, 3)
        np.testing.assert_allclose(rec["label_alignment_traced"][i],
                                   obs.label_alignment_traced(K4, y), rtol=1e-5)


def test_spectral_record_float32_close_to_float64(key):
    """The float32 record (the training dtype) against a float64 one of the same kernel."""
    k1, k2 = jax.random.split(key)
    K0, K1 = _random_ntk(k1, 160, 120), _random_ntk(k2, 160, 120)
    K1 = K0 + 0.05 * K1
    y = jax.nn.one_hot(jnp.arange(32) % 5, 5)
    r0 = obs.spectral_record(K0, y)
    r32 = obs.spectral_record(K1, y, r0["eigvecs"], r0["erank"])
    with jax.enable_x64(True):
        to64 = lambda a: jnp.asarray(np.asarray(a), jnp.float64)
        s0 = obs.spectral_record(to64(K0), to64(y))
        r64 = obs.spectral_record(to64(K1), to64(y), s0["eigvecs"], s0["erank"])
        r64 = {k: np.asarray(v) for k, v in r64.items()}
    np.testing.assert_allclose(r32["erank"], r64["erank"], rtol=1e-5)
    np.testing.assert_allclose(r32["entropy"], r64["entropy"], rtol=1e-5)
    np.testing.assert_allclose(r32["eigvec_misalignment"], r64["eigvec_misalignment"], atol=1e-5)
    np.testing.assert_allclose(r32["label_alignment"], r64["label_alignment"], rtol=1e-5)


def test_small_misalignment_is_resolved_in_float32(key):
    """A rotation by θ of one top vector into the bulk gives m = sin²θ / n, even for m ~ 1e-9.

    The textbook 1 − ‖U_nᵀU'_n‖²/n would return float32 rounding noise (~1e-7) here.
    """
    K = _random_ntk(key, 48, 60)
    r0 = obs.spectral_record(K, jnp.ones((12, 4)))
    v = r0["eigvecs"]
    for theta in (1e-4, 1e-3):
        c, s = jnp.cos(theta), jnp.sin(theta)
        prev = v.at[:, -1].set(c * v[:, -1] + s * v[:, 0]).at[:, 0].set(-s * v[:, -1] + c * v[:, 0])
        r1 = obs.spectral_record(K, jnp.ones((12, 4)), prev, jnp.asarray(3.0))
        np.testing.assert_allclose(r1["eigvec_misalignment"], np.sin(theta) ** 2 / 3, rtol=2e-3)
