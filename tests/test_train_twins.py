"""Tokenizer and twin training through the real entry points: exported latent scale, image and video twins share
one parameter shape, a killed twin run resumes exactly, and sampling is deterministic given a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffprobe.data.splits import resolve_roles
from diffprobe.features.cache import FeatureCache
from diffprobe.features.sources import pixel_key
from diffprobe.models import frames_to_input
from diffprobe.models.exports import load_tokenizer
from diffprobe.train.denoiser import DenoiserRunConfig, load_denoiser, train_denoiser
from diffprobe.train.logging import read_metrics
from diffprobe.train.sample import generate, write_samples
from diffprobe.train.tokenizer import TokenizerRunConfig, train_tokenizer

WORLD = ["dataset=probeworld:tiny@train_size=32,val_size=8,test_size=8,num_tracks=8"]
CLIP = (9, 32, 32)  # frames, height, width of the tiny world


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    cfg = TokenizerRunConfig.preset("tiny").override([*WORLD, "train.steps=3", "stats_clips=16"])
    train_tokenizer(cfg, root / "tok", FeatureCache(root / "cache"), progress=False)
    return root, cfg


def _twin(root, mode: str, steps: int = 6) -> DenoiserRunConfig:
    return DenoiserRunConfig.preset("walt-tiny").override(
        [*WORLD, f"train.steps={steps}", "train.ckpt_every=3", "train.log_every=1", "train.batch_size=4",
         "train.keep_steps=[3]", "train.tensorboard=false"]).replace(mode=mode, tokenizer=str(root / "tok"))


def test_tokenizer_export_sets_unit_latents(tokenizer_run) -> None:
    root, cfg = tokenizer_run
    tok, meta = load_tokenizer(root / "tok")
    assert meta["step"] == 3 and meta["latent_scale"] > 0
    assert float(tok.latent_scale) == pytest.approx(meta["latent_scale"])
    clips = resolve_roles({"train": cfg.dataset})["train"].clips
    videos = FeatureCache(root / "cache").open(pixel_key(clips)).load_all()[1]
    with torch.no_grad():
        z = tok.encode(frames_to_input(videos[:16]))
    assert z.shape == (16, 8, 5, 8, 8)
    assert float(z.std()) == pytest.approx(1.0, abs=1e-3) and abs(float(z.mean())) < 1e-3


def test_twins_share_parameters_and_resume_exactly(tokenizer_run) -> None:
    root, _ = tokenizer_run
    cache = FeatureCache(root / "cache")
    train_denoiser(_twin(root, "video"), root / "video", cache, progress=False)
    train_denoiser(_twin(root, "image"), root / "image", cache, progress=False)
    video, _, _ = load_denoiser(root / "video")
    image, image_cfg, _ = load_denoiser(root / "image")
    assert {k: v.shape for k, v in video.state_dict().items()} == {k: v.shape for k, v in image.state_dict().items()}
    assert image_cfg.mode == "image"
    # killed right after its step-3 checkpoint, then resumed: loss curve and weights equal the uninterrupted run's
    def kill(step, ckpt_dir):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_denoiser(_twin(root, "video"), root / "killed", cache, progress=False, on_checkpoint=kill)
    assert not (root / "killed" / "model.safetensors").exists()
    train_denoiser(_twin(root, "video"), root / "killed", cache, resume=True, progress=False)
    curve = [(s, n, v) for s, n, v, _ in read_metrics(root / "video" / "metrics.csv") if n == "train/loss"]
    resumed = [(s, n, v) for s, n, v, _ in read_metrics(root / "killed" / "metrics.csv") if n == "train/loss"]
    assert curve == resumed and len(curve) == 6
    again, _, _ = load_denoiser(root / "killed")
    assert all(torch.equal(a, b) for a, b in zip(video.state_dict().values(), again.state_dict().values(),
                                                 strict=True))


def test_sampling_is_deterministic(tokenizer_run, tmp_path) -> None:
    root, _ = tokenizer_run
    cache = FeatureCache(root / "cache")
    train_denoiser(_twin(root, "video"), root / "video", cache, progress=False)  # no-op if already trained
    model, cfg, _ = load_denoiser(root / "video")
    tok, _ = load_tokenizer(cfg.tokenizer)
    dev = torch.device("cpu")
    a = generate(model, tok, "video", CLIP, 3, 4, seed=7, device=dev, progress=False)
    b = generate(model, tok, "video", CLIP, 3, 4, seed=7, device=dev, progress=False)
    c = generate(model, tok, "video", CLIP, 3, 4, seed=8, device=dev, progress=False)
    assert a.shape == (3, 9, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    images = generate(model, tok, "image", CLIP, 2, 4, seed=7, device=dev, progress=False)
    assert images.shape == (2, 1, 32, 32, 3)
    grid = write_samples(a, tmp_path / "s", fmt="gif")
    assert grid.is_file() and (tmp_path / "s" / "sample-000.gif").is_file()


def test_backbone_info_and_check_commands(tokenizer_run) -> None:
    from click.testing import CliRunner

    from diffprobe.backbones.registry import block_shapes, load_backbone
    from diffprobe.cli import main

    root, _ = tokenizer_run
    train_denoiser(_twin(root, "video"), root / "video", FeatureCache(root / "cache"), progress=False)
    spec = f"walt:{root / 'video'}"
    out = CliRunner().invoke(main, ["backbone", "info", spec, "--device", "cpu"], catch_exceptions=False).output
    shapes = block_shapes(load_backbone(spec, torch.device("cpu")).backbone, 9, 32, 32)
    assert len(shapes) == 7 and shapes[3] == (5, 4, 4, 128)  # depth 6 + the embedded input; 5 x 4 x 4 tokens
    for block, (t, h, w, c) in shapes.items():
        assert f"block {block:>3}  tokens {t:>3} x {h:>3} x {w:>3}  channels {c}" in out
    result = CliRunner().invoke(main, ["backbone", "check", spec, "--clips", "2", "--steps", "2", "--t", "300",
                                       "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    row = result.output.strip().splitlines()[-1].split()
    assert row[0] == "300" and float(row[1]) > 0 and float(row[2]) > 0  # denoised and noisy errors


def test_both_twins_see_the_same_tokens_per_step(tokenizer_run, monkeypatch) -> None:
    """Image mode draws batch_size x T' single frames (T' = 5 latent frames of a 9-frame clip), not one per
    video frame: the same number of latent tokens per step as the video twin's batch_size clips."""
    from diffprobe.train import denoiser

    root, _ = tokenizer_run
    sizes = {}
    real = denoiser.make_batch_fn
    for mode in ("video", "image"):
        monkeypatch.setattr(denoiser, "make_batch_fn", lambda data, bs, *a, mode=mode, **kw: sizes.setdefault(
            mode, (bs, data[0].shape)) and real(data, bs, *a, **kw))
        train_denoiser(_twin(root, mode, steps=1), root / f"bs-{mode}", FeatureCache(root / "cache"), progress=False)
    (bv, video_shape), (bi, image_shape) = sizes["video"], sizes["image"]
    assert video_shape[1] == 5 and image_shape[1] == 1  # (C, T', h, w) clips vs (C, 1, h, w) frames
    assert bv == 4 and bi == 4 * 5
