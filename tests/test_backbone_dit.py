"""The ``dit`` backbone on a tiny random DiT folder: shapes and frame-by-frame layout, a direct forward at t = 0,
the DDPM noising on the folder's scheduler, the null class, identity, bad folders, the registry and denoise."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from hf_models_dit import Hooks, random_clip, save_tiny_dit  # noqa: E402

from diffprobe.backbones.base import clip_noise  # noqa: E402
from diffprobe.backbones.external import BackboneLoadError  # noqa: E402
from diffprobe.backbones.registry import block_shapes, load_backbone  # noqa: E402
from diffprobe.config import ConfigError  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_dit(tmp_path_factory.mktemp("dit") / "model")


@pytest.fixture(scope="module")
def backbone(folder: Path):
    return load_backbone(f"dit:{folder}", CPU).backbone


def test_block_shapes_and_frame_by_frame_layout(backbone) -> None:
    assert block_shapes(backbone, 9, 32, 32) == {0: (9, 8, 8, 4), 1: (9, 4, 4, 16), 2: (9, 4, 4, 16)}
    video = random_clip(1, 2)
    both = backbone.features(video, torch.tensor([0]), [0, 2], 0.0, 0)
    for f in range(2):  # image mode: every frame is its own sample
        alone = backbone.features(video[:, f:f + 1], torch.tensor([0]), [0, 2], 0.0, 0)
        for b in (0, 2):
            torch.testing.assert_close(both[b][:, f:f + 1], alone[b], atol=1e-5, rtol=1e-4)


def test_tokens_follow_the_patch_grid(backbone) -> None:
    """With block 1 made the identity, its tokens are the patch embedding's: a latent change that varies along
    width only must come out constant along rows and frames, and one along height only constant along columns."""
    z = torch.randn(1, 2, 8, 8, 4)
    col = torch.linspace(-1, 1, 8).view(1, 1, 1, 8, 1).expand_as(z)
    row = torch.linspace(-1, 1, 8).view(1, 1, 8, 1, 1).expand_as(z)
    ids = torch.tensor([0])
    with Hooks().identity(backbone.transformer.transformer_blocks[0]):
        base = backbone.features_from_encoded(z, ids, [1], 0.0, 0)[1]
        by_col = backbone.features_from_encoded(z + col, ids, [1], 0.0, 0)[1] - base  # (1, 2, 4, 4, D)
        by_row = backbone.features_from_encoded(z + row, ids, [1], 0.0, 0)[1] - base
    torch.testing.assert_close(by_col, by_col[:, :1, :1].expand_as(by_col), atol=1e-5, rtol=0)
    assert (by_col[0, 0, 0, 0] - by_col[0, 0, 0, -1]).abs().max() > 1e-3
    torch.testing.assert_close(by_row, by_row[:, :1, :, :1].expand_as(by_row), atol=1e-5, rtol=0)
    assert (by_row[0, 0, 0, 0] - by_row[0, 0, -1, 0]).abs().max() > 1e-3


def test_t0_equals_a_direct_forward_and_latents_are_scaled_as_the_pipeline(folder: Path, backbone) -> None:
    from diffusers import AutoencoderKL, DiTTransformer2DModel
    from diffusers.image_processor import VaeImageProcessor

    video = random_clip(2, 2, seed=3)
    feats = backbone.features(video, torch.tensor([4, 5]), [0, 1, 2], 0.0, 7)
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    transformer = DiTTransformer2DModel.from_pretrained(folder / "transformer").eval()
    frames = video.reshape(4, 32, 32, 3).numpy().astype("float32") / 255
    pixels = VaeImageProcessor(vae_scale_factor=4).preprocess(frames)  # the pipelines' [-1, 1] channels first
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor  # (4, 4, 8, 8)
        torch.testing.assert_close(feats[0], z.reshape(2, 2, 4, 8, 8).permute(0, 1, 3, 4, 2), atol=1e-5, rtol=1e-4)
        with Hooks() as hooks:
            hooks.outputs(transformer.transformer_blocks[0]).outputs(transformer.transformer_blocks[1])
            transformer(z, timestep=torch.zeros(4, dtype=torch.long), class_labels=torch.full((4,), 10))
    for b, out in enumerate(hooks.seen, start=1):  # (4, 16, D), tokens row-major over the 4x4 patch grid
        torch.testing.assert_close(feats[b], out.reshape(2, 2, 4, 4, -1), atol=1e-5, rtol=1e-4)


def test_noise_follows_ddpm_on_the_folders_scheduler(tmp_path: Path) -> None:
    """N = 500 train timesteps: t = 500 is timestep 250, x_t = sqrt(ab) z + sqrt(1 - ab) eps with the scheduler's
    ab (= its own add_noise), and the model gets the null class 10 (num_classes)."""
    from diffusers import DDIMScheduler

    folder = save_tiny_dit(tmp_path / "n500", num_train_timesteps=500)
    backbone = load_backbone(f"dit:{folder}", CPU).backbone
    ids = torch.tensor([3, 8])
    z = backbone.features(random_clip(2, 2), ids, [0], 0.0, 0)[0]  # (2, 2, 8, 8, 4)
    with Hooks() as hooks:
        hooks.inputs(backbone.transformer)
        backbone.features_from_encoded(z, ids, [1], 500.0, noise_seed=11)
    args, kwargs = hooks.seen[0]
    eps = clip_noise(z, ids, 11, 0)
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    ab = float(scheduler.alphas_cumprod[250])
    expected = math.sqrt(ab) * z + math.sqrt(1 - ab) * eps
    fed = args[0].reshape(2, 2, 4, 8, 8).permute(0, 1, 3, 4, 2)
    torch.testing.assert_close(fed, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fed, scheduler.add_noise(z, eps, torch.tensor([250])), atol=1e-5, rtol=1e-5)
    assert kwargs["timestep"].tolist() == [250] * 4 and kwargs["class_labels"].tolist() == [10] * 4
    assert backbone.ddpm.index(1000) == 499 and backbone.ddpm.index(0) == 0


def test_identity_changes_with_dtype_options_and_weights(folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    first = load_backbone(f"dit:{copy}", CPU).backbone.identity
    assert load_backbone(f"dit:{copy}", CPU).backbone.identity == first
    assert load_backbone(f"dit:{copy}@dtype=bf16", CPU).backbone.identity != first
    assert load_backbone(f"dit:{copy}@vae_frames=2", CPU).backbone.identity == first  # chunking: same features
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    tensors = {k: v + 0.01 if k.endswith("to_q.weight") else v for k, v in tensors.items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert load_backbone(f"dit:{copy}", CPU).backbone.identity != first


def test_bad_folders_name_the_file(folder: Path, tmp_path: Path) -> None:
    def broken(name: str) -> Path:
        return Path(shutil.copytree(folder, tmp_path / name))

    gone = broken("novae")
    (gone / "vae" / "config.json").unlink()
    with pytest.raises(BackboneLoadError, match=r"vae/config\.json"):
        load_backbone(f"dit:{gone}", CPU)
    for name, key, value, what in [("shapes", "attention_head_dim", 4, "transformer"),
                                   ("layers", "num_layers", 3, r"transformer/config\.json.*missing"),
                                   ("fewer", "num_layers", 1, r"transformer/config\.json.*unused")]:
        bad = broken(name)
        cfg_path = bad / "transformer" / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg[key] = value
        cfg_path.write_text(json.dumps(cfg))
        with pytest.raises(BackboneLoadError, match=what):
            load_backbone(f"dit:{bad}", CPU)
    sched = broken("sched")
    cfg_path = sched / "scheduler" / "scheduler_config.json"
    cfg_path.write_text(json.dumps(json.loads(cfg_path.read_text()) | {"_class_name": "NoSuchScheduler"}))
    with pytest.raises(BackboneLoadError, match=r"scheduler_config\.json.*NoSuchScheduler"):
        load_backbone(f"dit:{sched}", CPU)
    with pytest.raises(ConfigError, match="vae_frames"):
        load_backbone(f"dit:{folder}@frames=9", CPU)
    with pytest.raises(BackboneLoadError, match="no such model folder"):
        load_backbone(f"dit:{tmp_path / 'nowhere'}", CPU)


def test_registry_resolves_an_image_mode_backbone(folder: Path) -> None:
    resolved = load_backbone(f"dit:{folder}@batch_size=1", CPU)
    assert (resolved.mode, resolved.step, resolved.trained_on) == ("image", 0, None)
    assert resolved.backbone.num_blocks == 2 and resolved.backbone.encoder is not None
    assert resolved.backbone.identity.startswith("dit-model-")


def test_denoise_runs_on_the_random_model(backbone) -> None:
    """A random model cannot denoise: the folder's loop just runs from t and keeps the shape."""
    z = backbone.features(random_clip(1, 2), torch.tensor([0]), [0], 0.0, 0)[0]
    x_t, _ = backbone.noise(z, 600.0, torch.randn_like(z))
    out = backbone.denoise(x_t, 600.0, z, steps=3)
    assert out.shape == z.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler"])
def test_denoise_recovers_the_clean_latents_with_an_oracle(backbone, scheduler: str, monkeypatch) -> None:
    """With an oracle noise prediction, the folder's DDIM loop (and the DDPM / DPM-Solver loops on the same
    config), started exactly at t's timestep, returns the clean latents; the PNDM scheduler is refused."""
    import diffusers

    z = torch.randn(1, 2, 8, 8, 4)
    x_t, _ = backbone.noise(z, 600.0, torch.randn_like(z))
    ab = backbone.ddpm.alphas_cumprod

    def oracle(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        a = float(ab[int(timestep[0])])
        e = (x - math.sqrt(a) * z) / math.sqrt(1 - a)
        return torch.cat([e, torch.zeros_like(e)], dim=-1)  # (B, T, h, w, 2C): eps and the learned-sigma half

    monkeypatch.setattr(backbone, "call", oracle)
    monkeypatch.setattr(backbone, "scheduler", getattr(diffusers, scheduler).from_config(backbone.scheduler.config))
    torch.testing.assert_close(backbone.denoise(x_t, 600.0, z, steps=4), z, atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(backbone, "scheduler", diffusers.PNDMScheduler.from_config(backbone.scheduler.config))
    with pytest.raises(NotImplementedError, match="PNDMScheduler"):
        backbone.denoise(x_t, 600.0, z, steps=4)
