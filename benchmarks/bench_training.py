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
`n_test` test samples), so they do the same work.

Each way runs once to compile (reported as "first run", compile included) and once more timed
("steady").
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from ntkbench import config as cfg
from ntkbench import ensemble
from ntkbench._datasets import load_dataset
from ntkbench._sweep import build_data, build_models, ntk_test_indices
from ntkbench._training import PackProgram, per_sample_loss
from ntkbench.models import MLP

_WIDTHS = flags.DEFINE_list("widths", ["8", "16", "32", "64", "128", "256"], "Widths.")
_SEEDS = flags.DEFINE_integer("seeds", 8, "Seeds per width.")
_EPOCHS = flags.DEFINE_integer("epochs", 200, "Epochs.")
_N = flags.DEFINE_integer("n_train", 100, "Training samples (full batch).")
_EFF = flags.DEFINE_float("min_pack_efficiency", 0.8, "Planner's padding-efficiency floor.")


def _config():
    return cfg.from_config_dict({
        **cfg.get_config("quick").to_dict(), "widths": tuple(int(w) for w in _WIDTHS.value),
        "num_seeds": _SEEDS.value, "epochs": _EPOCHS.value, "n_train": (_N.value,),
        "ntk_every": 0, "chunk_epochs": _EPOCHS.value, "dataset": "digits",
        "min_pack_efficiency": _EFF.value})


def run_packs(c, data):
    prog = PackProgram(c)
    test_idx = ntk_test_indices(c, data)
    plan = ensemble.plan(c, data.input_size, data.num_classes)
    outs = []
    for pack in plan.packs:
        model = build_models(c, pack, data.input_size, data.input_shape, data.num_classes)
        pdata = build_data(c, pack, data, test_idx)
        state, out = prog.train_chunk(pdata, prog.init_state(model), c.epochs)
        outs.append(out["train_loss"])
    jax.block_until_ready(outs)
    return plan


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
    from ntkbench._datasets import draw_indices
    idx = draw_indices(keys_data, y_all, c.n_train[0])
    return x_all[idx], y_all[idx]


def _test_set(c, data):
    idx = ntk_test_indices(c, data)
    return (jnp.asarray(data.x_test.reshape(len(data.y_test), -1)[idx]), jnp.asarray(data.y_test[idx]))


def run_per_width(c, data):
    optim = optax.adam(c.lr, b1=c.b1, b2=c.b2)
    step = eqx.filter_jit(eqx.filter_vmap(_step_fn(optim, *_test_set(c, data)), in_axes=(0, 0, None, None)))
    x_all = jnp.asarray(data.x_train.reshape(len(data.y_train), -1))
    y_all = jnp.asarray(data.y_train)
    members = ensemble.members(c)
    x, y = _member_data(c, data, x_all, y_all, ensemble.member_keys(c, members[0])["data"])
    last = None
    for w in c.widths:
        keys = jnp.stack([ensemble.member_keys(c, m)["init"] for m in members if m.width == w])
        models = eqx.filter_vmap(lambda k: MLP(data.input_size, data.num_classes, w, c.depth[0], key=k))(keys)
        opt_state = eqx.filter_vmap(lambda m: optim.init(eqx.filter(m, eqx.is_inexact_array)))(models)
        for _ in range(c.epochs):
            models, opt_state, last = step(models, opt_state, x, y)
    jax.block_until_ready(last)


def run_loop(c, data):
    optim = optax.adam(c.lr, b1=c.b1, b2=c.b2)
    step = eqx.filter_jit(_step_fn(optim, *_test_set(c, data)))
    x_all = jnp.asarray(data.x_train.reshape(len(data.y_train), -1))
    y_all = jnp.asarray(data.y_train)
    members = ensemble.members(c)
    x, y = _member_data(c, data, x_all, y_all, ensemble.member_keys(c, members[0])["data"])
    last = None
    for m in members:
        model = MLP(data.input_size, data.num_classes, m.width, m.depth, key=ensemble.member_keys(c, m)["init"])
        opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
        for _ in range(c.epochs):
            model, opt_state, last = step(model, opt_state, x, y)
    jax.block_until_ready(last)


def main(argv):
    del argv
    c = _config()
    data = load_dataset("digits")
    member_epochs = c.num_members * c.epochs
    print(f"{c.num_members} members (widths {c.widths} x {c.num_seeds} seeds), {c.epochs} epochs, "
          f"full batch of {c.n_train[0]} digits, depth {c.depth[0]}")
    rows = {}
    for name, fn in [("packs", run_packs), ("per-width vmap", run_per_width), ("member loop", run_loop)]:
        t0 = time.perf_counter()
        res = fn(c, data)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn(c, data)
        steady = time.perf_counter() - t0
        rows[name] = (member_epochs / first, member_epochs / steady)
        if name == "packs":
            print(res.describe())
    base_loop, base_width = rows["member loop"][1], rows["per-width vmap"][1]
    print(f"\n{'method':16s} {'first run':>14s} {'steady':>14s} {'x loop':>8s} {'x per-width':>12s}")
    for name, (first, steady) in rows.items():
        print(f"{name:16s} {first:>10,.0f} m-e/s {steady:>10,.0f} m-e/s {steady / base_loop:>7.1f}x "
              f"{steady / base_width:>11.2f}x")


if __name__ == "__main__":
    app.run(main)
