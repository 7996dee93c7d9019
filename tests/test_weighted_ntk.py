"""Tests of the weighted NTK `Θ_w = J diag(w) Jᵀ` (`weights=` of `ntkbench.kernels`): every
method, blocked and not, the diagonal, trace and products, against the float64 reference of
`_reference.naive_ntk` (the Jacobian of the flattened parameters, rows scaled by the flattened
weights).

Tolerances (relative to the largest entry of the reference, `scale = max |ref|`):
- float64 kernels vs the float64 reference: `F64_TOL = 1e-12` (observed <= 4.2e-16).
- float32 kernels vs the float64 reference: `F32_TOL = 2e-6`, as in `tests/test_kernels.py`
  (observed <= 1.4e-7).
- `weights=None` vs no argument: identical jaxprs and `array_equal` values.

Everything runs in float64 (x64 enabled inside each test) except the jit test, which also checks
the float32 path. Compile time dominates, so each fixture computes many quantities in one jitted
program.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import naive_ntk, to64

from ntkbench import kernels
from ntkbench.kernels import _hybrid
from ntkbench.models import MLP, member, stack

FAST_COMPILE = {"compiler_options": {"xla_backend_optimization_level": 0}}
jit = functools.partial(eqx.filter_jit, **FAST_COMPILE)

F64_TOL = 1e-12
F32_TOL = 2e-6
METHODS = ("jacobian", "implicit", "structured", "hybrid", "auto")

# Per-layer (W, b) weights of the depth-3 MLP: different per layer, layer 2 switched off.
MLP_WEIGHTS = ((0.5, 0.5), (2.0, 2.0), (0.0, 0.0), (1 / 64, 3.0))


def x64(fn):
    """Run the test with float64 enabled."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


def _close(k, ref, tol=F64_TOL):
    k, ref = np.asarray(k, np.float64), np.asarray(ref, np.float64)
    assert k.shape == ref.shape, (k.shape, ref.shape)
    scale = np.max(np.abs(ref))
    err = np.max(np.abs(k - ref))
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol:.1g} * scale {scale:.3g}"


def mlp_weights(model, pairs):
    """Weights of an `MLP` (any width) from one `(w_W, w_b)` per layer, in its dtype."""
    dtype = model.weights[0].dtype
    return eqx.tree_at(
        lambda t: (t.weights, t.biases),
        eqx.filter(model, eqx.is_inexact_array),
        (
            tuple(jnp.asarray(a, dtype) for a, _ in pairs),
            tuple(jnp.asarray(b, dtype) for _, b in pairs),
        ),
    )


class LinNorm(eqx.Module):
    """A user's model: recognized Linears (`inp`, `mid` without bias, `head`), a Linear applied
    per token under a vmap (`tok`, not recognized) and a LayerNorm with a random affine."""

    inp: eqx.nn.Linear
    tok: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    mid: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key, dtype):
        k = jax.random.split(key, 6)
        self.inp = eqx.nn.Linear(6, 8, key=k[0], dtype=dtype)
        self.tok = eqx.nn.Linear(2, 8, key=k[1], dtype=dtype)
        scale = 1.0 + 0.2 * jax.random.normal(k[2], (8,), dtype)
        shift = 0.2 * jax.random.normal(k[3], (8,), dtype)
        norm = eqx.nn.LayerNorm(8, dtype=dtype)
        self.norm = eqx.tree_at(lambda n: (n.weight, n.bias), norm, (scale, shift))
        self.mid = eqx.nn.Linear(8, 8, use_bias=False, key=k[4], dtype=dtype)
        self.head = eqx.nn.Linear(8, 3, key=k[5], dtype=dtype)

    def __call__(self, x):
        h = jnp.tanh(self.inp(x)) + jnp.mean(jax.vmap(self.tok)(x.reshape(3, 2)), axis=0)
        return self.head(jnp.tanh(self.mid(self.norm(h))))


def linnorm_weights(model, dtype=jnp.float64):
    """Different weights per parameter array, zero on `mid`, an array on the LayerNorm scale."""
    params = eqx.filter(model, eqx.is_inexact_array)
    s = lambda v: jnp.asarray(v, dtype)
    return eqx.tree_at(
        lambda t: (t.inp.weight, t.inp.bias, t.tok.weight, t.tok.bias, t.norm.weight,
                   t.norm.bias, t.mid.weight, t.head.weight, t.head.bias),
        params,
        (s(0.5), s(2.0), s(3.0), s(0.25), jnp.linspace(0.0, 2.0, 8, dtype=dtype), s(1 / 64),
         s(0.0), s(2.0), s(1 / 64)),
    )  # fmt: skip


class NoLeaves(eqx.Module):
    """A StructuredModel without the optional `structured_leaves`."""

    mlp: MLP

    def structured_layout(self):
        return self.mlp.structured_layout()

    def structured_forward(self, x, eps):
        return self.mlp.structured_forward(x, eps)

    def __call__(self, x):
        return self.mlp(x)


class WrongLeaves(NoLeaves):
    """`structured_leaves` in the wrong order: refused."""

    def structured_leaves(self, tree):
        return tuple(zip(tree.mlp.weights, tree.mlp.biases))[::-1]


# --------------------------------------------------------------------------------------------
# Fixtures: models, weights and references (float64)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_case():
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(0), 4)
        m = MLP(6, 3, 5, 3, key=k[0], dtype=jnp.float64)
        x1 = jax.random.normal(k[1], (4, 6), jnp.float64)
        x2 = jax.random.normal(k[2], (3, 6), jnp.float64)
        v = jax.random.normal(k[3], (4, 3), jnp.float64)
        w = mlp_weights(m, MLP_WEIGHTS)
        sym, cross = jit(lambda m, a, b, w: (naive_ntk(m, a, None, w), naive_ntk(m, a, b, w)))(
            m, x1, x2, w
        )
        return m, x1, x2, v, w, np.asarray(sym), np.asarray(cross)


@pytest.fixture(scope="module")
def user_case():
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(1), 4)
        m = LinNorm(k[0], jnp.float64)
        x1 = jax.random.normal(k[1], (4, 6), jnp.float64)
        x2 = jax.random.normal(k[2], (3, 6), jnp.float64)
        v = jax.random.normal(k[3], (4, 3), jnp.float64)
        w = linnorm_weights(m)
        sym, cross = jit(lambda m, a, b, w: (naive_ntk(m, a, None, w), naive_ntk(m, a, b, w)))(
            m, x1, x2, w
        )
        return m, x1, x2, v, w, np.asarray(sym), np.asarray(cross)


def _diag_of(sym):
    mat = np.asarray(kernels.as_matrix(jnp.asarray(sym)))
    return np.diagonal(mat).reshape(sym.shape[0], -1), mat


def _everything(m, x1, x2, v, w, method):
    """Every weighted entry point for one method, in one program."""
    diag_method = "jacobian" if method == "implicit" else method
    return {
        "sym": kernels.ntk(m, x1, method=method, weights=w),
        "cross": kernels.ntk(m, x1, x2, method=method, weights=w),
        "sym_blocked": kernels.ntk(m, x1, method=method, block_size=3, weights=w),
        "cross_blocked": kernels.ntk(m, x1, x2, method=method, block_size=2, weights=w),
        "diag": kernels.ntk_diagonal(m, x1, method=diag_method, weights=w),
        "diag_blocked": kernels.ntk_diagonal(m, x1, method=diag_method, block_size=3, weights=w),
        "trace": kernels.ntk_trace(m, x1, method=diag_method, weights=w),
        "vp": kernels.ntk_vp(m, x1, v, weights=w),
    }


def _check_everything(res, sym, cross, v):
    diag, mat = _diag_of(sym)
    for key in ("sym", "sym_blocked"):
        _close(res[key], sym)
    for key in ("cross", "cross_blocked"):
        _close(res[key], cross)
    _close(res["diag"], diag)
    _close(res["diag_blocked"], diag)
    np.testing.assert_allclose(res["trace"], np.trace(mat) / mat.shape[0], rtol=F64_TOL)
    _close(res["vp"], (mat @ np.asarray(v).reshape(-1)).reshape(v.shape))


# --------------------------------------------------------------------------------------------
# Correctness of every method
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@x64
def test_mlp_every_method_matches_reference(mlp_case, method):
    """Per-layer weights 0.5, 2, 0 and (1/64, 3) on `ntkbench.models.MLP`."""
    m, x1, x2, v, w, sym, cross = mlp_case
    res = jit(_everything)(m, x1, x2, v, w, method)
    _check_everything(res, sym, cross, v)


@x64
def test_mlp_layer_ntks_and_matrix_free_paths(mlp_case):
    """`layer_ntks` sums to the weighted kernel (the zero-weight layer contributes nothing);
    `ntk_diagonal_and_vp`, `ntk_vp_fn` and `cosine_ntk_vp_fn` are those of the weighted kernel."""
    m, x1, x2, v, w, sym, cross = mlp_case

    def run(m, a, b, v, w):
        out = {
            "layers": kernels.layer_ntks(m, a, b, weights=w).ntks,
            "layers_blocked": kernels.layer_ntks(m, a, block_size=3, weights=w).ntks,
            "vp_fn": kernels.ntk_vp_fn(m, a, weights=w)(v),
        }
        for method in ("structured", "implicit"):
            d, vp = kernels.ntk_diagonal_and_vp(m, a, method=method, block_size=3, weights=w)
            out[f"dvp_{method}"] = (d, vp(v))
        cos, d = kernels.cosine_ntk_vp_fn(m, a, weights=w)
        out["cosine"] = (cos(v), d)
        return out

    res = jit(run)(m, x1, x2, v, w)
    diag, mat = _diag_of(sym)
    vp = (mat @ np.asarray(v).reshape(-1)).reshape(v.shape)
    assert res["layers"].shape == (4, 4, 3, 3, 3)
    _close(res["layers"].sum(0), cross)
    _close(res["layers_blocked"].sum(0), sym)
    assert not np.any(np.asarray(res["layers"][2]))  # weight 0
    _close(res["vp_fn"], vp)
    for method in ("structured", "implicit"):
        d, p = res[f"dvp_{method}"]
        _close(d, diag)
        _close(p, vp)
    s = 1.0 / np.sqrt(diag)
    cos, d = res["cosine"]
    _close(d, diag)
    _close(cos, s * (mat @ (s * np.asarray(v)).reshape(-1)).reshape(v.shape))


@pytest.mark.parametrize("method", ("hybrid", "auto", "jacobian", "implicit"))
@x64
def test_user_model_matches_reference(user_case, method):
    """Recognized Linears (one weighted 0), a per-token Linear and a LayerNorm with array
    weights (`auto` picks hybrid here)."""
    m, x1, x2, v, w, sym, cross = user_case
    if method == "auto":
        assert kernels.resolve_method(m, x1) is kernels.NtkMethod.HYBRID
    res = jit(_everything)(m, x1, x2, v, w, method)
    _check_everything(res, sym, cross, v)


@pytest.mark.parametrize("rest", ("jacobian", "implicit"))
@x64
def test_user_model_both_hybrid_rest_modes(user_case, rest):
    m, x1, x2, _, w, sym, cross = user_case
    h = _hybrid.ntk_hybrid
    out = jit(
        lambda m, a, b, w: (
            h(m, a, None, None, rest=rest, weights=w),
            h(m, a, None, 3, rest=rest, weights=w),
            h(m, a, b, None, rest=rest, weights=w),
            h(m, a, b, 2, rest=rest, weights=w),
        )
    )(m, x1, x2, w)
    for k, ref in zip(out, (sym, sym, cross, cross)):
        _close(k, ref)


@x64
def test_weights_varying_along_one_axis(mlp_case, user_case):
    """Structured and hybrid take per-output `(out, 1)` and per-input `(in,)` weights of `W` and
    `(out,)` weights of `b`; jacobian and implicit take anything broadcastable, e.g. a full
    `(out, in)` array, which the structured kernel refuses (it does not factorize)."""
    m, x1, x2, v, _, _, _ = mlp_case
    k = jax.random.split(jax.random.key(5), 8)
    u = lambda i, shape: jax.random.uniform(k[i], shape, jnp.float64)
    w = mlp_weights(m, ((u(0, (5, 1)), u(1, (5,))), (u(2, (5,)), 0.5), (u(3, (1, 5)), 2.0),
                        (0.25, u(4, (3,)))))  # fmt: skip
    full = eqx.tree_at(lambda t: t.weights[1], w, u(5, (5, 5)))
    um, ux1, ux2, _, uw, _, _ = user_case
    uw = eqx.tree_at(lambda t: (t.inp.weight, t.head.bias), uw, (u(6, (8, 1)), u(7, (3,))))

    def run(m, a, b, v, w, full, um, ua, ub, uw):
        d, vp = kernels.ntk_diagonal_and_vp(m, a, method="structured", weights=w)
        return {
            "ref": (naive_ntk(m, a, None, w), naive_ntk(m, a, b, w)),
            "structured": (kernels.ntk(m, a, method="structured", weights=w),
                           kernels.ntk(m, a, b, method="structured", block_size=2, weights=w)),
            "diag": (d, kernels.ntk_diagonal(m, a, method="structured", weights=w)),
            "vp": vp(v),
            "full_ref": naive_ntk(m, a, b, full),
            "full": (kernels.ntk(m, a, b, method="jacobian", weights=full),
                     kernels.ntk(m, a, b, method="implicit", block_size=2, weights=full)),
            "hybrid_ref": naive_ntk(um, ua, ub, uw),
            "hybrid": kernels.ntk(um, ua, ub, method="hybrid", weights=uw),
            "hybrid_diag": kernels.ntk_diagonal(um, ua, method="hybrid", weights=uw),
            "hybrid_sym_ref": naive_ntk(um, ua, None, uw),
        }  # fmt: skip

    res = jit(run)(m, x1, x2, v, w, full, um, ux1, ux2, uw)
    sym, cross = res["ref"]
    diag, mat = _diag_of(np.asarray(sym))
    _close(res["structured"][0], sym)
    _close(res["structured"][1], cross)
    for d in res["diag"]:
        _close(d, diag)
    _close(res["vp"], (mat @ np.asarray(v).reshape(-1)).reshape(v.shape))
    for kk in res["full"]:
        _close(kk, res["full_ref"])
    _close(res["hybrid"], res["hybrid_ref"])
    _close(res["hybrid_diag"], _diag_of(np.asarray(res["hybrid_sym_ref"]))[0])
    with pytest.raises(ValueError, match="vary along one axis"):
        kernels.ntk(m, x1, method="structured", weights=full)


# --------------------------------------------------------------------------------------------
# weights=None is the plain kernel
# --------------------------------------------------------------------------------------------


@x64
def test_none_is_the_plain_kernel(mlp_case, user_case):
    """`weights=None` traces the same program as no argument (every entry point and method) and
    gives the same values; all-ones weights give the plain kernel to rounding."""
    m, x1, x2, v, _, _, _ = mlp_case
    um, ux1, ux2, uv, _, _, _ = user_case

    def calls(model, method, **kw):
        diag_method = "jacobian" if method == "implicit" else method
        return [
            lambda m, a, b, v: kernels.ntk(m, a, method=method, **kw),
            lambda m, a, b, v: kernels.ntk(m, a, b, method=method, block_size=2, **kw),
            lambda m, a, b, v: kernels.ntk_diagonal(m, a, method=diag_method, **kw),
            lambda m, a, b, v: kernels.ntk_trace(m, a, method=diag_method, block_size=2, **kw),
            lambda m, a, b, v: kernels.ntk_vp(m, a, v, **kw),
        ] + ([
            lambda m, a, b, v: kernels.layer_ntks(m, a, b, block_size=2, **kw),
            lambda m, a, b, v: kernels.ntk_diagonal_and_vp(m, a, **kw)[1](v),
            lambda m, a, b, v: kernels.cosine_ntk_vp_fn(m, a, **kw)[0](v),
        ] if method == "structured" else [])  # fmt: skip

    cases = [(m, x1, x2, v, method) for method in METHODS] + [
        (um, ux1, ux2, uv, method) for method in ("hybrid", "jacobian", "implicit")
    ]
    for model, a, b, vv, method in cases:
        for plain, none in zip(calls(model, method), calls(model, method, weights=None)):
            assert str(jax.make_jaxpr(plain)(model, a, b, vv)) == str(
                jax.make_jaxpr(none)(model, a, b, vv)
            ), method

    def run(m, a, b, um, ua, ub, ones, uones):
        out = {}
        for method in METHODS:
            out[method] = (
                kernels.ntk(m, a, b, method=method),
                kernels.ntk(m, a, b, method=method, weights=None),
                kernels.ntk(m, a, b, method=method, weights=ones),
            )
        out["user_hybrid"] = (
            kernels.ntk(um, ua, ub, method="hybrid"),
            kernels.ntk(um, ua, ub, method="hybrid", weights=None),
            kernels.ntk(um, ua, ub, method="hybrid", weights=uones),
        )
        return out

    ones = jax.tree.map(lambda p: jnp.ones((), p.dtype), eqx.filter(m, eqx.is_inexact_array))
    uones = jax.tree.map(lambda p: jnp.ones((), p.dtype), eqx.filter(um, eqx.is_inexact_array))
    for plain, none, one in jit(run)(m, x1, x2, um, ux1, ux2, ones, uones).values():
        assert np.array_equal(plain, none)
        _close(one, plain)


# --------------------------------------------------------------------------------------------
# Packs, jit and errors
# --------------------------------------------------------------------------------------------


@x64
def test_vmapped_pack_of_padded_widths_with_member_weights():
    """A stacked pack of true widths 3 and 5 padded to 6, each member with its own weights
    (vmapped scalars depending on the width, μP-like): every member equals its unpadded self
    alone, and the float64 reference."""
    widths, keys = (3, 5), jax.random.split(jax.random.key(3), 3)
    members = [MLP(6, 3, w, 2, key=k, pad_to=6, dtype=jnp.float64) for w, k in zip(widths, keys)]
    pack = stack(members)
    pairs = lambda width: ((1.0, 1.0), (1 / width, 0.5), (1 / width**2, 0.0))
    wpack = jax.tree.map(
        lambda *ws: jnp.stack(ws), *[mlp_weights(mm, pairs(w)) for mm, w in zip(members, widths)]
    )
    x = jax.random.normal(keys[2], (4, 6), jnp.float64)
    v = jax.random.normal(keys[1], (4, 3), jnp.float64)

    def per_member(m, x, v, w):
        out = {k: kernels.ntk(m, x, method=k, weights=w) for k in METHODS[:4]}
        out["blocked"] = kernels.ntk(m, x, method="structured", block_size=3, weights=w)
        out["diag"] = kernels.ntk_diagonal(m, x, weights=w)
        out["vp"] = kernels.ntk_vp(m, x, v, weights=w)
        return out

    vmapped = jit(eqx.filter_vmap(per_member, in_axes=(eqx.if_array(0), None, None, 0)))
    out = vmapped(pack, x, v, wpack)
    alone = jit(lambda m, x, v, w: (per_member(m, x, v, w), naive_ntk(m, x, None, w)))
    for i, width in enumerate(widths):
        twin = member(pack, i).unpadded()
        assert twin.weights[1].shape == (width, width)
        single, ref = alone(twin, x, v, mlp_weights(twin, pairs(width)))
        for key, value in single.items():
            _close(out[key][i], value)
        for key in ("jacobian", "implicit", "structured", "hybrid", "blocked"):
            _close(out[key][i], ref)


def test_jit_traced_weights_do_not_recompile(key):
    """Weights are traced arguments: new values reuse the compiled program (float32 here, vs
    the float64 reference within `F32_TOL`)."""
    m = MLP(6, 3, 5, 3, key=key)
    x = jax.random.normal(jax.random.key(1), (4, 6))
    traces = []

    @jit
    def fn(m, x, w):
        traces.append(1)
        return (kernels.ntk(m, x, weights=w), kernels.ntk(m, x, method="implicit", weights=w),
                kernels.ntk_diagonal(m, x, weights=w))  # fmt: skip

    w1 = mlp_weights(m, MLP_WEIGHTS)
    w2 = mlp_weights(m, ((1.0, 0.0), (0.0, 1.0), (3.0, 0.5), (0.25, 0.125)))
    out1, out2 = fn(m, x, w1), fn(m, x, w2)
    assert len(traces) == 1
    with jax.enable_x64(True):
        for w, out in ((w1, out1), (w2, out2)):
            ref = np.asarray(jit(naive_ntk)(*to64((m, x)), None, to64(w)))
            _close(out[0], ref, F32_TOL)
            _close(out[1], ref, F32_TOL)
            _close(out[2], _diag_of(ref)[0], F32_TOL)


def test_errors_say_what_to_fix(key):
    m = MLP(6, 3, 5, 2, key=key)
    x = jnp.ones((3, 6))
    w = mlp_weights(m, ((1.0, 1.0),) * 3)
    plain = NoLeaves(m)
    # Without structured_leaves: unweighted kernels work, weighted structured ones say what to add.
    np.testing.assert_array_equal(kernels.ntk(plain, x), kernels.ntk(m, x))
    pw = jax.tree.map(lambda p: 1.0, eqx.filter(plain, eqx.is_inexact_array))
    for method in ("structured", "auto"):
        with pytest.raises(TypeError, match=r"add it, or use method='jacobian'") as err:
            kernels.ntk(plain, x, method=method, weights=pw)
        assert "structured_leaves(tree)" in str(err.value) and "\n" not in str(err.value)
    assert kernels.ntk(plain, x, method="jacobian", weights=pw).shape == (3, 3, 3, 3)
    wrong = WrongLeaves(m)
    ww = jax.tree.map(lambda p: 1.0, eqx.filter(wrong, eqx.is_inexact_array))
    with pytest.raises(ValueError, match="must return the"):
        kernels.ntk(wrong, x, method="structured", weights=ww)
    # Weights of another model, or of the wrong shape.
    other = mlp_weights(MLP(6, 3, 5, 3, key=key), ((1.0, 1.0),) * 4)
    with pytest.raises(ValueError, match="structure of the model's trainable parameters"):
        kernels.ntk(m, x, weights=other)
    with pytest.raises(ValueError, match="does not broadcast"):
        kernels.ntk(m, x, method="jacobian", weights=eqx.tree_at(lambda t: t.biases[0], w,
                                                                   jnp.ones((2,))))
    with pytest.raises(ValueError, match="structure"):
        kernels.ntk(m, x, weights=eqx.filter(m, eqx.is_array))  # masks are not parameters
