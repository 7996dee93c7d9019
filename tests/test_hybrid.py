"""Tests of the hybrid NTK (`method="hybrid"`), `method="auto"`'s choice of it, `explain_method`,
and the example config files (`examples/residual_mlp.py`, `examples/mixer.py`).

Tolerances, as in `tests/test_kernels.py` (relative to the largest entry of the reference kernel,
`scale = max |Θ_ref|`, the reference being the float64 Jacobian of the flattened parameters):
- float32 kernels vs the float64 reference: `|Θ − Θ_ref| <= F32_TOL · scale`, `F32_TOL = 2e-6`
  (observed <= 7e-7 here, on the residual MLP with random layer-norm affines: float32 round-off
  through layer norms and sums over P).
- float64 kernels (x64 enabled) vs the float64 reference: `F64_TOL = 1e-13` (observed <= 9e-16).
- padded vs unpadded residual MLP (float32 both, sums over extra zeros reassociated): outputs and
  gradients `PAD_TOL = 1e-5` relative to their largest entry, NTK `F32_TOL`; padded parameters
  and their gradients exactly zero.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from _reference import naive_ntk, to64
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ntkbench import from_config_dict, kernels
from ntkbench.kernels import _cost, _hybrid
from ntkbench.models import CNN, MLP, member

FAST_COMPILE = {"compiler_options": {"xla_backend_optimization_level": 0}}
jit = functools.partial(eqx.filter_jit, **FAST_COMPILE)  # models hold functions (eqx.nn.MLP)

F32_TOL = 2e-6
F64_TOL = 1e-13
PAD_TOL = 1e-5
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load_example(name: str):
    """Import an example config file the way a user's file is loaded: from its path, without a
    package (and without registering it in `sys.modules`)."""
    spec = importlib.util.spec_from_file_location(
        f"ntkbench_example_{name}", EXAMPLES / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


residual_mlp = _load_example("residual_mlp")
mixer = _load_example("mixer")


# --------------------------------------------------------------------------------------------
# Models and references
# --------------------------------------------------------------------------------------------


class Mixed(eqx.Module):
    """Recognized and unrecognized Linears side by side: `inp` (no bias) and `head` are plain
    dense layers; `shared` is called twice, `tok` per token under a vmap, `rec` inside a
    `lax.scan`, and `tied`'s weight is also read directly; plus a LayerNorm."""

    inp: eqx.nn.Linear
    shared: eqx.nn.Linear
    tok: eqx.nn.Linear
    rec: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    tied: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, key, dtype=jnp.float32):
        k = jax.random.split(key, 8)
        lin = lambda i, o, kk, **kw: eqx.nn.Linear(i, o, key=kk, dtype=dtype, **kw)
        self.inp = lin(12, 8, k[0], use_bias=False)
        self.shared = lin(8, 8, k[1])
        self.tok = lin(3, 8, k[2])
        self.rec = lin(8, 8, k[3])
        self.norm = eqx.nn.LayerNorm(8, dtype=dtype)
        self.norm = eqx.tree_at(
            lambda n: (n.weight, n.bias),
            self.norm,
            (1.0 + 0.1 * jax.random.normal(k[4], (8,), dtype), 0.1 * jnp.ones((8,), dtype)),
        )
        self.tied = lin(8, 8, k[5])
        self.head = lin(8, 3, k[6])

    def __call__(self, x):
        h = jnp.tanh(self.inp(x)) + jnp.mean(jax.vmap(self.tok)(x.reshape(4, 3)), axis=0)
        h = self.shared(jnp.tanh(self.shared(h)))
        h, _ = jax.lax.scan(lambda c, _: (jnp.tanh(self.rec(c)), None), h, None, length=2)
        h = self.norm(h)
        h = jnp.tanh(self.tied(h)) + 0.1 * self.tied.weight.T @ h
        return self.head(h)


def _with_affine_norms(model, key):
    """Random LayerNorm affines (weight ~ 1, bias ~ 0), so that their parameters matter."""
    is_norm = lambda n: isinstance(n, (eqx.nn.LayerNorm, residual_mlp.MaskedLayerNorm))
    norms = [n for n in jax.tree.leaves(model, is_leaf=is_norm) if is_norm(n)]
    keys = jax.random.split(key, 2 * len(norms))
    new = []
    for i, n in enumerate(norms):
        shape, dtype = n.weight.shape, n.weight.dtype
        new.append(
            eqx.tree_at(
                lambda m: (m.weight, m.bias),
                n,
                (
                    1.0 + 0.2 * jax.random.normal(keys[2 * i], shape, dtype),
                    0.2 * jax.random.normal(keys[2 * i + 1], shape, dtype),
                ),
            )
        )
    return eqx.tree_at(
        lambda m: [n for n in jax.tree.leaves(m, is_leaf=is_norm) if is_norm(n)], model, new
    )


def _models(key):
    """`name -> (model, x1, x2)`: small sizes, so the float64 reference takes a fraction of a
    second."""
    ks = jax.random.split(key, 12)
    res = residual_mlp.model_fn(6, ks[0], input_shape=(4, 4, 1), num_classes=3)
    res = _with_affine_norms(res, ks[1])
    mix = mixer.model_fn(5, ks[2], input_shape=(4, 4, 1), num_classes=3)
    mix = _with_affine_norms(mix, ks[3])
    img = lambda k, n: jax.random.uniform(k, (n, 16))
    vec = lambda k, n: jax.random.normal(k, (n, 12))
    return {
        "residual": (res, img(ks[4], 5), img(ks[5], 4)),
        "mixer": (mix, img(ks[6], 5), img(ks[7], 4)),
        "eqx_mlp": (eqx.nn.MLP(12, 3, 8, depth=2, key=ks[8]), vec(ks[9], 5), vec(ks[10], 4)),
        "mixed": (Mixed(ks[11]), vec(ks[9], 5), vec(ks[10], 4)),
    }


NAMES = ("residual", "mixer", "eqx_mlp", "mixed")


def _extras(key):
    """Models for the dispatch tests only (no reference needed)."""
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "protocol_mlp": MLP(16, 3, 8, 2, key=k1),
        "cnn": CNN((8, 8, 1), 3, key=k2, filters=2, hidden=4),
        "dense_head": DenseWithLinearHead(MLP(16, 8, 64, 2, key=k3), eqx.nn.Linear(8, 3, key=k3)),
    }


class DenseWithLinearHead(eqx.Module):
    """A big dense body the hybrid kernel cannot split (no eqx.nn.Linear), a Linear head."""

    body: MLP
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(jax.nn.relu(self.body(x)))


def _assert_close(k, ref, tol):
    k, ref = np.asarray(k, np.float64), np.asarray(ref, np.float64)
    assert k.shape == ref.shape
    scale = np.max(np.abs(ref))
    err = np.max(np.abs(k - ref))
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol:.1g} * scale {scale:.3g}"


@pytest.fixture(scope="module")
def models():
    return jit(_models)(jax.random.key(42))


@pytest.fixture(scope="module")
def extras():
    return jit(_extras)(jax.random.key(43))


@pytest.fixture(scope="module")
def refs(models):
    """float64 references `(sym, cross)` for every model (x64 enabled only inside)."""
    out = {}
    with jax.enable_x64(True):
        for name, (m, x1, x2) in models.items():
            m64, a, b = to64((m, x1, x2))
            sym, cross = jit(lambda m, a, b: (naive_ntk(m, a), naive_ntk(m, a, b)))(m64, a, b)
            out[name] = (np.asarray(sym), np.asarray(cross))
    return out


# What each model's one jitted program computes. Every path is covered on `mixed` (recognized
# and unrecognized Linears, a LayerNorm); the others take the public entry points (compile time
# dominates these tests, so the variants are spread out).
VARIANTS = {
    "mixed": ("sym_jac", "cross_jac_blocked", "sym_imp_blocked", "cross_imp", "cross_auto",
              "diag_blocked"),
    "residual": ("sym_auto", "cross_auto", "diag_auto"),
    "mixer": ("cross_auto",),
    "eqx_mlp": ("cross_auto", "sym_blocked", "diag_auto"),  # structured only: no other params
}  # fmt: skip


def _variant(v, model, x1, x2):
    h = _hybrid.ntk_hybrid
    return {
        "sym_jac": lambda: h(model, x1, rest="jacobian"),
        "cross_jac_blocked": lambda: h(model, x1, x2, 2, rest="jacobian"),
        "sym_imp_blocked": lambda: h(model, x1, None, 2, rest="implicit"),
        "cross_imp": lambda: h(model, x1, x2, rest="implicit"),
        "sym_auto": lambda: kernels.ntk(model, x1),
        "cross_auto": lambda: kernels.ntk(model, x1, x2),
        "sym_blocked": lambda: kernels.ntk(model, x1, method="hybrid", block_size=2),
        "diag_blocked": lambda: kernels.ntk_diagonal(model, x1, method="hybrid", block_size=2),
        "diag_auto": lambda: kernels.ntk_diagonal(model, x1),
    }[v]()


@pytest.fixture(scope="module")
def results(models):
    """`name -> {variant: float32 result}`, one jitted program per model."""
    run = jit(lambda m, a, b, names: {v: _variant(v, m, a, b) for v in names})
    return {name: run(*models[name], VARIANTS[name]) for name in NAMES}


# --------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_float64_reference(refs, results, name):
    sym, cross = refs[name]
    res = results[name]
    n = sym.shape[0]
    diag = np.diagonal(np.asarray(kernels.as_matrix(jnp.asarray(sym)))).reshape(n, -1)
    for v, value in res.items():
        if v.startswith("sym"):
            _assert_close(value, sym, F32_TOL)
        elif v.startswith("cross"):
            _assert_close(value, cross, F32_TOL)
        else:  # the diagonal, never forming the NTK
            _assert_close(value, diag, F32_TOL)


def test_float64_matches_float64_reference(models, refs):
    """Nothing in the hybrid kernel is float32-bound (both ways of handling the other
    parameters, blocked and not)."""
    with jax.enable_x64(True):
        m, x1, x2 = to64(models["mixed"])
        h = _hybrid.ntk_hybrid
        cross, sym = jit(
            lambda m, a, b: (h(m, a, b, 3, rest="jacobian"), h(m, a, None, 2, rest="implicit"))
        )(m, x1, x2)
        assert cross.dtype == sym.dtype == jnp.float64
        _assert_close(cross, refs["mixed"][1], F64_TOL)
        _assert_close(sym, refs["mixed"][0], F64_TOL)


@pytest.mark.parametrize(
    "name", [n for n in NAMES if any(v.startswith("sym") for v in VARIANTS[n])]
)
def test_symmetric_and_psd(results, name):
    res = results[name]
    sym = next(v for k, v in res.items() if k.startswith("sym"))
    k = np.asarray(kernels.as_matrix(sym), np.float64)
    scale = np.max(np.abs(k))
    np.testing.assert_allclose(k, k.T, atol=F32_TOL * scale)
    assert np.linalg.eigvalsh((k + k.T) / 2).min() >= -F32_TOL * scale


def test_trace_and_a_model_without_parameters(models, refs):
    m, x1, _ = models["mixed"]
    ref = np.asarray(kernels.as_matrix(jnp.asarray(refs["mixed"][0])))

    class Frozen(eqx.Module):
        w: jax.Array  # integer: a constant, not a parameter

        def __call__(self, x):
            return jnp.tanh(self.w @ x)

    trace, zero = jit(
        lambda m, f, a: (
            kernels.ntk_trace(m, a, method="hybrid"),
            kernels.ntk(f, a, method="hybrid"),
        )
    )(m, Frozen(jnp.ones((2, 12), jnp.int32)), x1)
    np.testing.assert_allclose(trace, np.trace(ref) / ref.shape[0], rtol=F32_TOL)
    assert zero.shape == (5, 5, 2, 2) and not np.any(np.asarray(zero))


# --------------------------------------------------------------------------------------------
# Recognition, dispatch, explanation
# --------------------------------------------------------------------------------------------


EXPECTED_STRUCTURED = {
    "residual": ["embed", "blocks[0].fc1", "blocks[0].fc2", "blocks[1].fc1", "blocks[1].fc2",
                 "head"],
    "mixer": ["head"],
    "eqx_mlp": ["layers[0]", "layers[1]", "layers[2]"],
    "mixed": ["inp", "head"],
}  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_recognized_linears(models, name):
    m, x1, _ = models[name]
    plan = kernels.analyze_linears(m, jax.ShapeDtypeStruct(x1.shape[1:], x1.dtype))
    assert [i.name for i in plan.structured] == EXPECTED_STRUCTURED[name]
    assert plan.probe_error == ""
    reasons = {i.name: i.reason for i in plan.linears if not i.recognized}
    if name == "mixed":
        assert reasons["shared"] == "called 2 times per example"
        assert "transformation" in reasons["tok"]  # under a vmap
        assert "transformation" in reasons["rec"]  # inside a scan
        assert "read directly" in reasons["tied"]
        assert set(reasons) == {"shared", "tok", "rec", "tied"}
        assert [i.has_bias for i in plan.structured] == [False, True]
    if name == "mixer":
        assert len(reasons) == 1 + 4 * mixer.NUM_BLOCKS and "embed" in reasons
        assert all("transformation" in r for r in reasons.values())


def test_recognition_works_while_traced(models):
    """The probe runs eagerly even when `ntk` is traced under jit and vmap over members."""
    m, x1, _ = models["mixed"]
    seen = []

    def fn(m, a):
        seen.append(kernels.analyze_linears(m, jax.ShapeDtypeStruct(a.shape[1:], a.dtype)))
        return kernels.ntk(m, a, method="hybrid")

    pack = jax.tree.map(lambda a: jnp.stack([a, 2 * a]) if eqx.is_array(a) else a, m)
    out = eqx.filter_jit(eqx.filter_vmap(fn, in_axes=(eqx.if_array(0), None)))(pack, x1)
    assert [i.name for i in seen[0].structured] == ["inp", "head"]
    for i in range(2):
        _assert_close(out[i], jit(naive_ntk)(member(pack, i), x1), F32_TOL)


def test_probe_failure_falls_back_to_matrix_free(key):
    """A model that refuses all-zero inputs (here with `eqx.error_if`) makes the eager probe
    fail: nothing is recognized, the kernel is still exact, and the explanation says why."""

    class Picky(eqx.Module):
        lin: eqx.nn.Linear

        def __call__(self, x):
            x = eqx.error_if(x, jnp.all(x == 0), "all-zero input")
            return self.lin(x)

    m = Picky(eqx.nn.Linear(4, 3, key=key))
    x = jax.random.normal(key, (6, 4))
    plan = kernels.analyze_linears(m, jax.ShapeDtypeStruct((4,), x.dtype))
    assert plan.structured == () and "all-zero input" in plan.probe_error
    assert "probe failed" in plan.linears[0].reason
    got = jit(functools.partial(kernels.ntk, method="hybrid"))(m, x)
    _assert_close(got, jit(naive_ntk)(m, x), F32_TOL)
    assert "probe failed" in kernels.explain_method(m, x)


def _argmin_costs(model, x1, x2=None):
    """The decision rule spelled out: the cheapest of jacobian, implicit and (with a recognized
    Linear) hybrid by `_cost`'s FLOP counts; ties keep that order."""
    params, f = kernels._common.split(model)
    o = jax.eval_shape(model, x1[0]).shape[0]
    flops = _cost.forward_flops(f, params, x1[0])
    p = kernels._protocol.num_trainable(model)
    n1, n2, sym = x1.shape[0], (x1 if x2 is None else x2).shape[0], x2 is None
    costs = {
        kernels.NtkMethod.JACOBIAN: _cost.jacobian_cost(n1, n2, o, p, flops, sym),
        kernels.NtkMethod.IMPLICIT: _cost.implicit_cost(n1, n2, o, p, flops),
    }
    plan = kernels.analyze_linears(model, jax.ShapeDtypeStruct(x1.shape[1:], x1.dtype))
    if plan.structured:
        hyb = _cost.hybrid_costs(n1, n2, o, plan.layout, p - plan.num_structured, flops, sym)
        costs[kernels.NtkMethod.HYBRID] = min(hyb.values())
    return min(costs, key=costs.get), costs


def test_resolve_method(models, extras):
    H = kernels.NtkMethod.HYBRID
    img64, vec64 = jnp.ones((64, 16)), jnp.ones((64, 12))
    # Dense layers with layer norms, a plain eqx MLP: hybrid (at width 6-8 it saves about half).
    for name, x in (("residual", img64), ("eqx_mlp", vec64)):
        m = models[name][0]
        for a, b in ((x, None), (x, x[:10])):
            assert kernels.resolve_method(m, a, b) is H, name
            best, costs = _argmin_costs(m, a, b)
            assert best is H and costs[H] < min(costs[k] for k in costs if k is not H)
    # Every case follows the FLOP counts (on the mixer the head alone saves a few percent).
    for name in NAMES:
        m, x1, x2 = models[name]
        for a, b in ((x1, None), (x1, x2)):
            assert kernels.resolve_method(m, a, b) is _argmin_costs(m, a, b)[0], name
    # Protocol models stay structured; models without eqx.nn.Linear keep the old choice.
    assert kernels.resolve_method(extras["protocol_mlp"], img64) is kernels.NtkMethod.STRUCTURED
    assert kernels.resolve_method(extras["cnn"], jnp.ones((64, 64))) is kernels.NtkMethod.JACOBIAN
    # A recognized Linear head on a big dense body the hybrid cannot split: not cheaper.
    m = extras["dense_head"]
    best, costs = _argmin_costs(m, img64)
    assert best is kernels.NtkMethod.IMPLICIT and H in costs
    assert kernels.resolve_method(m, img64) is kernels.NtkMethod.IMPLICIT
    assert kernels.resolve_method(m, img64, method="hybrid") is H


def test_explain_method(models, extras):
    m = models["residual"][0]
    text = kernels.explain_method(m, jnp.ones((64, 16)))
    assert text.startswith("method='auto' picks HYBRID for ResidualMLP (n1=64, n2=64")
    assert "estimated FLOPs jacobian" in text and "implicit" in text and "hybrid" in text
    for layer in ("embed (16->6)", "blocks[0].fc1 (6->6)", "blocks[1].fc2 (6->6)", "head (6->3)"):
        assert layer in text
    assert "Matrix-free: 36 parameters by Jacobian contraction" in text
    assert "blocks[0].norm.weight (6,)" in text and "norm.bias (6,)" in text
    assert "Not recognized" not in text
    assert "\n" not in text  # one paragraph

    m, x1, x2 = models["mixed"]
    text = kernels.explain_method(m, x1, x2)
    assert "n1=5, n2=4," in text and "(symmetric)" not in text
    assert "inp (12->8)" in text and "head (8->3)" in text
    assert "called 2 times per example: shared" in text
    assert "read directly by the model: tied" in text
    assert "tok, rec" in text  # grouped under one reason: inside a transformation
    assert "norm.weight (8,)" in text and "shared.weight (8, 8)" in text

    text = kernels.explain_method(*models["mixer"][:2])
    assert "Structured (dense-layer identity): 1 Linear, 18 parameters: head (5->3)" in text
    assert "embed" in text and "blocks[1].channel_mlp.fc2" in text

    text = kernels.explain_method(extras["protocol_mlp"], jnp.ones((8, 16)))
    assert "picks STRUCTURED" in text and "16->8, 8->8, 8->3" in text
    text = kernels.explain_method(extras["cnn"], jnp.ones((8, 64)))
    assert "picks JACOBIAN" in text and "no eqx.nn.Linear" in text
    text = kernels.explain_method(extras["dense_head"], jnp.ones((64, 16)))
    assert "picks IMPLICIT" in text and "with method='hybrid' the structured Linears" in text
    assert "head (8->3)" in text


def test_bad_rest_mode_says_how_to_fix(models):
    m, x1, _ = models["eqx_mlp"]
    with pytest.raises(ValueError, match="rest must be 'auto' or one of"):
        _hybrid.ntk_hybrid(m, x1, rest="fast")


# --------------------------------------------------------------------------------------------
# The residual MLP's padded form
# --------------------------------------------------------------------------------------------


def _real_part(padded_leaf, leaf):
    return padded_leaf[tuple(slice(0, s) for s in leaf.shape)]


def test_padded_residual_mlp_equals_unpadded(key):
    """Outputs, gradients (real parts equal, padded parts exactly zero), parameters and NTK of
    a width-5 residual MLP padded to 12 equal the unpadded network's; an Adam step keeps the
    padding at zero."""

    @jit
    def build(k):
        net = residual_mlp.model_fn(5, k, input_shape=(8, 8, 1), num_classes=4)
        net = _with_affine_norms(net, jax.random.fold_in(k, 1))
        return net, net.padded(12)

    net, pad = build(key)
    assert pad.blocks[0].fc1.weight.shape == (12, 12) and pad.embed.weight.shape == (12, 64)
    assert pad.head.weight.shape == (4, 12) and int(pad.mask.sum()) == 5
    plan = kernels.analyze_linears(pad, jax.ShapeDtypeStruct((64,), jnp.float32))
    assert [i.name for i in plan.structured] == EXPECTED_STRUCTURED["residual"]
    x = jax.random.uniform(jax.random.key(2), (6, 64))
    y = jnp.arange(6) % 4
    opt = optax.adam(1e-2)

    def loss(m):
        logits = jax.vmap(m)(x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    @jit
    def everything(net, pad):
        grads = [eqx.filter_grad(loss)(m) for m in (net, pad)]
        params = eqx.filter(pad, eqx.is_inexact_array)
        updates, _ = opt.update(grads[1], opt.init(params), params)
        return (
            [jax.vmap(m)(x) for m in (net, pad)],
            grads,
            [kernels.ntk(m, x) for m in (net, pad)],
            eqx.apply_updates(pad, updates),
        )

    (out, out_pad), (g, g_pad), (k, k_pad), stepped = everything(net, pad)
    np.testing.assert_allclose(out_pad, out, atol=PAD_TOL * np.abs(out).max())
    p_leaves = jax.tree.leaves(eqx.filter(net, eqx.is_inexact_array))
    pp_leaves = jax.tree.leaves(eqx.filter(pad, eqx.is_inexact_array))
    for leaves, pleaves in ((p_leaves, pp_leaves), (jax.tree.leaves(g), jax.tree.leaves(g_pad))):
        assert len(leaves) == len(pleaves) == 2 * 6 + 2 * 3
        for a, b in zip(leaves, pleaves):
            real = np.asarray(_real_part(b, a))
            np.testing.assert_allclose(real, a, atol=PAD_TOL * max(np.abs(a).max(), 1e-30))
            outside = np.asarray(b).copy()
            outside[tuple(slice(0, s) for s in a.shape)] = 0
            assert not np.any(outside), "padded parameters and gradients must be exactly zero"
    _assert_close(k_pad, k, F32_TOL)
    w = np.asarray(stepped.blocks[1].fc2.weight)
    assert (
        not np.any(w[5:])
        and not np.any(w[:, 5:])
        and np.any(w[:5, :5] != pad.blocks[1].fc2.weight[:5, :5])
    )
    with pytest.raises(ValueError, match="pad_to >= 12"):
        pad.padded(8)


def _stack(models, combine=jnp.stack):
    return jax.tree.map(lambda *a: combine(a) if eqx.is_array(a[0]) else a[0], *models)


def test_padded_pack_of_widths_shares_one_vmapped_program(key):
    """Widths 3 and 6 padded to 6 and stacked into one pack: every member's NTK (`auto`, i.e.
    hybrid; vmapped, member by member with `pack_map`, and sharded over devices) equals its
    unpadded twin's float64 reference."""

    @jit
    def build(k):
        keys = jax.random.split(k, 4)
        nets = [residual_mlp.model_fn(w, kk, input_shape=(8, 8, 1), num_classes=3)
                for w, kk in zip((3, 3, 6, 6), keys)]  # fmt: skip
        nets = [_with_affine_norms(n, jax.random.fold_in(kk, 1)) for n, kk in zip(nets, keys)]
        pack = _stack([_stack(nets[:2]).padded(6), _stack(nets[2:]).padded(6)], jnp.concatenate)
        return nets, pack

    nets, pack = build(key)
    assert pack.mask.shape == (4, 6) and pack.mask.sum(1).tolist() == [3, 3, 6, 6]
    x = jax.random.uniform(jax.random.key(3), (5, 64))
    batched, sequential = jit(
        lambda p, a: (
            eqx.filter_vmap(kernels.ntk, in_axes=(eqx.if_array(0), None))(p, a),
            kernels.pack_map(kernels.ntk, p, a, sequential=True),
        )
    )(pack, x)
    # Members sharded over the 4 fake CPU devices on an explicit-sharding mesh (the strict kind:
    # it rejects reshapes that merge sharded axes).
    mesh = jax.make_mesh((4,), ("ens",), axis_types=(AxisType.Explicit,))
    arrays, static = eqx.partition(pack, eqx.is_array)
    sharded = eqx.combine(jax.device_put(arrays, NamedSharding(mesh, P("ens"))), static)
    with jax.set_mesh(mesh):
        on_mesh = jit(
            eqx.filter_vmap(
                lambda m, a: kernels.ntk(m, a, block_size=2), in_axes=(eqx.if_array(0), None)
            )
        )(sharded, x)
    assert on_mesh.sharding.spec[0] == "ens"
    on_mesh = np.asarray(on_mesh)
    with jax.enable_x64(True):
        refs = jit(lambda ns, a: [naive_ntk(n, a) for n in ns])(*to64((nets, x)))
    for i, ref in enumerate(refs):
        _assert_close(batched[i], ref, F32_TOL)
        _assert_close(sequential[i], ref, F32_TOL)
        _assert_close(on_mesh[i], ref, F32_TOL)


# --------------------------------------------------------------------------------------------
# Speed (printed, never asserted) and the example config files
# --------------------------------------------------------------------------------------------


def _best_time(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def test_speed_ratio_is_printed(key, capsys):
    """Hybrid vs jacobian vs implicit on the residual MLP (width 64, N = 32, O = 10), timed in
    the same process; the ratios are printed, not asserted (timings are noisy)."""
    net = jit(lambda k: residual_mlp.model_fn(64, k, input_shape=(8, 8, 1), num_classes=10))(key)
    x = jax.random.uniform(key, (32, 64))
    fns = {m: jax.jit(functools.partial(kernels.ntk, method=m)) for m in
           ("hybrid", "jacobian", "implicit")}  # fmt: skip
    times = {m: _best_time(fn, net, x) for m, fn in fns.items()}
    _assert_close(fns["hybrid"](net, x), fns["jacobian"](net, x), F32_TOL)
    with capsys.disabled():
        print(
            f"\n[residual MLP w=64, N=32, O=10] hybrid {times['hybrid'] * 1e3:.2f} ms; "
            f"jacobian/hybrid {times['jacobian'] / times['hybrid']:.1f}x, "
            f"implicit/hybrid {times['implicit'] / times['hybrid']:.1f}x"
        )


EXPECTED_FIELDS = {
    "residual_mlp": {"widths": (16, 64, 256), "num_seeds": 2, "epochs": 40, "depth": (2,)},
    "mixer": {"widths": (16, 32, 64), "num_seeds": 2, "epochs": 40, "depth": (2,)},
}


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # ml_collections' loader
@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_example_config_files(name, key):
    from ntkbench._data import load_dataset
    from ntkbench.launchers._config_file import define_config, parse, strip_config

    module = _load_example(name)
    c = module.get_config()
    assert isinstance(c, ml_collections.ConfigDict)
    for field, value in EXPECTED_FIELDS[name].items():
        assert tuple(c[field]) == value if isinstance(value, tuple) else c[field] == value
    assert c.dataset == "digits" and c.name == name
    config = from_config_dict(c)  # a valid sweep
    assert config.widths == EXPECTED_FIELDS[name]["widths"]
    # As the CLI loads it: `--config=FILE` plus overrides; the file's model_fn makes the
    # sweep's model "custom", identified by the file's digest.
    path = str(EXAMPLES / f"{name}.py")
    argv = ["ntkbench", f"--config={path}", "--config.epochs=7"]
    found = {}
    fv = parse(strip_config(argv), lambda fv: found.update(model_fn=define_config(fv, argv)))
    assert fv.config.epochs == 7 and tuple(fv.config.widths) == EXPECTED_FIELDS[name]["widths"]
    assert callable(found["model_fn"]) and fv.config.model == "custom"
    assert from_config_dict(fv.config).model_digest
    # The model contract: ONE example (flattened, as training passes it, or as an image) in,
    # `(num_classes,)` logits out.
    data = load_dataset("digits")
    assert data.input_shape == (8, 8, 1) and data.num_classes == 10
    m = jit(lambda k: module.model_fn(16, k, input_shape=data.input_shape, num_classes=10))(key)
    assert isinstance(m, eqx.Module)
    flat = jnp.asarray(data.x_train[:3].reshape(3, -1))
    logits, logits_img = jit(lambda m, a, b: (jax.vmap(m)(a), jax.vmap(m)(b)))(
        m, flat, jnp.asarray(data.x_train[:3])
    )
    assert logits.shape == (3, 10)
    np.testing.assert_array_equal(logits_img, logits)
    assert hasattr(m, "padded") == (name == "residual_mlp")
