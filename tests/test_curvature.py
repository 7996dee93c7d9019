"""Tests of the matrix-free curvature kernels (`kernels/_curvature.py`) against dense float64
references: the Hessian by `jax.hessian`, the Jacobian by `jax.jacrev`, eigenvalues by numpy.

The model is a small ReLU MLP (5 inputs, width 7, depth 2, 3 logits, P = 122 parameters) after
3 full-batch Adam steps, on 12 examples of which the last 3 are padding (weight 0, the other 9
weigh 1/9), with the training losses of `ntkbench._train.member_step` (cross-entropy and
`½‖f − onehot(y)‖²`). Everything runs in float64 (x64 enabled for the whole module) except the
float32 test.

Tolerances (every one relative to the reference's scale, stated with its reason):
- products (Hessian, Gauss-Newton) vs dense matrix products: `PRODUCT_TOL = 1e-10` of
  `max |H v|` (float64 round-off in a different summation order, observed ~1e-15).
- top eigenvalues vs `eigvalsh` of the dense matrix: `EIG_TOL = 1e-8` of `|λ_max|` at the default
  `TOP_EIGEN_NUM_STEPS` (the Lanczos error; the top of these spectra is well separated, so 20
  steps converge to round-off: observed <= 1e-15, and 1.3e-10 for the clustered top of the
  negated Hessian). Residuals: `<= RESIDUAL_TOL = 1e-6 · |λ_max|` (observed <= 2e-15; 1e-5 and
  observed 6e-6 for the clustered top), and the residual bound (some eigenvalue within
  `residual` of the value) is checked.
- identities between dense float64 matrices (Gauss-Newton decomposition): `PRODUCT_TOL`.
- padded vs unpadded member, and vmapped pack vs per-member calls: `EIG_TOL` (the same operator
  up to zero rows and columns, but the start vector lives in another dimension, resp. batched
  round-off; both runs are converged, so they agree to the Lanczos tolerance; observed <= 2e-15).
- float32 vs the float64 reference: `F32_TOL = 1e-5` (float32 round-off, eps = 1.2e-7, through
  the products and the Lanczos recurrence; observed <= 3.2e-7).
"""

from __future__ import annotations

import doctest
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from ntkbench import kernels
from ntkbench._train.member_step import member_loss
from ntkbench.kernels import _curvature
from ntkbench.models import MLP, member, stack

# Small programs compile ~30% faster at XLA's backend optimization level 0 (numerics unchanged).
FAST_COMPILE = {"compiler_options": {"xla_backend_optimization_level": 0}}
jit = functools.partial(jax.jit, **FAST_COMPILE)

PRODUCT_TOL = 1e-10
EIG_TOL = 1e-8
RESIDUAL_TOL = 1e-6
F32_TOL = 1e-5

N, N_REAL, IN, OUT, WIDTH, DEPTH, PAD = 12, 9, 5, 3, 7, 2, 10
ADAM = {"learning_rate": 0.05, "b1": 0.9, "b2": 0.999, "eps": 1e-8}
KINDS = ("cross_entropy", "mse")


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# One loss for every case, so that each program below compiles once for all of them:
# `L = Σ_i w_i (c_ce · CE_i + c_sq · ½‖f_i − t_i‖²)`. With `c = (1, 0)` it is the training
# cross-entropy, with `c = (0, 1)` and one-hot targets the training MSE (both checked against
# `member_loss` in `test_the_losses_are_the_training_losses`).
CE, SQ = (1.0, 0.0), (0.0, 1.0)


def _loss(x, y, w, coefs, targets):
    """`model -> L` (see above); `coefs` `(2,)`, `targets` `(n, O)`."""

    def loss(m):
        f = jax.vmap(m)(x)
        ce = optax.softmax_cross_entropy_with_integer_labels(f, y)
        sq = 0.5 * jnp.sum((f - targets) ** 2, -1)
        return jnp.sum(w * (coefs[0] * ce + coefs[1] * sq))

    return loss


OPT = optax.adam(**ADAM)


@eqx.filter_jit
def _adam_step(model, state, x, y, w):
    """One full-batch Adam step on the cross-entropy, and Adam's denominator `D` after it."""
    loss = _loss(x, y, w, jnp.asarray(CE, x.dtype), jax.nn.one_hot(y, OUT, dtype=x.dtype))
    grads = eqx.filter_grad(loss)(model)
    updates, state = OPT.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
    d = kernels.adam_preconditioner(state, b2=ADAM["b2"], eps=ADAM["eps"])
    return eqx.apply_updates(model, updates), state, updates, d


def _adam(model, x, y, w, steps: int = 3):
    """`(model, state, last updates, D)` after `steps` Adam steps."""
    state = OPT.init(eqx.filter(model, eqx.is_inexact_array))
    for _ in range(steps):
        model, state, updates, d = _adam_step(model, state, x, y, w)
    return model, state, updates, d


@pytest.fixture(scope="module")
def data():
    """`(x (N, IN), y (N,), w (N,))`: the last `N − N_REAL` examples are padding (weight 0)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((N, IN)))
    y = jnp.asarray(rng.integers(0, OUT, N))
    w = jnp.asarray(np.where(np.arange(N) < N_REAL, 1.0 / N_REAL, 0.0))
    return x, y, w


# `(true width, key)` of the members: the test member, then two more for the pack.
MEMBERS = ((WIDTH, 0), (4, 10), (PAD, 11))


@eqx.filter_jit
def _build():
    """The test member unpadded, and every member padded to `PAD` (one compiled construction
    instead of a compile of every eager init op)."""
    make = lambda width, seed, pad: MLP(IN, OUT, width, DEPTH, key=jax.random.key(seed),
                                        pad_to=pad, dtype=jnp.float64)
    return make(WIDTH, 0, None), [make(width, seed, PAD) for width, seed in MEMBERS]


@pytest.fixture(scope="module")
def trained(data):
    """`(model, Adam state, last updates, D)` after 3 Adam steps of the unpadded test member
    (key None) and of every member padded to `PAD` (key: index into `MEMBERS`)."""
    unpadded, padded = _build()
    out = {None: _adam(unpadded, *data)}
    for i, m in enumerate(padded):
        out[i] = _adam(m, *data)
    return out


def _case(case: str, model, x, y):
    """`(coefs, targets)` of a case: the training losses, MSE to the model's own outputs (zero
    residuals) and the negated cross-entropy."""
    onehot = jax.nn.one_hot(y, OUT, dtype=x.dtype)
    coefs, targets = {
        "cross_entropy": (CE, onehot),
        "mse": (SQ, onehot),
        "mse_fit": (SQ, jax.vmap(model)(x)),
        "neg_cross_entropy": ((-1.0, 0.0), onehot),
    }[case]
    return jnp.asarray(coefs, x.dtype), targets


def _dense(model, x, y, w, coefs, targets, v):
    """Dense float64 references and the products they check."""
    loss = _loss(x, y, w, coefs, targets)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    fb = lambda theta, x: jax.vmap(eqx.combine(unravel(theta), static))(x)
    return {
        "hessian": jax.hessian(lambda theta: loss(eqx.combine(unravel(theta), static)))(flat),
        "jac": jax.jacrev(fb)(flat, x).reshape(N * OUT, -1),  # row i·O + a
        "f_hessians": jax.hessian(fb)(flat, x),  # (n, O, P, P)
        "residuals": jax.vmap(model)(x) - targets,
        "hvp_tree": ravel_pytree(kernels.hessian_vp(loss, model, unravel(v)))[0],
        "hvp_flat": kernels.hessian_vp_fn(loss, model)(v),
        "gnvp": kernels.gauss_newton_vp_fn(model, x, w)(v),
    }


def _tops(model, x, y, w, coefs, targets, d, key):
    """The three top eigenvalues at the default number of Lanczos steps."""
    loss = _loss(x, y, w, coefs, targets)
    return {
        "top": kernels.hessian_top_eigen(loss, model, key=key),
        "top_pre": kernels.preconditioned_top_eigen(loss, model, d, key=key),
        "ntk_w": kernels.ntk_top_eigen(model, x, w, key=key),
    }


def _ntk_extra(model, x, w, key):
    return {
        # n·O steps: the whole Krylov space, which breaks down at N_REAL·O (the padded rows).
        "ntk_w_full": kernels.ntk_top_eigen(model, x, w, key=key, num_steps=N * OUT),
        # The real examples alone, with the default weights 1/N_REAL.
        "ntk_real": kernels.ntk_top_eigen(model, x[:N_REAL], key=key),
    }


dense, tops, ntk_extra = jit(_dense), jit(_tops), jit(_ntk_extra)
CASES = ("cross_entropy", "mse", "mse_fit", "neg_cross_entropy")
KEY = 3


@pytest.fixture(scope="module")
def results(data, trained):
    """`{case: numpy results}`: dense references and matrix-free results of every case."""
    x, y, w = data
    model, _, _, d = trained[None]
    v = jax.random.normal(jax.random.key(5), ravel_pytree(d)[0].shape, jnp.float64)
    extra = ntk_extra(model, x, w, jax.random.key(KEY))
    out = {}
    for case in CASES:
        coefs, targets = _case(case, model, x, y)
        res = dense(model, x, y, w, coefs, targets, v)
        res |= tops(model, x, y, w, coefs, targets, d, jax.random.key(KEY)) | extra
        out[case] = jax.tree.map(np.asarray, res) | {"v": np.asarray(v)}
    return out


def _top(a: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(a)[-1])


def _assert_top(top, eigenvalues: np.ndarray, tol: float = EIG_TOL,
                residual_tol: float = RESIDUAL_TOL):
    """The value is the largest eigenvalue, the residual is small and bounds the error."""
    lam = float(eigenvalues[-1])
    scale = float(np.max(np.abs(eigenvalues)))
    value, residual = float(top.value), float(top.residual)
    assert abs(value - lam) <= tol * scale, (value, lam)
    assert residual <= residual_tol * scale, residual
    assert np.min(np.abs(eigenvalues - value)) <= residual + 1e-13 * scale


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def _weights_rows() -> np.ndarray:
    """The diagonal of `W = diag(w) ⊗ I_O` `(N·O,)`."""
    return np.repeat(np.where(np.arange(N) < N_REAL, 1.0 / N_REAL, 0.0), OUT)


def test_the_losses_are_the_training_losses(data, trained):
    x, y, w = data
    model = trained[None][0]
    for kind in KINDS:
        coefs, targets = _case(kind, model, x, y)
        got = _loss(x, y, w, coefs, targets)(model)
        assert abs(float(got - member_loss(model, x, y, w, loss=kind)[0])) <= 1e-14


# --------------------------------------------------------------------------------------------
# Products
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_hessian_vp_matches_dense_hessian(results, case):
    r = results[case]
    hv = r["hessian"] @ r["v"]
    assert _rel(r["hvp_tree"], hv) <= PRODUCT_TOL
    assert _rel(r["hvp_flat"], hv) <= PRODUCT_TOL


def test_hessian_vp_rejects_a_tangent_of_another_shape(trained):
    model = trained[None][0]
    loss = lambda m: jnp.sum(m(jnp.ones(IN)) ** 2)
    with pytest.raises(ValueError, match="structure of the model's trainable parameters"):
        kernels.hessian_vp(loss, model, {"w": jnp.ones(3)})


# --------------------------------------------------------------------------------------------
# Top eigenvalues
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ("cross_entropy", "mse", "mse_fit"))
def test_hessian_top_eigen_is_the_largest_eigenvalue(results, case):
    r = results[case]
    _assert_top(r["top"], np.linalg.eigvalsh(r["hessian"]))


def test_top_eigen_is_the_largest_algebraic_not_the_largest_magnitude(results):
    """For `−H` (the negated cross-entropy) the eigenvalue of largest magnitude is
    `−λ_max(H) < 0`; the function returns the largest algebraic one, `−λ_min(H)` (the sharpness of
    Cohen et al. is the largest algebraic eigenvalue), not that one.

    That top sits in a cluster (the next eigenvalue is ~20% below it), so at the default steps
    its Ritz vector has converged less: the residual is allowed `1e-5 · scale`, while the value,
    whose error is second order in the residual (`<= residual² / gap`), still meets `EIG_TOL`."""
    ev = np.linalg.eigvalsh(results["neg_cross_entropy"]["hessian"])
    assert abs(ev[0]) > abs(ev[-1])  # the premise: a dominant negative end
    top = results["neg_cross_entropy"]["top"]
    _assert_top(top, ev, residual_tol=1e-5)
    assert ev[-1] - float(top.value) <= float(top.residual) ** 2 / (ev[-1] - ev[-2]) + 1e-14


def test_preconditioned_top_eigen_matches_dense(results, trained):
    """Adam's `D` from its state after 3 steps, with the cross-entropy it trained on."""
    r = results["cross_entropy"]
    d = np.asarray(ravel_pytree(trained[None][3])[0])
    s = 1.0 / np.sqrt(d)
    _assert_top(r["top_pre"], np.linalg.eigvalsh(s[:, None] * r["hessian"] * s[None, :]))
    # D⁻¹H itself (not symmetric) has the same eigenvalues: its largest real part.
    lam = np.max(np.linalg.eigvals(r["hessian"] / d[:, None]).real)
    assert abs(float(r["top_pre"].value) - lam) <= EIG_TOL * abs(lam)


def test_adam_preconditioner_is_adams_denominator(trained):
    """optax's last update is `−lr · m̂ / D` with `D` from `adam_preconditioner`."""
    _, state, updates, d = trained[None]
    adam = state[0]
    mu_hat = jax.tree.map(lambda m: m / (1 - ADAM["b1"] ** adam.count), adam.mu)
    expect = jax.tree.map(lambda m, dd: -ADAM["learning_rate"] * m / dd, mu_hat, d)
    assert _rel(ravel_pytree(updates)[0], ravel_pytree(expect)[0]) <= PRODUCT_TOL
    with pytest.raises(ValueError, match="exactly one ScaleByAdamState"):
        kernels.adam_preconditioner((state, state))


def test_ntk_top_eigen_matches_dense_ntk(results):
    r = results["cross_entropy"]  # the NTK does not depend on the loss
    jac, w = r["jac"], _weights_rows()
    ntk = jac @ jac.T
    weighted = np.linalg.eigvalsh(np.sqrt(w)[:, None] * ntk * np.sqrt(w)[None, :])
    _assert_top(r["ntk_w"], weighted)
    _assert_top(r["ntk_w_full"], weighted)  # through a breakdown (the zero rows of padding)
    # Padded examples do not count: J Jᵀ / n of the N_REAL real examples (the default weights).
    real = jac[: N_REAL * OUT]
    _assert_top(r["ntk_real"], np.linalg.eigvalsh(real @ real.T / N_REAL))
    assert abs(float(r["ntk_real"].value) - float(r["ntk_w"].value)) <= EIG_TOL * weighted[-1]


# --------------------------------------------------------------------------------------------
# Gauss-Newton
# --------------------------------------------------------------------------------------------


def _gauss_newton(jac: np.ndarray) -> np.ndarray:
    return jac.T @ (_weights_rows()[:, None] * jac)


def test_mse_hessian_is_gauss_newton_plus_residual_term(results):
    r = results["mse"]
    gn = _gauss_newton(r["jac"])
    w = np.where(np.arange(N) < N_REAL, 1.0 / N_REAL, 0.0)
    residual_term = np.einsum("i,ia,iapq->pq", w, r["residuals"], r["f_hessians"])
    assert _rel(r["hessian"] - residual_term, gn) <= PRODUCT_TOL
    assert _rel(residual_term, gn) > 1e-2  # the residual term matters at this point
    assert _rel(r["gnvp"], gn @ r["v"]) <= PRODUCT_TOL
    # The nonzero spectrum of Jᵀ W J is that of W^{1/2} J Jᵀ W^{1/2}.
    assert abs(_top(gn) - float(r["ntk_w"].value)) <= EIG_TOL * _top(gn)


def test_at_zero_residual_the_hessian_is_gauss_newton(results):
    r = results["mse_fit"]
    assert np.max(np.abs(r["residuals"])) <= 1e-14  # zero up to the ulps of two forward passes
    gn = _gauss_newton(r["jac"])
    assert _rel(r["hessian"], gn) <= PRODUCT_TOL
    _assert_top(r["top"], np.linalg.eigvalsh(r["hessian"]))
    assert abs(float(r["top"].value) - float(r["ntk_w"].value)) <= EIG_TOL * _top(gn)


# --------------------------------------------------------------------------------------------
# Padded members, packs, jit, float32
# --------------------------------------------------------------------------------------------


def _assert_same_tops(got, want, tol: float, index=None):
    for name in ("top", "top_pre", "ntk_w"):
        g, ref = got[name].value, float(want[name].value)
        g = float(g if index is None else g[index])
        assert abs(g - ref) <= tol * abs(ref), (name, g, ref)


def test_padded_member_has_the_same_top_eigenvalues(data, trained, results):
    """Zero-padded units get exactly zero gradients and Hessian rows, so the padded Hessian is
    the unpadded one plus zero rows and columns (Adam's D is `eps` there; it meets only those)."""
    x, y, w = data
    model, _, _, d = trained[0]
    got = tops(model, x, y, w, *_case("cross_entropy", model, x, y), d, jax.random.key(KEY))
    _assert_same_tops(got, results["cross_entropy"], EIG_TOL)
    for name in ("top", "top_pre", "ntk_w"):
        assert float(got[name].residual) <= RESIDUAL_TOL * abs(float(got[name].value))


def test_vmap_over_a_pack_equals_per_member_calls(data, trained, results):
    """A padded pack (true widths 7, 4 and 10 in a 10-wide shape; the first is the padded test
    member), every member its own key, against one call per member."""
    x, y, w = data
    members = [trained[i] for i in range(len(MEMBERS))]
    pack = stack([m[0] for m in members])
    d = jax.tree.map(lambda *a: jnp.stack(a), *[m[3] for m in members])
    keys = jax.random.split(jax.random.key(4), 3).at[0].set(jax.random.key(KEY))
    coefs, targets = _case("cross_entropy", members[0][0], x, y)
    vmapped = eqx.filter_vmap(_tops, in_axes=(0, None, None, None, None, None, 0, 0))
    batched = jit(lambda *args: vmapped(*args))(pack, x, y, w, coefs, targets, d, keys)
    for i in range(len(MEMBERS)):
        d_i = jax.tree.map(lambda a, i=i: a[i], d)
        one = tops(member(pack, i), x, y, w, coefs, targets, d_i, keys[i])
        _assert_same_tops(batched, one, EIG_TOL, index=i)
    _assert_same_tops(batched, results["cross_entropy"], EIG_TOL, index=0)
    assert len({round(float(v), 6) for v in batched["top"].value}) == 3  # not vacuous


def test_float32(data, trained, results):
    to32 = lambda t: jax.tree.map(
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, t)
    x, y, w = to32(data)
    model, _, _, d = to32(trained[None])
    got = tops(model, x, y, w, *_case("cross_entropy", model, x, y), d, jax.random.key(KEY))
    assert all(got[name].value.dtype == jnp.float32 for name in got)
    _assert_same_tops(got, results["cross_entropy"], F32_TOL)


# --------------------------------------------------------------------------------------------
# Arguments and examples
# --------------------------------------------------------------------------------------------


def test_errors_say_how_to_fix(data, trained):
    x, y, w = data
    model = trained[None][0]
    loss = _loss(x, y, w, *_case("cross_entropy", model, x, y))
    with pytest.raises(ValueError, match="one weight per example"):
        kernels.ntk_top_eigen(model, x, w[:3], key=jax.random.key(0))
    with pytest.raises(ValueError, match="adam_preconditioner"):
        kernels.preconditioned_top_eigen(loss, model, {"w": jnp.ones(3)}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        kernels.hessian_top_eigen(loss, model, key=jax.random.key(0), num_steps=0)


def test_docstring_examples():
    with jax.enable_x64(False):  # the examples show the float32 a user gets by default
        result = doctest.testmod(_curvature, extraglobs={"jax": jax, "jnp": jnp, "eqx": eqx})
    assert result.attempted >= 10 and result.failed == 0
