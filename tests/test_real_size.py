"""Every external kind at its published architecture size, with no weights: the configs of
``benchmarks/real_size_configs.py`` (the benchmark's own) saved as a folder, loaded by the kind's own loader with
``from_pretrained`` building the model from the config on uninitialised storage, and its blocks' shapes at the
model's native clip computed on fake tensors. Asserts the published parameter counts and the native per-block
shapes the kind's feature hooks return."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch

from diffprobe.backbones.registry import load_backbone
from diffprobe.backbones.shapes import forward_shapes, parameters

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "real_size_configs.py"
_spec = importlib.util.spec_from_file_location("real_size_configs", _PATH)
configs = importlib.util.module_from_spec(_spec)
sys.modules["real_size_configs"] = configs
_spec.loader.exec_module(configs)

pytest.importorskip("diffusers")

#: kind -> (denoiser / encoder parameters, every parameter the loaded backbone holds (VAE included))
PARAMS = {
    "sd": (865_910_724, 949_564_587),  # SD 2.1 UNet 865.9M + the SD VAE 83.7M
    "animatediff": (859_520_964, 1_396_384_107),  # SD 1.5 UNet + the v1-5-2 motion modules 453.2M + VAE
    "svd": (1_524_623_082, 1_622_365_929),  # SVD UNet 1,524.6M + its temporal-decoder VAE 97.7M
    "dit": (749_826_464, 833_480_327),  # DiT-XL/2 as diffusers stores it (per-block embedder copies)
    "cogvideox": (1_693_783_872, 1_909_367_779),  # CogVideoX-2b 1,693.8M + its 3D VAE 215.6M
    "wan": (1_418_996_800, 1_545_889_331),  # Wan 2.1 T2V 1.3B 1,419.0M + its VAE 126.9M
    "latte": (1_057_246_880, 1_140_900_743),  # Latte-1 28 spatial + 28 temporal blocks + the SD VAE
    "dinov2": (86_580_480, 86_580_480),  # DINOv2-B/14
    "videomae": (86_227_200, 86_227_200),  # VideoMAE-B
    "vjepa2": (325_971_328, 325_971_328),  # V-JEPA 2 ViT-L encoder 303.9M + its predictor
    "siglip": (92_884_224, 92_884_224),  # SigLIP B/16-224 vision tower
}

#: kind -> (blocks 0..N, {block: (T_f, H_f, W_f, C) per clip}) at the kind's native clip (Kind.native)
NATIVE = {
    "sd": (10, {0: (1, 96, 96, 4), 1: (1, 48, 48, 320), 5: (1, 12, 12, 1280), 9: (1, 96, 96, 320)}),
    "animatediff": (10, {0: (16, 64, 64, 4), 3: (16, 8, 8, 1280), 8: (16, 64, 64, 640), 9: (16, 64, 64, 320)}),
    "svd": (10, {0: (14, 72, 128, 4), 5: (14, 9, 16, 1280), 8: (14, 72, 128, 640), 9: (14, 72, 128, 320)}),
    "dit": (29, {0: (1, 32, 32, 4), 1: (1, 16, 16, 1152), 28: (1, 16, 16, 1152)}),
    "cogvideox": (31, {0: (13, 60, 90, 16), 1: (13, 30, 45, 1920), 30: (13, 30, 45, 1920)}),
    "wan": (31, {0: (21, 60, 104, 16), 1: (21, 30, 52, 1536), 30: (21, 30, 52, 1536)}),
    "latte": (57, {0: (16, 64, 64, 4), 1: (16, 32, 32, 1152), 2: (16, 32, 32, 1152), 56: (16, 32, 32, 1152)}),
    "dinov2": (13, {0: (1, 16, 16, 768), 12: (1, 16, 16, 768)}),
    "videomae": (13, {0: (8, 14, 14, 768), 12: (8, 14, 14, 768)}),
    "vjepa2": (25, {0: (32, 16, 16, 1024), 24: (32, 16, 16, 1024)}),
    "siglip": (13, {0: (1, 14, 14, 768), 12: (1, 14, 14, 768)}),
}


def test_every_external_kind_is_covered() -> None:
    from diffprobe.backbones.registry import BACKBONES

    ours = {"walt", "walt-untrained", "latents", "pixels"}
    assert set(configs.KINDS) == set(BACKBONES) - ours == set(PARAMS) == set(NATIVE)


@pytest.mark.parametrize("kind", list(configs.KINDS))
def test_published_size_parameters_and_native_shapes(kind: str, tmp_path: Path) -> None:
    k = configs.KINDS[kind]
    denoiser = next(p for p in k.parts if p.sub == k.denoiser)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sum(p.numel() for p in configs.empty_model(denoiser, torch.bfloat16).parameters()) == k.params
        configs.save_config_folder(k, tmp_path / kind)
        with configs.empty_loading():
            backbone = load_backbone(k.spec(kind, tmp_path / kind), torch.device("cpu")).backbone
        fwd = forward_shapes(backbone, *k.native)
    assert (k.params, sum(p.numel() for p in parameters(backbone))) == PARAMS[kind]
    assert {p.dtype for p in parameters(backbone)} <= {torch.bfloat16, torch.float32}  # the spec's dtype=bf16
    blocks, expected = NATIVE[kind]
    assert fwd.fake and len(fwd.shapes) == blocks
    assert {b: fwd.shapes[b] for b in expected} == expected
    # the forward on fake tensors allocated nothing: the weights' storage was never touched
    assert fwd.peak_activation_bytes is not None and fwd.peak_activation_bytes > 0


def test_empty_loading_restores_the_libraries() -> None:
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    before = ModelMixin.__dict__["from_pretrained"], PreTrainedModel.__dict__["from_pretrained"]
    with configs.empty_loading():
        assert ModelMixin.__dict__["from_pretrained"] is not before[0]
    assert (ModelMixin.__dict__["from_pretrained"], PreTrainedModel.__dict__["from_pretrained"]) == before
