"""What an epoch costs beyond the training step: the test-loss evaluation and the linearized model.

    python benchmarks/bench_epoch.py [--widths=256,4096] [--n_eval=10000] [--members=4]

For MNIST-shaped members (784 inputs, 3 hidden layers, 10 logits; random inputs in [0, 1]) and
100 training samples, one pack's epoch is timed in the same process with:

1. training only (`eval_every` larger than the run: no test metrics);
2. training plus the test loss and accuracy on `n_eval` evaluation samples every epoch
   (the default; exact k*), and every 10 epochs (`eval_every=10`);
3. training plus the linearized model (`linearized=True`, test metrics every epoch).

It prints seconds per epoch, the ratios to training only, and the FLOP count of each part
(the evaluation is `n_eval` forward passes per member; a training step about 3 forward passes
of the 100 samples): 10,000 evaluation samples cost far more than the 100-sample step.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

import ntkbench
from ntkbench._data import Dataset
from ntkbench._train import model_family

_WIDTHS = flags.DEFINE_list("widths", ["256", "4096"], "Widths to time.")
_N_EVAL = flags.DEFINE_integer("n_eval", 10_000, "Evaluation samples.")
_MEMBERS = flags.DEFINE_integer("members", 4, "Members of the pack.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Epochs per timed chunk.")


def _mnist_like(n_train: int, n_test: int) -> Dataset:
    rng = np.random.default_rng(0)
    x = lambda n: rng.uniform(0, 1, (n, 28, 28, 1)).astype(np.float32)
    y = lambda n: rng.integers(0, 10, n).astype(np.int32)
    return Dataset("mnist_like", x(n_train), y(n_train), x(n_test), y(n_test), 10)


def _time(config, data, epochs: int) -> float:
    ready = ntkbench.build_pack(config, data=data, runtime=ntkbench.Runtime())
    prog, model, pdata, state = ready.program, ready.model, ready.data, ready.state
    jax.block_until_ready(prog.train_chunk(pdata, state, epochs))
    t = []
    for _ in range(2):
        state = prog.init_state(pdata, model)
        t0 = time.perf_counter()
        jax.block_until_ready(prog.train_chunk(pdata, state, epochs))
        t.append(time.perf_counter() - t0)
    return min(t) / epochs


def main(argv):
    del argv
    data = _mnist_like(1000, _N_EVAL.value)
    print(f"pack of {_MEMBERS.value} MLPs (784 -> width x 3 -> 10), 100 training samples, "
          f"n_eval={_N_EVAL.value}; seconds per epoch (best of 2 after compile), backend "
          f"{jax.default_backend()}")
    epochs = _EPOCHS.value
    for width in (int(w) for w in _WIDTHS.value):
        base = {**ntkbench.get_config("smoke").to_dict(), "dataset": "synthetic",
                "widths": (width,), "depth": (3,), "num_seeds": _MEMBERS.value,
                "n_train": (100,), "n_eval": _N_EVAL.value, "ntk_every": 0,
                "epochs": epochs, "chunk_epochs": epochs}
        cases = {"train only": {"eval_every": 10 * epochs},
                 "+ eval every epoch": {"eval_every": 1},
                 "+ eval every 10": {"eval_every": 10},
                 "+ linearized (eval every epoch)": {"eval_every": 1, "linearized": True}}
        times = {}
        for name, over in cases.items():
            c = ntkbench.from_config_dict({**base, **over})
            times[name] = _time(c, data, epochs)
        fwd = model_family(c, data).flops_per_example(width, 3)
        print(f"\nwidth {width}: forward {fwd / 1e6:.2f} MFLOP per sample; per member-epoch the "
              f"training step is ~{3 * 100 * fwd / 1e9:.2f} GFLOP, the evaluation "
              f"{_N_EVAL.value * fwd / 1e9:.2f} GFLOP")
        ref = times["train only"]
        for name, t in times.items():
            print(f"  {name:34s} {t * 1e3:9.1f} ms/epoch  x{t / ref:6.2f}")


if __name__ == "__main__":
    app.run(main)
