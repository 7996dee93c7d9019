"""Profile the NTK kernels on the paper's MLP and print the table.

    python benchmarks/bench_kernels.py                      # widths 64 256 1024, N=128, 5 repeats
    python benchmarks/bench_kernels.py --widths 64 256 --repeats 3 --pack-size 20

Columns are described in `ntkbench._profile.timing.COLUMNS`. Cases whose XLA memory estimate exceeds
the limit (default: 90% of accelerator memory, or half the host RAM) print "skipped (memory)".
"""

from __future__ import annotations

import argparse
import json

import jax

from ntkbench import format_table, profile_kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--methods", nargs="+", default=["jacobian", "implicit", "structured"])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pack-size", type=int, default=20)
    parser.add_argument("--memory-limit-gib", type=float, default=None)
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=60.0,
        help="per case: fewer timed calls if the repeats would take longer",
    )
    parser.add_argument("--neural-tangents", action="store_true", help="also time neural-tangents")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = profile_kernels(
        widths=tuple(args.widths),
        methods=tuple(args.methods),
        n=args.n,
        depth=args.depth,
        repeats=args.repeats,
        pack_size=args.pack_size,
        compare_neural_tangents=args.neural_tangents,
        key=jax.random.key(args.seed),
        time_budget_s=args.time_budget_s,
        memory_limit_bytes=None
        if args.memory_limit_gib is None
        else int(args.memory_limit_gib * 2**30),
    )
    print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
