"""Profile the NTK kernels on the paper's MLP: time, throughput, FLOP rate and memory.

`profile_kernels` builds the paper's dense net (784 inputs, `depth` hidden ReLU layers, 10 logits;
docs/definitions.md §9-10) at each width and times, on `n` random inputs:

- every NTK method of `ntkbench.kernels` (jit warm-up excluded, median of `repeats`,
  `block_until_ready`), with the FLOPs of XLA's cost analysis of the compiled program, the
  achieved GFLOP/s, XLA's memory estimate of the program, and the speedup over `jacobian`;
- `ntk_trace` (docs/definitions.md §2 trace without the NTK) against the full structured NTK;
- a pack of `pack_size` members, one vmapped call against `pack_size` single calls;
- a large float32 matmul at full precision, the machine's reference rate (`peak`), timed in
  the same run (at the start and after every width; the fastest counts) so that `%peak`
  compares like with like on a shared or throttled machine.

Methods whose memory estimate exceeds the limit are reported as "skipped (memory)" and never run.

`format_table(rows)` (in `ntkbench._profile.table`) renders the rows; `benchmarks/bench_kernels.py`
and the CLI print it. The timing of one case (`measure`, `matmul_peak`, the row `COLUMNS`) is in
`ntkbench._profile.timing`.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from ntkbench import kernels
from ntkbench._config import SweepConfig, from_config_dict
from ntkbench._data import load_dataset
from ntkbench._profile.table import format_table
from ntkbench._profile.timing import (
    compiled_flops,
    default_memory_limit,
    make_row,
    matmul_peak,
    measure,
    median_time,
    memory_bytes,
)
from ntkbench.models import MLP


def _neural_tangents_row(width, model, x, repeats, limit) -> dict:
    """neural-tangents' structured-derivatives NTK, if it imports (it needs TensorFlow)."""
    try:
        import neural_tangents as nt
    except Exception as e:  # noqa: BLE001
        return make_row(width, "neural_tangents", f"skipped ({type(e).__name__} on import)")
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def apply_fn(p, xb):
        return jax.vmap(eqx.combine(p, static))(xb)

    try:
        ntk_fn = nt.empirical_ntk_fn(
            apply_fn,
            trace_axes=(),
            vmap_axes=0,
            implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES,
        )
        return measure(
            width, "neural_tangents", lambda p, xb: ntk_fn(xb, None, p), (params, x), repeats, limit
        )
    except Exception as e:  # noqa: BLE001
        return make_row(width, "neural_tangents", f"failed ({type(e).__name__})", note=str(e)[:60])


def profile_kernels(
    widths: Sequence[int] = (64, 256, 1024),
    methods: Sequence[str] = ("jacobian", "implicit", "structured"),
    n: int = 128,
    depth: int = 3,
    in_size: int = 784,
    out_size: int = 10,
    repeats: int = 5,
    pack_size: int = 20,
    compare_neural_tangents: bool = False,
    *,
    key: PRNGKeyArray,
    memory_limit_bytes: int | None = None,
    time_budget_s: float | None = 60.0,
    peak_matmul_size: int | None = None,
    sequential: bool = True,
    trace_dir: str | None = None,
) -> list[dict]:
    """Profile the NTK methods on the paper's MLP at each width (see the module docstring).

    Example:
        >>> rows = profile_kernels(widths=(8,), n=4, repeats=1, pack_size=2, key=jax.random.key(0))
        >>> print(format_table(rows))  # doctest: +SKIP

    Args:
        widths: hidden widths to profile.
        methods: NTK methods (`ntkbench.kernels.NtkMethod` values) to time.
        n: number of inputs (the paper: 128).
        depth: hidden layers (the paper: 3).
        in_size, out_size: input size and number of logits (MNIST: 784, 10).
        repeats: timed calls per case (median reported).
        pack_size: members of the vmapped pack (0 to skip the pack rows).
        compare_neural_tangents: also time neural-tangents (only if it imports).
        key: PRNG key for the models and inputs.
        memory_limit_bytes: skip cases whose XLA memory estimate exceeds this
            (default: `default_memory_limit()`).
        time_budget_s: per case, make fewer than `repeats` timed calls when the warm-up call
            shows they would take longer than this (None: always `repeats`).
        peak_matmul_size: side of the reference matmul (default 2048 on CPU, 8192 otherwise).
        sequential: how the pack rows run their members (`ntkbench.kernels.pack_map`): one at
            a time (right on CPUs) or batched (accelerators).
        trace_dir: write a `jax.profiler` trace of one structured NTK per width there.

    Returns:
        A list of rows (dicts with the keys `COLUMNS`): one `matmul_peak` row, then per width one
        row per method, `trace`, `pack_vmap`, `pack_loop` (and `neural_tangents`).
    """
    limit = default_memory_limit() if memory_limit_bytes is None else int(memory_limit_bytes)
    kx, kmodels = jax.random.split(key)
    x = jax.random.uniform(kx, (n, in_size), jnp.float32)
    peak = matmul_peak(peak_matmul_size, repeats=repeats)
    rows = [peak]
    for width in widths:
        kw = jax.random.fold_in(kmodels, width)
        model = MLP(in_size, out_size, width, depth, key=kw)
        params, static = eqx.partition(model, eqx.is_array)
        width_rows = _method_rows(width, params, static, x, methods, repeats, limit,
                                  time_budget_s)
        rows.extend(width_rows.values())
        rows.append(_trace_row(width, params, static, x, width_rows.get("structured"), repeats,
                               limit))
        if trace_dir:
            _profiler_trace(params, static, x, trace_dir)
        if pack_size:
            rows.extend(
                _pack_rows(
                    width, kw, static, x, in_size, out_size, depth, pack_size, repeats, limit,
                    sequential,
                )
            )
        if compare_neural_tangents:
            rows.append(_neural_tangents_row(width, model, x, repeats, limit))
        # Re-time the matmul after every width and keep the fastest: on a shared or throttled
        # machine one slow reference timing would inflate every %peak.
        again = matmul_peak(peak_matmul_size, repeats=repeats)
        if again["time_s"] < peak["time_s"]:
            peak.update(again)
    peak["note"] += f"; fastest of {len(widths) + 1} timings in this run"
    for row in rows:
        if row["gflop_per_s"] is not None and peak["gflop_per_s"]:
            row["frac_peak"] = row["gflop_per_s"] / peak["gflop_per_s"]
    return rows


def _method_rows(width, params, static, x, methods, repeats, limit, budget_s) -> dict[str, dict]:
    """One row per NTK method, in the order of `methods`, with its speedup over `jacobian`."""
    width_rows = {}
    for method in methods:

        def full(p, xb, method=method, static=static):
            return kernels.ntk(eqx.combine(p, static), xb, method=method)

        width_rows[method] = measure(
            width, method, full, (params, x), repeats, limit, budget_s=budget_s
        )
    ref = width_rows.get("jacobian")
    for row in width_rows.values():
        if ref is not None and ref["time_s"] and row["time_s"]:
            row["speedup"] = ref["time_s"] / row["time_s"]
    return width_rows


def _structured_fn(static):
    def structured(p, xb):
        return kernels.ntk(eqx.combine(p, static), xb, method="structured")

    return structured


def _trace_row(width, params, static, x, srow, repeats, limit) -> dict:
    """The docs/definitions.md §2 trace from the diagonal, against the full structured NTK
    (`srow`, the structured method's row, is timed here when the methods did not include it)."""

    def trace(p, xb, static=static):
        return kernels.ntk_trace(eqx.combine(p, static), xb)

    srow = srow or measure(width, "structured", _structured_fn(static), (params, x), repeats,
                            limit)
    trow = measure(
        width,
        "trace",
        trace,
        (params, x),
        repeats,
        limit,
        note="ntk_trace vs full structured NTK",
    )
    if srow["time_s"] and trow["time_s"]:
        trow["speedup"] = srow["time_s"] / trow["time_s"]
    return trow


def _profiler_trace(params, static, x, trace_dir: str) -> None:
    """A `jax.profiler` trace of one structured NTK (compiled and run once before)."""
    jitted = jax.jit(_structured_fn(static))
    jax.block_until_ready(jitted(params, x))
    jax.profiler.start_trace(trace_dir)
    jax.block_until_ready(jitted(params, x))
    jax.profiler.stop_trace()


def _pack_rows(width, key, static, x, in_size, out_size, depth, pack_size, repeats, limit,
               sequential):
    """A pack of structured NTKs in one call (`pack_map`) against `pack_size` single calls.

    Both rows count `pack_size` times the FLOPs of one member: with `sequential` the pack runs
    its members in a loop, whose body XLA's cost analysis counts once.
    """
    keys = jax.random.split(key, pack_size)
    pack = eqx.filter_vmap(lambda k: MLP(in_size, out_size, width, depth, key=k))(keys)
    pack_params, pack_static = eqx.partition(pack, eqx.is_array)

    def single(p, xb):
        return kernels.ntk(eqx.combine(p, static), xb, method="structured")

    members = [jax.tree.map(lambda a, i=i: a[i], pack_params) for i in range(pack_size)]
    compiled = jax.jit(single).lower(members[0], x).compile()
    flops = compiled_flops(compiled)
    pack_flops = None if flops is None else pack_size * flops

    def vmapped(p, xb):
        one = lambda m: kernels.ntk(m, xb, method="structured")
        return kernels.pack_map(one, eqx.combine(p, pack_static), sequential=sequential)

    vrow = measure(
        width,
        "pack_vmap",
        vmapped,
        (pack_params, x),
        repeats,
        limit,
        per_call=pack_size,
        note=f"{pack_size} members, one call ({'lax.map' if sequential else 'vmap'})",
        flops=pack_flops,
    )
    mem = memory_bytes(compiled)
    t, _ = median_time(lambda: [compiled(m, x) for m in members], repeats)
    lrow = make_row(
        width,
        "pack_loop",
        "ok",
        t,
        gflop=None if pack_flops is None else pack_flops / 1e9,
        mem=mem,
        per_call=pack_size,
        note=f"{pack_size} single calls",
    )
    if vrow["time_s"]:
        vrow["speedup"] = t / vrow["time_s"]
    return [vrow, lrow]


def profile_model(model_fn, config, *, n: int = 128, repeats: int = 3, key: PRNGKeyArray,
                  methods: Sequence[str] = ("jacobian", "implicit", "hybrid", "auto")) -> str:
    """Which NTK method `auto` picks for a user's model and why, and what each method costs.

    For every width of `config` (a `SweepConfig` or `ConfigDict` whose file defines
    `model_fn`, docs/models.md), one member is built on `config.dataset`'s input shape and the
    NTK of `n` test samples is timed with every method (median of `repeats`, compile
    excluded). Methods the model does not support are reported as such.

    Returns:
        A printable report: `explain_method`'s paragraph per width, then a table.
    """
    cfg = config if isinstance(config, SweepConfig) else from_config_dict(config)
    data = load_dataset(cfg.dataset, cfg.data_dir or None)
    x = jnp.asarray(data.x_test[:n].reshape(min(n, len(data.y_test)), -1))
    lines, rows = [], []
    for width in cfg.widths:
        model = model_fn(width, jax.random.fold_in(key, width), input_shape=data.input_shape,
                         num_classes=data.num_classes)
        lines.append(f"width {width}: {kernels.explain_method(model, x)}")
        params, static = eqx.partition(model, eqx.is_array)
        for method in methods:

            def full(p, xb, method=method, static=static):
                return kernels.ntk(eqx.combine(p, static), xb, method=method)

            try:
                row = measure(width, method, full, (params, x), repeats,
                               default_memory_limit())
            except (ValueError, TypeError) as e:  # e.g. "structured" on a non-protocol model
                row = make_row(width, method, "unsupported", note=str(e).splitlines()[0][:60])
            rows.append(row)
    return "\n".join(lines) + "\n\n" + format_table(rows)
