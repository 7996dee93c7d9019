#!/usr/bin/env bash
# The paper's MNIST experiments on the built-in real MNIST (`mnist5k`, no files to fetch), sized
# to two CPU cores (measured: model scaling about 65 minutes, data scaling about 15): docs/reproduction.md gives the measured table,
# the figures and what was reduced against the paper (5 seeds or data draws instead of 20, widths
# up to 2048, test metrics every 5 epochs, NTK records every 5 epochs up to epoch 100 and every 25
# after).
#
#   bash benchmarks/reproduce_mnist.sh [OUT]        # default OUT: runs/reproduction
#   bash benchmarks/reproduce_mnist.sh OUT model    # only model scaling (or: data)
#
# Both sweeps resume where they stopped when run again; each report goes to OUT/<sweep>/report.
# The learning rates are the presets' per-point tables (calibrated with `ntkbench calibrate`,
# docs/presets.md), so every point's k* should lie in the paper's window [400, 1000]; the report's
# first line says how many do, and the fits use only those.
set -euo pipefail
out=${1:-runs/reproduction}
which=${2:-all}

if [[ $which == all || $which == model ]]; then
  ntkbench run --config=paper_model_scaling --workdir="$out/model_scaling" \
    --config.widths='(8,16,32,64,128,256,512,1024,2048)' --config.num_seeds=5 \
    --config.eval_every=5 --config.ntk_every=25 --config.ntk_early_every=5 --config.ntk_early_until=100
  ntkbench report --workdir="$out/model_scaling" --out="$out/model_scaling/report"
fi
if [[ $which == all || $which == data ]]; then
  ntkbench run --config=paper_data_scaling --workdir="$out/data_scaling" \
    --config.num_data_draws=5 --config.eval_every=5 --config.ntk_every=25 \
    --config.ntk_early_every=5 --config.ntk_early_until=100
  ntkbench report --workdir="$out/data_scaling" --out="$out/data_scaling/report"
fi
