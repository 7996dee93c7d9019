#!/usr/bin/env bash
# Where does feature learning end, per parametrization: the width sweep of docs/parametrizations.md
# (built-in digits, 3 hidden layers, widths 8..2048, 3 seeds, 300 epochs, Adam, test loss every 5
# epochs, NTK every 10 epochs on 64 test samples) under the standard, NTK and muP
# parametrizations, then one report with the composite parametrization figure. About 25 minutes
# on two CPU cores.
#
#   bash benchmarks/parametrization_widths.sh [OUT]      # default OUT: runs/parametrizations
#
# Learning rates: standard gets the per-width rates that `ntkbench calibrate` placed inside the
# window [120, 300] (the quick preset's table, and 5e-5 at widths 1024 and 2048, docs/presets.md);
# ntk and mup get one rate for every width, 5e-4: the standard rate at the base width 64, where
# all three parametrizations are the same network. Whether one rate then suits every width is
# one of the questions (muP says it should).
set -euo pipefail
out=${1:-runs/parametrizations}
widths=(8 16 32 64 128 256 512 1024 2048)
standard=(3e-3 1e-3 1e-3 4.98e-4 3e-4 3e-4 2e-4 5e-5 5e-5)
table=""
for i in "${!widths[@]}"; do
  table+="standard/${widths[$i]}=${standard[$i]}, "
  table+="ntk/${widths[$i]}=5e-4, mup/${widths[$i]}=5e-4, "
done
table=${table%, }

ntkbench run --config=quick --workdir="$out/sweep" --config.name=parametrizations \
  --config.parametrization='("standard","ntk","mup")' --config.base_width=64 \
  --config.widths="($(IFS=,; echo "${widths[*]}"))" --config.num_seeds=3 --config.eval_every=5 \
  --config.lr_by=parametrization,width --config.lr_table="$table"
ntkbench report --workdir="$out/sweep" --out="$out/report"
