"""The Python steps of ``benchmarks/gpu_check.sh``.

    python benchmarks/gpu_check_summary.py env --device cuda --out DIR/env.json
        torch version, CUDA availability, the device's name (and ``nvidia-smi``'s view of the GPUs, when there is
        one: recorded, not required), printed and written to DIR/env.json; exits 1 when a CUDA device was asked for
        and CUDA is not available.
    python benchmarks/gpu_check_summary.py peak --env DIR/env.json --dtype bf16
        prints the device's dense peak in TFLOP/s for ``--dtype`` from :data:`PEAKS` by device name (nothing for an
        unknown device or a CPU: the benchmark then measures its own), and says on stderr which was used.
    python benchmarks/gpu_check_summary.py summary --out DIR --mode full --device cuda
        reads DIR/steps.tsv (one line per step, written by the script) and the steps' outputs, writes
        DIR/gpu_check.json atomically and prints a summary table; exits 1 when a step failed.

Only ``env`` and ``summary`` import torch / diffprobe (``peak`` answers at once).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

#: (words the device's name contains, case-insensitively; dense peak TFLOP/s by dtype, or None: unknown), the first
#: matching rule wins. NVIDIA's datasheet figures without sparsity: bf16 on the tensor cores, fp32 on the CUDA cores
#: (bench_denoiser's fp32 runs with TF32 off, torch's default for matmuls).
PEAKS: list[tuple[tuple[str, ...], dict[str, float] | None]] = [
    (("H100", "PCIE"), {"bf16": 756.0, "fp32": 51.0}),
    (("H100", "NVL"), None),  # another clock and power limit: measured rather than guessed
    (("H200",), {"bf16": 989.0, "fp32": 67.0}),
    (("H100",), {"bf16": 989.0, "fp32": 67.0}),  # SXM ("NVIDIA H100 80GB HBM3")
    (("A100",), {"bf16": 312.0, "fp32": 19.5}),
]

#: gpu_check.sh's steps and the files they write under DIR
DENOISER_JSON = {"fp32": "bench_denoiser.json", "bf16": "bench_denoiser_bf16.json"}
FEATURES_JSON = "bench_features.json"
JUNIT = "pytest_gpu.xml"
STUDY = "study"


def env(device: str, out: Path) -> int:
    import torch
    from _common import cpu_name  # benchmarks/_common.py (the script's folder is on sys.path)

    from diffprobe.utils.io import atomic_write_json

    dev = torch.device(device)
    info: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(), "cuda_version": torch.version.cuda, "device": device,
        "threads": torch.get_num_threads(), "cpu": cpu_name()}
    ok = True
    if dev.type == "cuda":
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(dev)
            info.update(device_name=torch.cuda.get_device_name(dev), device_count=torch.cuda.device_count(),
                        capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                        bf16_supported=torch.cuda.is_bf16_supported())
        else:
            info["device_name"] = "unavailable"
            ok = False
    else:
        info["device_name"] = info["cpu"]
    smi = shutil.which("nvidia-smi")
    info["nvidia_smi"] = None
    if smi:
        try:
            proc = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                                  capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = {"rc": proc.returncode, "output": (proc.stdout + proc.stderr).strip()}
        except (OSError, subprocess.TimeoutExpired) as e:
            info["nvidia_smi"] = {"rc": None, "output": f"{type(e).__name__}: {e}"}
    for key in ("torch", "cuda_available", "cuda_version", "device", "device_name", "capability", "memory_gib",
                "bf16_supported", "threads"):
        if key in info:
            print(f"{key:<15}{info[key]}")
    print("nvidia-smi     " + ("not found" if info["nvidia_smi"] is None else
                               "\n               ".join(info["nvidia_smi"]["output"].splitlines())))
    atomic_write_json(out, info)
    if not ok:
        print(f"error: device {device} asked for, but torch.cuda.is_available() is False", file=sys.stderr)
    return 0 if ok else 1


def lookup_peak(name: str, dtype: str) -> tuple[float | None, str]:
    """The dense peak (TFLOP/s) of the device called ``name`` in ``dtype``, and which rule gave it."""
    upper = name.upper()
    for words, peaks in PEAKS:
        if all(w in upper for w in words):
            rule = " ".join(words)
            if peaks is None or dtype not in peaks:
                return None, f"{rule}: no table entry"
            return peaks[dtype], rule
    return None, "unknown device"


def peak(env_path: Path, dtype: str) -> int:
    name = ""
    if env_path.is_file():
        info = json.loads(env_path.read_text())
        name = info.get("device_name", "") if str(info.get("device", "")).startswith("cuda") else ""
    value, why = lookup_peak(name, dtype) if name else (None, "no CUDA device in " + str(env_path))
    if value is None:
        print(f"bench_denoiser {dtype}: {name or 'device'} ({why}): the benchmark measures the peak "
              f"(1024^3 matmul in {dtype})", file=sys.stderr)
    else:
        print(f"bench_denoiser {dtype}: {name}: --peak-tflops {value:g} ({dtype} dense peak, table rule "
              f"'{why}')", file=sys.stderr)
        print(f"{value:g}")
    return 0


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The script's step records: name, rc, start, end, limit and command, tab-separated."""
    steps = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rc, start, end, limit, command = line.split("\t", 5)
        steps.append({"name": name, "command": command, "rc": int(rc),
                      "wall_s": round(float(end) - float(start), 3), "limit_s": int(limit),
                      "timed_out": int(rc) in (124, 137), "log": f"{name}.log"})
    return steps


def read_json(path: Path) -> Any:
    """A JSON file's contents, or ``{"error": why}``."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"error": f"{path.name}: {type(e).__name__}: {e}"}


def pytest_counts(path: Path) -> dict[str, Any]:
    """passed / skipped / xfailed / failed (failures and errors) / errors of a JUnit XML report, and why tests
    skipped."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return {"error": f"{path.name}: {type(e).__name__}: {e}"}
    counts: dict[str, Any] = {"tests": 0, "passed": 0, "skipped": 0, "xfailed": 0, "failed": 0, "errors": 0,
                              "skip_reasons": []}
    for case in root.iter("testcase"):
        counts["tests"] += 1
        tags = {child.tag: child for child in case}
        if "failure" in tags or "error" in tags:
            counts["failed"] += 1
            counts["errors"] += "error" in tags
        elif "skipped" in tags:
            kind = "xfailed" if tags["skipped"].get("type") == "pytest.xfail" else "skipped"
            counts[kind] += 1
            reason = tags["skipped"].get("message", "")
            if kind == "skipped" and reason not in counts["skip_reasons"]:
                counts["skip_reasons"].append(reason)
        else:
            counts["passed"] += 1
    return counts


def study_section(run_dir: Path) -> dict[str, Any]:
    """The study's timings.json and a digest of its results store (read with the package's public functions)."""
    section: dict[str, Any] = {"run_dir": str(run_dir), "timings": read_json(run_dir / "timings.json")}
    store = run_dir / "results.sqlite"
    if not store.is_file():
        section["results"] = {"error": f"{store} not written"}
        return section
    try:
        from diffprobe.study.config import StudyConfig
        from diffprobe.study.store import ResultsStore
        from diffprobe.study.tables import headline_table

        cfg = StudyConfig.load(run_dir / "study_config.json")
        with ResultsStore(store) as results:
            rows = results.query(study=cfg.name)
        cells = {(r["backbone"], r["checkpoint_step"], r["block"], r["t"], r["task"], r["probe_seed"]) for r in rows}
        section["results"] = {
            "study": cfg.name, "rows": len(rows), "cells": len(cells),
            "backbones": sorted({r["backbone"] for r in rows}), "tasks": sorted({r["task"] for r in rows}),
            "non_finite": sum(not math.isfinite(r["value"]) for r in rows),
            "table": headline_table(cfg, store)}
    except Exception as e:  # a digest, not a check: record what went wrong and go on
        section["results"] = {"error": f"{type(e).__name__}: {e}"}
    return section


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "?"


def print_table(result: dict[str, Any]) -> None:
    steps = result["steps"]
    failed = [s["name"] for s in steps if s["rc"] != 0]
    print(f"\ngpu_check ({result['mode']}, {result['device']}: {result['device_name']}, torch {result['torch']}): "
          f"{len(steps) - len(failed)} of {len(steps)} steps passed in {result['wall_s']:.0f} s")
    head = f"{'step':<22}{'rc':>5}{'wall s':>9}{'limit s':>9}  status"
    print(head + "\n" + "-" * (len(head) + 8))
    for s in steps:
        status = "ok" if s["rc"] == 0 else ("TIMED OUT" if s["timed_out"] else "FAILED")
        print(f"{s['name']:<22}{s['rc']:>5}{s['wall_s']:>9.1f}{s['limit_s']:>9}  {status}  ({s['log']})")
    for dtype, bench in result["bench_denoiser"].items():
        for r in bench.get("rows", []):
            if r.get("model") == "walt":
                print(f"bench_denoiser {dtype}: walt, {r['setting']}: step {_fmt(r.get('step_ms'), '.1f')} ms, "
                      f"MFU {_fmt(r.get('mfu'), '.1%')} of {_fmt(bench.get('peak_gflops'), '.0f')} GFLOP/s")
    cache = result["bench_features"].get("cache", {})
    if cache:
        print(f"bench_features: cached probe step {_fmt(cache['cached_s']['median'] * 1e3, '.2f')} ms, x"
              f"{_fmt(cache.get('ratio'), '.1f')} when recomputed (goal x{_fmt(cache.get('goal'), 'g')})")
    p = result["pytest"]
    if "error" not in p:
        print(f"pytest -m gpu: {p['passed']} passed, {p['skipped']} skipped, {p['xfailed']} xfailed, "
              f"{p['failed']} failed" + (f" ({'; '.join(p['skip_reasons'])})" if p["skip_reasons"] else ""))
    timings = result["study"]["timings"]
    if "error" not in timings:
        print("study: " + ", ".join(f"{k} {_fmt(v, '.1f')} s" for k, v in timings.items()))
    res = result["study"].get("results", {})
    if "error" not in res:
        print(f"study results: {res['cells']} cells, {res['rows']} rows, {res['non_finite']} non-finite")


def summary(out: Path, mode: str, device: str, started: float | None = None) -> int:
    info = read_json(out / "env.json")
    steps = read_steps(out / "steps.tsv")
    result: dict[str, Any] = {
        "benchmark": "gpu_check", "mode": mode, "device": device,
        "device_name": info.get("device_name", "unknown"), "torch": info.get("torch", "unknown"),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"), "ok": bool(steps) and all(s["rc"] == 0 for s in steps),
        "wall_s": round(time.time() - started if started else sum(s["wall_s"] for s in steps), 3),
        "steps": steps, "env": info,
        "bench_denoiser": {dtype: read_json(out / name) for dtype, name in DENOISER_JSON.items()
                           if any(s["name"] == f"bench_denoiser_{dtype}" for s in steps)},
        "bench_features": read_json(out / FEATURES_JSON),
        "pytest": pytest_counts(out / JUNIT),
        "study": study_section(out / STUDY),
    }
    from diffprobe.utils.io import atomic_write_json

    atomic_write_json(out / "gpu_check.json", result)
    print_table(result)
    print(f"wrote {out / 'gpu_check.json'}")
    return 0 if result["ok"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_env = sub.add_parser("env")
    p_env.add_argument("--device", default="cuda")
    p_env.add_argument("--out", type=Path, required=True)
    p_peak = sub.add_parser("peak")
    p_peak.add_argument("--env", type=Path, required=True)
    p_peak.add_argument("--dtype", choices=("fp32", "bf16"), required=True)
    p_sum = sub.add_parser("summary")
    p_sum.add_argument("--out", type=Path, required=True)
    p_sum.add_argument("--mode", choices=("tiny", "full"), required=True)
    p_sum.add_argument("--device", required=True)
    p_sum.add_argument("--started", type=float, default=None, help="the script's start (epoch seconds)")
    args = parser.parse_args()
    if args.cmd == "env":
        return env(args.device, args.out)
    if args.cmd == "peak":
        return peak(args.env, args.dtype)
    return summary(args.out, args.mode, args.device, args.started)


if __name__ == "__main__":
    sys.exit(main())
