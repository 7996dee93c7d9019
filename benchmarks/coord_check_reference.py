"""Coordinate check of the three parametrizations (docs/definitions.md §15, "Coordinate check").

    python benchmarks/coord_check_reference.py [--seeds 3] [--adam-lr 1e-2] [--sgd-lr 0.5]

A ReLU MLP with 3 hidden layers of width 64 … 2048 (base width 64) trains for 5 full-batch steps
on a fixed batch of 64 scikit-learn digits (pixels / 16), cross-entropy loss, with Adam and with
plain SGD, in each parametrization; the scales come from `ntkbench.parametrization` alone. For
every layer's pre-activation (`h1`, `h2`, `h3`) and the logits it prints, at steps t = 0 … 5
(t = 0 is the initialization), the mean absolute coordinate `mean|x_t|` (microsoft/mup's
`coord_check` "l1") at every width, averaged over seeds, and the least-squares slope of
`log mean|x_t|` against `log width`; then the same slope for the change since initialization,
`mean|x_t − x_0|` (the quantity of Tensor Programs V, Fig. 5, which plots its standard
deviation). μP should give slopes near 0 for t > 0 in every layer. The learning rates are large
on purpose (microsoft/mup's README: a large rate shows exploding coordinates sooner).

Last, at initialization, the slope in width of the trace of every layer's weight part of the
parameter-space NTK `J_l J_lᵀ` and of the learning-rate-weighted `λ_l J_l J_lᵀ`
(docs/definitions.md §15, "Which kernel"). About a minute of CPU.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from ntkbench.parametrization import PARAMETRIZATIONS, mlp_scales  # noqa: E402

WIDTHS = (64, 128, 256, 512, 1024, 2048)
BASE_WIDTH, DEPTH, BATCH, STEPS = 64, 3, 64, 5
NAMES = [f"h{l + 1}" for l in range(DEPTH)] + ["logits"]


def data():
    """A fixed batch of digits: `(BATCH, 64)` pixels in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    idx = np.random.default_rng(0).choice(len(x), BATCH, replace=False)
    return jnp.asarray(x[idx] / 16.0, jnp.float32), jnp.asarray(y[idx])


def init(key, scales, width):
    """Weights `init_std · N(0, 1)` at their true shape, zero biases."""
    sizes = [64] + [width] * DEPTH + [10]
    keys = jax.random.split(key, DEPTH + 1)
    return [
        (s.init_std * jax.random.normal(k, (sizes[l + 1], sizes[l])), jnp.zeros(sizes[l + 1]))
        for l, (k, s) in enumerate(zip(keys, scales))
    ]


def forward(params, mults, x):
    """Logits and every layer's output `u = multiplier · W h + bias_multiplier · b`."""
    h, outs = x, []
    for l, ((w, b), (mw, mb)) in enumerate(zip(params, mults)):
        u = mw * (h @ w.T) + mb * b
        outs.append(u)
        h = jax.nn.relu(u) if l < DEPTH else u
    return outs


def run(params, mults, lrs, x, y, opt: str, lr: float):
    """`STEPS` steps; returns `mean|x_t|` and `mean|x_t − x_0|` per layer, shape (STEPS+1, L)."""
    base = optax.scale_by_adam() if opt == "adam" else optax.identity()
    state = base.init(params)

    def loss(p):
        logits = forward(p, mults, x)[-1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    outs0 = forward(params, mults, x)
    size, change = [], []
    for t in range(STEPS + 1):
        outs = forward(params, mults, x)
        size.append(jnp.stack([jnp.abs(o).mean() for o in outs]))
        change.append(jnp.stack([jnp.abs(o - o0).mean() for o, o0 in zip(outs, outs0)]))
        if t == STEPS:
            break
        grads = jax.grad(loss)(params)
        updates, state = base.update(grads, state, params)
        params = jax.tree.map(lambda p, u, r: p - lr * r * u, params, updates, lrs)
    return jnp.stack(size), jnp.stack(change)


# One compiled program per (width, optimizer): the scales are traced arguments, so the three
# parametrizations share it.
_RUN = jax.jit(jax.vmap(run, in_axes=(0, None, None, None, None, None, None)),
               static_argnums=(5, 6))


def measure(par: str, opt: str, lr: float, seeds: int, x, y):
    """`(size, change)`, each `(widths, STEPS+1, L)`, averaged over seeds."""
    size, change = [], []
    for width in WIDTHS:
        scales = mlp_scales(par, opt, in_size=64, width=width, depth=DEPTH, base_width=BASE_WIDTH)
        mults = [(s.multiplier, s.bias_multiplier) for s in scales]
        lrs = [(s.lr_mult, s.bias_lr_mult) for s in scales]
        keys = jax.random.split(jax.random.key(1), seeds)
        params = jax.vmap(lambda k: init(k, scales, width))(keys)
        s, c = _RUN(params, mults, lrs, x, y, opt, lr)
        size.append(np.asarray(s).mean(0))
        change.append(np.asarray(c).mean(0))
    return np.stack(size), np.stack(change)


def kernel_slopes(par: str, opt: str, x):
    """Per layer, the slopes in width of the traces at initialization of the weights' `J_l J_lᵀ`
    and `λ_l J_l J_lᵀ` (docs/definitions.md §15, "Which kernel"), from the dense-layer identity
    `tr J_l J_lᵀ = a_l² Σ_i |h_i|² Σ_a |δ_ia|²` (docs/definitions.md §1)."""

    def one(params, mults, xi):
        eps = [jnp.zeros(w.shape[0]) for w, _ in params]

        def f(eps):
            h, inputs = xi, []
            for l, ((w, b), (mw, mb), e) in enumerate(zip(params, mults, eps)):
                inputs.append(h)
                u = mw * (w @ h) + mb * b + e
                h = jax.nn.relu(u) if l < DEPTH else u
            return h, inputs

        delta = jax.jacobian(lambda e: f(e)[0])(eps)  # per layer: (logits, units)
        return [jnp.sum(h**2) * jnp.sum(d**2) for h, d in zip(f(eps)[1], delta)]

    plain, weighted = [], []
    for width in WIDTHS:
        scales = mlp_scales(par, opt, in_size=64, width=width, depth=DEPTH, base_width=BASE_WIDTH)
        mults = [(s.multiplier, s.bias_multiplier) for s in scales]
        params = init(jax.random.key(2), scales, width)
        traces = jax.vmap(lambda xi: one(params, mults, xi))(x[:16])
        plain.append([float(s.multiplier) ** 2 * float(t.sum()) for s, t in zip(scales, traces)])
        weighted.append([float(s.lr_mult) * p for s, p in zip(scales, plain[-1])])
    fit = lambda v: float(np.polyfit(np.log(WIDTHS), np.log(v), 1)[0])
    return [fit(c) for c in np.array(plain).T], [fit(c) for c in np.array(weighted).T]


def slope(values):
    """Least-squares slope of `log values` against `log width` (NaN where a value is 0)."""
    v = np.asarray(values, np.float64)
    if np.any(v <= 0) or not np.all(np.isfinite(v)):
        return float("nan")
    return float(np.polyfit(np.log(WIDTHS), np.log(v), 1)[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--adam-lr", type=float, default=1e-2)
    ap.add_argument("--sgd-lr", type=float, default=0.5)
    args = ap.parse_args(argv)
    x, y = data()
    start = time.perf_counter()
    print(f"widths {WIDTHS}, base width {BASE_WIDTH}, {DEPTH} hidden layers, batch {BATCH}, "
          f"{args.seeds} seeds. Rows t: mean|x_t| per width, its log-log slope and that of "
          f"mean|x_t - x_0| (dslope); rows dt: mean|x_t - x_0|")
    summary = {}
    for opt, lr in (("adam", args.adam_lr), ("sgd", args.sgd_lr)):
        for par in PARAMETRIZATIONS:
            size, change = measure(par, opt, lr, args.seeds, x, y)
            print(f"\n{par} / {opt} lr={lr:g}")
            print(f"{'layer':6} {'t':>3} " + " ".join(f"{w:>9}" for w in WIDTHS)
                  + f" {'slope':>7} {'dslope':>7}")
            for l, name in enumerate(NAMES):
                for t in range(STEPS + 1):
                    s, d = slope(size[:, t, l]), slope(change[:, t, l]) if t else float("nan")
                    print(f"{name:6} {t:>3} " + " ".join(f"{v:9.3g}" for v in size[:, t, l])
                          + f" {s:7.2f} {d:7.2f}")
                    summary[par, opt, name, t] = (s, d)
                for t in (1, STEPS):
                    print(f"{name:6} {'d' + str(t):>3} "
                          + " ".join(f"{v:9.3g}" for v in change[:, t, l]))
    for t in (1, STEPS):
        print(f"\nslopes at t = {t}: d log mean|x_t| / d log width "
              f"(in brackets: d log mean|x_t - x_0| / d log width)")
        print(f"{'param':9} {'opt':5} " + " ".join(f"{n:>15}" for n in NAMES))
        for par in PARAMETRIZATIONS:
            for opt in ("adam", "sgd"):
                print(f"{par:9} {opt:5} " + " ".join(
                    "{:6.2f} ({:5.2f})".format(*summary[par, opt, n, t]) for n in NAMES))
    print("\nkernels at initialization: slope in width of the trace of each layer's weight part "
          "J_l J_l^T (in brackets: of lr_mult * J_l J_l^T, the lr-weighted kernel)")
    print(f"{'param':9} {'opt':5} " + " ".join(f"{n:>15}" for n in ["input", "hidden 2",
                                                                     "hidden 3", "readout"]))
    for par in PARAMETRIZATIONS:
        for opt in ("adam", "sgd"):
            plain, weighted = kernel_slopes(par, opt, x)
            print(f"{par:9} {opt:5} " + " ".join(f"{a:6.2f} ({b:5.2f})"
                                                 for a, b in zip(plain, weighted)))
    print(f"\n{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
