"""The ``wan`` backbone on a tiny random Wan folder: shapes and the patch order, a direct forward at t = 0 with the
pipeline's latent normalisation, flow-matching noising, windows, the null prompt computed once, identity, bad
folders, the registry and denoise (UniPC flow sigmas and flow-match Euler)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hf_models_dit import WAN_MEAN, WAN_STD, Hooks, random_clip, save_tiny_wan  # noqa: E402

from diffprobe.backbones.base import clip_noise  # noqa: E402
from diffprobe.backbones.external import BackboneLoadError  # noqa: E402
from diffprobe.backbones.registry import block_shapes, load_backbone  # noqa: E402
from diffprobe.config import ConfigError  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_wan(tmp_path_factory.mktemp("wan") / "model")


@pytest.fixture(scope="module")
def backbone(folder: Path):
    return load_backbone(f"wan:{folder}", CPU).backbone


def test_block_shapes_and_windows(folder: Path, backbone) -> None:
    assert block_shapes(backbone, 9, 32, 32) == {0: (3, 4, 4, 4), 1: (3, 2, 2, 24), 2: (3, 2, 2, 24)}
    tiled = load_backbone(f"wan:{folder}@frames=5", CPU).backbone
    assert block_shapes(tiled, 10, 32, 32)[1] == (4, 2, 2, 24)
    with pytest.raises(ValueError, match=r"1 \+ 4k"):
        backbone.features(random_clip(1, 8), torch.tensor([0]), [1], 0.0, 0)


def test_tokens_follow_the_models_patch_order(backbone) -> None:
    z = torch.randn(1, 3, 4, 4, 4)
    in_time = torch.linspace(-1, 1, 3).view(1, 3, 1, 1, 1).expand_as(z)
    along_h = torch.linspace(-1, 1, 4).view(1, 1, 4, 1, 1).expand_as(z)
    ids = torch.tensor([0])
    with Hooks().identity(backbone.transformer.blocks[0]):
        base = backbone.features_from_encoded(z, ids, [1], 0.0, 0)[1]
        d_t = backbone.features_from_encoded(z + in_time, ids, [1], 0.0, 0)[1] - base  # (1, 3, 2, 2, D)
        d_h = backbone.features_from_encoded(z + along_h, ids, [1], 0.0, 0)[1] - base
    torch.testing.assert_close(d_t, d_t[:, :, :1, :1].expand_as(d_t), atol=1e-5, rtol=0)  # constant in space
    assert (d_t[0, 0] - d_t[0, -1]).abs().max() > 1e-3
    torch.testing.assert_close(d_h, d_h[:, :1, :, :1].expand_as(d_h), atol=1e-5, rtol=0)  # constant in time, columns
    assert (d_h[0, 0, 0, 0] - d_h[0, 0, 1, 0]).abs().max() > 1e-3


def test_t0_equals_a_direct_forward_with_the_pipelines_normalisation(folder: Path, backbone) -> None:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from diffusers.video_processor import VideoProcessor
    from safetensors.torch import load_file

    video = random_clip(1, 9, seed=6)
    feats = backbone.features(video, torch.tensor([0]), [0, 1, 2], 0.0, 0)
    vae = AutoencoderKLWan.from_pretrained(folder / "vae").eval()
    transformer = WanTransformer3DModel.from_pretrained(folder / "transformer").eval()
    pixels = VideoProcessor(vae_scale_factor=8).preprocess_video(video.numpy().astype("float32") / 255)
    mean = torch.tensor(vae.config.latents_mean).view(1, 4, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 4, 1, 1, 1)
    assert vae.config.latents_mean == WAN_MEAN and vae.config.latents_std == WAN_STD
    with torch.no_grad():
        raw = vae.encode(pixels).latent_dist.mode()  # (1, C, T', h, w): what the pipeline takes ("argmax")
        z = (raw - mean) * inv_std  # WanVideoToVideoPipeline.prepare_latents
        torch.testing.assert_close(feats[0], z.permute(0, 2, 3, 4, 1), atol=1e-5, rtol=1e-4)
        back = feats[0].permute(0, 4, 1, 2, 3) / inv_std + mean  # WanPipeline's un-normalisation before decoding
        torch.testing.assert_close(back, raw, atol=1e-5, rtol=1e-4)
        null = load_file(str(folder / "null_embeds.safetensors"))["prompt_embeds"]
        with Hooks() as hooks:
            for block in transformer.blocks:
                hooks.outputs(block)
            transformer(hidden_states=z, timestep=torch.zeros(1), encoder_hidden_states=null)
    for b, out in enumerate(hooks.seen, start=1):
        torch.testing.assert_close(feats[b], out.reshape(1, 3, 2, 2, -1), atol=1e-5, rtol=1e-4)


def test_noise_follows_flow_matching(backbone) -> None:
    ids = torch.tensor([1, 6])
    z = torch.randn(2, 3, 4, 4, 4)
    with Hooks() as hooks:
        hooks.inputs(backbone.transformer)
        backbone.features_from_encoded(z, ids, [1], 250.0, noise_seed=2)
    kwargs = hooks.seen[0][1]
    eps = clip_noise(z, ids, 2, 0)
    fed = kwargs["hidden_states"].permute(0, 2, 3, 4, 1)  # (B, C, T', h, w) -> (B, T', h, w, C)
    torch.testing.assert_close(fed, 0.75 * z + 0.25 * eps, atol=1e-6, rtol=1e-6)
    assert kwargs["timestep"].tolist() == [250.0, 250.0]


def test_null_prompt_is_computed_once_then_read(tmp_path: Path) -> None:
    from diffusers import WanPipeline
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, UMT5EncoderModel

    folder = save_tiny_wan(tmp_path / "fresh")
    load_backbone(f"wan:{folder}", CPU)
    saved = load_file(str(folder / "null_embeds.safetensors"))["prompt_embeds"]
    pipe = WanPipeline(tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
                       text_encoder=UMT5EncoderModel.from_pretrained(folder / "text_encoder").eval(), vae=None,
                       scheduler=None)
    with torch.no_grad():
        expected, _ = pipe.encode_prompt("", do_classifier_free_guidance=False, max_sequence_length=512, device=CPU)
    assert saved.shape == (1, 512, 32) and saved[0, 1:].abs().max() == 0  # "" is one token, then zero padding
    torch.testing.assert_close(saved, expected, atol=1e-6, rtol=1e-5)
    shutil.rmtree(folder / "tokenizer")
    torch.testing.assert_close(load_backbone(f"wan:{folder}", CPU).backbone.null, saved)


def test_identity_bad_folders_and_registry(folder: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    resolved = load_backbone(f"wan:{copy}", CPU)
    assert (resolved.mode, resolved.step, resolved.trained_on) == ("video", 0, None)
    first = resolved.backbone.identity
    assert load_backbone(f"wan:{copy}@dtype=bf16", CPU).backbone.identity != first
    assert load_backbone(f"wan:{copy}@frames=5,window=cut", CPU).backbone.identity != first
    (copy / "scheduler" / "scheduler_config.json").write_text(
        (folder / "scheduler" / "scheduler_config.json").read_text().replace('"flow_shift": 3.0', '"flow_shift": 5.0'))
    second = load_backbone(f"wan:{copy}", CPU).backbone.identity
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes())  # rewritten: a new modification time
    assert len({first, second, load_backbone(f"wan:{copy}", CPU).backbone.identity}) == 3
    (copy / "transformer_2").mkdir()
    with pytest.raises(BackboneLoadError, match="transformer_2.*two-expert"):
        load_backbone(f"wan:{copy}", CPU)
    shutil.rmtree(copy / "transformer_2")
    (copy / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(BackboneLoadError, match=r"scheduler/scheduler_config\.json"):
        load_backbone(f"wan:{copy}", CPU)
    with pytest.raises(ConfigError, match="window"):
        load_backbone(f"wan:{folder}@window=overlap", CPU)


def test_an_image_to_video_transformer_is_refused(tmp_path: Path) -> None:
    """Wan's I2V transformers take the conditioning latents too: more input channels than the VAE's z_dim."""
    i2v = save_tiny_wan(tmp_path / "i2v", text_encoder=False, in_channels=8)
    with pytest.raises(BackboneLoadError, match=r"transformer/config\.json: in_channels 8 != the VAE's z_dim 4 "
                                                r"\(an image-to-video model"):
        load_backbone(f"wan:{i2v}", CPU)


@pytest.mark.parametrize("scheduler", ["UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_denoise_runs_and_recovers_the_clean_latents_with_an_oracle(backbone, scheduler: str, monkeypatch) -> None:
    """The random model cannot denoise: the loop runs and keeps the shape. With an oracle velocity (eps - z) the
    flow scheduler (Wan's UniPC with flow sigmas, shift 3; or flow-match Euler, shift 5), started at sigma = t/1000,
    returns the clean latents."""
    import diffusers

    sched = backbone.scheduler if scheduler == "UniPCMultistepScheduler" else \
        diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0)
    monkeypatch.setattr(backbone, "scheduler", sched)
    z = torch.randn(1, 3, 4, 4, 4)
    x_t, _ = backbone.noise(z, 600.0, torch.randn_like(z))
    assert backbone.denoise(x_t, 600.0, z, steps=3).shape == z.shape

    def oracle(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        sigma = float(timestep[0]) / 1000
        return (x - z) / sigma  # eps - z, as x = (1 - sigma) z + sigma eps

    monkeypatch.setattr(backbone, "call", oracle)
    torch.testing.assert_close(backbone.denoise(x_t, 600.0, z, steps=4), z, atol=1e-4, rtol=1e-4)
