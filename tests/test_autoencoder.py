"""The causal 3D VAE: causality, image = 1-frame video, shapes, validation, training signal, latent scaling."""

from __future__ import annotations

import pytest
import torch

from diffprobe.config import ConfigError
from diffprobe.errors import InputError
from diffprobe.models import CausalAutoencoder, CausalAutoencoderConfig, frames_to_input, output_to_frames


@pytest.fixture(scope="module")
def tiny() -> CausalAutoencoder:
    torch.manual_seed(0)
    return CausalAutoencoder(CausalAutoencoderConfig.preset("tiny")).eval()


def _clip(b: int = 1, t: int = 9, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, 3, t, size, size), generator=g) * 2 - 1  # (B, 3, T, H, W) in [-1, 1]


def test_tiny_shapes(tiny: CausalAutoencoder) -> None:
    x = _clip(b=2)
    with torch.no_grad():
        z = tiny.encode(x)
        x_hat = tiny.decode(z)
    assert z.shape == (2, 8, 5, 8, 8)
    assert x_hat.shape == x.shape
    assert tiny.latent_shape(9, 32, 32) == (8, 5, 8, 8)
    small = CausalAutoencoder(CausalAutoencoderConfig.preset("small"))
    assert small.latent_shape(17, 64, 64) == (8, 5, 8, 8)
    assert small.latent_shape(1, 64, 64) == (8, 1, 8, 8)


def test_encoder_and_decoder_are_causal(tiny: CausalAutoencoder) -> None:
    x = _clip(size=16)
    with torch.no_grad():
        full = tiny.encode(x)  # (1, 8, 5, 4, 4)
        decoded = tiny.decode(full)  # (1, 3, 9, 16, 16)
        for k in range(5):
            part = tiny.encode(x[:, :, : 1 + 2 * k])
            assert part.shape[2] == k + 1
            torch.testing.assert_close(part, full[:, :, : k + 1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(tiny.decode(full[:, :, : k + 1]), decoded[:, :, : 1 + 2 * k],
                                       atol=1e-5, rtol=1e-5)
        # the dependence is real: changing frame 4 changes latent frame 2 (frames 3-4) and later, never 0-1
        x2 = x.clone()
        x2[:, :, 4] = -x2[:, :, 4]
        z2 = tiny.encode(x2)
    assert torch.equal(z2[:, :, :2], full[:, :, :2])
    assert (z2[:, :, 2] - full[:, :, 2]).abs().max() > 1e-3


def test_image_is_one_frame_video(tiny: CausalAutoencoder) -> None:
    x = _clip(b=2)
    with torch.no_grad():
        z_img = tiny.encode(x[:, :, :1])
        z_vid = tiny.encode(x)
    assert z_img.shape == (2, 8, 1, 8, 8)
    torch.testing.assert_close(z_img, z_vid[:, :, :1], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert tiny.decode(z_img).shape == (2, 3, 1, 32, 32)


def test_bad_shapes_are_named(tiny: CausalAutoencoder) -> None:
    with pytest.raises(InputError,
                       match=r"^clips of 8 frames: this tokenizer takes 1 \+ k \* 2 frames.*e\.g\. 7 or 9"):
        tiny.encode(torch.zeros(1, 3, 8, 32, 32))
    with pytest.raises(InputError, match=r"^clips of 30 x 32 px: .* multiples of 4"):
        tiny.encode(torch.zeros(1, 3, 9, 30, 32))
    with pytest.raises(InputError, match=r"clips of 0 frames: .*e\.g\. 1\b"):
        tiny.latent_shape(0, 32, 32)
    with pytest.raises(ValueError, match="latents"):
        tiny.decode(torch.zeros(1, 4, 5, 8, 8))
    with pytest.raises(ConfigError, match="spatial_downsample"):
        CausalAutoencoderConfig(spatial_downsample=8, channel_mult=(1, 2, 4))
    with pytest.raises(ConfigError, match="temporal_downsample"):
        CausalAutoencoderConfig(temporal_downsample=3)
    with pytest.raises(ConfigError, match="unknown key"):
        CausalAutoencoderConfig.from_dict({"latent_chanels": 4})


def test_frame_conversion_round_trip() -> None:
    video = torch.randint(0, 256, (2, 3, 4, 5, 3), dtype=torch.uint8)  # (B, T, H, W, 3)
    x = frames_to_input(video)
    assert x.shape == (2, 3, 3, 4, 5)
    assert x.min() >= -1 and x.max() <= 1
    two = torch.zeros((1, 1, 1, 2, 3), dtype=torch.uint8)  # one black and one white pixel
    two[0, 0, 0, 1] = 255
    assert frames_to_input(two)[0, :, 0, 0].tolist() == [[-1.0, 1.0]] * 3  # (C, W) of frame 0, row 0
    assert torch.equal(output_to_frames(x), video)
    with pytest.raises(ValueError, match="uint8"):
        frames_to_input(video.float())


def test_loss_terms_and_recon_falls() -> None:
    torch.manual_seed(0)
    cfg = CausalAutoencoderConfig(base_channels=8, channel_mult=(1, 2), spatial_downsample=2, temporal_downsample=2,
                                  latent_channels=4)
    ae = CausalAutoencoder(cfg)
    # a fixed batch of smooth moving gradients (a learnable signal, unlike white noise)
    tt, yy, xx = torch.meshgrid(torch.arange(5.0), torch.arange(16.0), torch.arange(16.0), indexing="ij")
    x = torch.stack([torch.sin(0.4 * xx + 0.5 * tt), torch.cos(0.3 * yy - 0.4 * tt), torch.sin(0.2 * (xx + yy))])
    x = torch.stack([x, -x])  # (2, 3, 5, 16, 16)

    def measure() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return ae.loss(x, generator=torch.Generator().manual_seed(123))

    before = measure()
    torch.testing.assert_close(before["loss"], before["recon"] + cfg.kl_weight * before["kl"])
    assert before["kl"] >= 0
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        opt.zero_grad()
        ae.loss(x, generator=gen)["loss"].backward()
        opt.step()
    after = measure()
    assert after["recon"] < 0.7 * before["recon"], (before["recon"], after["recon"])


def test_latent_stats_give_unit_std(tiny: CausalAutoencoder) -> None:
    ae = CausalAutoencoder(tiny.config)
    ae.load_state_dict(tiny.state_dict())
    batches = [_clip(b=2, seed=s) for s in range(2)]
    scale, shift = ae.measure_latent_stats(batches, progress=False)
    ae.set_latent_stats(scale, shift)
    with torch.no_grad():
        z = torch.cat([ae.encode(b) for b in batches])
        raw, _ = ae.posterior(batches[0])
    assert abs(z.mean().item()) < 1e-4
    assert abs(z.std(unbiased=False).item() - 1.0) < 1e-4
    torch.testing.assert_close(ae.encode(batches[0]), (raw - shift) * scale)
    # the scale travels with the weights
    assert ae.state_dict()["latent_scale"].item() == pytest.approx(scale)
    with torch.no_grad():
        torch.testing.assert_close(ae.decode(ae.encode(batches[0])), ae.decoder(raw), atol=1e-5, rtol=1e-5)
