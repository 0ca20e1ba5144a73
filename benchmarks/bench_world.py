"""Clips per second of Probe World generation (``ProbeWorld.batch``, single process) for the tiny and small presets.

    python benchmarks/bench_world.py [--clips 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

from tqdm import tqdm

from diffprobe.data import ProbeWorld, ProbeWorldConfig


def clips_per_second(preset: str, clips: int, repeats: int) -> float:
    """Best of ``repeats`` timings of rendering ``clips`` clips (with tracks and boxes) of ``preset``."""
    world = ProbeWorld(ProbeWorldConfig.preset(preset).replace(train_size=clips))
    world.batch(list(range(min(8, clips))))  # warm up
    best = float("inf")
    for _ in tqdm(range(repeats), desc=preset, unit="run"):
        start = time.perf_counter()
        world.batch(list(range(clips)))
        best = min(best, time.perf_counter() - start)
    return clips / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for preset in ("tiny", "small"):
        n = args.clips if preset == "tiny" else max(1, args.clips // 4)
        cfg = ProbeWorldConfig.preset(preset)
        rate = clips_per_second(preset, n, args.repeats)
        print(f"{preset:6s} {cfg.height}x{cfg.width}x{cfg.frames}: {rate:8.1f} clips/s ({n} clips, best of "
              f"{args.repeats})")


if __name__ == "__main__":
    main()
