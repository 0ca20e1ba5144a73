"""Tiny random transformers vision models saved in the library's ``save_pretrained`` layout, for the ``vision``
backbone kinds (dinov2, siglip, videomae, vjepa2). Sizes follow transformers' own model tests (hidden 32, 2 layers,
2 heads) with patch 4, so a 32x32 frame is an 8x8 token grid; each folder also holds a preprocessor config like the
published checkpoints' (ImageNet statistics, SigLIP's 0.5 / 0.5)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


def save_tiny_dinov2(folder: Path, registers: int = 0, seed: int = 0) -> Path:
    """Dinov2Model (``registers`` > 0: Dinov2WithRegistersModel with that many register tokens), a 4x4 position
    table (image_size 16, patch 4), and a BitImageProcessor config (bicubic, ImageNet mean/std)."""
    from transformers import (
        BitImageProcessorPil,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(seed)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(image_size=16, patch_size=4, mlp_ratio=2,
                                                                   num_register_tokens=registers, **TINY))
    else:
        model = Dinov2Model(Dinov2Config(image_size=16, patch_size=4, mlp_ratio=2, **TINY))
    model.save_pretrained(folder)
    BitImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, resample=3,
                         image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD).save_pretrained(folder)
    return Path(folder)


def save_tiny_siglip(folder: Path, full: bool = False, seed: int = 0) -> Path:
    """SiglipVisionModel (``full``: a whole SiglipModel with a tiny text tower) with a 4x4 position table (image
    size 16, patch 4) and a SiglipImageProcessor config (16x16, bicubic, mean = std = 0.5)."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    vision = {"image_size": 16, "patch_size": 4, "intermediate_size": 37, **TINY}
    if full:
        text = {"vocab_size": 99, "max_position_embeddings": 16, "intermediate_size": 37, "pad_token_id": 1,
                "bos_token_id": 0, "eos_token_id": 2, **TINY}
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    else:
        model = SiglipVisionModel(SiglipVisionConfig(**vision))
    model.save_pretrained(folder)
    SiglipImageProcessorPil(size={"height": 16, "width": 16}, resample=3).save_pretrained(folder)
    return Path(folder)


def save_tiny_videomae(folder: Path, seed: int = 0) -> Path:
    """VideoMAEModel for 4-frame 16x16 clips (tubelet 2, patch 4: a 2x4x4 token grid) and a VideoMAEImageProcessor
    config (bilinear, ImageNet mean/std)."""
    from transformers import VideoMAEConfig, VideoMAEImageProcessorPil, VideoMAEModel

    torch.manual_seed(seed)
    VideoMAEModel(VideoMAEConfig(image_size=16, patch_size=4, num_frames=4, tubelet_size=2, intermediate_size=37,
                                 **TINY)).save_pretrained(folder)
    VideoMAEImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, resample=2,
                              image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD).save_pretrained(folder)
    return Path(folder)


def save_tiny_vjepa2(folder: Path, seed: int = 0) -> Path:
    """VJEPA2Model (encoder + a 1-layer predictor) for 16x16 crops (patch 4, tubelet 2, frames_per_clip 4) and the
    VJEPA2VideoProcessor's config (video_preprocessor_config.json: bilinear, ImageNet mean/std), written as the
    processor writes it (building the processor needs torchvision)."""
    from transformers import VJEPA2Config, VJEPA2Model

    torch.manual_seed(seed)
    VJEPA2Model(VJEPA2Config(crop_size=16, patch_size=4, frames_per_clip=4, tubelet_size=2, mlp_ratio=1.0,
                             pred_hidden_size=32, pred_num_attention_heads=2, pred_num_hidden_layers=1,
                             pred_num_mask_tokens=10, **TINY)).save_pretrained(folder)
    processor = {"video_processor_type": "VJEPA2VideoProcessor", "crop_size": {"height": 16, "width": 16},
                 "size": {"shortest_edge": 18}, "do_resize": True, "do_center_crop": True, "do_rescale": True,
                 "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": IMAGENET_MEAN,
                 "image_std": IMAGENET_STD, "resample": 2}
    (Path(folder) / "video_preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return Path(folder)
