"""Tests of `ntkbench._profile.profiling`: a tiny profile runs in seconds and fills the table."""

from __future__ import annotations

import jax
import pytest

from ntkbench import format_table, profile_kernels
from ntkbench._profile import COLUMNS


@pytest.fixture(scope="module")
def rows():
    return profile_kernels(
        widths=(8,),
        n=4,
        depth=2,
        in_size=6,
        out_size=3,
        repeats=2,
        pack_size=2,
        key=jax.random.key(0),
        peak_matmul_size=256,
    )


def test_rows_have_every_column_and_case(rows):
    assert all(set(r) == set(COLUMNS) for r in rows)
    cases = [r["case"] for r in rows]
    assert cases == [
        "matmul_peak",
        "jacobian",
        "implicit",
        "structured",
        "trace",
        "pack_vmap",
        "pack_loop",
    ]
    for r in rows:
        assert r["status"] == "ok"
        assert r["time_s"] > 0 and r["ntk_per_s"] > 0
        assert r["gflop"] is not None and r["gflop"] > 0
        assert r["frac_peak"] is not None
    by_case = {r["case"]: r for r in rows}
    assert by_case["matmul_peak"]["frac_peak"] == pytest.approx(1.0)
    assert by_case["jacobian"]["speedup"] == pytest.approx(1.0)
    for case in ("implicit", "structured", "trace", "pack_vmap"):
        assert by_case[case]["speedup"] > 0
    assert by_case["pack_vmap"]["ntk_per_s"] == pytest.approx(2 / by_case["pack_vmap"]["time_s"])


def test_table_lists_every_row(rows):
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["width", "case", "status"]
    for col in ("time [s]", "NTK/s", "GFLOP/s", "%peak", "mem [MiB]", "speedup"):
        assert col in lines[0]
    assert len(lines) == 2 + len(rows)
    assert "structured" in table and "pack_vmap" in table


def test_memory_limit_skips_without_running():
    rows = profile_kernels(
        widths=(8,),
        methods=("jacobian",),
        n=4,
        depth=1,
        in_size=6,
        out_size=3,
        repeats=1,
        pack_size=0,
        key=jax.random.key(0),
        memory_limit_bytes=1,
        peak_matmul_size=128,
    )
    skipped = [r for r in rows if r["case"] != "matmul_peak"]
    assert skipped and all(r["status"] == "skipped (memory)" for r in skipped)
    assert all(r["time_s"] is None and r["mem_mib"] > 0 for r in skipped)
    assert "skipped (memory)" in format_table(rows)
