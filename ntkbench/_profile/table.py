"""Rendering profile rows (`ntkbench._profile.timing.COLUMNS`) as an aligned text table."""

from __future__ import annotations

import math
from collections.abc import Sequence


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return format(value, spec)


def format_table(rows: Sequence[dict]) -> str:
    """Render `profile_kernels` rows as an aligned text table (one line per row).

    Example:
        >>> format_table([]).splitlines()[0].split()[:3]
        ['width', 'case', 'status']
    """
    header = (
        "width",
        "case",
        "status",
        "time [s]",
        "NTK/s",
        "GFLOP",
        "GFLOP/s",
        "%peak",
        "mem [MiB]",
        "dev peak [MiB]",
        "speedup",
        "note",
    )
    lines = [header]
    for r in rows:
        lines.append(
            (
                _fmt(r.get("width"), "d"),
                str(r.get("case")),
                str(r.get("status")),
                _fmt(r.get("time_s"), ".4g"),
                _fmt(r.get("ntk_per_s"), ".4g"),
                _fmt(r.get("gflop"), ".4g"),
                _fmt(r.get("gflop_per_s"), ".4g"),
                _fmt(None if r.get("frac_peak") is None else 100 * r["frac_peak"], ".0f"),
                _fmt(r.get("mem_mib"), ".1f"),
                _fmt(r.get("device_peak_mib"), ".1f"),
                _fmt(r.get("speedup"), ".3g"),
                r.get("note") or "",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for j, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
