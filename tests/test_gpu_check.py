"""benchmarks/gpu_check.sh in its CPU dry mode (``--device cpu --tiny``): every step runs and passes, and
gpu_check.json records each step, the benchmarks' positive finite timings, the GPU tests (all skipped here) and the
study's stage timings and results."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from diffprobe.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["env", "bench_denoiser_fp32", "bench_features", "pytest_gpu", "study"]  # on CPU: no bf16 benchmark
STUDY_STAGES = {"tokenizer", "twin main-video", "twin main-image", "feature net", "extract", "probes", "generation",
                "pca", "total"}


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def feature_timings(node: Any, key: str = "") -> list[float]:
    """Every timing of bench_features' result: the values of ``*_s`` spreads and the ``*_per_s`` rates."""
    if isinstance(node, dict):
        if key.endswith("_s"):
            return list(node.values())
        return [v for k, child in node.items() for v in feature_timings(child, k)]
    if isinstance(node, list):
        return [v for child in node for v in feature_timings(child, key)]
    return [node] if key.endswith("_per_s") else []


def gpu_test_ids() -> list[str]:
    """The tests of tests/test_gpu.py as pytest collects them with the default options (``-m 'not slow'``)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "tests/test_gpu.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [line for line in proc.stdout.splitlines() if line.startswith("tests/test_gpu.py::")]


def test_cpu_dry_run_passes_every_step_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check"
    # One thread per process: the dry mode checks the plumbing, and on a shared 2-core machine torch's threads would
    # otherwise fight the other jobs' (bench_denoiser's step ran 10x slower that way here).
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # written atomically: no temp file left
    assert result["mode"] == "tiny" and result["device"] == "cpu" and result["ok"] is True
    assert result["torch"] and result["device_name"] and result["env"]["cuda_available"] in (True, False)
    assert 0 < result["wall_s"] <= seconds
    assert "5 of 5 steps passed" in proc.stdout and f"wrote {out / 'gpu_check.json'}" in proc.stdout

    assert [s["name"] for s in result["steps"]] == STEPS
    for step in result["steps"]:
        assert step["rc"] == 0 and not step["timed_out"], step
        assert positive(step["wall_s"]) and step["wall_s"] <= step["limit_s"], step
        assert step["command"] and (out / step["log"]).is_file(), step
    commands = {s["name"]: s["command"] for s in result["steps"]}
    assert "--settings 'tiny clip (80 tokens)' --repeats 1" in commands["bench_denoiser_fp32"]
    assert "--peak-tflops" not in commands["bench_denoiser_fp32"]  # CPU: the benchmark measures its peak
    assert "--tiny --repeats 1" in commands["bench_features"]
    assert "-m gpu" in commands["pytest_gpu"] and "--preset tiny" in commands["study"]

    (denoiser,) = result["bench_denoiser"].values()
    assert list(result["bench_denoiser"]) == ["fp32"] and denoiser["dtype"] == "fp32" and denoiser["repeats"] == 1
    assert positive(denoiser["peak_gflops"]) and denoiser["peak_source"] == "fp32 1024^3 matmul"
    assert [r["model"] for r in denoiser["rows"]] == ["walt", "latte", "cogvideox"]
    for row in denoiser["rows"]:
        assert row["setting"] == "tiny clip (80 tokens)"
        for key in ("step_ms", "step_ms_min", "step_ms_max", "forward_ms", "step_gflop", "gflops_per_s", "mfu",
                    "memory_mb"):
            assert positive(row[key]), (row["model"], key, row[key])

    features = result["bench_features"]
    assert features["tiny"] is True and features["repeats"] == 1 and features["device"] == "cpu"
    timings = feature_timings(features)
    assert len(timings) == 3 * (4 + 3) + 4  # spreads: 4 extraction, 3 probe steps; 4 rates
    assert all(positive(v) for v in timings), timings

    tests = gpu_test_ids()
    assert len(tests) >= 7, tests
    counts = result["pytest"]
    assert counts["failed"] == 0 and counts["errors"] == 0 and counts["passed"] == 0 and counts["xfailed"] == 0
    assert counts["skipped"] == counts["tests"] == len(tests)  # every test of the file is gpu-marked, and skips
    assert len(counts["skip_reasons"]) == 1 and "CUDA" in counts["skip_reasons"][0]

    study = result["study"]
    assert set(study["timings"]) == STUDY_STAGES, study["timings"]
    assert all(math.isfinite(v) and v >= 0 for v in study["timings"].values()) and positive(study["timings"]["total"])
    results = study["results"]
    assert "error" not in results, results
    assert results["study"] == "probeworld-tiny" and results["cells"] > 0 and results["non_finite"] == 0
    assert results["tasks"] == sorted(TASKS)
    assert {"walt-video", "walt-image", "walt-untrained", "latents", "pixels", "prior"} == set(results["backbones"])
    assert "video/image" in results["table"]
