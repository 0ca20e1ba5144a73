"""The CUDA path, on a CUDA device only (every test is marked ``gpu`` and skips elsewhere, saying why):

- ``train.fit`` of a walt-tiny denoiser in bf16 autocast with TF32 and fused AdamW, its checkpoint read back on CPU;
- no host synchronisation inside the step loop between two log points (``torch.cuda.set_sync_debug_mode``), with a
  model and loss that do not synchronise themselves, and with the twins' own step (``diffusion_loss`` on WALT's
  sinusoidal position code);
- ``train.compile`` training like eager and checkpointing the plain module's state dict;
- the untrained-WALT control's features on CUDA equal to the CPU's (fp32, TF32 off), through the backbone API;
- WALT's window attention (SDPA) and its whole forward pass in bf16 close to fp32.

``benchmarks/gpu_check.sh`` runs them (``python -m pytest -m gpu tests/test_gpu.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from diffprobe.backbones.registry import load_backbone
from diffprobe.diffusion import diffusion_loss
from diffprobe.models import WALT, CausalAutoencoder, WALTConfig
from diffprobe.models.attention import WindowAttention
from diffprobe.models.exports import read_export, read_tensors
from diffprobe.models.walt import AdaLNModulation
from diffprobe.train import EMA, TrainConfig, build_optimizer, fit, latest_checkpoint, load_checkpoint, make_batch_fn
from diffprobe.train import loop as train_loop
from diffprobe.train.export import export_model
from diffprobe.train.runs import DenoiserRunConfig, TokenizerRunConfig
from diffprobe.utils.runtime import cuda_tf32

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (torch.cuda.is_available() is False here)"),
]

CUDA = torch.device("cuda")
TINY = WALTConfig.preset("tiny")  # latents (8, 5, 8, 8) -> 5 x 4 x 4 tokens, width 128, 6 blocks
#: the GPU settings of a run: bf16 autocast, TF32, fused AdamW (chosen by build_optimizer on CUDA), an EMA
GPU_CFG = TrainConfig(steps=16, batch_size=16, lr=2e-3, warmup_steps=2, ema_decay=0.9, log_every=4, ckpt_every=8,
                      device="cuda", precision="bf16", tf32=True, tensorboard=False, seed=0)


@pytest.fixture(autouse=True)
def _no_sync_debug() -> Iterator[None]:
    """Whatever a test does, the next one starts with the synchronisation check off."""
    yield
    torch.cuda.set_sync_debug_mode(0)


def latents(n: int = 64) -> torch.Tensor:
    """``n`` clean latents ``(n, 8, 5, 8, 8)``, each a random value per channel, constant over (T', H', W'): data a
    denoiser learns from within a few steps (on i.i.d. Gaussian latents the untrained model's 0 is already optimal)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 8, 1, 1, 1, generator=g).expand(n, 8, 5, 8, 8).contiguous()


def twin_loss(model: nn.Module, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The twins' objective (``train.denoiser``): v-prediction MSE at t ~ U[0, 1000]."""
    return diffusion_loss(model, x0, gen), {}


def eval_loss(model: nn.Module, data: torch.Tensor) -> float:
    """The twins' loss of ``model`` on CPU over ``data`` with fixed noise levels and noise (seed 123), fp32."""
    with torch.no_grad():
        return float(diffusion_loss(model.cpu().eval(), data, torch.Generator().manual_seed(123)))


def tf32_on() -> bool:
    """Whether fp32 matmuls on CUDA may use TF32 now (the API ``diffprobe.utils.runtime.cuda_tf32`` sets)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        return matmul.fp32_precision == "tf32"
    return bool(matmul.allow_tf32)


def test_bf16_fit_with_tf32_and_fused_adamw_checkpoints_for_the_cpu(tmp_path: Path, monkeypatch) -> None:
    seen = []

    def loss_fn(model: nn.Module, batch: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        seen.append((batch.device.type, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"),
                     tf32_on()))
        return twin_loss(model, batch, gen)

    optimizers = []
    real_build = train_loop.build_optimizer
    monkeypatch.setattr(train_loop, "build_optimizer",
                        lambda model, cfg: optimizers.append(real_build(model, cfg)) or optimizers[-1])
    data = latents()
    torch.manual_seed(0)
    before = eval_loss(WALT(TINY), data)  # the same initial weights as the trained model's
    tf32_before = tf32_on()
    torch.manual_seed(0)
    result = fit(WALT(TINY), loss_fn, make_batch_fn(data, GPU_CFG.batch_size, GPU_CFG.seed), GPU_CFG, tmp_path,
                 GPU_CFG, progress=False)

    (opt,) = optimizers
    assert [g["fused"] for g in opt.param_groups] == [True, True]  # decay and no-decay groups, both fused
    assert not any(g["foreach"] for g in opt.param_groups)
    assert seen == [("cuda", True, torch.bfloat16, True)] * GPU_CFG.steps  # every step: bf16 autocast, TF32
    assert tf32_on() == tf32_before  # the previous setting is back after the run
    assert sorted(result.losses) == list(range(1, GPU_CFG.steps + 1))
    assert all(math.isfinite(v) for v in result.losses.values()), result.losses

    step, ckpt = latest_checkpoint(tmp_path)
    assert step == GPU_CFG.steps
    model = WALT(TINY)  # on CPU: weights, EMA and the optimizer state of the fused CUDA run load into it
    ema = EMA(model, GPU_CFG.ema_decay, GPU_CFG.ema_start)
    cpu_opt = build_optimizer(model, GPU_CFG.replace(device="cpu"))
    state = load_checkpoint(ckpt, model, cpu_opt, ema)
    assert state["step"] == GPU_CFG.steps
    assert [g["fused"] for g in cpu_opt.param_groups] == [None, None]  # CPU implementation kept on load
    trained = {k: v.cpu() for k, v in result.model.state_dict().items()}
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert all(p.device.type == "cpu" for p in model.parameters())
    after = eval_loss(model, data)
    assert after < 0.95 * before, (before, after)  # CPU, fp32: 1.014 -> 0.88 after these 16 steps


def run_between_log_points(run_dir: Path, monkeypatch, model: nn.Module, loss_fn: Callable, cfg: TrainConfig,
                           ) -> tuple[dict[str, int], train_loop.TrainResult]:
    """``fit`` with ``torch.cuda.set_sync_debug_mode("error")`` on from the start of every step (the loop's first
    call in a step is ``set_lr``) until the loop reads its pending values (``_read``, its one synchronisation, at
    log points) or writes a checkpoint: any synchronising CUDA call in between raises ``RuntimeError``."""
    calls = {"steps": 0, "reads": 0, "checkpoints": 0}
    real_set_lr, real_read, real_checkpoint = train_loop.set_lr, train_loop._read, train_loop._checkpoint

    def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
        torch.cuda.set_sync_debug_mode("error")
        calls["steps"] += 1
        real_set_lr(optimizer, lr)

    def read(values):
        torch.cuda.set_sync_debug_mode(0)
        calls["reads"] += 1
        return real_read(values)

    def checkpoint(*args, **kwargs):
        torch.cuda.set_sync_debug_mode(0)
        calls["checkpoints"] += 1
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(train_loop, "set_lr", set_lr)
    monkeypatch.setattr(train_loop, "_read", read)
    monkeypatch.setattr(train_loop, "_checkpoint", checkpoint)
    try:
        result = fit(model, loss_fn, make_batch_fn(latents(), cfg.batch_size, cfg.seed), cfg, run_dir, cfg,
                     progress=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return calls, result


def sync_free_loss(model: nn.Module, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """v-prediction MSE on a cos/sin schedule computed on the device (independent of ``diffusion_loss``, which the
    next test checks), with a device-tensor log read at log points."""
    b = x0.shape[0]
    t = (torch.rand((b,), generator=gen, device=gen.device) * 1000).to(x0.device)  # (B,)
    eps = torch.randn(x0.shape, generator=gen, device=gen.device).to(x0.device)
    angle = (t * (math.pi / 2000)).reshape(b, 1, 1, 1, 1)
    a, s = torch.cos(angle), torch.sin(angle)
    loss = (model(a * x0 + s * eps, t).float() - (a * eps - s * x0)).square().mean()
    return loss, {"mse": loss.detach(), "constant": 1.0}


@pytest.mark.parametrize("workers", [0, "auto"])
def test_no_host_sync_between_log_points(tmp_path: Path, monkeypatch, workers) -> None:
    """The loop's promise (``train/loop.py``): a step never waits for the device; the host reads the losses, grad
    norm and logs once per ``log_every`` steps. A model and loss that do not synchronise themselves (WALT with its
    learned position table, :func:`sync_free_loss`) then train under the synchronisation check, with in-process
    batches and with the pinned worker feed."""
    torch.manual_seed(0)
    model = WALT(TINY.replace(pos_embed="learned"))
    cfg = GPU_CFG.replace(steps=8, log_every=4, ckpt_every=8, data_workers=workers)
    calls, result = run_between_log_points(tmp_path, monkeypatch, model, sync_free_loss, cfg)
    assert calls == {"steps": 8, "reads": 2, "checkpoints": 1}  # reads at steps 4 and 8; the checkpoint at 8
    assert sorted(result.losses) == list(range(1, 9)) and all(math.isfinite(v) for v in result.losses.values())


def test_twin_step_does_not_sync_between_log_points(tmp_path: Path, monkeypatch) -> None:
    """The twins' own step (``diffusion_loss``: noise levels drawn and the schedule's table read on the device, the
    sinusoidal position code cached on it) under the same check."""
    torch.manual_seed(0)
    calls, result = run_between_log_points(tmp_path, monkeypatch, WALT(TINY), twin_loss,
                                           GPU_CFG.replace(steps=4, log_every=4, ckpt_every=4, data_workers=0))
    assert calls == {"steps": 4, "reads": 1, "checkpoints": 1}
    assert all(math.isfinite(v) for v in result.losses.values())


def test_compile_trains_like_eager_and_checkpoints_the_plain_state_dict(tmp_path: Path) -> None:
    cfg = GPU_CFG.replace(steps=3, log_every=1, ckpt_every=3, ema_decay=0.0, data_workers=0)
    batches = make_batch_fn(latents(), cfg.batch_size, cfg.seed)
    runs = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        torch.manual_seed(0)
        runs[name] = fit(WALT(TINY), twin_loss, batches, cfg.replace(compile=compiled), tmp_path / name, cfg,
                         progress=False)
    eager, compiled = runs["eager"], runs["compiled"]
    assert type(compiled.model) is WALT  # the result holds the plain module, not the compiled wrapper
    assert sorted(compiled.losses) == [1, 2, 3]
    for step, value in eager.losses.items():  # bf16: inductor's fused kernels round differently from eager's
        assert compiled.losses[step] == pytest.approx(value, rel=2e-2), step
    step, ckpt = latest_checkpoint(tmp_path / "compiled")
    assert step == 3
    assert set(read_tensors(ckpt / "model.safetensors")) == set(WALT(TINY).state_dict())  # no `_orig_mod.`
    fresh = WALT(TINY)
    load_checkpoint(ckpt, fresh, build_optimizer(fresh, cfg))  # strict: every key, shape and group must fit
    assert all(torch.equal(v, compiled.model.state_dict()[k].cpu()) for k, v in fresh.state_dict().items())


def untrained_control(root: Path, device: torch.device):
    """``walt-untrained:RUN`` (seed 0) of the walt-tiny twin, on a tokenizer and a twin exported with random weights
    under ``root`` (as ``benchmarks/bench_features.py`` builds it)."""
    if not (root / "twin").is_dir():
        tok_cfg = TokenizerRunConfig.preset("tiny")
        twin_cfg = DenoiserRunConfig.preset("walt-tiny").replace(mode="video", tokenizer=str(root / "tokenizer"))
        torch.manual_seed(0)
        export_model(root / "tokenizer", CausalAutoencoder(tok_cfg.model).eval(), tok_cfg, kind="tokenizer", step=0)
        tok_sha = read_export(root / "tokenizer", "tokenizer")["sha256"]
        export_model(root / "twin", WALT(twin_cfg.model), twin_cfg, kind="denoiser", step=0,
                     extra={"mode": "video", "tokenizer_sha256": tok_sha})
    return load_backbone(f"walt-untrained:{root / 'twin'}", device).backbone


def open_gates(model: nn.Module, seed: int = 1) -> None:
    """Draw every block's adaLN map at random and open its two gates (bias 1), so that each block's attention and
    MLP change the tokens (walt-tiny on CPU: by 65% of their norm after block 1, 170% after block 6); an untrained
    WALT's zero-initialised adaLN makes every block the identity."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, AdaLNModulation) and module.n == 6:  # shift, scale, gate of attention, then of MLP
            nn.init.normal_(module.net[-1].weight, std=0.02)
            with torch.no_grad():
                module.net[-1].bias.view(6, -1)[2::3] = 1.0


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``|a - ref| / |ref|`` (Frobenius norms, fp32 on CPU)."""
    a, ref = a.detach().float().cpu(), ref.detach().float().cpu()
    return float((a - ref).norm() / ref.norm())


def test_untrained_control_features_on_cuda_equal_the_cpus(tmp_path: Path) -> None:
    """Pixels -> tokenizer latents -> WALT blocks through ``Backbone.features``, at t = 0 (t > 0 draws the noise
    from a generator on the backbone's device, whose stream differs between CPU and CUDA), in fp32 with TF32 off.
    Tolerance: relative error (Frobenius) below 2e-4 per block and largest difference below 1e-3 of the largest
    value: fp32 rounding-order differences, an order below TF32's (~1e-3) and bf16's (~4e-3). The untrained control's
    blocks are the identity (adaLN-Zero), so the same comparison is made again with :func:`open_gates`."""
    cpu, gpu = untrained_control(tmp_path, torch.device("cpu")), untrained_control(tmp_path, CUDA)
    video = torch.randint(0, 256, (4, 9, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(4)
    blocks = [0, 1, 2, 4, 6]
    for variant in ("control", "open gates"):
        if variant == "open gates":
            open_gates(cpu.denoiser)
            gpu.denoiser.load_state_dict(cpu.denoiser.state_dict())
        want = cpu.features(video, ids, blocks, 0.0, 0)
        with cuda_tf32(CUDA, False):
            got = gpu.features(video.to(CUDA), ids, blocks, 0.0, 0)
        assert sorted(got) == blocks
        for block in blocks:
            assert got[block].device.type == "cuda" and got[block].dtype == torch.float32
            assert got[block].shape == want[block].shape == (4, 5, 4, 4, TINY.hidden_size), block
            err = relative_error(got[block], want[block])
            worst = float((got[block].cpu() - want[block]).abs().max() / want[block].abs().max())
            assert err < 2e-4 and worst < 1e-3, (variant, block, err, worst)
        if variant == "control":
            assert torch.equal(want[0], want[6])  # adaLN-Zero: the untrained blocks pass their input through


@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"])
def test_window_attention_in_bf16_matches_fp32(backend: str) -> None:
    """WALT's window attention (a spatial and a spatiotemporal block's windows) under bf16 autocast, through SDPA's
    flash and memory-efficient kernels (forced: the test fails if the kernel cannot run), against the fp32 math
    kernel with TF32 off. Tolerance: relative error (Frobenius) below 2e-2 (bf16 keeps 8 mantissa bits, 2^-8 = 4e-3
    per rounding; CPU autocast measures 4e-3 on these shapes)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    for block in (1, 2):
        attn = WindowAttention(TINY.hidden_size, TINY.num_heads, TINY.block_window(block)).to(CUDA)
        x = torch.randn(8, 5, 4, 4, TINY.hidden_size, device=CUDA)  # (B, T', h, w, D) tokens
        with torch.no_grad():
            with cuda_tf32(CUDA, False), sdpa_kernel(SDPBackend.MATH):
                ref = attn(x)
            with sdpa_kernel(getattr(SDPBackend, backend)), torch.autocast("cuda", dtype=torch.bfloat16):
                out = attn(x)
        assert ref.dtype == torch.float32 and out.dtype == torch.bfloat16
        assert torch.isfinite(out).all()
        assert relative_error(out, ref) < 2e-2, (block, relative_error(out, ref))


def test_walt_forward_in_bf16_matches_fp32() -> None:
    """The whole walt-tiny forward (:func:`open_gates`, and the final layer drawn at random) under bf16 autocast
    against fp32 with TF32 off, at three blocks and at the output. Tolerance: relative error below 3e-2 (CPU autocast
    measures 5e-3 to 8e-3 at the blocks and 9e-3 at the output)."""
    torch.manual_seed(0)
    model = WALT(TINY).eval()
    open_gates(model)
    nn.init.normal_(model.final.linear.weight, std=0.02)
    model.to(CUDA)
    x = torch.randn(4, 8, 5, 8, 8, device=CUDA)  # (B, C, T', H', W') latents
    t = torch.full((4,), 200.0, device=CUDA)
    with torch.no_grad():
        with cuda_tf32(CUDA, False):
            ref, ref_out = model(x, t, blocks=[2, 4, 6]), model(x, t)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got, out = model(x, t, blocks=[2, 4, 6]), model(x, t)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    for block in (2, 4, 6):
        assert relative_error(got[block], ref[block]) < 3e-2, (block, relative_error(got[block], ref[block]))
    assert relative_error(out, ref_out) < 3e-2, relative_error(out, ref_out)
