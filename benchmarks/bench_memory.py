"""The peak memory of real runs against the estimate `ntkbench run` checks before it starts.

Each case runs `ntkbench run` in a child process on the CPU (`quick`'s model, width 64, depth 3,
`digits_shifted`, 2 epochs with an NTK record every epoch, snapshots off) and reads the child's
peak resident memory (`ru_maxrss`); the estimate is `ntkbench._train.planner.peak_bytes` for the
same pack. docs/scaling.md ("Memory") quotes a run; the constants of the estimate are fitted to
it, and `tests/test_integrity.py` keeps the estimate within -10%/+30% of those peaks.

    python benchmarks/bench_memory.py [--n_test=100,200,300] [--seeds=1]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile

import ntkbench
from ntkbench._data import load_dataset
from ntkbench._train import model_family, peak_bytes, plan


def _config(n_test: int, f64: bool, layer: bool, seeds: int):
    return ntkbench.preset("quick", dataset="digits_shifted", widths=(64,), num_seeds=seeds,
                           epochs=2, ntk_every=1, chunk_epochs=2, n_test=n_test,
                           ntk_float64=f64, layer_ntks=layer, ntk_snapshots=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_test", default="100,200,300")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    data = load_dataset("digits_shifted")
    data_bytes = data.x_train.nbytes + data.x_test.nbytes
    print(f"{'M':>5} {'float64':>7} {'layers':>6} {'members':>7} {'peak MiB':>9} "
          f"{'estimate':>9} {'ratio':>6}")
    for n_test, f64, layer in itertools.product(
            [int(v) for v in args.n_test.split(",")], (False, True), (False, True)):
        c = _config(n_test, f64, layer, args.seeds)
        family = model_family(c, data)
        (pack,) = plan(c, family).packs
        estimate = peak_bytes(c, family, pack, data_bytes=data_bytes)
        peak = _peak(n_test, f64, layer, args.seeds)
        print(f"{n_test * 10:>5} {str(f64):>7} {str(layer):>6} {args.seeds:>7} "
              f"{peak / 2**20:>9.0f} {estimate / 2**20:>9.0f} {estimate / peak:>6.2f}",
              flush=True)


def _peak(n_test: int, f64: bool, layer: bool, seeds: int) -> int:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "ntkbench.launchers.cli", "run", "--config=quick",
                "--config.dataset=digits_shifted", "--config.widths=(64,)",
                f"--config.num_seeds={seeds}", "--config.epochs=2", "--config.ntk_every=1",
                "--config.chunk_epochs=2", f"--config.n_test={n_test}",
                f"--config.ntk_float64={f64}", f"--config.layer_ntks={layer}",
                "--config.ntk_snapshots=false", "--progress=none", "--compilation_cache=none",
                f"--workdir={tmp}/w"]
        with open(os.path.join(tmp, "stderr"), "w") as err:
            proc = subprocess.Popen(args, env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                                    stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status):
            with open(os.path.join(tmp, "stderr")) as f:
                raise SystemExit(f"the run failed: {f.read()[-2000:]}")
    return usage.ru_maxrss * 1024  # KiB on Linux


if __name__ == "__main__":
    main()
