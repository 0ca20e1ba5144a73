"""benchmarks/bench_features.py in its --tiny dry mode: it runs every measurement and writes a JSON of the promised
structure in which every time is a positive finite number."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_features.py"


def _timings(node: Any, key: str = "") -> list[float]:
    """Every timing: the values of ``*_s`` spreads (median, min, max) and the ``*_per_s`` rates."""
    if isinstance(node, dict):
        if key.endswith("_s"):
            assert set(node) == {"median", "min", "max"}, key
            assert node["min"] <= node["median"] <= node["max"], key
            return list(node.values())
        return [v for k, child in node.items() for v in _timings(child, k)]
    if isinstance(node, list):
        return [v for child in node for v in _timings(child, key)]
    return [node] if key.endswith("_per_s") else []


def test_tiny_run_writes_positive_finite_timings(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--repeats", "2", "--device", "cpu", "--out",
                           str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GFLOP/s" in proc.stdout and f"wrote {out}" in proc.stdout
    result = json.loads(out.read_text())
    assert {"torch", "device", "peak_gflops", "repeats", "tiny", "extraction", "cache"} <= set(result)
    assert "bank" not in result  # banks of several probes are benchmarks/bench_probes.py's
    assert result["device"] == "cpu" and result["tiny"] is True and result["repeats"] == 2
    assert math.isfinite(result["peak_gflops"]) and result["peak_gflops"] > 0
    (row,) = result["extraction"]  # --tiny: the tiny model only
    assert row["model"] == "walt-tiny" and row["blocks"] == [1, 2, 3, 4, 5, 6] and row["block"] in row["blocks"]
    for kind in ("render", "first", "one", "every"):
        assert f"{kind}_s" in row and f"{kind}_clips_per_s" in row
    cache = result["cache"]
    assert {"cached_s", "recompute_s", "recompute_latents_s", "ratio", "goal", "meets_goal"} <= set(cache)
    assert cache["ratio"] > 0 and cache["meets_goal"] == (cache["ratio"] >= cache["goal"])
    timings = _timings(result)
    assert len(timings) == 3 * (4 + 3) + 4  # spreads: 4 extraction, 3 probe steps; 4 rates
    assert all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in timings)
