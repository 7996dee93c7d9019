"""Checkpoint overhead on the quick preset: epochs/s with and without checkpoints.

    python benchmarks/bench_checkpoint.py [--epochs=100] [--chunk_epochs=10] [--repeats=3]

Runs the quick preset's sweep (same members, NTK records included) in one process:
1. never checkpointing, and checkpointing at every chunk (`chunk_epochs` epochs; saves happen at
   chunk boundaries, where the state leaves the compiled scan);
2. with `chunk_epochs=1`, never vs every epoch (the worst case: one save per epoch).
Each run is timed end to end (compile included; it is the same for both runs of a pair) and the
overhead `t_ckpt / t_never - 1` is printed per pair, with the checkpoints actually written (due
saves are postponed while the previous one is writing or `checkpoint_max_overhead` is spent;
`--max_overhead=0` lifts the budget) and how long saving blocked training.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time

from absl import app, flags

import ntkbench

_EPOCHS = flags.DEFINE_integer("epochs", 100, "Epochs of the quick preset to run.")
_CHUNK = flags.DEFINE_integer("chunk_epochs", 10, "Epochs per compiled chunk for pair 1.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Runs of each pair, interleaved; the fastest run "
                                 "of each side is compared (the machine's noise only slows runs).")
_CHUNKS = flags.DEFINE_list("chunks", None, "chunk_epochs of the pairs (default: chunk_epochs, 1).")
_BUDGET = flags.DEFINE_float("max_overhead", None, "config.checkpoint_max_overhead (default: the "
                             "preset's; 0 never postpones a due save for the budget).")


def _time(config) -> tuple[float, int, int, float]:
    """Seconds, checkpoints written, due saves postponed (the previous one still writing) and
    seconds for which saving blocked training."""
    lines = []
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        ntkbench.run(config, d, hooks=ntkbench.Hooks(log=lines.append, progress=False),
                     tensorboard=False)
        seconds = time.perf_counter() - t0
    found = [re.search(r"(\d+) checkpoint\(s\) written; they held training up ([0-9.]+)s "
                       r"and took ([0-9.]+)s in the background(?:; (\d+) skipped)?", s)
             for s in lines]
    written = sum(int(m.group(1)) for m in found if m)
    blocked = sum(float(m.group(2)) for m in found if m)
    background = sum(float(m.group(3)) for m in found if m)
    postponed = sum(int(m.group(4) or 0) for m in found if m)
    return seconds, written, postponed, blocked, background


def _print_state_sizes(config) -> None:
    """Bytes of the checkpointed state of the largest pack: parameters, optimizer, best-so-far
    copy and the record carry (top eigenvectors), as `ntkbench.build_pack` builds it."""
    import jax
    import numpy as np

    builder = ntkbench.PackBuilder(config, runtime=ntkbench.Runtime())
    pack = max(builder.plan.packs, key=lambda p: p.num_members * p.padded_width**2)
    state, rec, data = builder.build(pack).state, builder.recorder, builder.data
    parts = {name: sum(np.asarray(x).nbytes for x in jax.tree.leaves(getattr(state, name)))
             for name in ("model", "opt_state", "best", "record")}
    m = config.n_test * data.num_classes
    print(f"checkpointed state of the largest pack ({pack.num_members} members, width <= "
          f"{pack.padded_width}): " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in
                                                parts.items())
          + f"; record carry per member {parts['record'] / pack.num_members / 4:,.0f} floats "
          f"(M x n_max = {m} x {rec.num_vectors} = {m * rec.num_vectors:,})")


def main(argv):
    del argv
    base = ntkbench.from_config_dict(ntkbench.get_config("quick"))
    base = dataclasses.replace(base, epochs=_EPOCHS.value, checkpoint_every_minutes=0.0)
    if _BUDGET.value is not None:
        base = dataclasses.replace(base, checkpoint_max_overhead=_BUDGET.value)
    member_epochs = base.num_members * base.epochs
    print(f"quick preset, {base.num_members} members x {base.epochs} epochs, NTK every "
          f"{base.ntk_every} epochs, checkpoint_max_overhead={base.checkpoint_max_overhead}")
    _print_state_sizes(base)
    _time(dataclasses.replace(base, epochs=2, chunk_epochs=1, checkpoint_every_epochs=0))  # warm caches
    chunks = [int(c) for c in _CHUNKS.value] if _CHUNKS.value else [_CHUNK.value, 1]
    for chunk in chunks:
        never = dataclasses.replace(base, chunk_epochs=chunk, checkpoint_every_epochs=0)
        every = dataclasses.replace(base, chunk_epochs=chunk, checkpoint_every_epochs=chunk)
        runs = [(_time(never), _time(every)) for _ in range(_REPEATS.value)]
        t_never = min(n[0] for n, _ in runs)
        t_every, written, postponed, blocked, background = min((e for _, e in runs),
                                                               key=lambda e: e[0])
        spread = "" if len(runs) == 1 else (
            f" (fastest of {len(runs)}; all: never " + ", ".join(f"{n[0]:.1f}" for n, _ in runs)
            + "s, every " + ", ".join(f"{e[0]:.1f}" for _, e in runs) + "s)")
        print(f"chunk_epochs={chunk:3d}: never {member_epochs / t_never:8,.0f} member-epochs/s "
              f"({t_never:.1f}s) | checkpoint every {chunk} epoch(s) "
              f"{member_epochs / t_every:8,.0f} member-epochs/s ({t_every:.1f}s) | overhead "
              f"{t_every / t_never - 1:+.1%}{spread} | {written} checkpoints written, "
              f"{postponed} due saves postponed (the previous one still writing, or the budget "
              f"spent); the saves blocked training {blocked:.1f}s and wrote in the background "
              f"for {background:.1f}s, which on a CPU host shares the cores with training")


if __name__ == "__main__":
    app.run(main)
