"""Our WALT against diffusers' Latte (factorised space/time attention) and CogVideoX (full 3D attention) denoisers,
each sized to within 5% of WALT's parameter count and fed the same latent token grid.

For each token count it times a training step (forward + backward + AdamW), a forward pass without gradients, counts
the step's FLOPs (``torch.utils.flop_counter``), and reports the memory a step needs: on CUDA the allocator's peak,
elsewhere the parameters, gradients and AdamW state plus every tensor the forward saves for backward. The three models
run interleaved, ``--repeats`` times each; the table gives the median (and the spread from the fastest to the slowest
repetition), the ratio to WALT, achieved GFLOP/s and, as MFU, that throughput over the device's peak (the best
1024^3 matmul of this run in the run's dtype on CPU, or ``--peak-tflops`` on a GPU).

``--dtype bf16`` runs the forward passes (of the step and of the forward-only timing) under
``torch.autocast(device.type, dtype=torch.bfloat16)``, the weights, gradients and AdamW state staying fp32 (as
``TrainConfig.precision="bf16"`` trains); the default is plain fp32.

    python benchmarks/bench_denoiser.py [--device cpu] [--dtype fp32] [--repeats 5]
                                        [--out benchmarks/bench_denoiser.json]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import peak_gflops, sync  # benchmarks/_common.py (the script's folder is on sys.path)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from diffprobe.models import WALT, WALTConfig
from diffprobe.utils.io import atomic_write_json
from diffprobe.utils.runtime import matmul_peak

TEXT_DIM = 32  #: width of the one null text token the text-conditioned peers get
#: name -> (latents (C, T', H', W'), batch, WALT layout): the tiny study's clip, and about 1,000+ tokens
SETTINGS: dict[str, tuple[tuple[int, int, int, int], int, dict[str, Any]]] = {
    "tiny clip (80 tokens)": ((8, 5, 8, 8), 16, {"spatial_window": [4, 4], "spatiotemporal_window": [5, 2, 2],
                                                  "max_latent_size": [8, 8]}),
    "1280 tokens": ((8, 5, 32, 32), 2, {"spatial_window": [16, 16], "spatiotemporal_window": [5, 8, 8],
                                        "max_latent_size": [32, 32]}),
}


def _count_cpu_attention() -> None:
    """Teach torch's flop counter the CPU kernels of ``scaled_dot_product_attention`` (it knows only the CUDA ones,
    and would count no attention FLOPs on a CPU)."""
    from torch.utils import flop_counter

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
    def _forward(query, key, value, *args, out_val=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)
    def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def precision(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """The forward pass's precision: bf16 autocast on ``device``'s type, or nothing (fp32)."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if dtype != "fp32":
        raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
    return contextlib.nullcontext()


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class WALTStep(nn.Module):
    """WALT on ``(B, C, T', H', W')`` latents."""

    def __init__(self, layout: dict[str, Any]) -> None:
        super().__init__()
        self.net = WALT(WALTConfig.from_dict({**WALTConfig.PRESETS["tiny"], **layout}))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t.float())  # (B, C, T', H', W')


class LatteStep(nn.Module):
    """diffusers' LatteTransformer3DModel (``layers`` spatial + ``layers`` temporal blocks) with one null caption."""

    def __init__(self, shape: tuple[int, int, int, int], layers: int, head_dim: int) -> None:
        super().__init__()
        from diffusers import LatteTransformer3DModel

        c, t, h, _ = shape
        self.net = LatteTransformer3DModel(
            num_attention_heads=4, attention_head_dim=head_dim, in_channels=c, out_channels=c, num_layers=layers,
            cross_attention_dim=4 * head_dim, sample_size=h, patch_size=2, num_embeds_ada_norm=1000,
            norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=TEXT_DIM,
            video_length=t)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        text = x.new_zeros(x.shape[0], 1, TEXT_DIM)  # (B, 1, text)
        return self.net(x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]  # (B, C, T', H', W')


class CogVideoXStep(nn.Module):
    """diffusers' CogVideoXTransformer3DModel (full attention over text + video tokens) with one null text token."""

    def __init__(self, shape: tuple[int, int, int, int], layers: int, head_dim: int) -> None:
        super().__init__()
        from diffusers import CogVideoXTransformer3DModel

        c, t, h, w = shape
        self.net = CogVideoXTransformer3DModel(
            num_attention_heads=4, attention_head_dim=head_dim, in_channels=c, out_channels=c,
            time_embed_dim=4 * head_dim, text_embed_dim=TEXT_DIM, num_layers=layers, sample_width=w, sample_height=h,
            sample_frames=(t - 1) * 4 + 1, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        text = x.new_zeros(x.shape[0], 1, TEXT_DIM)  # (B, 1, text)
        out = self.net(x.transpose(1, 2), encoder_hidden_states=text, timestep=t, return_dict=False)[0]
        return out.transpose(1, 2)  # (B, F, C, H, W) -> (B, C, T', H', W')


def matched(build: Callable[[int, int], nn.Module], target: int, width: int) -> tuple[nn.Module, int, int]:
    """Among (layers, head dim) with 4 heads whose model is within 5% of ``target`` parameters (counted on the meta
    device), the one whose width is closest to ``width`` (WALT's), fewer layers first; the closest count if none is.

    Every layer of a peer adds the same parameters, so at each head dim the count is affine in the layers: it is
    built at 1, 2 and 3 layers and extrapolated (every depth is built only where those three are not affine)."""
    sizes = []
    for head_dim in range(8, 97, 4):
        with torch.device("meta"):
            first = [count(build(layers, head_dim)) for layers in (1, 2, 3)]
        per_layer = first[1] - first[0]
        if first[2] - first[1] == per_layer:
            sizes += [(first[0] + (layers - 1) * per_layer, layers, head_dim) for layers in range(1, 25)]
        else:
            with torch.device("meta"):
                sizes += [(count(build(layers, head_dim)), layers, head_dim) for layers in range(1, 25)]
    sizes.sort(key=lambda s: (s[1], s[2]))  # layers, then head dim: the order ties are broken in
    within = [s for s in sizes if abs(s[0] - target) <= 0.05 * target]
    if within:
        _, layers, head_dim = min(within, key=lambda s: (abs(4 * s[2] - width), s[1]))
    else:
        _, layers, head_dim = min(sizes, key=lambda s: abs(s[0] - target))
    return build(layers, head_dim), layers, head_dim


def saved_bytes(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Run ``fn`` and count the bytes of the distinct storages autograd saves for backward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def bench(setting: str, device: torch.device, repeats: int, peak: float, dtype: str = "fp32") -> list[dict[str, Any]]:
    shape, batch, layout = SETTINGS[setting]
    torch.manual_seed(0)
    walt = WALTStep(layout)
    target = count(walt)
    models: dict[str, tuple[nn.Module, str]] = {"walt": (walt, f"depth {walt.net.config.depth}, width "
                                                              f"{walt.net.config.hidden_size}")}
    for name, cls in (("latte", LatteStep), ("cogvideox", CogVideoXStep)):
        model, layers, head_dim = matched(lambda n, d, cls=cls: cls(shape, n, d), target, walt.net.config.hidden_size)
        models[name] = (model, f"{layers} layers, width {4 * head_dim}")
    x = torch.randn(batch, *shape, device=device)  # (B, C, T', H', W')
    t = torch.randint(0, 1000, (batch,), device=device)
    state = {}
    for name, (model, _) in models.items():
        model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            with precision(device, dtype):
                loss = (model(x, t) - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def forward(model: nn.Module = model) -> None:
            with torch.no_grad(), precision(device, dtype):
                model(x, t)

        step()  # warm-up (and AdamW state)
        with FlopCounterMode(display=False) as flops:
            step()
        with precision(device, dtype):
            _, activations = saved_bytes(lambda model=model: model(x, t).pow(2).mean())
        state[name] = {"step": step, "forward": forward, "flops": flops.get_total_flops(), "activations": activations,
                       "times": {"step": [], "forward": []}}
    for _ in tqdm(range(repeats), desc=setting, unit="rep"):
        for name in models:  # interleaved: every model sees the same machine state
            for kind in ("step", "forward"):
                sync(device)
                start = time.perf_counter()
                state[name][kind]()
                sync(device)
                state[name]["times"][kind].append(time.perf_counter() - start)
    rows = []
    walt_step = statistics.median(state["walt"]["times"]["step"])
    for name, (model, size) in models.items():
        st, fw = state[name]["times"]["step"], state[name]["times"]["forward"]
        params = count(model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            state[name]["step"]()
            memory = torch.cuda.max_memory_allocated(device)
        else:
            memory = 4 * params * 4 + state[name]["activations"]  # weights, grads, AdamW m and v (fp32) + saved
        rows.append({"setting": setting, "model": name, "size": size, "params": params,
                     "params_vs_walt": params / target, "tokens": shape[1] * shape[2] * shape[3] // 4,
                     "batch": batch, "step_ms": 1e3 * statistics.median(st), "step_ms_min": 1e3 * min(st),
                     "step_ms_max": 1e3 * max(st), "forward_ms": 1e3 * statistics.median(fw),
                     "step_vs_walt": statistics.median(st) / walt_step, "step_gflop": state[name]["flops"] / 1e9,
                     "gflops_per_s": state[name]["flops"] / statistics.median(st) / 1e9,
                     "mfu": state[name]["flops"] / statistics.median(st) / 1e9 / peak, "memory_mb": memory / 2**20})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: forward passes under torch.autocast(bfloat16) (weights and AdamW state fp32)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="the device's peak in --dtype (GPU); default: measured (1024^3 matmul in --dtype)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    _count_cpu_attention()
    if args.peak_tflops:
        peak, source = args.peak_tflops * 1e3, "given"
    elif args.dtype == "bf16":
        peak, source = matmul_peak(device, torch.bfloat16, 1024) / 1e9, "bf16 1024^3 matmul"
    else:
        peak, source = peak_gflops(device), "fp32 1024^3 matmul"
    rows = [row for setting in args.settings for row in bench(setting, device, args.repeats, peak, args.dtype)]
    print(f"device {device}, {args.dtype}, peak {peak:.0f} GFLOP/s ({source}), {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved repetitions")
    head = (f"{'setting':<22}{'model':<11}{'size':<22}{'params':>10}{'step ms (min-max)':>22}{'x walt':>8}"
            f"{'fwd ms':>9}{'GFLOP':>8}{'GFLOP/s':>9}{'MFU':>6}{'mem MB':>8}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        spread = f"{r['step_ms']:.0f} ({r['step_ms_min']:.0f}-{r['step_ms_max']:.0f})"
        print(f"{r['setting']:<22}{r['model']:<11}{r['size']:<22}{r['params']:>10,}{spread:>22}"
              f"{r['step_vs_walt']:>8.2f}{r['forward_ms']:>9.0f}{r['step_gflop']:>8.1f}{r['gflops_per_s']:>9.1f}"
              f"{r['mfu']:>6.0%}{r['memory_mb']:>8.0f}")
    atomic_write_json(args.out, {"device": str(device), "dtype": args.dtype, "peak_gflops": peak,
                                 "peak_source": source, "repeats": args.repeats, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
