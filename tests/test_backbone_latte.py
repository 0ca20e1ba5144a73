"""The ``latte`` backbone on a tiny random Latte folder: alternating spatial / temporal blocks and their layouts, a
direct forward at t = 0, DDPM noising, windows of video_length frames, the masked null prompt computed once,
identity, bad folders, the registry and denoise."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402
from hf_models_dit import Hooks, random_clip, save_tiny_latte  # noqa: E402

from diffprobe.backbones.base import clip_noise  # noqa: E402
from diffprobe.backbones.external import BackboneLoadError  # noqa: E402
from diffprobe.backbones.registry import block_shapes, load_backbone  # noqa: E402
from diffprobe.cli import main  # noqa: E402
from diffprobe.config import ConfigError  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_latte(tmp_path_factory.mktemp("latte") / "model")


@pytest.fixture(scope="module")
def backbone(folder: Path):
    return load_backbone(f"latte:{folder}", CPU).backbone


def test_blocks_alternate_spatial_and_temporal(backbone) -> None:
    tr = backbone.transformer
    assert backbone.taps.modules == [tr.transformer_blocks[0], tr.temporal_transformer_blocks[0],
                                     tr.transformer_blocks[1], tr.temporal_transformer_blocks[1]]
    assert block_shapes(backbone, 9, 32, 32) == {0: (9, 8, 8, 4)} | {b: (9, 4, 4, 24) for b in range(1, 5)}


def test_spatial_and_temporal_tokens_follow_the_models_layout(backbone) -> None:
    """Blocks 1 (spatial) and 2 (temporal) made identities pass the patch embedding on: a latent change constant
    in time must come out constant along T_f from both, one along width only constant along T_f and rows."""
    z = torch.randn(1, 9, 8, 8, 4)
    in_time = torch.linspace(-1, 1, 9).view(1, 9, 1, 1, 1).expand_as(z)
    along_w = torch.linspace(-1, 1, 8).view(1, 1, 1, 8, 1).expand_as(z)
    ids = torch.tensor([0])
    tr = backbone.transformer
    with Hooks().identity(tr.transformer_blocks[0]).identity(tr.temporal_transformer_blocks[0]):
        base = backbone.features_from_encoded(z, ids, [1, 2], 0.0, 0)
        d_t = {b: f - base[b] for b, f in backbone.features_from_encoded(z + in_time, ids, [1, 2], 0.0, 0).items()}
        d_w = {b: f - base[b] for b, f in backbone.features_from_encoded(z + along_w, ids, [1, 2], 0.0, 0).items()}
    for b in (1, 2):
        torch.testing.assert_close(d_t[b], d_t[b][:, :, :1, :1].expand_as(d_t[b]), atol=1e-5, rtol=0)
        assert (d_t[b][0, 0] - d_t[b][0, -1]).abs().max() > 1e-3
        torch.testing.assert_close(d_w[b], d_w[b][:, :1, :1].expand_as(d_w[b]), atol=1e-5, rtol=0)
        assert (d_w[b][0, 0, 0, 0] - d_w[b][0, 0, 0, 1]).abs().max() > 1e-3


def test_t0_equals_a_direct_forward_and_latents_are_scaled_as_the_pipeline(folder: Path, backbone) -> None:
    from diffusers import AutoencoderKL, LatteTransformer3DModel
    from diffusers.video_processor import VideoProcessor
    from safetensors.torch import load_file

    video = random_clip(1, 9, seed=8)
    feats = backbone.features(video, torch.tensor([0]), list(range(5)), 0.0, 0)
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    transformer = LatteTransformer3DModel.from_pretrained(folder / "transformer").eval()
    pixels = VideoProcessor(vae_scale_factor=4).preprocess_video(video.numpy().astype("float32") / 255)
    null = load_file(str(folder / "null_embeds.safetensors"))["prompt_embeds"]
    with torch.no_grad():
        frames = pixels[0].permute(1, 0, 2, 3)  # (T, 3, H, W)
        z = vae.encode(frames).latent_dist.mean * vae.config.scaling_factor  # (T, C, h, w)
        torch.testing.assert_close(feats[0][0], z.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-4)
        with Hooks() as hooks:
            for s, t in zip(transformer.transformer_blocks, transformer.temporal_transformer_blocks, strict=True):
                hooks.outputs(s).outputs(t)
            transformer(hidden_states=z.permute(1, 0, 2, 3)[None], timestep=torch.zeros(1, dtype=torch.long),
                        encoder_hidden_states=null)
    for b, out in enumerate(hooks.seen, start=1):  # spatial blocks: (T, h'*w', D)
        frames_first = out if b % 2 else out.transpose(0, 1)  # temporal blocks: (h'*w', T, D)
        torch.testing.assert_close(feats[b], frames_first.reshape(1, 9, 4, 4, -1), atol=1e-5, rtol=1e-4)


def test_noise_follows_ddpm_and_windows(folder: Path, backbone) -> None:
    from diffusers import DDIMScheduler

    ids = torch.tensor([5])
    z = torch.randn(1, 9, 8, 8, 4)
    with Hooks() as hooks:
        hooks.inputs(backbone.transformer)
        backbone.features_from_encoded(z, ids, [1], 400.0, noise_seed=3)
    kwargs = hooks.seen[0][1]
    ab = float(DDIMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod[400])
    expected = math.sqrt(ab) * z + math.sqrt(1 - ab) * clip_noise(z, ids, 3, 0)
    torch.testing.assert_close(kwargs["hidden_states"].permute(0, 2, 3, 4, 1), expected, atol=1e-5, rtol=1e-5)
    assert kwargs["timestep"].tolist() == [400]
    video = random_clip(1, 18)
    assert backbone.features(video, ids, [2], 0.0, 0)[2].shape == (1, 18, 4, 4, 24)  # 2 windows of video_length
    cut = load_backbone(f"latte:{folder}@window=cut", CPU).backbone
    assert cut.features(video, ids, [2], 0.0, 0)[2].shape == (1, 9, 4, 4, 24)
    with pytest.raises(ValueError, match="video_length = 9"):
        load_backbone(f"latte:{folder}@frames=3", CPU).backbone.features(video, ids, [1], 0.0, 0)
    with pytest.raises(ValueError, match="fewer than frames=9"):
        backbone.features(video[:, :5], ids, [1], 0.0, 0)


def test_null_prompt_is_masked_computed_once_then_read(tmp_path: Path) -> None:
    from diffusers import LattePipeline
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, T5EncoderModel

    folder = save_tiny_latte(tmp_path / "fresh")
    load_backbone(f"latte:{folder}", CPU)
    saved = load_file(str(folder / "null_embeds.safetensors"))["prompt_embeds"]
    pipe = LattePipeline(tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
                         text_encoder=T5EncoderModel.from_pretrained(folder / "text_encoder").eval(), vae=None,
                         transformer=None, scheduler=None)
    with torch.no_grad():
        expected, _ = pipe.encode_prompt("", do_classifier_free_guidance=False, device=CPU, clean_caption=False)
    assert saved.shape == (1, 1, 32)  # "" keeps its one unpadded token
    torch.testing.assert_close(saved, expected, atol=1e-6, rtol=1e-5)
    shutil.rmtree(folder / "text_encoder")
    torch.testing.assert_close(load_backbone(f"latte:{folder}", CPU).backbone.null, saved)


def test_identity_bad_folders_and_registry(folder: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    resolved = load_backbone(f"latte:{copy}", CPU)
    assert (resolved.mode, resolved.step, resolved.trained_on) == ("video", 0, None)
    first = resolved.backbone.identity
    assert load_backbone(f"latte:{copy}@dtype=bf16", CPU).backbone.identity != first
    assert load_backbone(f"latte:{copy}@window=cut", CPU).backbone.identity != first
    null = copy / "null_embeds.safetensors"  # written by the first load
    null.write_bytes(null.read_bytes())
    second = load_backbone(f"latte:{copy}", CPU).backbone.identity
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes())  # rewritten: a new modification time
    assert len({first, second, load_backbone(f"latte:{copy}", CPU).backbone.identity}) == 3
    shutil.rmtree(copy / "vae")
    with pytest.raises(BackboneLoadError, match=r"vae/config\.json"):
        load_backbone(f"latte:{copy}", CPU)
    with pytest.raises(ConfigError, match="vae_frames"):
        load_backbone(f"latte:{folder}@vae_frames=0", CPU)


def test_denoise_runs_and_recovers_the_clean_latents_with_an_oracle(backbone, monkeypatch) -> None:
    z = torch.randn(1, 9, 8, 8, 4)
    x_t, _ = backbone.noise(z, 500.0, torch.randn_like(z))
    assert backbone.denoise(x_t, 500.0, z, steps=2).shape == z.shape  # a random model: runs, keeps the shape
    ab = backbone.ddpm.alphas_cumprod

    def oracle(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        a = float(ab[int(timestep[0])])
        eps = (x - math.sqrt(a) * z) / math.sqrt(1 - a)
        return torch.cat([eps, torch.zeros_like(eps)], dim=-1)  # eps and the learned-sigma half

    monkeypatch.setattr(backbone, "call", oracle)
    torch.testing.assert_close(backbone.denoise(x_t, 500.0, z, steps=4), z, atol=1e-4, rtol=1e-4)


def _with_scheduler(folder: Path, copy: Path, **config: str) -> Path:
    shutil.copytree(folder, copy)
    path = copy / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | config))
    return copy


def test_learned_variance_on_ddim_is_refused_at_load_in_one_line(folder: Path, tmp_path: Path) -> None:
    """DDIM cannot step on the (eps, variance) output LattePipeline gives a learned-variance scheduler (the pipeline
    fails on it too): `backbone check` says so in one line naming the file and the value, exit status 2."""
    bad = _with_scheduler(folder, tmp_path / "ddim", variance_type="learned_range")
    result = CliRunner().invoke(main, ["backbone", "check", f"latte:{bad}", "--dataset", "probeworld:tiny", "--clips",
                                       "1", "--t", "300", "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: {bad / 'scheduler' / 'scheduler_config.json'}: variance_type 'learned_range' "
                           "with DDIMScheduler"), line


def test_learned_variance_on_ddpm_steps_on_both_halves_as_the_pipeline(folder: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """DDPMScheduler with learned_range gets the whole output channels first (B, 2C, T, h, w), as in LattePipeline,
    splits it itself, and an oracle eps recovers the clean latents."""
    ok = _with_scheduler(folder, tmp_path / "ddpm", _class_name="DDPMScheduler", variance_type="learned_range")
    backbone = load_backbone(f"latte:{ok}", CPU).backbone
    z = torch.randn(1, 9, 8, 8, 4)
    x_t, _ = backbone.noise(z, 500.0, torch.randn_like(z))
    ab = backbone.ddpm.alphas_cumprod
    seen: list[tuple[int, ...]] = []
    step = backbone.scheduler.step

    def oracle(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        a = float(ab[int(timestep[0])])
        eps = (x - math.sqrt(a) * z) / math.sqrt(1 - a)
        return torch.cat([eps, torch.zeros_like(eps)], dim=-1)  # eps and the learned-variance half

    def recording(out: torch.Tensor, *args, **kwargs):
        seen.append(tuple(out.shape))
        return step(out, *args, **kwargs)

    monkeypatch.setattr(backbone, "call", oracle)
    monkeypatch.setattr(backbone.scheduler, "step", recording)
    torch.testing.assert_close(backbone.denoise(x_t, 500.0, z, steps=3), z, atol=1e-4, rtol=1e-4)
    assert set(seen) == {(1, 8, 9, 8, 8)}
