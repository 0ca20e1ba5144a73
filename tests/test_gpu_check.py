"""benchmarks/gpu_check.sh in its CPU dry mode (``--device cpu --tiny``). By default, a smoke run with the benchmarks,
the GPU tests and the study replaced by a stand-in interpreter that records what it was asked to run: every step runs
with the arguments the dry mode means, a failing step is recorded and the check goes on, and gpu_check.json records
each step. Under ``-m slow``, the whole dry run: every step runs and passes, and gpu_check.json records each step, the
benchmarks' positive finite timings, the GPU tests (all skipped here) and the study's stage timings and results."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from diffprobe.study.config import StudyConfig
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


SHIM = """#!/usr/bin/env bash
# gpu_check.sh's interpreter in the smoke test: the script's own summary steps run; every other step is recorded in
# $CALLS (its argv as a JSON line) instead of run, and the GPU tests fail, to see the check record it and go on.
if [[ $1 == benchmarks/gpu_check_summary.py ]]; then exec "$REAL_PYTHON" "$@"; fi
"$REAL_PYTHON" -c 'import json, sys; open(sys.argv[1], "a").write(json.dumps(sys.argv[2:]) + "\\n")' "$CALLS" "$0" "$@"
[[ $* != *"-m pytest"* ]]
"""


def dry_run(out: Path, python: str, extra_env: dict[str, str] | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``gpu_check.sh --device cpu --tiny --out OUT`` with ``python`` as its interpreter."""
    # One thread per process: the dry mode checks the plumbing, and on a shared machine torch's threads would
    # otherwise fight the other jobs' (README, Benchmarks: what that cost).
    env = {**os.environ, "PYTHON": python, "OMP_NUM_THREADS": "1", **(extra_env or {}),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)], cwd=out.parent,
                          env=env, capture_output=True, text=True, timeout=timeout)


def option(argv: list[str], flag: str) -> str:
    """The value given to ``flag`` in ``argv`` (its last occurrence)."""
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def check_commands(commands: dict[str, list[str]], out: Path) -> None:
    """What each step of the CPU dry mode runs, read from its parsed arguments."""
    assert list(commands) == STEPS
    env, denoiser, features, tests, study = (commands[s] for s in STEPS)
    assert env[1:3] == ["benchmarks/gpu_check_summary.py", "env"] and option(env, "--device") == "cpu"
    assert Path(option(env, "--out")) == out / "env.json"
    assert denoiser[1] == "benchmarks/bench_denoiser.py" and option(denoiser, "--device") == "cpu"
    assert option(denoiser, "--dtype") == "fp32" and Path(option(denoiser, "--out")) == out / "bench_denoiser.json"
    assert option(denoiser, "--settings") == "tiny clip (80 tokens)" and option(denoiser, "--repeats") == "1"
    assert "--peak-tflops" not in denoiser  # CPU: the benchmark measures its peak
    assert features[1] == "benchmarks/bench_features.py" and option(features, "--device") == "cpu"
    assert "--tiny" in features and option(features, "--repeats") == "1"
    assert Path(option(features, "--out")) == out / "bench_features.json"
    assert tests[1:3] == ["-m", "pytest"] and option(tests[3:], "-m") == "gpu" and "tests/test_gpu.py" in tests
    assert Path(option(tests, "--junitxml")) == out / "pytest_gpu.xml"
    assert study[1:4] == ["-m", "diffprobe.cli", "study"] and "--no-report" in study
    assert Path(option(study, "--out")) == out / "study"
    # the study it asks for: the tiny preset on the CPU, a few steps of every stage, one probe seed
    assert option(study, "--preset") == "tiny"
    cfg = StudyConfig.preset("tiny").override([study[i + 1] for i, arg in enumerate(study) if arg == "--set"])
    assert cfg.device == "cpu" and list(cfg.probe_seeds) == [0]
    steps = (cfg.tokenizer.train.steps, cfg.twin.train.steps, cfg.feature_net.train.steps, cfg.probe.steps)
    assert max(steps) <= 5, steps


def test_smoke_run_runs_every_step_with_its_arguments_and_records_a_failure(tmp_path: Path) -> None:
    """The dry mode's plumbing in seconds: the environment and summary steps run, the others are recorded by a
    stand-in interpreter; the JSON records each command as it ran, a failed step fails the check but not the steps
    after it, and an output a step did not write is recorded as an error."""
    out, calls, shim = tmp_path / "gpu_check", tmp_path / "calls.jsonl", tmp_path / "python"
    shim.write_text(SHIM)
    shim.chmod(0o755)
    proc = dry_run(out, str(shim), {"REAL_PYTHON": sys.executable, "CALLS": str(calls)}, timeout=120)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]  # the GPU tests "failed"
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["ok"] is False and result["device"] == "cpu" and result["env"]["device"] == "cpu"
    assert "4 of 5 steps passed" in proc.stdout and "[pytest_gpu] FAILED (rc 1)" in proc.stdout
    steps = {s["name"]: s for s in result["steps"]}
    assert [name for name, s in steps.items() if s["rc"] != 0] == ["pytest_gpu"]
    assert all(s["limit_s"] > 0 and not s["timed_out"] and (out / s["log"]).is_file() for s in steps.values())
    commands = {name: shlex.split(s["command"]) for name, s in steps.items()}
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert recorded == [commands[name] for name in STEPS[1:]]  # each step ran what the JSON says, in order
    check_commands(commands, out.resolve())
    assert "error" in result["bench_features"] and "error" in result["pytest"]  # outputs the stand-in did not write
    assert "not written" in result["study"]["results"]["error"]


@pytest.mark.slow
def test_cpu_dry_run_passes_every_step_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check"
    start = time.perf_counter()
    proc = dry_run(out, sys.executable)
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
    check_commands({s["name"]: shlex.split(s["command"]) for s in result["steps"]}, out.resolve())

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
