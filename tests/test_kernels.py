"""Tests of `ntkbench.kernels`: every NTK method against a naive float64 `jax.jacrev` reference.

Tolerances (relative to the largest entry of the reference kernel, `scale = max |Θ_ref|`):
- float32 kernels vs the float64 reference: `|Θ − Θ_ref| <= F32_TOL · scale`, `F32_TOL = 2e-6`
  (observed <= 1.1e-7 over all models and methods: float32 round-off of sums over P).
- float64 kernels (x64 enabled) vs the float64 reference: `F64_TOL = 1e-13` (observed <= 4e-16).
- identities between float32 results computed differently (trace, diagonal, NTK-vector product,
  layer sum, blocked vs unblocked, sharded vs unsharded): `F32_TOL`.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import naive_ntk, to64
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ntkbench import kernels
from ntkbench.models import CNN, MLP, concat, member

# The tests compile many small programs; XLA's backend optimization level 0 compiles them ~30%
# faster (the kernels' numerics do not depend on it).
FAST_COMPILE = {"compiler_options": {"xla_backend_optimization_level": 0}}
jit = functools.partial(jax.jit, **FAST_COMPILE)

F32_TOL = 2e-6
F64_TOL = 1e-13
METHODS = ("jacobian", "implicit", "structured")  # "auto" resolves to one of these (tested)


# --------------------------------------------------------------------------------------------
# Models and references
# --------------------------------------------------------------------------------------------


class ConvNormNet(eqx.Module):
    """An arbitrary Equinox model with non-dense layers (Conv1d, LayerNorm): generic methods only."""

    conv: eqx.nn.Conv1d
    norm: eqx.nn.LayerNorm
    linear: eqx.nn.Linear

    def __init__(self, in_size: int, out_size: int, *, key, dtype=jnp.float32):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv = eqx.nn.Conv1d(1, 3, 3, key=k1, dtype=dtype)
        feat = 3 * (in_size - 2)
        self.norm = eqx.nn.LayerNorm(feat, dtype=dtype)
        # A non-trivial LayerNorm affine so that its parameters matter.
        self.norm = eqx.tree_at(
            lambda n: (n.weight, n.bias),
            self.norm,
            (1.0 + 0.1 * jax.random.normal(k2, (feat,), dtype), 0.1 * jnp.ones((feat,), dtype)),
        )
        self.linear = eqx.nn.Linear(feat, out_size, key=k3, dtype=dtype)

    def __call__(self, x):
        h = jax.nn.gelu(self.conv(x[None, :])).reshape(-1)
        return self.linear(jnp.tanh(self.norm(h)))


class FakeStructured(ConvNormNet):
    """Claims the structured protocol but has non-dense parameters: must be refused."""

    def structured_layout(self):
        return ((self.linear.in_features, self.linear.out_features, True),)

    def structured_forward(self, x, eps):
        h = jnp.tanh(self.norm(jax.nn.gelu(self.conv(x[None, :])).reshape(-1)))
        return self.linear(h) + eps[0], (h,)


def _models(key, dtype=jnp.float32):
    """`name -> (model, x1, x2)` covering MLPs (depths, widths, padding), the CNN and a generic
    model. Sizes are small so that the float64 reference runs in a fraction of a second."""
    ks = jax.random.split(key, 12)
    out = {}
    for i, (w, d, pad) in enumerate([(8, 1, None), (16, 3, None), (5, 2, 9)]):
        m = MLP(12, 3, w, d, key=ks[i], pad_to=pad, dtype=dtype)
        out[f"mlp_w{w}_d{d}" + ("_pad" if pad else "")] = (
            m,
            jax.random.normal(ks[3], (5, 12), dtype),
            jax.random.normal(ks[4], (4, 12), dtype),
        )
    cnn = CNN((8, 8, 1), 3, key=ks[5], filters=2, hidden=4, dtype=dtype)
    out["cnn"] = (
        cnn,
        jax.random.uniform(ks[6], (3, 64), dtype),
        jax.random.uniform(ks[7], (2, 64), dtype),
    )
    out["convnorm"] = (
        ConvNormNet(10, 4, key=ks[8], dtype=dtype),
        jax.random.normal(ks[9], (4, 10), dtype),
        jax.random.normal(ks[10], (3, 10), dtype),
    )
    return out


MODEL_NAMES = ("mlp_w8_d1", "mlp_w16_d3", "mlp_w5_d2_pad", "cnn", "convnorm")


def _supported(name, method):
    return not (method == "structured" and name in ("cnn", "convnorm"))


# (model, method) pairs; the structured method on the CNN / ConvNormNet is an error (tested below).
CASES = [(name, method) for name in MODEL_NAMES for method in METHODS if _supported(name, method)]


def _assert_close(k, ref, tol):
    k, ref = np.asarray(k, np.float64), np.asarray(ref, np.float64)
    assert k.shape == ref.shape
    scale = np.max(np.abs(ref))
    err = np.max(np.abs(k - ref))
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol:.1g} * scale {scale:.3g}"


@pytest.fixture(scope="module")
def refs():
    """float64 references for every model (x64 enabled only inside)."""
    # One jitted construction: far cheaper than compiling every eager init op separately.
    models = eqx.filter_jit(_models, **FAST_COMPILE)(jax.random.key(42))
    out = {}
    with jax.enable_x64(True):
        for name, (m, x1, x2) in models.items():
            m64, x164, x264 = to64((m, x1, x2))
            sym, cross = jit(lambda m, a, b: (naive_ntk(m, a), naive_ntk(m, a, b)))(m64, x164, x264)
            out[name] = (np.asarray(sym), np.asarray(cross))
    return models, out


def _everything(model, x1, x2, v, method):
    """All kernel entry points of one (model, method), in ONE jitted program (fast tests)."""
    diag_method = "jacobian" if method == "implicit" else method
    return {
        "sym": kernels.ntk(model, x1, method=method),
        "cross": kernels.ntk(model, x1, x2, method=method),
        "cross_blocked": kernels.ntk(model, x1, x2, method=method, block_size=2),
        "diag_blocked": kernels.ntk_diagonal(model, x1, method=diag_method, block_size=2),
        "trace": kernels.ntk_trace(model, x1, method=diag_method),
        "vp": kernels.ntk_vp(model, x1, v),
    }


@pytest.fixture(scope="module")
def results(refs):
    """`(name, method) -> dict of float32 results` (see `_everything`)."""
    models, _ = refs
    out = {}
    for name, method in CASES:
        m, x1, x2 = models[name]
        v = jax.random.normal(jax.random.key(7), (x1.shape[0], m(x1[0]).shape[0]))
        out[name, method] = jit(_everything, static_argnums=4)(m, x1, x2, v, method) | {"v": v}
    return out


# --------------------------------------------------------------------------------------------
# Correctness of every method
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "method"), CASES)
def test_float32_matches_float64_reference(refs, results, name, method):
    _, ref = refs
    res = results[name, method]
    _assert_close(res["sym"], ref[name][0], F32_TOL)
    for key in ("cross", "cross_blocked"):
        _assert_close(res[key], ref[name][1], F32_TOL)


# float64 runs: every method on a padded MLP, the CNN and the generic model (the float32 test
# above covers every model; this one checks that nothing in the kernels is float32-bound).
CASES64 = [(n, m) for n, m in CASES if n in ("mlp_w5_d2_pad", "cnn", "convnorm")]


@pytest.mark.parametrize(("name", "method"), CASES64)
def test_float64_matches_float64_reference(refs, name, method):
    models, ref = refs
    with jax.enable_x64(True):
        m, x1, x2 = to64(models[name])
        fn = jit(
            lambda m, a, b: (
                kernels.ntk(m, a, b, method=method),
                kernels.ntk(m, a, method=method, block_size=2),
            )
        )
        cross, sym = fn(m, x1, x2)
        assert cross.dtype == jnp.float64
        _assert_close(cross, ref[name][1], F64_TOL)
        _assert_close(sym, ref[name][0], F64_TOL)


@pytest.mark.parametrize(("name", "method"), CASES)
def test_symmetric_and_psd(results, name, method):
    k = np.asarray(kernels.as_matrix(results[name, method]["sym"]), np.float64)
    scale = np.max(np.abs(k))
    np.testing.assert_allclose(k, k.T, atol=F32_TOL * scale)
    assert np.linalg.eigvalsh((k + k.T) / 2).min() >= -F32_TOL * scale


def test_as_matrix_index_convention():
    k = jnp.arange(2 * 3 * 4 * 4, dtype=jnp.float32).reshape(2, 3, 4, 4)
    mat = kernels.as_matrix(k)
    assert mat.shape == (8, 12)
    i, j, a, b = 1, 2, 3, 0
    assert mat[i * 4 + a, j * 4 + b] == k[i, j, a, b]
    with pytest.raises(ValueError, match="rank-4"):
        kernels.as_matrix(mat)


@pytest.mark.parametrize(("width", "pad"), [(3, 8), (1, 4)])
def test_padded_member_equals_unpadded_twin(width, pad, key):
    x = jax.random.normal(key, (6, 12))
    m = MLP(12, 3, width, 2, key=jax.random.key(width), pad_to=pad)
    twin = m.unpadded()
    assert twin.weights[0].shape == (width, 12)
    padded = jit(lambda m, a: [kernels.ntk(m, a, method=k) for k in METHODS])(m, x)
    expected = jit(lambda m, a: kernels.ntk(m, a, method="jacobian"))(twin, x)
    for k in padded:
        _assert_close(k, expected, F32_TOL)


# --------------------------------------------------------------------------------------------
# Trace, diagonal, NTK-vector products, per-layer kernels
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "method"), CASES)
def test_trace_and_diagonal(refs, results, name, method):
    """`ntk_diagonal` / `ntk_trace` (never forming the NTK) against the reference's diagonal."""
    models, ref = refs
    res = results[name, method]
    mat = np.asarray(kernels.as_matrix(jnp.asarray(ref[name][0])))
    n = models[name][1].shape[0]
    diag = np.diagonal(mat).reshape(n, -1)
    np.testing.assert_allclose(res["diag_blocked"], diag, atol=F32_TOL * diag.max())
    np.testing.assert_allclose(res["trace"], np.trace(mat) / mat.shape[0], rtol=F32_TOL)


@pytest.mark.parametrize(("name", "method"), CASES)
def test_ntk_vp_matches_matrix_product(refs, results, name, method):
    _, ref = refs
    res = results[name, method]
    mat = np.asarray(kernels.as_matrix(jnp.asarray(ref[name][0])))
    v = np.asarray(res["v"], np.float64)
    expected = (mat @ v.reshape(-1)).reshape(v.shape)
    assert res["vp"].shape == v.shape
    np.testing.assert_allclose(res["vp"], expected, atol=F32_TOL * np.abs(expected).max())


def test_ntk_vp_fn_is_linear_and_reusable(refs, results):
    models, _ = refs
    m, x1, _ = models["mlp_w16_d3"]
    res = results["mlp_w16_d3", "jacobian"]
    vp = jit(lambda m, a, v: kernels.ntk_vp_fn(m, a)(v))
    scale = np.abs(res["vp"]).max()
    np.testing.assert_allclose(vp(m, x1, 2.0 * res["v"]), 2.0 * res["vp"], atol=F32_TOL * scale)


@pytest.mark.parametrize("name", ("mlp_w8_d1", "mlp_w16_d3", "mlp_w5_d2_pad"))
def test_layer_ntks_sum_to_ntk(refs, name):
    models, ref = refs
    m, x1, x2 = models[name]
    out, blocked, (_, h1), (_, h2) = jit(
        lambda m, a, b: (
            kernels.layer_ntks(m, a, b),
            kernels.layer_ntks(m, a, b, block_size=2),
            jax.vmap(m.structured_forward)(a, None),
            jax.vmap(m.structured_forward)(b, None),
        )
    )(m, x1, x2)
    depth = m.depth
    assert out.ntks.shape == (depth + 1, x1.shape[0], x2.shape[0], 3, 3)
    _assert_close(out.ntks.sum(0), ref[name][1], F32_TOL)
    _assert_close(blocked.ntks, out.ntks, F32_TOL)
    assert len(out.conjugate_kernels) == depth + 1
    np.testing.assert_allclose(out.conjugate_kernels[0], x1 @ x2.T, rtol=1e-5, atol=1e-5)
    for l in range(depth + 1):  # layer l's inputs: the post-activations of hidden layer l-1
        np.testing.assert_allclose(out.conjugate_kernels[l], h1[l] @ h2[l].T, rtol=1e-5, atol=1e-5)


def test_layer_ntks_needs_structured_model(refs):
    models, _ = refs
    with pytest.raises(TypeError, match="StructuredModel"):
        kernels.layer_ntks(models["cnn"][0], models["cnn"][1])


# --------------------------------------------------------------------------------------------
# Dispatch and errors
# --------------------------------------------------------------------------------------------


def test_auto_dispatch(refs):
    models, _ = refs
    m, x1, _ = models["mlp_w16_d3"]
    assert kernels.resolve_method(m, x1) is kernels.NtkMethod.STRUCTURED
    cnn, xc, _ = models["cnn"]
    # Convolutions reuse each weight at many positions: the Jacobian contraction is cheaper.
    assert kernels.resolve_method(cnn, xc) is kernels.NtkMethod.JACOBIAN

    class DenseOnly(eqx.Module):  # no protocol, dense layers only: NTK-vector products win
        mlp: MLP

        def __call__(self, x):
            return self.mlp(x)

    wrapped = DenseOnly(MLP(12, 10, 64, 2, key=jax.random.key(0)))
    assert kernels.resolve_method(wrapped, jnp.ones((64, 12))) is kernels.NtkMethod.IMPLICIT
    assert (
        kernels.resolve_method(m, x1, method=kernels.NtkMethod.JACOBIAN)
        is kernels.NtkMethod.JACOBIAN
    )


def test_errors_say_how_to_fix(refs):
    models, _ = refs
    cnn, xc, _ = models["cnn"]
    with pytest.raises(TypeError, match="method='auto', 'jacobian' or 'implicit'"):
        kernels.ntk(cnn, xc, method="structured")
    with pytest.raises(ValueError, match="choose one of"):
        kernels.ntk(cnn, xc, method="fast")
    fake = FakeStructured(10, 4, key=jax.random.key(0))
    assert kernels.supports_structured(fake)
    assert kernels.resolve_method(fake, jnp.ones((2, 10))) is kernels.NtkMethod.STRUCTURED
    with pytest.raises(ValueError, match="trainable"):
        kernels.ntk(fake, jnp.ones((2, 10)))
    m = models["mlp_w8_d1"][0]
    with pytest.raises(ValueError, match="block_size"):
        kernels.ntk(m, jnp.ones((3, 12)), block_size=0)
    with pytest.raises(ValueError, match="different shapes"):
        kernels.ntk(m, jnp.ones((3, 12)), jnp.ones((3, 11)))


# --------------------------------------------------------------------------------------------
# Blocks (bounded memory), jit, packs and sharding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_blocked_equals_unblocked(method, key):
    """N = 45 with blocks of 8 (the last block overlaps), cross and symmetric kernels."""
    m = MLP(12, 3, 10, 2, key=key, pad_to=12)
    x1 = jax.random.normal(jax.random.key(1), (45, 12))
    x2 = jax.random.normal(jax.random.key(2), (13, 12))

    def run(m, a, b):
        out = []
        for y in (None, b):
            out.append(
                (
                    kernels.ntk(m, a, y, method=method),
                    kernels.ntk(m, a, y, method=method, block_size=8),
                    kernels.ntk(m, a, y, method=method, block_size=45),
                )
            )
        return out

    for full, *blocked in jit(run)(m, x1, x2):
        for k in blocked:
            _assert_close(k, full, F32_TOL)


def test_blocked_structured_moderate_n(key):
    """N = 1000 in blocks of 96: the path used for N up to 10,000."""
    m = MLP(16, 2, 32, 2, key=key)
    x = jax.random.normal(jax.random.key(1), (1000, 16))
    full, blocked, trace = jit(
        lambda m, a: (
            kernels.ntk(m, a),
            kernels.ntk(m, a, block_size=96),
            kernels.ntk_trace(m, a, block_size=96),
        )
    )(m, x)
    _assert_close(blocked, full, F32_TOL)
    np.testing.assert_allclose(trace, jnp.trace(kernels.as_matrix(full)) / 2000, rtol=F32_TOL)


def test_blocked_memory_is_bounded(key):
    """XLA's temp memory for the blocked Jacobian kernel stays far below the full Jacobian."""
    m = MLP(64, 4, 64, 2, key=key)
    x = jax.random.normal(key, (256, 64))
    params, static = eqx.partition(m, eqx.is_array)
    num_params = kernels._protocol.num_trainable(m)
    full_jacobian_bytes = 256 * 4 * num_params * 4

    def temp(block_size):
        fn = jit(
            lambda p, a: kernels.ntk(
                eqx.combine(p, static), a, method="jacobian", block_size=block_size
            )
        )
        return fn.lower(params, x).compile().memory_analysis().temp_size_in_bytes

    assert temp(None) >= full_jacobian_bytes
    assert temp(16) < full_jacobian_bytes / 4


def _pack(widths_and_seeds, pad_to, in_size=12, out_size=3, depth=2):
    packs = []
    for width, seeds in widths_and_seeds:
        keys = jnp.stack([jax.random.key(s) for s in seeds])
        packs.append(
            eqx.filter_vmap(
                lambda k, w=width: MLP(in_size, out_size, w, depth, key=k, pad_to=pad_to)
            )(keys)
        )
    return concat(packs)


def test_vmapped_pack_of_mixed_widths(key):
    """A concatenation of packs of true widths 3 and 8 (padded to 8), every method vmapped."""
    pack = _pack([(3, [0, 1]), (8, [2, 3])], pad_to=8)
    x = jax.random.normal(key, (5, 12))

    def per_member(m, a):  # "auto" is the structured method here
        return {k: kernels.ntk(m, a, method=k) for k in ("auto", "jacobian", "implicit")} | {
            "trace": kernels.ntk_trace(m, a)
        }

    vmapped = eqx.filter_vmap(per_member, in_axes=(eqx.if_array(0), None))
    out = eqx.filter_jit(vmapped, **FAST_COMPILE)(pack, x)
    assert out["auto"].shape == (4, 5, 5, 3, 3)
    ref = jit(lambda m, a: naive_ntk(m, a))
    for i in range(4):
        expected = ref(member(pack, i), x)
        for k in ("auto", "jacobian", "implicit"):
            _assert_close(out[k][i], expected, F32_TOL)
        np.testing.assert_allclose(
            out["trace"][i], jnp.trace(kernels.as_matrix(expected)) / 15, rtol=F32_TOL
        )


def _shard_fn(m, x, v):
    return {
        "ntk": kernels.ntk(m, x),
        "ntk_blocked": kernels.ntk(m, x, block_size=3),
        "implicit_blocked": kernels.ntk(m, x, method="implicit", block_size=3),
        "diag_jacobian": kernels.ntk_diagonal(m, x, method="jacobian", block_size=3),
        "vp": kernels.ntk_vp(m, x, v),
        "layers": kernels.layer_ntks(m, x, block_size=3),
    }


@pytest.fixture(scope="module")
def shard_case():
    pack = _pack([(3, [0, 1, 2, 3]), (6, [4, 5, 6, 7])], pad_to=6)
    x = jax.random.normal(jax.random.key(0), (5, 12))
    v = jax.random.normal(jax.random.key(1), (5, 3))
    vmapped = eqx.filter_vmap(_shard_fn, in_axes=(eqx.if_array(0), None, None))
    fn = eqx.filter_jit(vmapped, **FAST_COMPILE)
    return pack, x, v, fn, fn(pack, x, v)


@pytest.mark.parametrize("axis_type", (AxisType.Auto, AxisType.Explicit))
def test_sharded_pack_equals_unsharded(shard_case, axis_type):
    """Members sharded over the 4 fake CPU devices. Auto meshes take `eqx.filter_shard`;
    Explicit meshes (`jax.make_mesh`'s default) reject it and take `jax.device_put`."""
    assert jax.device_count() == 4
    pack, x, v, fn, expected = shard_case
    mesh = jax.make_mesh((4,), ("ens",), axis_types=(axis_type,))
    sharding = NamedSharding(mesh, P("ens"))
    if axis_type == AxisType.Auto:
        sharded = eqx.filter_shard(pack, sharding)
    else:
        arrays, static = eqx.partition(pack, eqx.is_array)
        sharded = eqx.combine(jax.device_put(arrays, sharding), static)
    with jax.set_mesh(mesh):
        got = fn(sharded, x, v)
    assert got["ntk"].sharding.spec[0] == "ens", got["ntk"].sharding
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        _assert_close(g, e, F32_TOL)


@pytest.mark.parametrize("n2", (None, 4))
def test_pack_map_sequential_and_batched_match_single_calls(key, n2):
    """`pack_map` runs a pack member by member (a `lax.map`, also around an inner vmap over
    inputs) or batched, as the caller says; both give the single-call kernels."""
    pack = _pack([(3, [0, 1]), (6, [2, 3])], pad_to=6)
    xs = jax.random.normal(key, (2, 5, 12))
    x2 = None if n2 is None else jax.random.normal(jax.random.key(7), (n2, 12))

    def per_member(m, xs):
        return jax.vmap(lambda a: kernels.ntk(m, a, x2, method="structured"))(xs)

    out = {}
    for sequential in (True, False):
        fn = lambda p, xs, s=sequential: kernels.pack_map(per_member, p, xs, sequential=s)
        assert ("scan" in str(jax.make_jaxpr(fn)(pack, xs))) == sequential
        out[sequential] = eqx.filter_jit(fn, **FAST_COMPILE)(pack, xs)
    assert out[True].shape == (4, 2, 5, 5 if n2 is None else n2, 3, 3)
    for i in range(4):
        for d in range(2):
            ref = kernels.ntk(member(pack, i), xs[d], x2, method="jacobian")
            _assert_close(out[True][i, d], ref, F32_TOL)
            _assert_close(out[False][i, d], ref, F32_TOL)


def test_large_n_times_o_matches_float64_reference(key):
    """N·O = 1030 (more than the other cases) against the float64 Jacobian reference, with the
    kernel's symmetry checked at that size."""
    m32 = MLP(12, 10, 24, 2, key=key)
    x = jax.random.normal(jax.random.key(1), (103, 12))
    k32 = np.asarray(jit(lambda m, a: kernels.ntk(m, a, method="structured"))(m32, x))
    with jax.enable_x64(True):
        m64 = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, m32)
        ref = np.asarray(kernels.ntk(m64, x.astype(jnp.float64), method="jacobian"))
    _assert_close(k32, ref, F32_TOL)
    mat = np.asarray(kernels.as_matrix(k32))
    np.testing.assert_allclose(mat, mat.T, atol=F32_TOL * np.abs(mat).max())
