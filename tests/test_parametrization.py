"""The parametrization table (docs/definitions.md §15) as code: every entry, the equivalences the
doc states, traced widths, and the abc-symmetry checked numerically on a tiny network."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntkbench.parametrization import (
    LAYER_KINDS,
    OPTIMIZERS,
    PARAMETRIZATIONS,
    LayerKind,
    LayerScales,
    Optimizer,
    Parametrization,
    layer_scales,
    mlp_scales,
    width_multiplier,
)

FIELDS = LayerScales._fields
COMBOS = list(itertools.product(PARAMETRIZATIONS, OPTIMIZERS, LAYER_KINDS))
WIDTHS = (16, 64, 100, 1024)
BASES = (16, 32, 64)
DATA_DIM = (3, 64, 3072)  # fan-in of input and fixed layers
FAN_FACTOR = (1, 9)  # fan-in = width · factor for hidden and output layers (dense, 3x3 conv)


def cases(kind):
    """`(fan_in, width, base_width)` triples for a layer kind."""
    for w, w0 in itertools.product(WIDTHS, BASES):
        if kind in ("hidden", "output"):
            for k in FAN_FACTOR:
                yield w * k, w, w0
        else:
            for d in DATA_DIM:
                yield d, w, w0


def documented(p, opt, kind, n, w, w0):
    """The table of docs/definitions.md §15, "The table", written out in float64."""
    m = w / w0
    n0 = n / m if kind in ("hidden", "output") else n
    wide_bias = kind in ("input", "hidden")
    adam = opt == "adam"
    if p == "standard":
        weights = (n**-0.5, 1.0, 1.0, 1.0)
        bias_lr = 1.0
    elif p == "ntk":
        adam_lr = {"input": n0**0.5 * m**-0.5, "hidden": n0**0.5 / m,
                   "output": n0**0.5 * m**-0.5, "fixed": n0**0.5}[kind]
        weights = (1.0, n**0.5, n**-0.5, adam_lr if adam else n0)
        bias_lr = m**-0.5 if (adam and wide_bias) else 1.0
    else:
        weights = {
            "input": (n**-0.5, 1.0, 1.0, 1.0 if adam else m),
            "hidden": (n**-0.5, 1.0, 1.0, 1.0 / m if adam else 1.0),
            "output": (n0**-0.5, m**0.5, 1.0 / m, 1.0 if adam else m),
            "fixed": (n**-0.5, 1.0, 1.0, 1.0),
        }[kind]
        bias_lr = m if (wide_bias and not adam) else 1.0
    return dict(zip(FIELDS, (*weights, 0.0, 1.0, bias_lr)))


def scales64(p, opt, kind, n, w, w0):
    with jax.enable_x64(True):
        s = layer_scales(p, opt, kind, fan_in=n, width=w, base_width=w0)
        return {f: float(getattr(s, f)) for f in FIELDS}


@pytest.mark.parametrize("p,opt,kind", COMBOS)
def test_every_table_entry(p, opt, kind):
    for n, w, w0 in cases(kind):
        got, want = scales64(p, opt, kind, n, w, w0), documented(p, opt, kind, n, w, w0)
        for field in FIELDS:
            assert got[field] == pytest.approx(want[field], rel=1e-12, abs=0), (field, n, w, w0)


@pytest.mark.parametrize("p,opt,kind", COMBOS)
def test_float32_by_default(p, opt, kind):
    s = layer_scales(p, opt, kind, fan_in=256, width=256, base_width=64)
    want = documented(p, opt, kind, 256, 256, 64)
    for field in FIELDS:
        value = getattr(s, field)
        assert value.dtype == jnp.float32 and value.shape == ()
        assert float(value) == pytest.approx(want[field], rel=1e-6)


def test_init_gain_is_init_std_times_sqrt_fan_in():
    for p, opt, kind in COMBOS:
        for n, w, w0 in cases(kind):
            s = scales64(p, opt, kind, n, w, w0)
            assert s["init_gain"] == pytest.approx(s["init_std"] * n**0.5, rel=1e-12)
    # SP's gain is exactly 1: the lecun_normal draw is kept bit for bit.
    for kind in LAYER_KINDS:
        assert float(layer_scales("standard", "adam", kind, fan_in=37, width=7,
                                  base_width=3).init_gain) == 1.0


# --- the equivalences the doc states -------------------------------------------------------------
# Lemma J.1 of Tensor Programs V: (A, B, C) -> (A θ, B / θ, C / θ²) for SGD and (A θ, B / θ, C / θ)
# for Adam leave the trained function unchanged (A multiplier, B init std, C lr). So A·B, C·A²
# (SGD) and C·A (Adam) are what a parametrization means for the function and its training.


def invariants(s, opt):
    a, b, c = s["multiplier"], s["init_std"], s["lr_mult"]
    return a * b, c * a**2 if opt == "sgd" else c * a


@pytest.mark.parametrize("opt,kind", list(itertools.product(OPTIMIZERS, LAYER_KINDS)))
def test_mup_is_sp_exactly_at_base_width(opt, kind):
    for n, w, _ in cases(kind):
        assert scales64("mup", opt, kind, n, w, w) == scales64("standard", opt, kind, n, w, w)


@pytest.mark.parametrize("opt,kind", list(itertools.product(OPTIMIZERS, LAYER_KINDS)))
def test_ntk_is_sp_up_to_the_symmetry_at_base_width(opt, kind):
    for n, w, w0 in cases(kind):
        ntk, sp = scales64("ntk", opt, kind, n, w, w0), scales64("standard", opt, kind, n, w, w0)
        # The same function at initialization at every width ...
        assert invariants(ntk, opt)[0] == pytest.approx(invariants(sp, opt)[0], rel=1e-12)
        # ... and the same training at the base width; biases have no multiplier to trade.
        n_base = n * w0 / w if kind in ("hidden", "output") else n
        at_base = scales64("ntk", opt, kind, n_base, w0, w0)
        sp_base = scales64("standard", opt, kind, 1, w0, w0)
        assert invariants(at_base, opt)[1] == pytest.approx(invariants(sp_base, opt)[1], rel=1e-12)
        assert at_base["bias_lr_mult"] == sp_base["bias_lr_mult"] == 1.0


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_ntk_is_sp_with_smaller_learning_rates(kind):
    """The SP-equivalent learning rates of NTK (the doc's "NTK as SP" rows)."""
    sgd = {"input": 0, "hidden": -1, "output": -1, "fixed": 0}[kind]
    adam = {"input": -0.5, "hidden": -1.5, "output": -1, "fixed": 0}[kind]
    bias = {"input": -0.5, "hidden": -0.5, "output": 0, "fixed": 0}[kind]
    for n, w, w0 in cases(kind):
        m = w / w0
        s_sgd = scales64("ntk", "sgd", kind, n, w, w0)
        s_adam = scales64("ntk", "adam", kind, n, w, w0)
        assert invariants(s_sgd, "sgd")[1] == pytest.approx(m**sgd, rel=1e-12)
        assert invariants(s_adam, "adam")[1] == pytest.approx(m**adam, rel=1e-12)
        assert s_adam["bias_lr_mult"] == pytest.approx(m**bias, rel=1e-12)
        assert s_sgd["bias_lr_mult"] == 1.0


def test_mup_equals_table_3_form_via_lemma_j1():
    """TP V Table 3 (no multipliers): readout init variance 1/(n·m), SGD and Adam lr 1/m."""
    for n, w, w0 in cases("output"):
        m = w / w0
        for opt in OPTIMIZERS:
            s = scales64("mup", opt, "output", n, w, w0)
            theta = m  # multiply the multiplier 1/m up to 1
            assert s["multiplier"] * theta == pytest.approx(1.0, rel=1e-12)
            assert (s["init_std"] / theta) ** 2 == pytest.approx(1 / (n * m), rel=1e-12)
            lr = s["lr_mult"] / theta**2 if opt == "sgd" else s["lr_mult"] / theta
            assert lr == pytest.approx(1 / m, rel=1e-12)


def mup_package_rule(opt, kind, m):
    """microsoft/mup's `MuAdam`/`MuSGD` (mup/optim.py) and `MuReadout` (mup/layer.py), for layers
    whose infinite dimensions all have width multiplier m: `(weight lr, bias lr, readout
    multiplier, init std relative to SP)`."""
    ninf = {"input": 1, "hidden": 2, "output": 1, "fixed": 0}[kind]
    bias_ninf = 1 if kind in ("input", "hidden") else 0
    if opt == "adam":  # matrix-like: lr / width_mult; everything else unchanged
        lr = 1 / m if ninf == 2 else 1.0
        bias_lr = 1.0
    else:  # vector-like: lr * width_mult; matrix-like: lr / (fanin_mult / fanout_mult)
        lr = {0: 1.0, 1: m, 2: 1.0 / (m / m)}[ninf]
        bias_lr = m if bias_ninf == 1 else 1.0
    readout = kind == "output"
    return lr, bias_lr, (1 / m if readout else 1.0), (m**0.5 if readout else 1.0)


@pytest.mark.parametrize("opt,kind", list(itertools.product(OPTIMIZERS, LAYER_KINDS)))
def test_mup_follows_the_mup_package(opt, kind):
    for n, w, w0 in cases(kind):
        s = scales64("mup", opt, kind, n, w, w0)
        lr, bias_lr, mult, rel_std = mup_package_rule(opt, kind, w / w0)
        assert s["lr_mult"] == pytest.approx(lr, rel=1e-12)
        assert s["bias_lr_mult"] == pytest.approx(bias_lr, rel=1e-12)
        assert s["multiplier"] == pytest.approx(mult, rel=1e-12)
        assert s["init_std"] == pytest.approx(rel_std * n**-0.5, rel=1e-12)


def exponents(p, opt, kind):
    """Log-log slopes in the width of (multiplier, init std, lr) of a width-scaling layer."""
    fan_lo, fan_hi = (10, 10) if kind == "input" else (2**10, 2**14)
    lo = scales64(p, opt, kind, fan_lo, 2**10, 8)
    hi = scales64(p, opt, kind, fan_hi, 2**14, 8)
    return tuple(np.log(hi[f] / lo[f]) / np.log(16) for f in ("multiplier", "init_std", "lr_mult"))


@pytest.mark.parametrize("kind", ["input", "hidden", "output"])
def test_exponents_match_tensor_programs_ivb(kind):
    """TP IVb Def. 2.4.1 (neural tangent) and 2.5.1 (maximal update) for Adam: with W = n^-a w,
    w ~ N(0, n^-2b), lr n^-c, the (a, b, c) of input, hidden and output layers are, up to the
    symmetry (a, b, c) -> (a + θ, b − θ, c − θ), NTP (0, 0, ½), (½, 0, 1), (½, 0, ½) and μP
    (0, 0, 0), (0, ½, 1), (1, 0, 0). The symmetry-invariant parts are a + b and a + c."""
    ntp = {"input": (0, 0, 0.5), "hidden": (0.5, 0, 1), "output": (0.5, 0, 0.5)}[kind]
    mup = {"input": (0, 0, 0), "hidden": (0, 0.5, 1), "output": (1, 0, 0)}[kind]
    for p, (a, b, c) in (("ntk", ntp), ("mup", mup)):
        ma, mb, mc = exponents(p, "adam", kind)  # slopes of n^-a, n^-b, n^-c
        assert -(ma + mb) == pytest.approx(a + b, abs=1e-9)
        assert -(ma + mc) == pytest.approx(a + c, abs=1e-9)


# --- traced widths -------------------------------------------------------------------------------


@pytest.mark.parametrize("p,opt,kind", COMBOS)
def test_jit_and_vmap_with_traced_widths(p, opt, kind):
    widths = jnp.array([8, 24, 64, 512], jnp.int32)
    fan_ins = widths * 9 if kind in ("hidden", "output") else jnp.full_like(widths, 27)

    @jax.jit
    def batched(fan_ins, widths, base):
        return jax.vmap(
            lambda f, w: layer_scales(p, opt, kind, fan_in=f, width=w, base_width=base)
        )(fan_ins, widths)

    got = batched(fan_ins, widths, jnp.int32(16))
    for i in range(len(widths)):
        want = documented(p, opt, kind, int(fan_ins[i]), int(widths[i]), 16)
        for field in FIELDS:
            assert getattr(got, field).shape == (4,)
            assert float(getattr(got, field)[i]) == pytest.approx(want[field], rel=1e-6)


def test_mlp_scales_kinds_and_fan_ins():
    for p, opt in itertools.product(PARAMETRIZATIONS, OPTIMIZERS):
        got = mlp_scales(p, opt, in_size=64, width=96, depth=3, base_width=32)
        assert len(got) == 4
        want = [layer_scales(p, opt, k, fan_in=f, width=96, base_width=32)
                for k, f in (("input", 64), ("hidden", 96), ("hidden", 96), ("output", 96))]
        for g, w in zip(got, want):
            assert all(float(a) == float(b) for a, b in zip(g, w))
    with pytest.raises(ValueError, match="depth"):
        mlp_scales("mup", "sgd", in_size=4, width=8, depth=0, base_width=8)


def test_names_and_validation():
    assert PARAMETRIZATIONS == ("standard", "ntk", "mup")
    assert OPTIMIZERS == ("adam", "sgd") and LAYER_KINDS == ("input", "hidden", "output", "fixed")
    s = layer_scales(Parametrization.MUP, Optimizer.SGD, LayerKind.OUTPUT, fan_in=8, width=8,
                     base_width=2)
    assert float(s.multiplier) == 0.25
    assert float(width_multiplier(96, 32)) == 3.0
    with pytest.raises(ValueError):
        layer_scales("mu", "sgd", "hidden", fan_in=8, width=8, base_width=8)
    with pytest.raises(ValueError):
        layer_scales("mup", "sgd", "readout", fan_in=8, width=8, base_width=8)
    for bad in (dict(fan_in=0, width=8, base_width=8), dict(fan_in=8, width=-1, base_width=8),
                dict(fan_in=8, width=8, base_width=np.array([4, 0]))):
        with pytest.raises(ValueError, match="positive"):
            layer_scales("mup", "adam", "hidden", **bad)


# --- the abc-symmetry on a tiny network, float64 -------------------------------------------------


def two_layer(params, mults, x):
    """`f(x) = A2 W2 relu(A1 W1 x + b1) + b2` on a batch."""
    (w1, b1), (w2, b2) = params
    h = jax.nn.relu(mults[0] * (x @ w1.T) + b1)
    return mults[1] * (h @ w2.T) + b2


def train(params, mults, lrs, x, y, opt, steps):
    """`steps` full-batch steps of SGD or Adam (ε = 0) with per-parameter learning rates."""
    loss = lambda p: 0.5 * jnp.sum((two_layer(p, mults, x) - y) ** 2)
    base = optax.identity() if opt == "sgd" else optax.scale_by_adam(eps=0.0)
    params = tuple(tuple(layer) for layer in params)
    state = base.init(params)
    for _ in range(steps):
        updates, state = base.update(jax.grad(loss)(params), state, params)
        params = jax.tree.map(lambda p, u, r: p - r * u, params, updates, tuple(lrs))
    return params


def draws(key, n_in=5, n=7, n_out=3):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    z = ((jax.random.normal(k1, (n, n_in)), 0.1 * jax.random.normal(k2, (n,))),
         (jax.random.normal(k3, (n_out, n)), 0.1 * jax.random.normal(k4, (n_out,))))
    x = jax.random.normal(k5, (4, n_in))
    return z, x, jnp.sin(x[:, :n_out])


def kernels(params, mults, lrs, x):
    """Plain `Σ_l J_l J_lᵀ`, and the `η_l` and `η_l²` weighted sums, over the weights."""
    flat = lambda p: two_layer(p, mults, x).reshape(-1)
    jac = jax.jacobian(flat)(params)
    plain, sgd, adam = 0.0, 0.0, 0.0
    for l in (0, 1):
        j = jac[l][0].reshape(flat(params).size, -1)
        k = j @ j.T
        plain, sgd, adam = plain + k, sgd + lrs[l][0] * k, adam + lrs[l][0] ** 2 * k
    return plain, sgd, adam


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("layer", [0, 1])
def test_abc_symmetry_leaves_training_unchanged(opt, layer, key):
    """Multiplier · c, init std / c, lr / c² (SGD) or / c (Adam): the same function before and
    after training, and the same lr-weighted kernel (SGD: η_l; Adam: η_l²), while the plain
    kernel J Jᵀ of that layer changes by c²."""
    with jax.enable_x64(True):
        z, x, y = draws(key)
        mults, lrs = [1.3, 0.7], [(0.05, 0.02), (0.03, 0.04)]
        params = jax.tree.map(lambda a: a.astype(jnp.float64), z)
        c = 3.7
        mults2 = list(mults)
        mults2[layer] *= c
        params2 = [list(p) for p in params]
        params2[layer][0] = params2[layer][0] / c
        lrs2 = list(lrs)
        lrs2[layer] = (lrs[layer][0] / (c**2 if opt == "sgd" else c), lrs[layer][1])
        params2 = tuple(tuple(p) for p in params2)

        f0, g0 = two_layer(params, mults, x), two_layer(params2, mults2, x)
        np.testing.assert_allclose(g0, f0, rtol=1e-12, atol=1e-12)
        t1 = train(params, mults, lrs, x, y, opt, 3)
        t2 = train(params2, mults2, lrs2, x, y, opt, 3)
        f1, g1 = two_layer(t1, mults, x), two_layer(t2, mults2, x)
        assert float(jnp.max(jnp.abs(f1 - f0))) > 1e-3  # training moved the function
        np.testing.assert_allclose(g1, f1, rtol=1e-10, atol=1e-12)

        plain, sgd, adam = kernels(params, mults, lrs, x)
        plain2, sgd2, adam2 = kernels(params2, mults2, lrs2, x)
        np.testing.assert_allclose(sgd2 if opt == "sgd" else adam2,
                                   sgd if opt == "sgd" else adam, rtol=1e-10, atol=1e-12)
        assert not np.allclose(plain2, plain, rtol=1e-3)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("width_mult", [1, 4])
def test_module_scales_train_like_the_doc_says(opt, width_mult, key):
    """Through `mlp_scales` on a one-hidden-layer net (kinds input, output): at the base width μP
    and NTK train exactly like SP (Adam without ε); at 4x the base width NTK trains like SP with
    the smaller learning rates of the doc's "NTK as SP" rows."""
    with jax.enable_x64(True):
        width, base = 6 * width_mult, 6
        z, x, y = draws(key, n_in=5, n=width, n_out=3)

        def setup(p):
            s = mlp_scales(p, opt, in_size=5, width=width, depth=1, base_width=base)
            params = [(si.init_std * zi[0], si.bias_init_std * zi[1]) for si, zi in zip(s, z)]
            return params, [si.multiplier for si in s], [(si.lr_mult, si.bias_lr_mult) for si in s]

        lr = 0.05
        out = {}
        for p in PARAMETRIZATIONS:
            params, mults, lrs = setup(p)
            lrs = tuple((lr * a, lr * b) for a, b in lrs)
            out[p] = two_layer(train(params, mults, lrs, x, y, opt, 3), mults, x)
        if width_mult == 1:
            np.testing.assert_allclose(out["mup"], out["standard"], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(out["ntk"], out["standard"], rtol=1e-10, atol=1e-12)
        else:
            params, mults, _ = setup("standard")
            m = width_mult
            if opt == "sgd":
                lrs = ((lr, lr), (lr / m, lr))
            else:  # input m^-1/2 (its bias too), readout m^-1, readout bias 1
                lrs = ((lr * m**-0.5, lr * m**-0.5), (lr / m, lr))
            sp_slow = two_layer(train(params, mults, lrs, x, y, opt, 3), mults, x)
            np.testing.assert_allclose(out["ntk"], sp_slow, rtol=1e-10, atol=1e-12)
            assert not np.allclose(out["mup"], out["standard"], rtol=1e-3)
