"""Matrix-free NTK records (`ntkbench._record.matrix_free`): their error and their cost.

    python benchmarks/bench_matrix_free.py --part errors   # error vs settings, M = 1280, 2560
    python benchmarks/bench_matrix_free.py --part products # structured vs jvp+vjp products
    python benchmarks/bench_matrix_free.py --part cost     # matrix-free vs exact, M = 1280, 2560
    python benchmarks/bench_matrix_free.py --part large    # matrix-free at M = 20,000
    python benchmarks/bench_matrix_free.py                 # all three

Realistic NTKs: ReLU MLPs (`ntkbench.models.MLP`, depth 3, LeCun normal) with 64 inputs and 10
logits on scikit-learn digits (pixels / 16, in [0, 1]), at initialization and after 50 and 300
full-batch Adam steps (lr 1e-3) on 500 training images; the NTK on the first N test images.

Part `errors`: for every NTK the exact values come from `spectral_record` on the float64 NTK
(and `1 − <Θ, Θ₀>/(‖Θ‖‖Θ₀‖)` in float64 against the NTK at initialization). Each setting is
run with `--trials` independent keys through `record_from_products`, the products taken from
the formed float32 NTK (the same operator as the structured product to float32 rounding, which
tests/test_matrix_free.py checks; a dense product is ~100x cheaper at these M, so many trials
fit). Printed per setting, averaged over the NTKs: the mean standard error, the RMS error, the
mean |error| / stderr, the worst |mean error| / (stderr/sqrt(trials)) (a bias detector), and
the fraction of trials with the exact value within 2 and within `COVERAGE_Z` standard errors,
and the 95th percentile of |error| / stderr over all trials of all NTKs (the half-width, in
standard errors, that an interval needs to cover 95%: `COVERAGE_Z` is set from it); plus the
cost in NTK-vector products.

Part `products`: one NTK-vector product (40 vectors vmapped, as in the Lanczos runs) from the
structured features against jvp + vjp of one linearization, and their one-off setups.

Part `cost`: wall time of one record per member, matrix-free (`matrix_free_record`, structured
products) against exact (structured NTK + `spectral_record`), interleaved in one process.

Part `large`: `matrix_free_record` at N = 2000 (M = 20,000) inputs made from the digits images
and their 4 one-pixel shifts (1797 · 5 = 8985 images; the first 2000 of a fixed permutation).
"""

from __future__ import annotations

import argparse
import functools
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntkbench import kernels
from ntkbench._record.matrix_free import (
    COVERAGE_Z,
    DEFAULT_NUM_DEFLATE,
    DEFAULT_NUM_FROBENIUS_PROBES,
    DEFAULT_NUM_PROBES,
    DEFAULT_NUM_STEPS,
    matrix_free_record,
    record_from_products,
)
from ntkbench.models import MLP
from ntkbench.observables import spectral_record

NUM_CLASSES = 10


# ------------------------------------------------------------------------------------------------
# Data and models
# ------------------------------------------------------------------------------------------------


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as float32 `(1797, 64)` in [0, 1] and int labels."""
    from sklearn.datasets import load_digits

    b = load_digits()
    return (b.data / 16.0).astype(np.float32), b.target.astype(np.int32)


def shifted_digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` inputs from the digits images and their 4 one-pixel shifts (zero fill)."""
    x, y = digits()
    img = x.reshape(-1, 8, 8)
    out = [img]
    for axis, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
        s = np.roll(img, step, axis=axis)
        edge = [slice(None)] * 3
        edge[axis] = 0 if step == 1 else -1
        s[tuple(edge)] = 0.0
        out.append(s)
    xs = np.concatenate(out).reshape(-1, 64)
    ys = np.tile(y, 5)
    perm = np.random.default_rng(0).permutation(len(xs))[:n]
    return xs[perm], ys[perm]


def train(model, x, y, steps: int, lr: float = 1e-3):
    """Full-batch Adam on softmax cross-entropy."""
    params = eqx.filter(model, eqx.is_inexact_array)
    opt = optax.adam(lr)
    state = opt.init(params)

    @eqx.filter_jit
    def step(m, state):
        loss_fn = lambda m: optax.softmax_cross_entropy(jax.vmap(m)(x), y).mean()
        loss, grads = eqx.filter_value_and_grad(loss_fn)(m)
        updates, state = opt.update(grads, state, eqx.filter(m, eqx.is_inexact_array))
        return eqx.apply_updates(m, updates), state, loss

    loss = jnp.nan
    for _ in range(steps):
        model, state, loss = step(model, state)
    return model, float(loss)


def _to64(model):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)


def realistic_ntks(num_samples: int, widths, steps_list, depth: int = 3):
    """`{(width, steps): (K64 (M, M) numpy float64, K32 (M, M) float32 jax, loss)}`."""
    x, labels = digits()
    perm = np.random.default_rng(0).permutation(len(x))
    train_idx, test_idx = perm[:500], perm[500 : 500 + num_samples]
    xtr, ytr = jnp.asarray(x[train_idx]), jax.nn.one_hot(labels[train_idx], NUM_CLASSES)
    xte = jnp.asarray(x[test_idx])
    yte = jax.nn.one_hot(labels[test_idx], NUM_CLASSES)
    ntk32 = jax.jit(lambda m, a: kernels.as_matrix(kernels.ntk(m, a)))
    out = {}
    for w in widths:
        m0 = MLP(64, NUM_CLASSES, w, depth, key=jax.random.key(0))
        for s in steps_list:
            m, loss = (m0, np.nan) if s == 0 else train(m0, xtr, ytr, s)
            with jax.enable_x64(True):
                k64 = np.asarray(
                    jax.jit(lambda m, a: kernels.as_matrix(kernels.ntk(m, a)))(
                        _to64(m), jnp.asarray(x[test_idx], jnp.float64)
                    )
                )
            out[(w, s)] = (k64, ntk32(m, xte), loss)
    return out, yte


def exact_values(k64: np.ndarray, y, k0_64: np.ndarray | None) -> dict[str, float]:
    """Float64 reference: `spectral_record` and the kernel distance to `k0_64`."""
    with jax.enable_x64(True):
        r = spectral_record(jnp.asarray(k64), jnp.asarray(y, jnp.float64))
    out = {k: float(r[k]) for k in ("trace", "entropy", "erank", "label_alignment")}
    if k0_64 is not None:
        out["kernel_distance"] = 1.0 - float(
            np.sum(k64 * k0_64) / (np.linalg.norm(k64) * np.linalg.norm(k0_64))
        )
    return out


# ------------------------------------------------------------------------------------------------
# Part: errors
# ------------------------------------------------------------------------------------------------

ERROR_SETTINGS = {
    # name: (num_probes, num_steps, num_deflate, num_frobenius_probes)
    "plain SLQ p32 s40": (32, 40, 0, 96),
    "defl10 p20 s50": (20, 50, 10, 96),
    "defl20 p20 s30": (20, 30, 20, 96),
    "defl20 p20 s40": (20, 40, 20, 96),
    "defl20 p20 s50 (default)": (20, 50, 20, 96),
    "defl20 p20 s60": (20, 60, 20, 96),
    "defl20 p40 s50": (40, 50, 20, 96),
    "defl30 p20 s50": (20, 50, 30, 96),
    "frob48": (20, 50, 20, 48),
    "frob192": (20, 50, 20, 192),
}


def products_per_record(num_probes, num_steps, num_deflate, num_frob, reference: bool) -> int:
    slq = (num_deflate + num_probes) * num_steps + (3 * (num_deflate + 5) if num_deflate else 0)
    return slq + num_frob * (2 if reference else 1)


def _dense_record_fn(setting, n, o, with_ref: bool):
    num_probes, num_steps, num_deflate, num_frob = setting

    def one(key, k, k0, y):
        vp = lambda v: jnp.matmul(k, v.reshape(-1), precision="highest").reshape(n, o)
        vp0 = lambda v: jnp.matmul(k0, v.reshape(-1), precision="highest").reshape(n, o)
        return record_from_products(
            jnp.diagonal(k).reshape(n, o),
            vp,
            y,
            key=key,
            num_probes=num_probes,
            num_steps=num_steps,
            num_deflate=num_deflate,
            num_frobenius_probes=num_frob,
            vp_ref=vp0 if with_ref else None,
        )

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


QUANTITIES = ("entropy", "erank", "label_alignment", "kernel_distance")


def bench_errors(num_samples: int, widths, steps_list, trials: int, settings: dict) -> None:
    t0 = time.perf_counter()
    ntks, y = realistic_ntks(num_samples, widths, steps_list)
    m = num_samples * NUM_CLASSES
    print(
        f"\n== errors of the matrix-free record, M = {m}, {len(ntks)} NTKs (widths {widths}, "
        f"Adam steps {steps_list}), {trials} trials each ({time.perf_counter() - t0:.0f} s to "
        "build the NTKs)"
    )
    exact = {}
    for (w, s), (k64, _, loss) in ntks.items():
        exact[(w, s)] = exact_values(k64, y, None if s == 0 else ntks[(w, 0)][0])
        e = exact[(w, s)]
        print(
            f"  w{w:<4d} steps {s:3d} loss {loss:8.1e}  erank {e['erank']:8.3f}  H {e['entropy']:.4f}"
            f"  align {e['label_alignment']:.4f}  dist {e.get('kernel_distance', np.nan):.2e}"
        )
    keys = jax.random.split(jax.random.key(123), trials)
    for name, setting in settings.items():
        t1 = time.perf_counter()
        stats = {q: [] for q in QUANTITIES}
        z_all = {q: [] for q in QUANTITIES}  # |error| / stderr of every trial of every NTK
        for (w, s), (_, k32, _) in ntks.items():
            with_ref = s != 0
            fn = _dense_record_fn(setting, num_samples, NUM_CLASSES, with_ref)
            rec = jax.device_get(fn(keys, k32, ntks[(w, 0)][1], y))
            for q in QUANTITIES:
                if q == "kernel_distance" and not with_ref:
                    continue
                est, se = np.asarray(rec[q], np.float64), np.asarray(rec[q + "_stderr"], np.float64)
                err = est - exact[(w, s)][q]
                z_all[q].append(np.abs(err) / se)
                stats[q].append(
                    (
                        np.mean(se) / abs(exact[(w, s)][q]),
                        np.sqrt(np.mean(err**2)) / abs(exact[(w, s)][q]),
                        np.mean(np.abs(err) / se),
                        abs(np.mean(err)) / (np.mean(se) / np.sqrt(trials)),
                        np.mean(np.abs(err) <= 2 * se),
                        np.mean(np.abs(err) <= COVERAGE_Z * se),
                    )
                )
        cost = products_per_record(*setting, reference=False)
        print(
            f"\n  {name}: {cost} products per record (+{setting[3]} with a reference); "
            f"{time.perf_counter() - t1:.0f} s"
        )
        print(
            f"    {'quantity':16s} {'rel.stderr':>10s} {'rel.RMS err':>11s} {'|err|/se':>9s} "
            f"{'max bias z':>10s} {'within 2se':>10s} {f'within {COVERAGE_Z}se':>12s} "
            f"{'z for 95%':>9s} {'trials':>6s}"
        )
        for q, rows in stats.items():
            a = np.asarray(rows)
            z = np.concatenate(z_all[q])
            print(
                f"    {q:16s} {a[:, 0].mean():10.2e} {a[:, 1].mean():11.2e} {a[:, 2].mean():9.2f} "
                f"{a[:, 3].max():10.2f} {a[:, 4].mean():10.3f} {a[:, 5].mean():12.3f} "
                f"{np.quantile(z, 0.95):9.2f} {z.size:6d}"
            )


# ------------------------------------------------------------------------------------------------
# Part: cost
# ------------------------------------------------------------------------------------------------


def _time_all(fns: dict, repeats: int) -> dict:
    """Best wall time of each `fn()`, interleaved so that machine noise hits all alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())  # compile
    best = {name: np.inf for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def _exact_record(model, x, y):
    k = kernels.as_matrix(kernels.ntk(model, x))
    r = spectral_record(k, y)
    return {k_: v for k_, v in r.items() if k_ != "eigvecs"}


def bench_products(sizes, widths, repeats: int, num_vectors: int = 40) -> None:
    """NTK-vector products: structured (features `h`, `δ`) vs implicit (jvp + vjp)."""
    x_all, _ = shifted_digits(max(sizes) // NUM_CLASSES)
    print(
        f"\n== NTK-vector products, backend {jax.default_backend()}, best of {repeats}: "
        f"'{num_vectors} vp' = {num_vectors} products vmapped (as in the Lanczos runs), timed as "
        f"t({2 * num_vectors}) - t({num_vectors}) so that the one-off feature pass or "
        "linearization cancels; 'diag' = the diagonal"
    )
    print(
        f"  {'M':>6s} {'width':>5s} {'structured diag':>15s} {f'structured {num_vectors} vp':>16s} "
        f"{'implicit diag':>13s} {f'implicit {num_vectors} vp':>14s} {'vp impl/struct':>14s}"
    )

    def diag(method, m, x):
        return kernels.ntk_diagonal_and_vp(m, x, method=method)[0]

    def products(method, m, x, v):
        _, vp = kernels.ntk_diagonal_and_vp(m, x, method=method)
        return jax.vmap(vp)(v)

    for m_size in sizes:
        n = m_size // NUM_CLASSES
        x = jnp.asarray(x_all[:n])
        v = jax.random.normal(jax.random.key(0), (2 * num_vectors, n, NUM_CLASSES))
        for w in widths:
            model = MLP(64, NUM_CLASSES, w, 3, key=jax.random.key(0))
            fns = {}
            for method in ("structured", "implicit"):
                d_fn = jax.jit(functools.partial(diag, method))
                p_fn = jax.jit(functools.partial(products, method))
                fns[method + " diag"] = functools.partial(d_fn, model, x)
                fns[method + " 1x"] = functools.partial(p_fn, model, x, v[:num_vectors])
                fns[method + " 2x"] = functools.partial(p_fn, model, x, v)
            t = _time_all(fns, repeats)
            sv = t["structured 2x"] - t["structured 1x"]
            iv = t["implicit 2x"] - t["implicit 1x"]
            print(
                f"  {m_size:6d} {w:5d} {t['structured diag']:15.3f} {sv:16.3f} "
                f"{t['implicit diag']:13.3f} {iv:14.3f} {iv / sv:14.2f}",
                flush=True,
            )


def bench_cost(sizes, widths, repeats: int) -> None:
    x_all, labels = digits()
    print(
        f"\n== cost of one record per member, backend {jax.default_backend()}, best of "
        f"{repeats}; matrix-free at the defaults (probes {DEFAULT_NUM_PROBES}, steps "
        f"{DEFAULT_NUM_STEPS}, deflate {DEFAULT_NUM_DEFLATE}, Frobenius "
        f"{DEFAULT_NUM_FROBENIUS_PROBES})"
    )
    print(
        f"  {'M':>6s} {'width':>5s} {'exact (s)':>10s} {'matrix-free (s)':>15s} "
        f"{'mf + reference (s)':>18s} {'mf / exact':>10s}"
    )
    exact = jax.jit(_exact_record)
    mf = jax.jit(lambda m, x, y, key: matrix_free_record(m, x, y, key=key))
    mf_ref = jax.jit(lambda m, r, x, y, key: matrix_free_record(m, x, y, key=key, reference=r))
    for m_size in sizes:
        n = m_size // NUM_CLASSES
        x = jnp.asarray(x_all[:n])
        y = jax.nn.one_hot(labels[:n], NUM_CLASSES)
        for w in widths:
            model = MLP(64, NUM_CLASSES, w, 3, key=jax.random.key(0))
            ref = MLP(64, NUM_CLASSES, w, 3, key=jax.random.key(1))
            key = jax.random.key(2)
            t = _time_all(
                {
                    "exact": functools.partial(exact, model, x, y),
                    "mf": functools.partial(mf, model, x, y, key),
                    "mf_ref": functools.partial(mf_ref, model, ref, x, y, key),
                },
                repeats,
            )
            print(
                f"  {m_size:6d} {w:5d} {t['exact']:10.3f} {t['mf']:15.3f} {t['mf_ref']:18.3f} "
                f"{t['mf'] / t['exact']:10.2f}",
                flush=True,
            )


# ------------------------------------------------------------------------------------------------
# Part: large
# ------------------------------------------------------------------------------------------------


def bench_large(num_samples: int, widths, repeats: int) -> None:
    xs, ys = shifted_digits(num_samples)
    x, y = jnp.asarray(xs), jax.nn.one_hot(ys, NUM_CLASSES)
    m_size = num_samples * NUM_CLASSES
    print(
        f"\n== matrix-free record at M = {m_size} (N = {num_samples} digits images and one-pixel "
        f"shifts), backend {jax.default_backend()}, best of {repeats}, per member"
    )
    mf = jax.jit(lambda m, x, y, key: matrix_free_record(m, x, y, key=key))
    mf_ref = jax.jit(lambda m, r, x, y, key: matrix_free_record(m, x, y, key=key, reference=r))
    for w in widths:
        model = MLP(64, NUM_CLASSES, w, 3, key=jax.random.key(0))
        ref = MLP(64, NUM_CLASSES, w, 3, key=jax.random.key(1))
        key = jax.random.key(2)
        t = _time_all(
            {
                "mf": functools.partial(mf, model, x, y, key),
                "mf_ref": functools.partial(mf_ref, model, ref, x, y, key),
            },
            repeats,
        )
        rec = mf(model, x, y, key)
        print(
            f"  width {w:4d}: {t['mf']:8.2f} s (with reference {t['mf_ref']:8.2f} s, ratio "
            f"{t['mf_ref'] / t['mf']:.2f});  erank {float(rec['erank']):.2f} ± "
            f"{float(rec['erank_stderr']):.2f}, align {float(rec['label_alignment']):.4f} ± "
            f"{float(rec['label_alignment_stderr']):.1e}",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", choices=("errors", "products", "cost", "large", "all"), default="all")
    p.add_argument("--sizes", type=int, nargs="+", default=[1280, 2560], help="M for errors/cost")
    p.add_argument("--widths", type=int, nargs="+", default=None)
    p.add_argument("--steps", type=int, nargs="+", default=[0, 50, 300], help="Adam steps")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--settings", nargs="+", default=None, help="names from ERROR_SETTINGS")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--large-samples", type=int, default=2000)
    args = p.parse_args()
    if args.part in ("errors", "all"):
        settings = (
            ERROR_SETTINGS
            if args.settings is None
            else {k: v for k, v in ERROR_SETTINGS.items() if any(s in k for s in args.settings)}
        )
        for m_size in args.sizes:
            bench_errors(
                m_size // NUM_CLASSES,
                args.widths or [16, 64, 256, 512],
                args.steps,
                args.trials,
                settings,
            )
    if args.part in ("products", "all"):
        bench_products(
            args.sizes + [10 * args.large_samples], args.widths or [64, 256], args.repeats
        )
    if args.part in ("cost", "all"):
        bench_cost(args.sizes, args.widths or [64, 256], args.repeats)
    if args.part in ("large", "all"):
        bench_large(args.large_samples, args.widths or [64, 256], args.repeats)


if __name__ == "__main__":
    main()
