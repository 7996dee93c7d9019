"""Measuring one compiled case of a profile: median wall time, XLA's FLOP count and memory
estimate, the device's memory peak, and the reference matmul rate; `COLUMNS` names what a row
holds.

`measure` compiles a function, skips it when XLA's memory estimate exceeds the limit, and
otherwise times it into a row; `ntkbench._profile.profiling` runs the cases and
`ntkbench._profile.table` renders the rows.
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp

COLUMNS = (
    "width",
    "case",
    "status",
    "time_s",
    "ntk_per_s",
    "gflop",
    "gflop_per_s",
    "frac_peak",
    "mem_mib",
    "device_peak_mib",
    "speedup",
    "note",
)
"""Keys of every row `profile_kernels` returns (missing values are None).

- `case`: a method name, "trace", "pack_vmap", "pack_loop" or "matmul_peak".
- `time_s`: median seconds per call; `ntk_per_s`: NTKs (or traces) per second.
- `gflop`: XLA cost-analysis FLOPs of one call / 1e9; `gflop_per_s`: `gflop / time_s`.
- `frac_peak`: `gflop_per_s` over the matmul rate of the same run.
- `mem_mib`: XLA's memory estimate of the compiled program (arguments + outputs + temporaries),
  available on every backend; it decides "skipped (memory)".
- `device_peak_mib`: the device's `memory_stats()["peak_bytes_in_use"]` after the case, where
  the backend reports it (GPUs, TPUs; None on CPU). It is a process-wide running maximum, so it
  measures a case only when that case raised it above all earlier ones.
- `speedup`: time of the reference case over this case (`jacobian` for methods, the full
  structured NTK for `trace`, `pack_loop` for `pack_vmap`).
"""


def median_time(fn, repeats: int, budget_s: float | None = None) -> tuple[float, int]:
    """Median wall time of `fn()` over `repeats` calls after one warm-up call.

    If the warm-up call shows that `repeats` calls would exceed `budget_s`, fewer are made
    (at least one). Returns the median and the number of timed calls.
    """
    start = time.perf_counter()
    jax.block_until_ready(fn())  # warm-up (compilation is done before)
    first = time.perf_counter() - start
    if budget_s is not None and first > 0:
        repeats = min(repeats, max(1, int(budget_s / first)))
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def compiled_flops(compiled) -> float | None:
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend offers it
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca or "flops" not in ca:
        return None
    return float(ca["flops"])


def memory_bytes(compiled) -> int | None:
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if ma is None:
        return None
    return int(
        ma.argument_size_in_bytes
        + ma.output_size_in_bytes
        + ma.temp_size_in_bytes
        - ma.alias_size_in_bytes
    )


def _device_peak_bytes() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def default_memory_limit() -> int:
    """90% of the accelerator's memory (`memory_stats()["bytes_limit"]`), else a third of the
    host RAM (XLA's estimate can be low, and a host is shared with the OS and other jobs)."""
    dev = jax.devices()[0]
    try:
        stats = dev.memory_stats()
    except Exception:  # noqa: BLE001
        stats = None
    if stats and "bytes_limit" in stats:
        return int(0.9 * stats["bytes_limit"])
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 3)
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def matmul_peak(size: int | None = None, repeats: int = 5) -> dict:
    """Rate of a large float32 matmul at full precision: the reference for `frac_peak`."""
    if size is None:
        size = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    fn = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    compiled = fn.lower(a, b).compile()
    t, _ = median_time(lambda: compiled(a, b), repeats)
    gflop = 2.0 * size**3 / 1e9
    return make_row(None, "matmul_peak", "ok", t, gflop=gflop, note=f"{size}x{size} f32 HIGHEST")


def make_row(width, case, status, t=None, *, gflop=None, mem=None, per_call=1, note=None) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(width=width, case=case, status=status, note=note)
    if t is not None:
        row["time_s"] = t
        row["ntk_per_s"] = per_call / t
        if gflop is not None:
            row["gflop"] = gflop
            row["gflop_per_s"] = gflop / t
    elif gflop is not None:
        row["gflop"] = gflop
    if mem is not None:
        row["mem_mib"] = mem / 2**20
    if t is not None:
        peak = _device_peak_bytes()
        row["device_peak_mib"] = None if peak is None else peak / 2**20
    return row


def measure(
    width, case, fn, args, repeats, limit, per_call=1, note=None, budget_s=None, flops=None
) -> dict:
    """Compile `fn(*args)`, skip it if XLA's memory estimate exceeds `limit`, else time it.

    `flops` replaces XLA's count where that count is known to be short (XLA's cost analysis
    counts the body of a loop once).
    """
    compiled = jax.jit(fn).lower(*args).compile()
    flops = compiled_flops(compiled) if flops is None else flops
    mem = memory_bytes(compiled)
    gflop = None if flops is None else flops / 1e9
    if mem is not None and mem > limit:
        return make_row(
            width,
            case,
            "skipped (memory)",
            gflop=gflop,
            mem=mem,
            note=f"estimate {mem / 2**30:.1f} GiB > limit {limit / 2**30:.1f} GiB",
        )
    t, calls = median_time(lambda: compiled(*args), repeats, budget_s)
    if calls < repeats:
        note = ((note + "; ") if note else "") + f"{calls} timed call(s) (time budget)"
    return make_row(width, case, "ok", t, gflop=gflop, mem=mem, per_call=per_call, note=note)

