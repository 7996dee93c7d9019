"""Convergence and cost of the matrix-free curvature kernels (`ntkbench.kernels`: the top
eigenvalue of the loss Hessian, of Adam's preconditioned `D⁻¹H` and of the training-set NTK).

    python benchmarks/bench_curvature.py               # about two minutes on a laptop CPU
    python benchmarks/bench_curvature.py --repeats 20
    python benchmarks/bench_curvature.py --part record # part 3 only: a sweep's record cost

The setting: a pack of 4 ReLU MLPs (`ntkbench.models.MLP`: 64 inputs, width 256, depth 3,
10 logits, LeCun normal; P = 150,794 parameters each, seeds 0-3) trained for 50 full-batch Adam
steps (lr 1e-3, optax defaults) with cross-entropy on 100 scikit-learn digits (pixels / 16);
the curvature is that of the same training loss (weights 1/100) at the trained parameters, with
Adam's denominator `D` from the optimizer state after step 50.

Part 1, convergence (float64): for every member and quantity one 100-step Lanczos run from the
start vector the kernels draw; the k-step value is the top eigenvalue of the leading k x k block
of its tridiagonal (what k steps from that start vector give: the same numbers in exact
arithmetic, and to round-off with full reorthogonalization). Printed: the largest relative error
over the members against the 100-step value, for k = 5, 10, 20, 30, and the residual
`‖A y − θ y‖ / θ` of the 100-step Ritz vector `y` (largest over the members). The default
`TOP_EIGEN_NUM_STEPS` is chosen from it.

Part 2, cost (float32, each program jitted and vmapped over the pack): the median wall time of
one call of each quantity at the default steps (and their sum), and of the NTK top eigenvalue on
64 test digits (the NTK record set), against one training step of the pack (forward and backward
on the 100 samples and the Adam update), timed in rounds that interleave all programs; ratios
to the training step, and the first call's time (compilation included).

Part 3, a record's cost in a sweep: the pack program of `quick`'s shapes (4 MLPs of width 256)
over 9 epochs holding one NTK record, with and without a curvature record at the same epoch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ntkbench import kernels
from ntkbench._train.member_step import member_loss
from ntkbench.kernels._slq import lanczos_basis
from ntkbench.models import MLP, stack

MEMBERS, WIDTH, DEPTH, CLASSES, N_TRAIN, N_NTK = 4, 256, 3, 10, 100, 64
ADAM_STEPS, LR = 50, 1e-3
STEPS = (5, 10, 20, 30)
REFERENCE_STEPS = 100
QUANTITIES = ("hessian", "preconditioned", "ntk")


def digits(dtype):
    from sklearn.datasets import load_digits

    b = load_digits()
    x = jnp.asarray(b.data / 16.0, dtype)
    y = jnp.asarray(b.target, jnp.int32)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:N_TRAIN + N_NTK]


def train(dtype):
    """`(pack, Adam states, x, y, w, x_ntk)` after `ADAM_STEPS` full-batch Adam steps."""
    x, y, x_ntk = digits(dtype)
    w = jnp.full((N_TRAIN,), 1.0 / N_TRAIN, dtype)
    pack = stack([MLP(64, CLASSES, WIDTH, DEPTH, key=jax.random.key(s), dtype=dtype)
                  for s in range(MEMBERS)])
    opt = optax.adam(LR)
    state = eqx.filter_vmap(lambda m: opt.init(eqx.filter(m, eqx.is_inexact_array)))(pack)
    step = eqx.filter_jit(eqx.filter_vmap(train_step(opt, x, y, w)))
    for _ in range(ADAM_STEPS):
        pack, state = step(pack, state)
    return pack, state, x, y, w, x_ntk


def train_step(opt, x, y, w):
    """One member's training step: forward and backward on the batch, the Adam update."""

    def step(model, state):
        grads = eqx.filter_grad(lambda m: member_loss(m, x, y, w, loss="cross_entropy")[0])(model)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, state = opt.update(grads, state, params)
        return eqx.apply_updates(model, updates), state

    return step


# ------------------------------------------------------------------------------------------------
# Part 1: convergence
# ------------------------------------------------------------------------------------------------


def operators(model, state, x, y, w, key):
    """`(matvec, start vector)` of each quantity, as the kernels build them."""
    loss = lambda m: member_loss(m, x, y, w, loss="cross_entropy")[0]
    flat, _ = ravel_pytree(eqx.filter(model, eqx.is_inexact_array))
    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    hvp = kernels.hessian_vp_fn(loss, model)
    s = jax.lax.rsqrt(ravel_pytree(kernels.adam_preconditioner(state))[0])
    vp = kernels.ntk_vp_fn(model, x)
    sw = jnp.sqrt(w)[:, None]
    z = jax.random.normal(key, (N_TRAIN, CLASSES), flat.dtype)
    return {
        "hessian": (hvp, v0),
        "preconditioned": (lambda u: s * hvp(s * u), v0),
        "ntk": (lambda v: jnp.reshape(sw * vp(sw * jnp.reshape(v, z.shape)), (-1,)),
                jnp.reshape(z, (-1,))),
    }


def leading_tops(model, state, x, y, w, key):
    """`{quantity: (top Ritz values of the leading k-blocks for STEPS + (100,), residual)}`; the
    residual `‖A y − θ y‖` of the 100-step Ritz vector is measured with one more product."""
    out = {}
    with jax.default_matmul_precision("highest"):
        for name, (matvec, v0) in operators(model, state, x, y, w, key).items():
            alpha, beta, basis = lanczos_basis(matvec, v0, REFERENCE_STEPS)
            tops = []
            for k in STEPS + (REFERENCE_STEPS,):
                t = jnp.diag(alpha[:k]) + jnp.diag(beta[:k - 1], 1) + jnp.diag(beta[:k - 1], -1)
                theta, u = jnp.linalg.eigh(t)
                tops.append(theta[-1])
            ritz = u[:, -1] @ basis[:REFERENCE_STEPS]
            ritz = ritz / jnp.linalg.norm(ritz)
            out[name] = (jnp.stack(tops), jnp.linalg.norm(matvec(ritz) - theta[-1] * ritz))
    return out


def convergence(pack, state, x, y, w) -> None:
    keys = jax.random.split(jax.random.key(0), MEMBERS)
    fn = eqx.filter_jit(eqx.filter_vmap(leading_tops, in_axes=(0, 0, None, None, None, 0)))
    res = jax.tree.map(np.asarray, fn(pack, state, x, y, w, keys))
    print(f"\nConvergence (float64, {MEMBERS} members after {ADAM_STEPS} Adam steps): max over "
          f"members of |θ_k − θ_{REFERENCE_STEPS}| / θ_{REFERENCE_STEPS}")
    head = "".join(f"{f'k={k}':>11}" for k in STEPS)
    print(f"{'quantity':<16}{'θ_100 (members)':<34}{head}   residual_100/θ")
    for name in QUANTITIES:
        tops, residual = res[name]
        ref = tops[:, -1]
        errs = np.max(np.abs(tops[:, :-1] - ref[:, None]) / np.abs(ref[:, None]), axis=0)
        values = " ".join(f"{v:.4g}" for v in ref)
        row = "".join(f"{e:>11.1e}" for e in errs)
        print(f"{name:<16}{values:<34}{row}   {np.max(residual / np.abs(ref)):.1e}")


# ------------------------------------------------------------------------------------------------
# Part 2: cost
# ------------------------------------------------------------------------------------------------


def curvature_programs(x, y, w, x_ntk, num_steps):
    loss_of = lambda: (lambda m: member_loss(m, x, y, w, loss="cross_entropy")[0])

    def hessian(model, state, key):
        return kernels.hessian_top_eigen(loss_of(), model, key=key, num_steps=num_steps)

    def preconditioned(model, state, key):
        d = kernels.adam_preconditioner(state)
        return kernels.preconditioned_top_eigen(loss_of(), model, d, key=key,
                                                num_steps=num_steps)

    def ntk(model, state, key):
        return kernels.ntk_top_eigen(model, x, w, key=key, num_steps=num_steps)

    def ntk_record_set(model, state, key):
        return kernels.ntk_top_eigen(model, x_ntk, key=key, num_steps=num_steps)

    progs = {"hessian": hessian, "preconditioned": preconditioned, "ntk (100 train)": ntk,
             "ntk (64 test)": ntk_record_set}
    return {name: eqx.filter_jit(eqx.filter_vmap(f)) for name, f in progs.items()}


def cost(pack, state, x, y, w, x_ntk, repeats: int) -> None:
    num_steps = kernels.TOP_EIGEN_NUM_STEPS
    keys = jax.random.split(jax.random.key(0), MEMBERS)
    opt = optax.adam(LR)
    step = eqx.filter_jit(eqx.filter_vmap(train_step(opt, x, y, w)))
    progs = {"train step": lambda p, s, k: step(p, s)}
    progs |= curvature_programs(x, y, w, x_ntk, num_steps)
    times = {name: [] for name in progs}
    compile_s = {}
    for name, fn in progs.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(pack, state, keys))
        compile_s[name] = time.perf_counter() - t0
    for _ in range(repeats):
        for name, fn in progs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(pack, state, keys))
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["train step"])
    print(f"\nCost (float32, pack of {MEMBERS}, {num_steps} Lanczos steps, median of {repeats}):")
    print(f"{'program':<18}{'ms':>10}{'x train step':>14}{'first call s':>14}")
    rows = [(name, statistics.median(times[name]), compile_s[name]) for name in progs]
    three = ("hessian", "preconditioned", "ntk (100 train)")
    rows.insert(4, ("sum of the three", sum(t for n, t, _ in rows if n in three),
                    sum(c for n, _, c in rows if n in three)))
    for name, t, c in rows:
        print(f"{name:<18}{1e3 * t:>10.2f}{t / base:>14.1f}{c:>14.1f}")


def record_cost(repeats: int) -> None:
    """Part 3: a sweep's own pack program (quick's shapes: a pack of 4 MLPs of width 256, depth
    3, 100 digits, test loss every epoch, an NTK record on 64 test digits) over 9 epochs holding
    one NTK record, against the same chunk with one curvature record too."""
    import ntkbench

    programs = {}
    for name, curvature in (("NTK record", 0), ("NTK + curvature record", 10)):
        c = ntkbench.preset("quick", widths=(WIDTH,), num_seeds=MEMBERS, epochs=10,
                            chunk_epochs=10, ntk_every=10, curvature_every=curvature)
        ready = ntkbench.build_pack(c, runtime=ntkbench.Runtime())

        def chunk(r=ready):  # records 0..8 hold one NTK (and one curvature) record; the state
            fresh = jax.tree.map(lambda a: a.copy() if eqx.is_array(a) else a, r.state)
            return r.program.train_chunk(r.data, fresh, 9)  # is donated: a fresh copy

        t = time.perf_counter()
        jax.block_until_ready(chunk())
        programs[name] = (chunk, time.perf_counter() - t)
    times = {n: [] for n in programs}
    for _ in range(repeats):
        for name, (chunk, _) in programs.items():
            t = time.perf_counter()
            jax.block_until_ready(chunk())
            times[name].append(time.perf_counter() - t)
    ref = statistics.median(times["NTK record"])
    print(f"\nPart 3: pack program of quick's shapes, 9 epochs, one record (median of {repeats})")
    print(f"{'chunk':<26}{'s':>8}{'x NTK-only chunk':>18}{'first call s':>14}")
    for name, (_, first) in programs.items():
        t = statistics.median(times[name])
        print(f"{name:<26}{t:>8.3f}{t / ref:>18.2f}{first:>14.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--part", choices=("all", "kernels", "record"), default="all")
    args = parser.parse_args()
    if args.part == "record":
        record_cost(args.repeats)
        return
    t0 = time.perf_counter()
    print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
    print(f"pack: {MEMBERS} MLPs 64-{WIDTH}x{DEPTH}-{CLASSES}, {N_TRAIN} training digits, "
          f"{ADAM_STEPS} Adam steps (lr {LR}), cross-entropy")
    with jax.enable_x64(True):
        convergence(*train(jnp.float64)[:5])
    t1 = time.perf_counter()
    pack, state, x, y, w, x_ntk = train(jnp.float32)
    cost(pack, state, x, y, w, x_ntk, args.repeats)
    t2 = time.perf_counter()
    print(f"\ntotal {t2 - t0:.0f} s (convergence {t1 - t0:.0f} s, cost {t2 - t1:.0f} s)")
    if args.part == "all":
        record_cost(args.repeats)


if __name__ == "__main__":
    main()
