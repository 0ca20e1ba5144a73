"""Peak host memory of one CogVideoX VAE encode with and without tiling, at the published size (issue #26).

The VAE is built with random weights from the values of THUDM/CogVideoX-2b ``vae/config.json`` (declared in
``real_size_configs.py``; they are also diffusers' defaults for ``AutoencoderKLCogVideoX``). Each (frames, height,
width, tiling) runs in its own process, so its peak RSS (``ru_maxrss``) is that encode's alone; the latents' relative
difference (tiled vs not) is printed beside it. CPU, fp32, batch 1::

    PYTHONPATH=src python benchmarks/bench_vae_tiling.py 9x256x384 9x256x256:128
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_size_configs import KINDS  # noqa: E402

#: THUDM/CogVideoX-2b vae/config.json, as the real-size benchmark builds it
COGVIDEOX_2B_VAE = next(part.config for part in KINDS["cogvideox"].parts if part.sub == "vae")


def one(frames: int, height: int, width: int, tile: int, tiled: bool, out: str) -> None:
    """In a child process: build the VAE, encode once, print the peak RSS above the model's and save the latents."""
    import torch
    from diffusers import AutoencoderKLCogVideoX

    from diffprobe.backbones.external import VAETiling

    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(**COGVIDEOX_2B_VAE).eval().requires_grad_(False)
    tiling = VAETiling.enable(vae, tile) if tiled else None
    x = torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean  # (1, 16, T', H/8, W/8)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(z, out)
    applied = bool(tiling and tiling.applies(height, width))
    print(json.dumps({"peak_gb": peak / 2**20, "encode_gb": (peak - base) / 2**20, "seconds": seconds,
                      "tiled": applied, "tiles": tiling.tag(height, width) if tiling else ""}))


def main(sizes: list[str]) -> None:
    import tempfile

    import torch

    print(f"{'input':>16} {'tiling':>28} {'peak RSS GB':>12} {'encode GB':>10} {'s':>6} {'rel diff':>9}")
    for size in sizes:
        shape, _, tile = size.partition(":")
        frames, height, width = (int(v) for v in shape.split("x"))
        latents = {}
        for tiled in (False, True):
            with tempfile.NamedTemporaryFile(suffix=".pt") as f:
                args = [sys.executable, __file__, "--one", str(frames), str(height), str(width), tile or "0",
                        str(int(tiled)), f.name]
                done = subprocess.run(args, check=True, capture_output=True, text=True)
                row = json.loads(done.stdout.splitlines()[-1])
                latents[tiled] = torch.load(f.name)
            diff = ((latents[True] - latents[False]).norm() / latents[False].norm()).item() if tiled else 0.0
            print(f"{shape:>16} {row['tiles'] or 'off':>28} {row['peak_gb']:>12.2f} {row['encode_gb']:>10.2f} "
                  f"{row['seconds']:>6.1f} {diff:>9.4f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        f, h, w, tile, tiled = (int(v) for v in sys.argv[2:7])
        one(f, h, w, tile, bool(tiled), sys.argv[7])
    else:
        main(sys.argv[1:] or ["9x256x384", "9x256x256:128"])
