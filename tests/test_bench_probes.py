"""benchmarks/bench_probes.py in its --tiny dry mode: every row of every task with positive finite times, and a bank's
FLOPs exactly P times one probe's (vectorising the probes must not change the work)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_probes.py"
ROWS = ["one", "sequential", "seeds x rates", "backbones x seeds"]


def test_tiny_run_writes_every_row_with_its_flops(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--repeats", "2", "--device", "cpu",
                           "--tasks", "action,point_tracking", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GFLOP/s" in proc.stdout and f"wrote {out}" in proc.stdout
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["tiny"] is True and result["repeats"] == 2 and result["threads"] == 1
    assert math.isfinite(result["peak_gflops"]) and result["peak_gflops"] > 0
    rows = result["rows"]
    assert [(r["task"], r["row"]) for r in rows] == [(t, n) for t in ("action", "point_tracking") for n in ROWS]
    for task in ("action", "point_tracking"):
        one, sequential, *banks = (r for r in rows if r["task"] == task)
        assert (one["probes"], one["banks"], one["streams"]) == (1, 1, 1)
        assert (sequential["probes"], sequential["banks"], sequential["streams"]) == (12, 12, 12)
        assert [(b["probes"], b["banks"], b["streams"]) for b in banks] == [(12, 1, 3), (12, 1, 12)]
        assert one["flops"] > 0
        for r in (sequential, *banks):
            # P x one probe's FLOPs, within the weight-side matrix-vector products (the LayerNorm shifts folded into
            # the biases) that torch's counter sees only once vmap makes them batched matmuls
            assert r["flops"] == pytest.approx(r["probes"] * one["flops"], rel=0.01), (task, r["row"])
        for r in (one, sequential, *banks):
            s = r["step_s"]
            assert 0 < s["min"] <= s["median"] <= s["max"] and math.isfinite(s["max"]), (task, r["row"])
            assert r["vs_one"] == s["median"] / one["step_s"]["median"]
            assert r["speedup_vs_sequential"] == sequential["step_s"]["median"] / s["median"]
            assert math.isclose(r["mfu"], r["flops"] / s["median"] / 1e9 / result["peak_gflops"])
        for b in banks:  # the bars, reported as measured
            assert b["meets_cost_bar"] == (b["vs_one"] <= result["bars"]["cost"])
            assert b["meets_mfu_bar"] == (b["mfu"] >= result["bars"]["mfu"])
        assert "meets_cost_bar" not in one and "meets_cost_bar" not in sequential
