"""Training throughput: packs vs one seed-vmapped program per width vs a loop over members.

    python benchmarks/bench_training.py [--widths=8,16,32,64,128,256] [--seeds=8] [--epochs=200]

The same members (widths x seeds, full-batch Adam on 100 digits) are trained three ways in one
process, and member-epochs per second are printed for each with the ratios (these machines are
noisy, so only same-process ratios mean much):

1. packs: ntkbench's planner and pack program (epoch loop in `lax.scan`, widths padded together);
2. per width: the Equinox ensembling recipe, one `filter_vmap`-over-seeds program per width with
   a jitted step called once per epoch;
3. loop: a Python loop over single members with a jitted step.

All three record the same numbers every epoch (train and test loss and accuracy on the same
`n_eval` evaluation samples), so they do the same work.

Each way builds its jitted functions once, runs once to compile (reported as "first run",
compile included) and once more with the same functions ("steady": model init, data and
training, no compile). The achieved rate is also given in GFLOP/s of useful work (the unpadded members'
forward and backward passes on the training set and the forward pass on the test set; the count
is checked against XLA's cost analysis of one member's step) and as a fraction of a large f32
matmul timed in the same process, the machine's peak. A method's ratio to another can never
exceed the ratio of that peak to the other's achieved rate.
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from absl import app, flags

import ntkbench
from ntkbench._data import load_dataset
from ntkbench._train import SweepData, members_keys, model_family
from ntkbench._train import members as all_members
from ntkbench._train.member_step import per_sample_loss
from ntkbench.models import MLP

_WIDTHS = flags.DEFINE_list("widths", ["8", "16", "32", "64", "128", "256"], "Widths.")
_SEEDS = flags.DEFINE_integer("seeds", 8, "Seeds per width.")
_EPOCHS = flags.DEFINE_integer("epochs", 200, "Epochs.")
_N = flags.DEFINE_integer("n_train", 100, "Training samples (full batch).")
_N_EVAL = flags.DEFINE_integer("n_eval", 64, "Evaluation samples (test loss every epoch).")
_EFF = flags.DEFINE_float("min_pack_efficiency", ntkbench.SweepConfig().min_pack_efficiency,
                          "Planner's padding-efficiency floor (default: the sweep default).")


def _config():
    return ntkbench.from_config_dict({
        **ntkbench.get_config("quick").to_dict(), "widths": tuple(int(w) for w in _WIDTHS.value),
        "num_seeds": _SEEDS.value, "epochs": _EPOCHS.value, "n_train": (_N.value,),
        "n_eval": _N_EVAL.value, "ntk_every": 0, "chunk_epochs": _EPOCHS.value,
        "dataset": "digits", "min_pack_efficiency": _EFF.value})


def make_packs(c, data):
    """Packs: the planner and one pack program (compiled on the first call, reused after)."""
    builder = ntkbench.PackBuilder(c, data=data, runtime=ntkbench.Runtime())

    def run():
        outs = []
        for pack in builder.plan.packs:
            ready = builder.build(pack)
            _, out = ready.program.train_chunk(ready.data, ready.state, c.epochs)
            outs.append(out["train_loss"])
        jax.block_until_ready(outs)

    return run, builder.plan


def _step_fn(optim, x_test, y_test):
    """One full-batch Adam step that also records what a pack records: train and test loss
    and accuracy of the state before the update (the same work as ntkbench's epoch)."""

    def loss(model, x, y):
        logits = jax.vmap(model)(x)
        return jnp.mean(per_sample_loss("cross_entropy", logits, y)), logits

    def step(model, opt_state, x, y):
        (value, logits), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, x, y)
        test_loss, test_logits = loss(model, x_test, y_test)
        metrics = (value, jnp.mean(jnp.argmax(logits, -1) == y), test_loss,
                   jnp.mean(jnp.argmax(test_logits, -1) == y_test))
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, metrics

    return step


def _member_data(c, data, x_all, y_all, keys_data):
    from ntkbench._data import draw_indices
    idx = draw_indices(keys_data, y_all, c.n_train[0])
    return x_all[idx], y_all[idx]


def _test_set(c, data):
    idx = SweepData.of(c, data).eval_idx
    return (jnp.asarray(data.x_test.reshape(len(data.y_test), -1)[idx]), jnp.asarray(data.y_test[idx]))


def _keys(c, m):
    return {k: v[0] for k, v in members_keys(c, [m]).items()}


def _train_data(c, data):
    x_all = jnp.asarray(data.x_train.reshape(len(data.y_train), -1))
    y_all = jnp.asarray(data.y_train)
    members = all_members(c)
    return members, _member_data(c, data, x_all, y_all, _keys(c, members[0])["data"])


def make_per_width(c, data):
    """One seed-vmapped program per width with a jitted step per epoch (the Equinox recipe)."""
    optim = optax.adam(c.lr, b1=c.b1, b2=c.b2)
    step = eqx.filter_jit(eqx.filter_vmap(_step_fn(optim, *_test_set(c, data)), in_axes=(0, 0, None, None)))
    members, (x, y) = _train_data(c, data)

    def run():
        last = None
        for w in c.widths:
            keys = jnp.stack([_keys(c, m)["init"] for m in members if m.width == w])
            models = eqx.filter_vmap(lambda k, w=w: MLP(data.input_size, data.num_classes, w, c.depth[0], key=k))(keys)
            opt_state = eqx.filter_vmap(lambda m: optim.init(eqx.filter(m, eqx.is_inexact_array)))(models)
            for _ in range(c.epochs):
                models, opt_state, last = step(models, opt_state, x, y)
        jax.block_until_ready(last)

    return run, None


def make_loop(c, data):
    """A plain Python loop over single members with a jitted step per epoch."""
    optim = optax.adam(c.lr, b1=c.b1, b2=c.b2)
    step = eqx.filter_jit(_step_fn(optim, *_test_set(c, data)))
    members, (x, y) = _train_data(c, data)

    def run():
        last = None
        for m in members:
            model = MLP(data.input_size, data.num_classes, m.width, m.depth, key=_keys(c, m)["init"])
            opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
            for _ in range(c.epochs):
                model, opt_state, last = step(model, opt_state, x, y)
        jax.block_until_ready(last)

    return run, None


def useful_flops_per_epoch(c, data) -> float:
    """FLOPs of one epoch of all members: forward + backward (3x forward) on `n_train` samples
    and a forward pass on the `n_eval` evaluation samples, at each member's own width."""
    family = model_family(c, data)
    return sum(family.flops_per_example(m.width, m.depth) * (3 * m.n_train + c.n_eval)
               for m in all_members(c))


def xla_step_flops(c, data, width: int) -> float:
    """XLA's cost analysis of one member's jitted step (the loop's step) at `width`."""
    optim = optax.adam(c.lr, b1=c.b1, b2=c.b2)
    model = MLP(data.input_size, data.num_classes, width, c.depth[0], key=jax.random.key(0))
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    x_test, y_test = _test_set(c, data)
    x, y = x_test[:1].repeat(c.n_train[0], 0), y_test[:1].repeat(c.n_train[0], 0)
    params, static = eqx.partition((model, opt_state), eqx.is_array)
    step = _step_fn(optim, x_test, y_test)
    fn = jax.jit(lambda p, x, y: step(*eqx.combine(p, static), x, y))
    cost = fn.lower(params, x, y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def main(argv):
    del argv
    from ntkbench._profile import matmul_peak

    c = _config()
    data = load_dataset("digits")
    member_epochs = c.num_members * c.epochs
    flops = useful_flops_per_epoch(c, data) * c.epochs
    w = max(c.widths)
    m_w = [m for m in all_members(c) if m.width == w][0]
    mine = model_family(c, data).flops_per_example(w, m_w.depth) * (3 * m_w.n_train + c.n_eval)
    print(f"useful work: {flops / 1e9:.1f} GFLOP; width {w}: {mine / 1e6:.1f} MFLOP per "
          f"member-epoch by count, {xla_step_flops(c, data, w) / 1e6:.1f} by XLA's cost analysis "
          "(which adds the elementwise ops and Adam)")
    print(f"{c.num_members} members (widths {c.widths} x {c.num_seeds} seeds), {c.epochs} epochs, "
          f"full batch of {c.n_train[0]} digits, depth {c.depth[0]}")
    rows = {}
    for name, make in [("packs", make_packs), ("per-width vmap", make_per_width),
                       ("member loop", make_loop)]:
        run, plan = make(c, data)
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        run()
        steady = time.perf_counter() - t0
        rows[name] = (member_epochs / first, member_epochs / steady)
        if plan is not None:
            print(plan.describe())
    peak = matmul_peak()["gflop_per_s"]
    base_loop, base_width = rows["member loop"][1], rows["per-width vmap"][1]
    print(f"\nmatmul peak in this run: {peak:,.0f} GFLOP/s")
    print(f"{'method':16s} {'first run':>14s} {'steady':>14s} {'GFLOP/s':>8s} {'%peak':>6s} "
          f"{'x loop':>7s} {'x per-width':>12s}")
    for name, (first, steady) in rows.items():
        gflops = steady / member_epochs * flops / 1e9
        print(f"{name:16s} {first:>10,.0f} m-e/s {steady:>10,.0f} m-e/s {gflops:>8.1f} "
              f"{100 * gflops / peak:>5.1f}% {steady / base_loop:>6.1f}x {steady / base_width:>11.2f}x")
    # The largest matmul of the workload on its own: an upper bound for what these shapes allow.
    a = jax.random.normal(jax.random.key(0), (c.n_train[0], w))
    b = jax.random.normal(jax.random.key(1), (c.num_seeds, w, w))
    mm = jax.jit(jax.vmap(lambda b: a @ b))
    jax.block_until_ready(mm(b))
    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        out = mm(b)
    jax.block_until_ready(out)
    mm_gflops = reps * 2 * c.n_train[0] * w * w * c.num_seeds / (time.perf_counter() - t0) / 1e9
    print(f"the workload's largest matmul alone ({c.num_seeds} x [{c.n_train[0]}, {w}] @ [{w}, {w}]):"
          f" {mm_gflops:.1f} GFLOP/s ({mm_gflops / peak:.0%} of peak)")
    loop_gflops = base_loop / member_epochs * flops / 1e9
    print(f"10x the loop would need {10 * loop_gflops:,.0f} GFLOP/s of useful work, "
          f"{10 * loop_gflops / peak:.0%} of this machine's matmul peak.")


if __name__ == "__main__":
    app.run(main)
