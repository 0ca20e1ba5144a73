"""The I3D network: reference parameter names/shapes, strict weight loading, SAME padding, video_features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffprobe.config import ConfigError
from diffprobe.metrics.i3d import I3D, I3DConfig, tf_same_padding, video_features
from diffprobe.utils.io import save_tensors


def test_tf_same_padding_hand_values() -> None:
    assert tf_same_padding(7, 3, 2) == (1, 1)  # 4 outputs need (4 − 1)·2 + 3 = 9 inputs
    assert tf_same_padding(8, 3, 2) == (0, 1)  # extra padding goes at the end
    assert tf_same_padding(224, 7, 2) == (2, 3)
    assert tf_same_padding(1, 7, 2) == (3, 3)
    assert tf_same_padding(5, 1, 1) == (0, 0)


def test_full_config_matches_reference_shapes() -> None:
    net = I3D(I3DConfig.preset("full"))
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    # 57 conv+BN units (3 stem + 9 blocks × 6) with 6 entries each, plus the logits weight and bias
    assert len(shapes) == 57 * 6 + 2
    assert shapes["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert shapes["Conv3d_2c_3x3.conv3d.weight"] == (192, 64, 3, 3, 3)
    assert shapes["Mixed_3b.b0.conv3d.weight"] == (64, 192, 1, 1, 1)
    assert shapes["Mixed_4b.b1a.conv3d.weight"] == (96, 128 + 192 + 96 + 64, 1, 1, 1)
    assert shapes["Mixed_5c.b1b.conv3d.weight"] == (384, 192, 3, 3, 3)
    assert shapes["Mixed_5c.b3b.bn.running_var"] == (128,)
    assert shapes["logits.conv3d.weight"] == (400, 1024, 1, 1, 1) and shapes["logits.conv3d.bias"] == (400,)
    assert not any(".b3a." in k or k.startswith("logits.bn") for k in shapes)
    # Σ over the published widths of c_in·c_out·k³ (+ 2·c_out BN affine) + 1024·400 + 400
    assert sum(p.numel() for p in net.parameters()) == 12_697_264
    assert net.config.feature_dim == 1024 and I3DConfig.preset("tiny").feature_dim == 128


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="width_divisor"):
        I3DConfig.from_dict({"width_divisor": 0})
    with pytest.raises(ConfigError, match="widht"):
        I3DConfig.from_dict({"widht": 2})


def _random_tiny() -> I3D:
    torch.manual_seed(0)
    net = I3D(I3DConfig.preset("tiny"))
    with torch.no_grad():
        for name, buf in net.named_buffers():  # non-default BN statistics, so forgetting to load them shows
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                buf.fill_(7)
        for name, p in net.named_parameters():
            if name.endswith("bn.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def tiny() -> I3D:
    return _random_tiny()


def test_shapes_and_roundtrip(tiny: I3D, tmp_path) -> None:
    x = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    with torch.no_grad():
        feats, logits = tiny.features(x), tiny(x)
    assert feats.shape == (2, 128) and logits.shape == (2, 400)
    state = tiny.state_dict()
    torch.save(state, tmp_path / "w.pt")
    save_tensors(tmp_path / "w.safetensors", state)
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # like rgb_imagenet.pt
    torch.save(legacy, tmp_path / "legacy.pth")
    for name in ("w.pt", "w.safetensors", "legacy.pth"):
        loaded = I3D.from_file(tmp_path / name, I3DConfig.preset("tiny"))
        assert not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded.features(x), feats), name
            assert torch.equal(loaded(x), logits), name


def test_strict_loading_names_file_and_keys(tiny: I3D, tmp_path) -> None:
    cfg = I3DConfig.preset("tiny")
    state = tiny.state_dict()
    missing = {k: v for k, v in state.items() if k != "Mixed_4c.b2b.bn.running_mean"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing\.pt.*missing keys.*Mixed_4c\.b2b\.bn\.running_mean"):
        I3D.from_file(tmp_path / "missing.pt", cfg)
    save_tensors(tmp_path / "extra.safetensors", {**state, "Mixed_3b.b9.conv3d.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"extra\.safetensors.*unexpected keys.*Mixed_3b\.b9\.conv3d\.weight"):
        I3D.from_file(tmp_path / "extra.safetensors", cfg)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"w\.pt.*shape mismatches.*logits\.conv3d\.weight: file \(400, "):
        I3D.from_file(tmp_path / "w.pt", cfg.replace(num_classes=10))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        I3D.from_file(tmp_path / "junk.pt", cfg)
    with pytest.raises(ValueError, match=r"absent\.pt"):
        I3D.from_file(tmp_path / "absent.pt", cfg)


def test_video_features_maps_uint8_to_unit_range(tiny: I3D) -> None:
    video = np.zeros((3, 8, 20, 24, 3), dtype=np.uint8)  # resized to the tiny config's 32×32
    video[1] = 255
    video[2] = np.random.default_rng(0).integers(0, 256, size=video.shape[1:], dtype=np.uint8)
    tiny.train()
    feats = video_features(video, tiny, batch_size=2)  # two chunks
    assert tiny.training  # mode restored
    tiny.eval()
    assert feats.shape == (3, 128) and feats.dtype == np.float32
    with torch.no_grad():
        black = tiny.features(-torch.ones(1, 3, 8, 32, 32))  # 0 -> −1, and resizing a constant keeps it
        white = tiny.features(torch.ones(1, 3, 8, 32, 32))  # 255 -> +1
        white_logits = tiny(torch.ones(1, 3, 8, 32, 32))
    np.testing.assert_allclose(feats[0], black[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats[1], white[0].numpy(), rtol=1e-5, atol=1e-6)
    single = video_features(video[2:], tiny)  # batching does not change a clip's features
    np.testing.assert_allclose(single[0], feats[2], rtol=1e-5, atol=1e-6)
    logits = video_features(video[1:2], tiny, output="logits")
    np.testing.assert_allclose(logits[0], white_logits[0].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        video_features(video.astype(np.float32), tiny)
