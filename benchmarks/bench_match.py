"""The training-free matcher's soft-argmax: reading only the box around each peak (``readouts.match.READ_BOX``, the
default) against the whole similarity grid masked to the window (the peer; what the matcher did before), same run,
same inputs, the same tracks. One clip per size: random features, 64 queries, the default grid's 3 temperatures x 3
windows, as ``choose`` runs it on every val clip::

    PYTHONPATH=src python benchmarks/bench_match.py            # writes benchmarks/bench_match.json

Sizes: the default CPU study's (32 x 32 px, 9 frames, 5 feature frames of 4 x 4 tokens), Probe World small's
(64 x 64, 17 frames, 8 x 8 tokens) and CogVideoX's native grid at a quarter of its pixels (240 x 368 px, 49 frames,
13 feature frames of 15 x 23 tokens: 16 px a token).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_name, peak_gflops  # noqa: E402

from diffprobe.readouts import match  # noqa: E402
from diffprobe.readouts.match import MatchGrid, match_grid  # noqa: E402

SIZES = {  # name -> (frames, H, W, T_f, H_f, W_f, C)
    "study tiny 9x32x32, 5x4x4 tokens": (9, 32, 32, 5, 4, 4, 64),
    "probeworld small 17x64x64, 9x8x8 tokens": (17, 64, 64, 9, 8, 8, 64),
    "cogvideox grid 49x240x368, 13x15x23 tokens": (49, 240, 368, 13, 15, 23, 64),
}
QUERIES = 64


def best_of(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls, seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    grid = MatchGrid()
    rows = []
    for name, (frames, h, w, t_f, h_f, w_f, c) in SIZES.items():
        feats = torch.randn(t_f, h_f, w_f, c)  # (T_f, H_f, W_f, C)
        queries = torch.stack([torch.randint(0, frames, (QUERIES,)).float(), torch.rand(QUERIES) * h,
                               torch.rand(QUERIES) * w], dim=1)  # (N, 3) as (t, y, x)

        run = functools.partial(match_grid, feats, queries, (h, w), frames, grid.temperatures, grid.windows)

        repeats = 3 if h * w > 10_000 else 10
        match.READ_BOX = False
        dense_tracks, dense = run()[0], best_of(run, repeats)
        match.READ_BOX = True
        box_tracks, box = run()[0], best_of(run, repeats)
        rows.append({"size": name, "dense_s": round(dense, 4), "box_s": round(box, 4),
                     "speedup": round(dense / box, 2),
                     "max_track_difference_px": float((box_tracks - dense_tracks).abs().max())})
        print(f"{name}: whole grid {dense * 1e3:.1f} ms, box {box * 1e3:.1f} ms, x{dense / box:.2f} "
              f"(tracks differ by at most {rows[-1]['max_track_difference_px']:.2e} px)")
    out = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "fp32_matmul_gflops": round(peak_gflops(
        torch.device("cpu")), 1), "queries": QUERIES, "grid": grid.to_dict(), "rows": rows}
    Path(__file__).with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
