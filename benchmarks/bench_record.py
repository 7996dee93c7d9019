"""Cost of one NTK record and the float32-vs-float64 error of its spectral observables.

    python benchmarks/bench_record.py                 # pack of 4, M = 128 * 10 = 1280
    python benchmarks/bench_record.py --pack 8 --num-samples 64 --skip-errors
    python benchmarks/bench_record.py --skip-errors --eigh jacobi   # GPU only: cuSOLVER syevj

About 5 minutes on 2 CPU cores (mostly part 2's float64 training); part 1 alone takes seconds.

Part 0 times one NTK record of a pack (the structured NTK, the spectrum and alignments, on device
and batched over the pack, as in training) against one training epoch of the same pack.

Part 1 times `jit(vmap(spectral_record))` on a `(pack, M, M)` float32 batch (one record of a
pack: one `eigh` per member plus the misalignment overlap), and `eigh` alone in float32 and float64.

Part 2 measures the error of the float32 record against a float64 reference on realistic NTKs:
ReLU MLPs (ntkbench.models.MLP, LeCun normal) on MNIST-like synthetic inputs in [0, 1], at
initialization and after some full-batch Adam steps. The misalignment is between the records
before and after the last step. Four pipelines, each against (A) float64 NTK + float64 record:

    B  float64 NTK rounded to float32 -> float32 record   (input rounding + float32 eigensolver)
    C  float32 NTK -> float32 record                       (what the float32 training program does)
    D  float32 NTK -> float64 record                       (would a float64 eigensolver help?)

If C and D agree, the error comes from the float32 NTK, not from the eigensolver.
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

from ntkbench.models import MLP
from ntkbench.observables import cosine_normalize, spectral_record


def _mlp_ntk(model: MLP, x: jax.Array) -> jax.Array:
    """Matrix-form NTK `(N·O, N·O)` by the dense-layer identity (docs/definitions.md §1), HIGHEST precision."""
    dot = lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)

    def one(xi):
        eps = [jnp.zeros(w.shape[0], w.dtype) for w in model.weights]
        _, inputs = model.structured_forward(xi, eps)
        deltas = jax.jacrev(lambda e: model.structured_forward(xi, e)[0])(eps)
        return inputs, deltas  # inputs[l]: (in_l,), deltas[l]: (O, out_l)

    hs, ds = jax.vmap(one)(x)
    n, o = x.shape[0], model.out_size
    K = 0.0
    for h, d in zip(hs, ds):
        d = d.reshape(n * o, -1)
        hh = jnp.repeat(jnp.repeat(dot(h, h.T) + 1.0, o, axis=0), o, axis=1)  # <h_i,h_j> + 1
        K = K + hh * dot(d, d.T)
    return K


def _data(key, n, dim=784, classes=10):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    common = jax.random.uniform(k1, (dim,)) ** 2
    protos = 0.5 * common + 0.5 * jax.random.uniform(k2, (classes, dim)) ** 3
    labels = jax.random.randint(k3, (n,), 0, classes)
    x = jnp.clip(protos[labels] + 0.25 * jax.random.normal(k4, (n, dim)), 0.0, 1.0)
    return x, jax.nn.one_hot(labels, classes)


def _time_all(fns: dict, repeats: int) -> dict:
    """Best wall time of each `fn()`, the calls interleaved so that machine noise hits all alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())  # compile
    best = {name: np.inf for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def bench_cost(pack, m, repeats, implementation=None):
    key = jax.random.key(0)
    j = jax.random.normal(key, (pack, m, m // 2)) + 0.5 * jax.random.normal(key, (pack, 1, m // 2))
    K = jnp.matmul(j, jnp.swapaxes(j, 1, 2), precision=jax.lax.Precision.HIGHEST)
    o = 10 if m % 10 == 0 else 1
    y = jax.nn.one_hot(jnp.arange(m // o) % o, o)
    record = functools.partial(spectral_record, implementation=implementation)
    first = jax.jit(jax.vmap(lambda k, y: record(k, y), in_axes=(0, None)))
    later = jax.jit(jax.vmap(record, in_axes=(0, None, 0, 0)))
    r0 = first(K, y)
    print(f"\n== cost of one record: pack of {pack} NTKs (M = {m}), backend {jax.default_backend()}"
          f", eigh implementation {implementation}, best of {repeats}")
    eigh = jax.jit(functools.partial(jax.lax.linalg.eigh, implementation=implementation))
    cos32 = jax.vmap(cosine_normalize)(K)
    with jax.enable_x64(True):
        cos64 = jnp.asarray(np.asarray(cos32), jnp.float64)
        eigh64 = jax.jit(functools.partial(jax.lax.linalg.eigh, implementation=implementation))
        jax.block_until_ready(eigh64(cos64))  # compile under x64
    fns = {
        "spectral_record float32 (with misalignment)": lambda: later(K, y, r0["eigvecs"],
                                                                     r0["erank"]),
        "spectral_record float32 (first record)": lambda: first(K, y),
        "eigh float32 alone (of the normalized NTK)": lambda: eigh(cos32),
    }
    times = _time_all(fns, repeats)
    with jax.enable_x64(True):
        times.update(_time_all({"eigh float64 alone": lambda: eigh64(cos64)}, repeats))
    for name, t in times.items():
        print(f"  {name:45s} {1e3 * t:9.1f} ms per pack  {1e3 * t / pack:9.1f} ms per member")


def _train(model, x, y, steps, lr=1e-3):
    params = eqx.filter(model, eqx.is_inexact_array)
    opt = optax.adam(lr)
    state = opt.init(params)

    @eqx.filter_jit
    def step(model, state):
        loss_fn = lambda m: optax.softmax_cross_entropy(jax.vmap(m)(x), y).mean()
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, loss

    prev, loss = model, jnp.nan
    for _ in range(steps):
        prev = model
        model, state, loss = step(model, state)
    return prev, model, float(loss)


def _records(K_prev, K, y):
    r0 = spectral_record(K_prev, y)
    r = spectral_record(K, y, r0["eigvecs"], r0["erank"])
    return {k: np.asarray(v, np.float64) for k, v in r.items() if k != "eigvecs"}


def bench_errors(num_samples, cases):
    print(f"\n== float32 vs float64 record on MLP NTKs, M = {num_samples * 10}")
    header = (f"  {'case':30s} {'pipe':4s} {'erank':>9s} {'rel.err erank':>14s} {'abs.err H':>10s}"
              f" {'misalign':>10s} {'abs.err mis':>11s} {'rel.err align':>13s}")
    print(header)
    x_train, y_train = _data(jax.random.key(1), 100)
    x_test, y_test = _data(jax.random.key(2), num_samples)
    for width, depth, steps in cases:
        with jax.enable_x64(True):
            model = MLP(784, 10, width, depth, key=jax.random.key(0), dtype=jnp.float64)
            x64, y64 = x_train.astype(jnp.float64), y_train.astype(jnp.float64)
            prev, model, loss = (model, model, np.nan) if steps == 0 else _train(model, x64, y64,
                                                                               steps)
            xt = x_test.astype(jnp.float64)
            K64 = [np.asarray(jax.jit(_mlp_ntk)(m, xt)) for m in (prev, model)]
            ref = _records(*[jnp.asarray(k) for k in K64], y_test.astype(jnp.float64))
        to32 = lambda m: jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a)
                                      else a, m)
        K32 = [jax.jit(_mlp_ntk)(to32(m), x_test) for m in (prev, model)]
        pipes = {"B": _records(*[jnp.asarray(k, jnp.float32) for k in K64], y_test),
                 "C": _records(*K32, y_test)}
        with jax.enable_x64(True):
            pipes["D"] = _records(*[jnp.asarray(np.asarray(k), jnp.float64) for k in K32],
                                  y_test.astype(jnp.float64))
        name = f"w{width} d{depth} " + ("init" if steps == 0 else f"{steps} steps L={loss:.1e}")
        print(f"  {name:30s} {'A':4s} {ref['erank']:9.4f} {'(ref)':>14s} {'':>10s}"
              f" {ref['eigvec_misalignment']:10.2e}")
        for p, r in pipes.items():
            print(f"  {'':30s} {p:4s} {r['erank']:9.4f}"
                  f" {abs(r['erank'] / ref['erank'] - 1):14.1e}"
                  f" {abs(r['entropy'] - ref['entropy']):10.1e}"
                  f" {r['eigvec_misalignment']:10.2e}"
                  f" {abs(r['eigvec_misalignment'] - ref['eigvec_misalignment']):11.1e}"
                  f" {abs(r['label_alignment'] / ref['label_alignment'] - 1):13.1e}")


def bench_record_vs_epoch(pack: int, num_samples: int, width: int, repeats: int) -> None:
    """Part 0: one NTK record of a pack (structured NTK + spectrum + alignments, on device,
    batched) against one training epoch of the same pack (full-batch Adam on 100 digits)."""
    import dataclasses

    from ntkbench import config as cfg
    from ntkbench import ensemble
    from ntkbench._datasets import load_dataset
    from ntkbench._sweep import build_data, build_models, ntk_test_indices
    from ntkbench._training import PackProgram
    from ntkbench.recording import make_record

    c = cfg.from_config_dict({**cfg.get_config("quick").to_dict(), "widths": (width,),
                              "num_seeds": pack, "n_test": num_samples, "ntk_every": 1})
    data = load_dataset("digits")
    p = ensemble.plan(c, data.input_size, data.num_classes).packs[0]
    model = build_models(c, p, data.input_size, data.input_shape, data.num_classes)
    pdata = build_data(c, p, data, ntk_test_indices(c, data))
    plain = PackProgram(dataclasses.replace(c, ntk_every=0))
    recorded = PackProgram(c, *make_record(c, data.num_classes))
    epochs = 10

    def run(prog):
        state = prog.init_state(model)
        jax.block_until_ready(prog.train_chunk(pdata, state, epochs))  # compile
        times = []
        for _ in range(repeats):
            state = prog.init_state(model)
            t0 = time.perf_counter()
            jax.block_until_ready(prog.train_chunk(pdata, state, epochs))
            times.append(time.perf_counter() - t0)
        return float(np.median(times)) / epochs

    t_epoch = run(plain)
    t_both = run(recorded)
    t_record = t_both - t_epoch
    print(f"\n== part 0: record vs epoch (pack {pack} x width {width}, depth 3, 100 digits, "
          f"NTK on {num_samples} samples: M = {10 * num_samples}) ==")
    print(f"one training epoch of the pack: {t_epoch * 1e3:8.2f} ms")
    print(f"one NTK record of the pack:     {t_record * 1e3:8.2f} ms  "
          f"= {t_record / t_epoch:.1f} training epochs")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=int, default=4, help="members per pack (vmapped)")
    parser.add_argument("--num-samples", type=int, default=128, help="N; M = 10 N")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-errors", action="store_true", help="only time the record")
    parser.add_argument("--steps", type=int, default=100, help="Adam steps for trained NTKs")
    parser.add_argument("--width", type=int, default=256, help="MLP width of part 0")
    parser.add_argument("--eigh", choices=["default", "qr", "jacobi"], default="default",
                        help="eigensolver of part 1 (jacobi: GPU only)")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    bench_record_vs_epoch(args.pack, args.num_samples, args.width, args.repeats)
    impl = {"default": None, "qr": jax.lax.linalg.EighImplementation.QR,
            "jacobi": jax.lax.linalg.EighImplementation.JACOBI}[args.eigh]
    bench_cost(args.pack, 10 * args.num_samples, args.repeats, impl)
    if not args.skip_errors:
        cases = [(8, 4, 0), (8, 4, args.steps), (256, 3, 0), (256, 3, args.steps),
                 (1024, 3, args.steps)]
        bench_errors(args.num_samples, cases)


if __name__ == "__main__":
    main()
