"""The video VAEs' tiling (``vae_tiling`` / ``vae_tile`` of ``cogvideox`` and ``wan``) and the VAE call that halves on
out-of-memory: tiled latents are diffusers' own tiled encode, close to the untiled ones and named apart in the
identity; below one tile ``auto`` is exactly the untiled encode under today's identity; new options at their defaults
leave every identity as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hf_models_dit import random_clip, save_tiny_cogvideox, save_tiny_wan  # noqa: E402

from diffprobe.backbones.external import LatentEncoder, identity_of, weights_fingerprint  # noqa: E402
from diffprobe.backbones.registry import load_backbone  # noqa: E402
from diffprobe.backbones.video_windows import TiledVideoOptions  # noqa: E402
from diffprobe.config import ConfigError  # noqa: E402
from diffprobe.utils.chunks import HalvingChunks  # noqa: E402

CPU = torch.device("cpu")
IDS = torch.tensor([0])
BUILDERS = {"cogvideox": save_tiny_cogvideox, "wan": save_tiny_wan}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vae")
    return {kind: build(root / kind, text_encoder=False) for kind, build in BUILDERS.items()}


def latents(spec: str, video: torch.Tensor) -> torch.Tensor:
    return load_backbone(spec, CPU).backbone.encoder.features(video, IDS, [0], 0.0, 0)[0]


def test_tiling_above_one_tile_changes_the_latents_slightly_and_names_itself(folders: dict[str, Path]) -> None:
    """Wan, 64-px tiles every 48 px on 96-px frames: the latents keep their shape and stay within 10% (relative L2;
    measured 4.3% on this random tiny VAE, whose RMS norms are per position), but differ, and so do the identities
    of the encoder and of the backbone at that size."""
    video = random_clip(1, 5, 96)
    off = load_backbone(f"wan:{folders['wan']}@vae_tiling=off", CPU).backbone
    on = load_backbone(f"wan:{folders['wan']}@vae_tile=64", CPU).backbone
    z_off = off.encoder.features(video, IDS, [0], 0.0, 0)[0]
    z_on = on.encoder.features(video, IDS, [0], 0.0, 0)[0]
    assert z_on.shape == z_off.shape == (1, 2, 12, 12, 4)
    rel = ((z_on - z_off).norm() / z_off.norm()).item()
    assert 1e-4 < rel < 0.1
    assert on.identity == off.identity  # the options themselves are not in the identity ...
    assert on.encoder.identity_at(5, 96, 96) == on.encoder.identity + "+vaetiles64x64s48x48"  # ... the tiling is
    assert on.identity_at(5, 96, 96) == on.identity + "+vaetiles64x64s48x48"
    assert off.identity_at(5, 96, 96) == off.identity and off.encoder.identity_at(5, 96, 96) == off.encoder.identity
    assert on.identity_at(5, 96, 32) != on.identity  # taller or wider than a tile is enough


def test_tiled_latents_are_diffusers_own_tiled_encode(folders: dict[str, Path]) -> None:
    """CogVideoX, 64-px tiles (a quarter overlap) on 96-px frames: the encoder's latents are
    ``enable_tiling`` + ``encode`` of the same VAE, scaled as the untiled ones are."""
    from diffusers import AutoencoderKLCogVideoX

    video = random_clip(1, 5, 96)
    ours = latents(f"cogvideox:{folders['cogvideox']}@vae_tile=64", video)  # (1, 2, 12, 12, 16)
    vae = AutoencoderKLCogVideoX.from_pretrained(folders["cogvideox"] / "vae").eval()
    vae.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64, tile_overlap_factor_height=0.25,
                      tile_overlap_factor_width=0.25)
    x = video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (1, 3, T, H, W)
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(ours, ref.permute(0, 2, 3, 4, 1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, latents(f"cogvideox:{folders['cogvideox']}@vae_tiling=off", video), atol=1e-3)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_below_one_tile_auto_is_exactly_off_with_the_same_identity(folders: dict[str, Path], kind: str) -> None:
    video = random_clip(1, 5, 32)
    auto = load_backbone(f"{kind}:{folders[kind]}@vae_tile=64", CPU).backbone
    off = load_backbone(f"{kind}:{folders[kind]}@vae_tiling=off", CPU).backbone
    default = load_backbone(f"{kind}:{folders[kind]}", CPU).backbone  # the VAE's own tile: far above 32 px
    a, b = (m.features(video, IDS, [0, 1], 500.0, 3) for m in (auto, off))
    for block in (0, 1):
        assert torch.equal(a[block], b[block])
    assert auto.identity_at(5, 32, 32) == off.identity_at(5, 32, 32) == default.identity_at(5, 32, 32) == \
        default.identity
    assert auto.encoder.identity_at(5, 32, 32) == off.encoder.identity == default.encoder.identity


def legacy_identity(kind: str, folder: Path, opts: TiledVideoOptions, **details: str) -> str:
    """The identity as computed before ``overlap`` / ``vae_tiling`` / ``vae_tile`` existed (the options' other fields
    only)."""
    fields = {"dtype": opts.dtype, "frames": opts.frames, "window": opts.window}
    blob = repr((kind, weights_fingerprint(folder), sorted(fields.items()), sorted(details.items())))
    return f"{kind}-{folder.resolve().name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def test_new_options_at_their_defaults_leave_the_identity_as_it_was(folders: dict[str, Path]) -> None:
    folder, details = folders["wan"], {"conditioning": "x", "t_mapping": "y"}
    for opts in (TiledVideoOptions(), TiledVideoOptions(frames=5, window="cut"), TiledVideoOptions(vae_tiling="off"),
                 TiledVideoOptions(vae_tile=64, overlap=0, frames=5)):
        assert identity_of("wan", folder, opts, **details) == legacy_identity("wan", folder, opts, **details)
    overlapping = TiledVideoOptions(frames=5, overlap=1)
    assert identity_of("wan", folder, overlapping, **details) != legacy_identity("wan", folder, overlapping, **details)


def test_tiling_options_mistakes_are_one_line(folders: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"vae_tile: must be a multiple of 32 pixels.*got 48$"):
        load_backbone(f"wan:{folders['wan']}@vae_tile=48", CPU)
    with pytest.raises(ConfigError, match="vae_tiling"):
        load_backbone(f"cogvideox:{folders['cogvideox']}@vae_tiling=on", CPU)


# ---- out of device memory ----------------------------------------------------------------------------------------


def per_frame_stand_in(limit: int, calls: list[int]):
    """An encode that runs out of device memory above ``limit`` frames a call; else each frame's mean colour
    ``(B, t, 1, 1, 3)``."""

    def encode(video: torch.Tensor) -> torch.Tensor:
        calls.append(video.shape[1])
        if video.shape[1] > limit:
            raise torch.OutOfMemoryError("stand-in: CUDA out of memory")
        return video.float().mean(dim=(2, 3), keepdim=True)

    return encode


def test_out_of_memory_halves_the_vae_frame_chunk_and_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[int] = []
    encoder = LatentEncoder("stand-in-latents", per_frame_stand_in(3, calls), CPU, torch.nn.Identity(),
                            frames_per_chunk=8)
    video = random_clip(2, 9, 8)
    z = encoder.features(video, torch.tensor([0, 1]), [0], 0.0, 0)[0]
    torch.testing.assert_close(z, video.float().mean(dim=(2, 3), keepdim=True))
    assert calls == [8, 4, 2, 2, 2, 2, 1]  # 8 fails, 4 fails, then 2-frame chunks and the rest
    err = capsys.readouterr().err
    assert err.splitlines() == ["stand-in-latents: out of device memory at 8 frames a VAE call; going on at 4",
                                "stand-in-latents: out of device memory at 4 frames a VAE call; going on at 2"]
    calls.clear()
    encoder.features(video, torch.tensor([0, 1]), [0], 0.0, 0)  # the next batch starts at the size that fit
    assert calls == [2, 2, 2, 2, 1] and capsys.readouterr().err == ""


def test_out_of_memory_at_one_frame_is_raised() -> None:
    encoder = LatentEncoder("stand-in-latents", per_frame_stand_in(0, []), CPU, torch.nn.Identity(), frames_per_chunk=2)
    with pytest.raises(torch.OutOfMemoryError):
        encoder.features(random_clip(1, 4, 8), IDS, [0], 0.0, 0)


def test_a_video_vae_halves_its_windows_a_call(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Wan with 4 windows a clip: a VAE that runs out of memory above one window a call gives the same latents, one
    window at a time, said once per halving."""
    from diffusers import AutoencoderKLWan

    video = random_clip(2, 10, 32)
    spec = f"wan:{folders['wan']}@frames=5"
    want = latents(spec, video)
    backbone = load_backbone(spec, CPU).backbone
    original = AutoencoderKLWan.encode
    sizes: list[int] = []

    def tight(self, x, *args, **kwargs):
        sizes.append(len(x))
        if len(x) > 1:
            raise torch.OutOfMemoryError("stand-in: CUDA out of memory")
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKLWan, "encode", tight)
    got = backbone.encoder.features(video, torch.tensor([0, 1]), [0], 0.0, 0)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert sizes == [4, 2, 1, 1, 1, 1]
    assert capsys.readouterr().err.splitlines() == [
        "wan VAE: out of device memory at 4 windows a VAE call; going on at 2",
        "wan VAE: out of device memory at 2 windows a VAE call; going on at 1"]


def test_halving_chunks_keep_the_order_along_any_dim() -> None:
    fit = HalvingChunks(0, "clips", "x")
    seen: list[int] = []

    def fn(part: torch.Tensor) -> torch.Tensor:
        seen.append(part.shape[0])
        if part.shape[0] > 2:
            raise torch.OutOfMemoryError("stand-in")
        return part * 2

    x = torch.arange(7.0).view(7, 1)
    torch.testing.assert_close(fit(fn, x, 0), x * 2)
    assert seen == [7, 4, 2, 2, 2, 1] and fit.size == 2


def test_tiled_features_are_cached_and_stored_under_the_tiled_identity(folders: dict[str, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Clips larger than a tile: the encoder's cache, the features' cache and the probe's stored cell carry the
    tiling; the same folder with tiling off keeps the plain identity (nothing computed two ways shares a key)."""
    from click.testing import CliRunner

    from diffprobe.cli import main
    from diffprobe.data.splits import ROLES
    from diffprobe.features.cache import FeatureCache
    from diffprobe.features.sources import ensure_features
    from diffprobe.study.store import ResultsStore
    from diffprobe.tasks.roles import task_roles

    data = "probeworld:tiny@height=64,width=64,frames=5,train_size=4,val_size=2,test_size=2,num_tracks=4"
    clips = task_roles("action", {r: data for r in ROLES})["test"].clips
    on = load_backbone(f"wan:{folders['wan']}@vae_tile=32", CPU).backbone
    off = load_backbone(f"wan:{folders['wan']}@vae_tiling=off", CPU).backbone
    cache = FeatureCache(tmp_path / "cache")
    tiled = ensure_features(on, clips, "clip", [1], 0.0, 0, cache, progress=False)[1]
    plain = ensure_features(off, clips, "clip", [1], 0.0, 0, cache, progress=False)[1]
    tag = "+vaetiles32x32s24x24"
    assert tiled.path.relative_to(cache.root).parts[0] == on.identity + tag
    assert plain.path.relative_to(cache.root).parts[0] == off.identity == on.identity
    assert {p.name for p in cache.root.iterdir()} >= {on.encoder.identity + tag, on.encoder.identity}
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [
        "probe", "--task", "action", "--backbone", f"wan:{folders['wan']}@vae_tile=32", "--dataset", data,
        "--block", "1", "--t", "0", "--cache", "cache", "--quiet", "--allow-size-change", "--set", "steps=2",
        "--set", "batch_size=2", "--set", "eval_batch_size=2", "--set", "readout.width=16", "--set",
        "readout.heads=2", "--set", "warmup_steps=1", "--set", "eval_every=0"])
    assert result.exit_code == 0, result.output
    with ResultsStore(tmp_path / "results.sqlite") as store:
        assert {r["identity"] for r in store.query()} == {on.identity + tag}
