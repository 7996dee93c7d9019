"""Cost of one NTK record's spectral step, by method and part, and its float32-vs-float64 error.

    python benchmarks/bench_record.py                      # pack of 4, M = 128 * 10 = 1280
    python benchmarks/bench_record.py --large              # M = 2560 (N = 256)
    python benchmarks/bench_record.py --skip-errors --skip-epoch --repeats 3
    python benchmarks/bench_record.py --coretype Haswell   # eigh with OPENBLAS_CORETYPE as is,
                                                           # unset, and =Haswell (subprocesses)
    python benchmarks/bench_record.py --skip-errors --eigh jacobi   # GPU only: cuSOLVER syevj

Every time is per member, the best of `--repeats` interleaved calls of one jitted, vmapped
function of a pack (as in training), measured in ONE process so that the ratios hold on a noisy
machine.

Part 0 (skip with --skip-epoch) times one NTK record of today's training program against one
training epoch of the same pack.

Part 1 times the spectral step at M = 10 N on MLP NTKs of digits (width --width, --steps Adam
steps; the previous record is one step earlier): the NTK itself; today's step (`eigh` of `Θ̃` +
the full `(M, M) @ (M, M)` overlap, `spectral_record`) and its parts; each `cosine_spectrum`
method with `top_misalignment`, and the parts of `HOST_LAPACK` (eigenvalues alone; top vectors;
misalignment); the floor (LAPACK `syevd` with JOBZ='N', optimal workspace, on the host; and
scipy's wrapper with its default, too small, workspace); the speedup of each step over today's;
the carry per member (floats) old vs new.

Part 2 (skip with --skip-errors) measures, on ReLU-MLP NTKs of digits at init and trained, the
error of each float32 step against float64 `eigh` of the same float32 NTK: entropy and erank
(relative), misalignment with `n = round(erank)` (absolute); and the `dtype=float64` host step.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntkbench import kernels
from ntkbench._observables.alignment import misalignment_from_eigvecs
from ntkbench._observables.spectral import cosine_eigh
from ntkbench._record.host_lapack import host_cosine, host_eigenvalues_floor
from ntkbench._record.spectrum import cosine_spectrum, top_misalignment
from ntkbench.models import MLP, stack
from ntkbench.observables import spectral_record


def _digits(n: int, offset: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = jnp.asarray(d.data[offset:offset + n] / 16.0, jnp.float32)
    return x, jax.nn.one_hot(jnp.asarray(d.target[offset:offset + n]), 10)


def _mlp_ntk_pair(width, depth, steps, n, key, lr=1e-2, dtype=jnp.float32):
    """NTKs `(10n, 10n)` of an MLP on n digits after `steps` and `steps + 1` Adam steps."""
    model = MLP(64, 10, width, depth, key=jax.random.key(key), dtype=dtype)
    x, y = _digits(300, 1000)
    x, y = x.astype(dtype), y.astype(dtype)
    x_test = _digits(n)[0].astype(dtype)
    opt = optax.adam(lr)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state):
        loss = lambda m: optax.softmax_cross_entropy(jax.vmap(m)(x), y).mean()
        grads = eqx.filter_grad(loss)(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state

    ntk = eqx.filter_jit(lambda m: kernels.as_matrix(kernels.ntk(m, x_test)))
    for _ in range(steps):
        model, state = step(model, state)
    before = ntk(model)
    model, state = step(model, state)
    return before, ntk(model), model, x_test


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


def blas_report() -> str:
    """Which BLAS/LAPACK the host path (and jaxlib's CPU LAPACK kernels) use."""
    lines = [f"jax {jax.__version__}, devices {jax.devices()}"]
    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS, which threadpoolctl then lists)

    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            lines.append(f"  {info['internal_api']} {info.get('version')} "
                         f"arch={info.get('architecture')} threads={info['num_threads']} "
                         f"{os.path.basename(info['filepath'])}")
    except ImportError:
        lines.append("  (pip install threadpoolctl to list the BLAS libraries)")
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))}
    lines.append(f"  BLAS environment: {env or 'none set'}")
    lines.append("  jax's CPU LAPACK kernels (eigh) and the host spectral step use scipy's "
                 "OpenBLAS (scipy.linalg.cython_lapack, scipy.libs/); numpy's own OpenBLAS "
                 "(numpy.libs/) is not used by either; XLA's matmuls use XLA's own CPU kernels")
    return "\n".join(lines)


def _today(K, y, prev, prev_erank, implementation=None):
    r = spectral_record(K, y, prev, prev_erank, implementation=implementation)
    return r["eigvecs"], r["erank"], r["eigvec_misalignment"]


def _new(K, prev, prev_erank, *, method, k, dtype=jnp.float32):
    s = cosine_spectrum(K, k, method=method, prev_vectors=prev, prev_erank=prev_erank,
                        dtype=dtype)
    return s.vectors, s.erank, top_misalignment(prev, prev_erank, s.vectors), s.iterations


def bench_cost(pack, num_samples, width, steps, k, repeats, implementation=None):
    m = 10 * num_samples
    pairs = [_mlp_ntk_pair(width, 3, steps, num_samples, key=i) for i in range(pack)]
    K0 = jnp.stack([p[0] for p in pairs])
    K1 = jnp.stack([p[1] for p in pairs])
    models = stack([p[2] for p in pairs])
    x_test = pairs[0][3]
    y = _digits(num_samples)[1]
    print(f"\n== part 1: spectral step per member, pack of {pack}, M = {m}, MLP width {width} "
          f"after {steps} Adam steps, n_max = {k}, best of {repeats}")

    ntk = eqx.filter_jit(eqx.filter_vmap(lambda mdl: kernels.as_matrix(kernels.ntk(mdl, x_test))))
    today = jax.jit(jax.vmap(functools.partial(_today, implementation=implementation),
                             in_axes=(0, None, 0, 0)))
    eigh = jax.jit(jax.vmap(lambda K: cosine_eigh(K, implementation)))
    prev_full, prev_erank, _ = today(K0, y, jnp.zeros((pack, m, m)), jnp.full((pack,), jnp.nan))
    full_overlap = jax.jit(jax.vmap(misalignment_from_eigvecs))
    _, vecs_full = eigh(K1)
    n_prev = jnp.clip(jnp.round(prev_erank), 1, m)

    methods = {"host_lapack": "HOST_LAPACK", "subspace": "SUBSPACE", "eigh": "EIGH"}
    prev = jax.jit(jax.vmap(lambda K: cosine_spectrum(K, k, method="host_lapack")))(K0)
    steps_new = {name: jax.jit(jax.vmap(functools.partial(_new, method=name, k=k)))
                 for name in methods}
    host64 = jax.jit(jax.vmap(functools.partial(_new, method="host_lapack", k=k,
                                                dtype=jnp.float64)))
    values_only = jax.jit(jax.vmap(
        lambda K: cosine_spectrum(K, 1, method="host_lapack").eigenvalues))
    spectrum = jax.jit(jax.vmap(lambda K: cosine_spectrum(K, k, method="host_lapack")))
    mis = jax.jit(jax.vmap(top_misalignment))
    s1 = spectrum(K1)
    thetas = [host_cosine(np.asarray(Ki), np.float32) for Ki in K1]

    def floor():
        return [host_eigenvalues_floor(t) for t in thetas]

    def scipy_default():
        from scipy.linalg import lapack

        return [lapack.ssyevd(t, compute_v=0) for t in thetas]

    fns = {
        "NTK (structured, jit+vmap)": lambda: ntk(models),
        "today: spectral_record (eigh + full overlap)": lambda: today(K1, y, prev_full, prev_erank),
        "today:   eigh of Θ̃": lambda: eigh(K1),
        "today:   full (M,M)@(M,M) overlap": lambda: full_overlap(prev_full, vecs_full, n_prev),
        **{f"new {label}: cosine_spectrum + top_misalignment": (
            lambda f=steps_new[name]: f(K1, prev.vectors, prev.erank))
           for name, label in methods.items()},
        "new HOST_LAPACK dtype=float64 (host float64)": lambda: host64(K1, prev.vectors,
                                                                       prev.erank),
        "new HOST_LAPACK:   eigenvalues (sytrd + sterf)": lambda: values_only(K1),
        "new HOST_LAPACK:   + top vectors (stemr + back-transform)": lambda: spectrum(K1),
        "new HOST_LAPACK:   top_misalignment": lambda: mis(prev.vectors, prev.erank, s1.vectors),
        "floor: syevd JOBZ='N' (host, optimal lwork)": floor,
        "       scipy lapack.ssyevd(compute_v=0) (default lwork)": scipy_default,
    }
    times = _time_all(fns, repeats)
    ref = times["today: spectral_record (eigh + full overlap)"]
    for name, t in times.items():
        ratio = f"{ref / t:6.2f}x vs today" if "cosine_spectrum" in name or "float64" in name \
            else ""
        print(f"  {name:58s} {1e3 * t / pack:9.1f} ms  {ratio}")
    iters = np.asarray(steps_new["subspace"](K1, prev.vectors, prev.erank)[3])
    print(f"  SUBSPACE iterations per member: {iters.tolist()}  (Chebyshev degree 6 each)")
    print(f"  carry per member (floats): today {m * m + 1:,} (M x M vectors + erank), "
          f"new {m * k + 1:,} (M x n_max + erank): {(m * m + 1) / (m * k + 1):.0f}x smaller")


def _reference(K):
    K = np.asarray(K, np.float64)
    K = 0.5 * (K + K.T)
    d = np.diagonal(K)
    inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    w, v = np.linalg.eigh(K * inv[:, None] * inv[None, :])
    lam = np.maximum(w, 1e-14)
    p = lam / lam.sum()
    return -(p * np.log(p)).sum(), v[:, ::-1]


def bench_errors(num_samples, k, cases):
    print(f"\n== part 2: float32 spectral step vs float64 eigh of the same float32 NTK, "
          f"M = {10 * num_samples}, n_max = {k}")
    print(f"  {'case':24s} {'erank':>7s} {'misalign':>9s} |{'':1s}"
          + "".join(f" {name:>19s}" for name in ("today", "HOST_LAPACK", "SUBSPACE", "EIGH",
                                                   "HOST_LAPACK f64")))
    print(f"  {'':24s} {'':>7s} {'':>9s} |" + " rel.err H | abs.err m" * 5)
    y = _digits(num_samples)[1]
    for width, depth, steps, lr in cases:
        K0, K1, _, _ = _mlp_ntk_pair(width, depth, steps, num_samples, key=7, lr=lr)
        h0, v0 = _reference(K0)
        h1, v1 = _reference(K1)
        n = int(np.clip(np.round(np.exp(h0)), 1, K0.shape[0]))
        m_ref = float(np.sum((v0[:, :n] - v1[:, :n] @ (v1[:, :n].T @ v0[:, :n])) ** 2) / n)
        r0 = spectral_record(K0, y)
        r1 = spectral_record(K1, y, r0["eigvecs"], r0["erank"])
        cols = [(float(r1["entropy"]), float(r1["eigvec_misalignment"]))]
        for method, dtype in (("host_lapack", jnp.float32), ("subspace", jnp.float32),
                              ("eigh", jnp.float32), ("host_lapack", jnp.float64)):
            s0 = cosine_spectrum(K0, k, method="host_lapack", dtype=dtype)
            s1 = cosine_spectrum(K1, k, method=method, prev_vectors=s0.vectors,
                                 prev_erank=s0.erank, dtype=dtype)
            cols.append((float(s1.entropy), float(top_misalignment(s0.vectors, s0.erank,
                                                                   s1.vectors))))
        name = f"w{width} d{depth} " + ("init" if steps == 0 else f"{steps} steps lr {lr:g}")
        print(f"  {name:24s} {np.exp(h1):7.2f} {m_ref:9.2e} |"
              + "".join(f"  {abs(h / h1 - 1):8.1e} {abs(m - m_ref):9.1e}" for h, m in cols))
    print("  (NaN misalignment: round(erank) > n_max, the carry holds too few vectors)")


def bench_record_vs_epoch(pack: int, num_samples: int, width: int, repeats: int) -> None:
    """Part 0: one NTK record of a pack (structured NTK + spectrum + alignments, on device,
    batched) against one training epoch of the same pack (full-batch Adam on 100 digits)."""
    import dataclasses

    import ntkbench
    from ntkbench._train import PackProgram

    c = ntkbench.preset("quick", **{"widths": (width,),
                                   "num_seeds": pack, "n_test": num_samples, "ntk_every": 1})
    sequential = jax.default_backend() == "cpu"
    ready = ntkbench.build_pack(c, runtime=ntkbench.Runtime(platform=jax.default_backend(),
                                                            sequential=sequential))
    model, pdata, recorded = ready.model, ready.data, ready.program
    plain = PackProgram(dataclasses.replace(c, ntk_every=0), None, sequential=sequential)
    epochs = 10

    def run(prog):
        state = prog.init_state(pdata, model)
        jax.block_until_ready(prog.train_chunk(pdata, state, epochs))  # compile
        times = []
        for _ in range(repeats):
            state = prog.init_state(pdata, model)
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


_CORETYPE_CHILD = """
import time, numpy as np, jax, jax.numpy as jnp
from threadpoolctl import threadpool_info
M = {m}
j = np.random.default_rng(0).standard_normal((M, M // 2)).astype(np.float32)
a = j @ j.T / M
eigh = jax.jit(jnp.linalg.eigh)
x = jnp.asarray(a)
jax.block_until_ready(eigh(x))
t_eigh, t_floor = np.inf, np.inf
for _ in range({repeats}):
    t = time.perf_counter(); jax.block_until_ready(eigh(x)); t_eigh = min(t_eigh, time.perf_counter() - t)
    t = time.perf_counter(); host_eigenvalues_floor(a); t_floor = min(t_floor, time.perf_counter() - t)
arch = sorted({{i.get("architecture") for i in threadpool_info() if "scipy.libs" in i["filepath"]}})
print(f"arch={{arch}} eigh {{1e3 * t_eigh:.1f}} ms, syevd JOBZ=N {{1e3 * t_floor:.1f}} ms")
"""


def bench_coretype(value: str | None, m: int, repeats: int) -> None:
    """`eigh` and the floor with OPENBLAS_CORETYPE as inherited, unset, and `=value`."""
    print(f"\n== OpenBLAS core type (M = {m}; OpenBLAS reads it at load time: one process each)")
    variants = {"as inherited": dict(os.environ),
                "unset": {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}}
    if value:
        variants[f"={value}"] = {**os.environ, "OPENBLAS_CORETYPE": value}
    for name, env in variants.items():
        out = subprocess.run([sys.executable, "-c", _CORETYPE_CHILD.format(m=m, repeats=repeats)],
                             env=env, capture_output=True, text=True, check=False)
        shown = env.get("OPENBLAS_CORETYPE", "<unset>")
        print(f"  OPENBLAS_CORETYPE {name:13s} ({shown}): "
              f"{out.stdout.strip() or out.stderr.strip()[-300:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=int, default=4, help="members per pack (vmapped)")
    parser.add_argument("--num-samples", type=int, default=128, help="N; M = 10 N")
    parser.add_argument("--large", action="store_true", help="N = 256: M = 2560")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-vectors", type=int, default=64, help="n_max (vectors carried)")
    parser.add_argument("--skip-errors", action="store_true", help="only time the record")
    parser.add_argument("--skip-epoch", action="store_true", help="skip part 0")
    parser.add_argument("--steps", type=int, default=30, help="Adam steps for trained NTKs")
    parser.add_argument("--width", type=int, default=256, help="MLP width of parts 0 and 1")
    parser.add_argument("--eigh", choices=["default", "qr", "jacobi"], default="default",
                        help="eigensolver of today's step (jacobi: GPU only)")
    parser.add_argument("--coretype", default=None, metavar="NAME",
                        help="also time eigh with OPENBLAS_CORETYPE unset and =NAME")
    args = parser.parse_args()
    num_samples = 256 if args.large else args.num_samples
    print(blas_report())
    if args.coretype is not None:
        bench_coretype(args.coretype, 10 * num_samples, args.repeats)
    if not args.skip_epoch:
        bench_record_vs_epoch(args.pack, num_samples, args.width, args.repeats)
    impl = {"default": None, "qr": jax.lax.linalg.EighImplementation.QR,
            "jacobi": jax.lax.linalg.EighImplementation.JACOBI}[args.eigh]
    bench_cost(args.pack, num_samples, args.width, args.steps, args.num_vectors, args.repeats,
               impl)
    if not args.skip_errors:
        cases = [(8, 4, 0, 1e-2), (8, 4, args.steps, 1e-2), (256, 3, 0, 1e-2),
                 (256, 3, args.steps, 1e-2), (1024, 3, args.steps, 1e-2),
                 (1024, 2, 20, 1e-4)]
        bench_errors(num_samples, args.num_vectors, cases)


if __name__ == "__main__":
    main()
