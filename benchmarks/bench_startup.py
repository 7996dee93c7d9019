"""Start-up of the command line: how long `ntkbench --help`, `ntkbench run --help`,
`ntkbench presets` (and `--version`, `status --help`) take, and what they import.

    python benchmarks/bench_startup.py [--repeats=7] [--importtime]

Each command runs `--repeats` times in a fresh interpreter (`python -m ntkbench.launchers.cli`,
what the console script runs); the table gives the fastest and the median wall time (the
machine's noise only slows a run) and whether JAX or matplotlib was imported (neither may be:
tests/test_architecture.py checks it for JAX). A bare `python -c pass` is timed alongside, so
the interpreter's own start-up can be told apart. With `--importtime`, the slowest imports of
`ntkbench run --help` (`python -X importtime`, cumulative microseconds) are listed.

A benchmark, not a test: the figures depend on the machine and its load; the target is under a
second on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = (["--help"], ["--version"], ["run", "--help"], ["presets"], ["status", "--help"])
PROBE = ("import sys, runpy\nsys.argv = ['ntkbench', *{argv!r}]\n"
         "try:\n    runpy.run_module('ntkbench.launchers.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('IMPORTED', 'jax' in sys.modules, 'matplotlib' in sys.modules, file=sys.stderr)")


def _time(argv: list[str] | None, repeats: int) -> tuple[list[float], str]:
    code = "pass" if argv is None else PROBE.format(argv=argv)
    times, tail = [], ""
    for _ in range(repeats):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=False)
        times.append(time.perf_counter() - t)
        tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    return times, tail


def _importtime(argv: list[str], top: int = 15) -> list[tuple[int, str]]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", PROBE.format(argv=argv)],
                         capture_output=True, text=True, check=False).stderr
    rows = []
    for line in out.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            try:
                rows.append((int(cumulative), name.rstrip()))
            except ValueError:
                continue  # the header line
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--importtime", action="store_true")
    args = parser.parse_args()
    print(f"{'command':28} {'fastest':>8} {'median':>8}  imports jax / matplotlib")
    base, _ = _time(None, args.repeats)
    print(f"{'python -c pass':28} {min(base):7.3f}s {statistics.median(base):7.3f}s")
    for argv in COMMANDS:
        times, tail = _time(argv, args.repeats)
        imported = tail.split()[1:] if tail.startswith("IMPORTED") else ["?", "?"]
        print(f"{'ntkbench ' + ' '.join(argv):28} {min(times):7.3f}s "
              f"{statistics.median(times):7.3f}s  {' / '.join(imported)}")
    if args.importtime:
        print("\nslowest imports of `ntkbench run --help` (cumulative, ms):")
        for us, name in _importtime(["run", "--help"]):
            print(f"  {us / 1000:8.1f}  {name}")


if __name__ == "__main__":
    main()
