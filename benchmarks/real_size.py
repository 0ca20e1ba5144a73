"""Every external backbone kind at its published architecture size (random weights from the public config values in
``benchmarks/real_size_configs.py``, bf16, null embeddings in place of the text encoders), one at a time:

1. a fresh subprocess builds the kind's folder under ``--root`` (the layout its loader reads);
2. a fresh subprocess imports diffprobe, torch and the libraries as ``backbone info --estimate`` does (its peak
   RSS then: the process baseline), runs ``diffprobe extract`` of every block at t = 500 on one Probe World clip of
   the small input (batch 1) and reads its peak RSS (``VmHWM``); then, weights loaded, the ``backbone info
   --estimate`` figures at the small input and the per-block shapes at the kind's native clip (both on fake
   tensors, after the peak was read);
3. with ``--modes cache,pool,stream``, a fresh subprocess each runs the deepest block's features of ``--clips`` clips a
   split into the cache, pooled to 2 x 2 first, or streamed into a two-step action probe (``probe --stream``), a clip
   a forward, and reads its peak RSS;
4. the folder is deleted.

Writes ``benchmarks/real_size.json`` and prints a markdown table; progress goes to stderr.
``python benchmarks/real_size.py [--kinds sd,wan] [--root /tmp/real-size] [--frames 9 --size 128]
[--modes cache,pool,stream --clips 2]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from real_size_configs import KINDS  # noqa: E402

OUT = HERE / "real_size.json"
T_LEVEL = 500.0  #: the noise level extracted (any t costs the same)


def vm_hwm() -> int:
    """This process's peak resident set size in bytes (``VmHWM`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _child(args: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Run this script with ``args`` in a fresh interpreter; its last stdout line is a JSON object."""
    env = os.environ | {"PYTHONPATH": str(HERE.parent / "src")}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_build(kind: str, folder: Path) -> dict[str, Any]:
    import torch
    from real_size_configs import empty_loading, save_folder

    from diffprobe.backbones.registry import load_backbone

    start = time.perf_counter()
    k = KINDS[kind]
    counts = save_folder(k, folder, torch.bfloat16)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    with empty_loading():  # the block count and whether it takes noise, from the configs (no weights read)
        probe = load_backbone(k.spec(kind, folder), torch.device("cpu")).backbone
    return {"parts": counts, "disk_bytes": size, "build_s": time.perf_counter() - start,
            "blocks": probe.num_blocks + 1, "noised": hasattr(probe, "noise")}


def _dataset(frames: int, size: int, clips: int = 1) -> str:
    return (f"probeworld:tiny@height={size},width={size},frames={frames},train_size={clips},val_size={clips},"
            f"test_size={clips}")


#: how features reach a probe -> the extra CLI arguments of its run (``--modes``): extracted into the cache, pooled
#: to 2 x 2 tokens a frame first, or streamed (a probe of two steps that computes every feature as it reads it)
MODES: dict[str, list[str]] = {"cache": [], "pool": ["--pool", "2x2"], "stream": ["--stream"]}


def child_mode(kind: str, folder: Path, frames: int, size: int, cache: Path, blocks: int, noised: bool, mode: str,
               clips: int) -> dict[str, Any]:
    """Peak RSS of one way of feeding features at the small input, ``clips`` clips a split: ``extract`` of the
    deepest block (``cache``, ``pool``) or ``probe --stream`` of the action task on it (``stream``)."""
    import click

    from diffprobe.backbones.shapes import import_libraries
    from diffprobe.cli import main
    from diffprobe.spec import BackboneSpec

    import_libraries()
    baseline = vm_hwm()
    spec = str(BackboneSpec.parse(KINDS[kind].spec(kind, folder)).with_options(batch_size=1))  # a clip a forward
    common = ["--backbone", spec, "--dataset", _dataset(frames, size, clips), "--t", str(T_LEVEL if noised else 0.0),
              "--block", str(blocks - 1), "--cache", str(cache), "--allow-size-change", "--quiet", *MODES[mode]]
    if mode == "stream":
        argv = ["probe", "--task", "action", *common, "--store", str(cache / "results.sqlite"), "--set", "steps=2",
                "--set", "batch_size=1", "--set", "eval_batch_size=1", "--set", "warmup_steps=1", "--set",
                "eval_every=0"]
    else:
        argv = ["extract", *common, "--split", "test", "--batch-size", "1"]
    start = time.perf_counter()
    try:
        main.main(argv, standalone_mode=False)
    except click.exceptions.ClickException as e:
        raise RuntimeError(e.format_message()) from e
    written = sum(f.stat().st_size for f in cache.rglob("shard-*.safetensors") if "block0_t0" not in str(f.parent))
    return {"mode": mode, "clips": clips, "seconds": time.perf_counter() - start, "baseline_rss_bytes": baseline,
            "peak_rss_bytes": vm_hwm(), "feature_bytes_written": written}


def child_measure(kind: str, folder: Path, frames: int, size: int, cache: Path, blocks: int, noised: bool
                  ) -> dict[str, Any]:
    import warnings

    import click
    import torch

    from diffprobe.backbones.registry import load_backbone
    from diffprobe.backbones.shapes import estimate, forward_shapes, import_libraries
    from diffprobe.cli import main
    from diffprobe.features.extract import FEATURE_DTYPE

    k = KINDS[kind]
    import_libraries()  # what `backbone info --estimate` imports before it reads its baseline
    spec = k.spec(kind, folder)
    t = T_LEVEL if noised else 0.0
    baseline = vm_hwm()
    start = time.perf_counter()
    argv = ["extract", "--backbone", spec, "--dataset", _dataset(frames, size), "--split", "test", "--t", str(t),
            "--batch-size", "1", "--cache", str(cache), "--allow-size-change", "--quiet"]
    for b in range(blocks):
        argv += ["--block", str(b)]
    try:
        main.main(argv, standalone_mode=False)
    except click.exceptions.ClickException as e:
        raise RuntimeError(e.format_message()) from e
    extract_s = time.perf_counter() - start
    peak = vm_hwm()
    rb = load_backbone(spec, torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = estimate(rb.backbone, frames, size, size, 1, FEATURE_DTYPE, baseline=baseline)
        native = forward_shapes(rb.backbone, *k.native)
    return {
        "spec_options": k.options, "blocks": blocks, "t": t, "extract_s": extract_s,
        "baseline_rss_bytes": baseline, "peak_rss_bytes": peak,
        "estimate": {"parameters": est.parameters, "weight_bytes": est.weight_bytes,
                     "weight_dtypes": list(est.weight_dtypes), "activation_bytes": est.activation_bytes,
                     "fake": est.forward.fake, "baseline_bytes": est.baseline, "peak_bytes": est.peak_bytes},
        "small_shapes": {str(b): list(s) for b, s in est.forward.shapes.items()},
        "native_shapes": {str(b): list(s) for b, s in native.shapes.items()},
        "native_feature_bytes": {str(b): math.prod(s) * FEATURE_DTYPE.itemsize for b, s in native.shapes.items()},
    }


def measure(kind: str, root: Path, frames: int | None, size: int | None, modes: list[str] | None = None,
            clips: int = 2) -> dict[str, Any]:
    k = KINDS[kind]
    f, s = frames or k.small[0], size or k.small[1]
    folder = root / kind
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        log(f"[{kind}] building {k.source.split()[0]} at its published size ...")
        built = _child(["--child-build", kind, str(folder)])
        log(f"[{kind}] built in {built['build_s']:.0f} s, {built['disk_bytes'] / 1e9:.2f} GB on disk; extracting "
            f"{f} x {s} x {s} ...")
        measured = _child(["--child-measure", kind, str(folder), str(f), str(s), str(root / "cache"),
                           str(built["blocks"]), str(int(built["noised"]))])
        for mode in modes or []:  # each in a fresh process and cache
            log(f"[{kind}] {mode}: {clips} clips a split ...")
            run = _child(["--child-mode", kind, str(folder), str(f), str(s), str(root / f"cache-{mode}"),
                          str(built["blocks"]), str(int(built["noised"])), mode, str(clips)])
            log(f"[{kind}] {mode}: peak RSS {_gb(run['peak_rss_bytes'])}, {run['seconds']:.0f} s, "
                f"{run['feature_bytes_written'] / 1e6:.2f} MB of features written")
            measured.setdefault("modes", {})[mode] = run
    finally:
        shutil.rmtree(root, ignore_errors=True)
    est = measured["estimate"]
    ratio = est["peak_bytes"] / measured["peak_rss_bytes"]
    log(f"[{kind}] peak RSS {measured['peak_rss_bytes'] / 1e9:.2f} GB (baseline "
        f"{measured['baseline_rss_bytes'] / 1e9:.2f}), estimate {est['peak_bytes'] / 1e9:.2f} GB, ratio {ratio:.2f}, "
        f"extract {measured['extract_s']:.0f} s")
    return {"kind": kind, "source": k.source, "small_input": [f, s, s], "native_input": list(k.native),
            "denoiser_parameters": built["parts"][k.denoiser], "parts": built["parts"], "disk_bytes":
            built["disk_bytes"], "build_s": built["build_s"], "estimate_over_measured": ratio, **measured}


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the measured rows."""
    lines = ["| kind | denoiser / encoder params | all params | small input | estimated peak | measured peak "
             "(baseline) | est / meas | native input | deepest block at native size | bytes/clip/(block, t) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        last = str(r["blocks"] - 1)
        shape = r["native_shapes"][last]
        per = r["native_feature_bytes"][last]
        lines.append(
            f"| {r['kind']} | {r['denoiser_parameters'] / 1e6:,.1f}M | {r['estimate']['parameters'] / 1e6:,.1f}M | "
            f"{' x '.join(map(str, r['small_input']))} | {_gb(r['estimate']['peak_bytes'])} | "
            f"{_gb(r['peak_rss_bytes'])} ({_gb(r['baseline_rss_bytes'])}) | {r['estimate_over_measured']:.2f} | "
            f"{' x '.join(map(str, r['native_input']))} | {last}: {' x '.join(map(str, shape))} | "
            f"{per / 1e6:,.1f} MB |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds (default: all)")
    ap.add_argument("--root", type=Path, default=Path("/tmp/diffprobe-real-size"),
                    help="scratch folder for one model at a time (deleted after each)")
    ap.add_argument("--frames", type=int, default=None, help="frames of the small input (default: the kind's)")
    ap.add_argument("--size", type=int, default=None, help="frame side of the small input (default: the kind's)")
    ap.add_argument("--modes", default="", help=f"also run these ways of feeding features, each in a fresh process "
                    f"(comma-separated from {sorted(MODES)})")
    ap.add_argument("--clips", type=int, default=2, help="with --modes: clips in each split")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child-build", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    ap.add_argument("--child-measure", nargs=7, help=argparse.SUPPRESS)
    ap.add_argument("--child-mode", nargs=9, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_build:
        print(json.dumps(child_build(a.child_build[0], Path(a.child_build[1]))))
        return
    if a.child_measure:
        kind, folder, f, s, cache, blocks, noised = a.child_measure
        print(json.dumps(child_measure(kind, Path(folder), int(f), int(s), Path(cache), int(blocks), noised == "1")))
        return
    if a.child_mode:
        kind, folder, f, s, cache, blocks, noised, mode, clips = a.child_mode
        print(json.dumps(child_mode(kind, Path(folder), int(f), int(s), Path(cache), int(blocks), noised == "1", mode,
                                    int(clips))))
        return
    modes = [m for m in a.modes.split(",") if m]
    if set(modes) - set(MODES):
        ap.error(f"unknown modes {sorted(set(modes) - set(MODES))}; known: {sorted(MODES)}")
    kinds = [k for k in a.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown kinds {unknown}; known: {sorted(KINDS)}")
    previous = json.loads(a.out.read_text()) if a.out.is_file() else {}
    rows = {r["kind"]: r for r in previous.get("kinds", [])}
    start = time.perf_counter()
    failed = {}
    for kind in kinds:
        try:
            rows[kind] = measure(kind, a.root, a.frames, a.size, modes, a.clips)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            failed[kind] = str(e)
            log(f"[{kind}] FAILED: {e}")
    ordered = [rows[k] for k in KINDS if k in rows]
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version()},
              "command": f"python benchmarks/real_size.py --kinds {','.join(kinds)}"
                         + (f" --modes {','.join(modes)} --clips {a.clips}" if modes else ""),
              "wall_s": time.perf_counter() - start, "failed": failed, "kinds": ordered}
    from diffprobe.utils.io import atomic_write_text

    atomic_write_text(a.out, json.dumps(result, indent=1) + "\n")
    print(table(ordered))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
