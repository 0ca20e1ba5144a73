"""The published architectures of every external backbone kind, as one dict per kind (kind -> :class:`Kind`), and
the two ways of building a model folder from them: :func:`save_folder` (random weights, the folder layout the kind's
loader reads; ``benchmarks/real_size.py``) and :func:`empty_loading` (no weights at all: a folder of configs whose
``from_pretrained`` builds the model with uninitialised storage, so the kind's own loader and hooks run at real size
for free; ``tests/test_real_size.py``).

Every value is copied from the public config named in the kind's ``source`` (Hugging Face repo id + file); values
the libraries default to the same number are left out. Text encoders are not built: the folder holds the empty
prompt's embeddings (``null_embeds.safetensors``, zeros of the published (1, L, D)), as the loaders accept.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SD_VAE = {  # stabilityai/stable-diffusion-2-1 vae/config.json (= runwayml/stable-diffusion-v1-5's, sd-vae-ft-ema's)
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2,
    "norm_num_groups": 32, "act_fn": "silu", "sample_size": 768, "scaling_factor": 0.18215}
SD_UNET = {  # the SD 1.x / 2.x UNet2DConditionModel fields shared by both
    "in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "norm_num_groups": 32, "flip_sin_to_cos": True,
    "freq_shift": 0, "downsample_padding": 1, "act_fn": "silu"}
DDPM_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


@dataclass(frozen=True)
class Part:
    """One model of a folder: ``cls`` (``library.ClassName``) built from ``config`` (a transformers model: its
    ``config_cls`` too), saved under ``sub`` ("" = the folder itself)."""

    sub: str
    cls: str
    config: dict[str, Any]
    config_cls: str | None = None


@dataclass(frozen=True)
class Kind:
    """A kind at its published size: the parts of its folder, the small input the benchmark measures at and the
    native clip its per-block shapes are given for."""

    source: str  #: the public configs the values come from
    parts: tuple[Part, ...]
    denoiser: str  #: the sub-folder of the part whose parameters are "the denoiser's" ("" for the vision models)
    params: int  #: the denoiser's parameter count, as the built model has it (the test asserts it)
    native: tuple[int, int, int]  #: (frames, height, width) of the model's own clips
    small: tuple[int, int, int] = (9, 128, 128)  #: (frames, height, width) the benchmark extracts at
    scheduler: tuple[str, dict[str, Any]] | None = None  #: (diffusers class, config)
    null: tuple[int, int, int] | None = None  #: the empty prompt's embeddings (1, L, D)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  #: other JSON files of the folder
    options: str = "dtype=bf16"  #: the spec's options (every kind takes bf16)

    def spec(self, kind: str, folder: Path) -> str:
        return f"{kind}:{folder}" + (f"@{self.options}" if self.options else "")


KINDS: dict[str, Kind] = {
    "sd": Kind(
        source="stabilityai/stable-diffusion-2-1 unet/config.json, vae/config.json, scheduler/scheduler_config.json",
        parts=(Part("unet", "diffusers.UNet2DConditionModel", SD_UNET | {
            "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True,
            "upcast_attention": True, "sample_size": 96}),
            Part("vae", "diffusers.AutoencoderKL", SD_VAE)),
        denoiser="unet", params=865_910_724, native=(1, 768, 768),
        scheduler=("DDIMScheduler", DDPM_BETAS | {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
                                                 "prediction_type": "v_prediction"}),
        null=(1, 77, 1024)),
    "animatediff": Kind(
        source="runwayml/stable-diffusion-v1-5 unet/config.json + guoyww/animatediff-motion-adapter-v1-5-2 "
               "config.json (the adapter layout: unet/ + motion_adapter/)",
        parts=(Part("unet", "diffusers.UNet2DConditionModel", SD_UNET | {
            "cross_attention_dim": 768, "attention_head_dim": 8, "sample_size": 64}),
            Part("motion_adapter", "diffusers.MotionAdapter", {
                "block_out_channels": [320, 640, 1280, 1280], "motion_layers_per_block": 2,
                "motion_mid_block_layers_per_block": 1, "motion_num_attention_heads": 8, "motion_norm_num_groups": 32,
                "motion_max_seq_length": 32, "use_motion_mid_block": True}),
            Part("vae", "diffusers.AutoencoderKL", SD_VAE | {"sample_size": 512})),
        denoiser="unet", params=859_520_964, native=(16, 512, 512),
        scheduler=("DDIMScheduler", DDPM_BETAS | {"clip_sample": False, "set_alpha_to_one": False,
                                                 "steps_offset": 1}),
        null=(1, 77, 768)),
    "svd": Kind(
        source="stabilityai/stable-video-diffusion-img2vid unet/config.json, vae/config.json, "
               "scheduler/scheduler_config.json (cond=zero: the image encoder is neither loaded nor saved)",
        parts=(Part("unet", "diffusers.UNetSpatioTemporalConditionModel", {
            "in_channels": 8, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
            "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
            "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
            "cross_attention_dim": 1024, "num_attention_heads": [5, 10, 20, 20], "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 768, "transformer_layers_per_block": 1, "num_frames": 14,
            "sample_size": 96}),
            Part("vae", "diffusers.AutoencoderKLTemporalDecoder", {
                "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
                "down_block_types": ["DownEncoderBlock2D"] * 4, "layers_per_block": 2, "sample_size": 768,
                "scaling_factor": 0.18215, "force_upcast": True})),
        denoiser="unet", params=1_524_623_082, native=(14, 576, 1024),
        scheduler=("EulerDiscreteScheduler", DDPM_BETAS | {
            "interpolation_type": "linear", "prediction_type": "v_prediction", "sigma_min": 0.002, "sigma_max": 700.0,
            "steps_offset": 1, "timestep_spacing": "leading", "timestep_type": "continuous",
            "use_karras_sigmas": True})),
    "dit": Kind(
        source="facebook/DiT-XL-2-256 transformer/config.json, vae/config.json, scheduler/scheduler_config.json",
        parts=(Part("transformer", "diffusers.DiTTransformer2DModel", {
            "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8, "num_layers": 28,
            "sample_size": 32, "patch_size": 2, "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000,
            "norm_type": "ada_norm_zero", "norm_elementwise_affine": False, "norm_eps": 1e-5}),
            Part("vae", "diffusers.AutoencoderKL", SD_VAE | {"sample_size": 256})),
        denoiser="transformer", params=749_826_464, native=(1, 256, 256),
        scheduler=("DDIMScheduler", {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                                     "num_train_timesteps": 1000, "clip_sample": False})),
    "cogvideox": Kind(
        source="THUDM/CogVideoX-2b transformer/config.json, vae/config.json, scheduler/scheduler_config.json",
        parts=(Part("transformer", "diffusers.CogVideoXTransformer3DModel", {
            "num_attention_heads": 30, "attention_head_dim": 64, "in_channels": 16, "out_channels": 16,
            "flip_sin_to_cos": True, "freq_shift": 0, "time_embed_dim": 512, "text_embed_dim": 4096,
            "num_layers": 30, "dropout": 0.0, "attention_bias": True, "sample_width": 90, "sample_height": 60,
            "sample_frames": 49, "patch_size": 2, "temporal_compression_ratio": 4, "max_text_seq_length": 226,
            "activation_fn": "gelu-approximate", "timestep_activation_fn": "silu", "norm_elementwise_affine": True,
            "norm_eps": 1e-5, "spatial_interpolation_scale": 1.875, "temporal_interpolation_scale": 1.0,
            "use_rotary_positional_embeddings": False}),
            Part("vae", "diffusers.AutoencoderKLCogVideoX", {
                "in_channels": 3, "out_channels": 3, "down_block_types": ["CogVideoXDownBlock3D"] * 4,
                "up_block_types": ["CogVideoXUpBlock3D"] * 4, "block_out_channels": [128, 256, 256, 512],
                "latent_channels": 16, "layers_per_block": 3, "act_fn": "silu", "norm_eps": 1e-6,
                "norm_num_groups": 32, "temporal_compression_ratio": 4, "sample_height": 480, "sample_width": 720,
                "scaling_factor": 1.15258426, "use_quant_conv": False, "use_post_quant_conv": False})),
        denoiser="transformer", params=1_693_783_872, native=(49, 480, 720),
        scheduler=("CogVideoXDDIMScheduler", DDPM_BETAS | {
            "clip_sample": False, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
            "set_alpha_to_one": True, "snr_shift_scale": 3.0, "steps_offset": 0, "timestep_spacing": "trailing"}),
        null=(1, 226, 4096)),
    "wan": Kind(
        source="Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json, vae/config.json (its latents_mean/std are "
               "the class defaults), scheduler/scheduler_config.json",
        parts=(Part("transformer", "diffusers.WanTransformer3DModel", {
            "patch_size": [1, 2, 2], "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
            "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
            "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024}),
            Part("vae", "diffusers.AutoencoderKLWan", {
                "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
                "temperal_downsample": [False, True, True], "dropout": 0.0})),
        denoiser="transformer", params=1_418_996_800, native=(81, 480, 832),
        scheduler=("UniPCMultistepScheduler", {"prediction_type": "flow_prediction", "use_flow_sigmas": True,
                                               "flow_shift": 3.0, "num_train_timesteps": 1000}),
        null=(1, 512, 4096)),
    "latte": Kind(
        source="maxin-cn/Latte-1 transformer/config.json, vae/config.json, scheduler/scheduler_config.json (without "
               "its variance_type learned_range, which the kind refuses with DDIM)",
        parts=(Part("transformer", "diffusers.LatteTransformer3DModel", {
            "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8,
            "num_layers": 28, "cross_attention_dim": 1152, "attention_bias": True, "sample_size": 64,
            "patch_size": 2, "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000,
            "norm_type": "ada_norm_single", "norm_elementwise_affine": False, "norm_eps": 1e-6,
            "caption_channels": 4096, "video_length": 16}),
            Part("vae", "diffusers.AutoencoderKL", SD_VAE | {"sample_size": 512})),
        denoiser="transformer", params=1_057_246_880, native=(16, 512, 512), small=(16, 128, 128),
        scheduler=("DDIMScheduler", {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                                     "num_train_timesteps": 1000, "clip_sample": False}),
        null=(1, 1, 4096)),
    "dinov2": Kind(
        source="facebook/dinov2-base config.json, preprocessor_config.json",
        parts=(Part("", "transformers.Dinov2Model", {
            "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4, "patch_size": 14,
            "image_size": 518, "layerscale_value": 1.0, "layer_norm_eps": 1e-6, "qkv_bias": True,
            "use_swiglu_ffn": False}, "transformers.Dinov2Config"),),
        denoiser="", params=86_580_480, native=(1, 224, 224),
        files={"preprocessor_config.json": IMAGENET | {"resample": 3, "rescale_factor": 1 / 255}}),
    "videomae": Kind(
        source="MCG-NJU/videomae-base config.json, preprocessor_config.json",
        parts=(Part("", "transformers.VideoMAEModel", {
            "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "image_size": 224, "patch_size": 16, "num_frames": 16, "tubelet_size": 2, "qkv_bias": True,
            "use_mean_pooling": False}, "transformers.VideoMAEConfig"),),
        denoiser="", params=86_227_200, native=(16, 224, 224),
        files={"preprocessor_config.json": IMAGENET | {"resample": 2, "rescale_factor": 1 / 255}}),
    "vjepa2": Kind(
        source="facebook/vjepa2-vitl-fpc64-256 config.json, video_preprocessor_config.json (the predictor is built "
               "and loaded, never run)",
        parts=(Part("", "transformers.VJEPA2Model", {
            "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4.0,
            "patch_size": 16, "tubelet_size": 2, "crop_size": 256, "frames_per_clip": 64, "layer_norm_eps": 1e-6,
            "qkv_bias": True, "pred_hidden_size": 384, "pred_num_attention_heads": 12, "pred_num_hidden_layers": 12,
            "pred_num_mask_tokens": 10, "pred_mlp_ratio": 4.0}, "transformers.VJEPA2Config"),),
        denoiser="", params=325_971_328, native=(64, 256, 256),
        files={"video_preprocessor_config.json": IMAGENET | {"resample": 2, "rescale_factor": 1 / 255}}),
    "siglip": Kind(
        source="google/siglip-base-patch16-224 config.json (vision_config), preprocessor_config.json",
        parts=(Part("", "transformers.SiglipVisionModel", {
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "image_size": 224, "patch_size": 16}, "transformers.SiglipVisionConfig"),),
        denoiser="", params=92_884_224, native=(1, 224, 224),
        files={"preprocessor_config.json": {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 3,
                                            "rescale_factor": 1 / 255}}),
}


def _class(name: str) -> Any:
    module, _, cls = name.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def empty_model(part: Part, dtype: torch.dtype) -> torch.nn.Module:
    """``part``'s model with its parameters on the meta device (buffers real, as the constructor computes them)."""
    from accelerate import init_empty_weights

    cls = _class(part.cls)
    with init_empty_weights(include_buffers=False):
        model = cls(_class(part.config_cls)(**part.config)) if part.config_cls else cls.from_config(part.config)
    return model.to(dtype)


def fill(model: torch.nn.Module, make: Any) -> torch.nn.Module:
    """Every meta parameter replaced by ``make(name, meta_param)`` (a real tensor), shared parameters once."""
    made: dict[int, torch.nn.Parameter] = {}
    for module_name, module in model.named_modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.device.type != "meta":
                continue
            if id(p) not in made:
                made[id(p)] = torch.nn.Parameter(make(f"{module_name}.{name}", p), requires_grad=False)
            setattr(module, name, made[id(p)])
    return model


def random_weights(name: str, p: torch.Tensor) -> torch.Tensor:
    """Random weights of a plausible scale: matrices and tables N(0, 0.02), biases 0, norm scales 1."""
    if p.ndim >= 2:
        return torch.randn(p.shape, dtype=torch.float32).mul_(0.02).to(p.dtype)
    return (torch.zeros if name.endswith("bias") else torch.ones)(p.shape, dtype=p.dtype)


def unallocated(name: str, p: torch.Tensor) -> torch.Tensor:
    """Uninitialised storage: the pages are never touched by a forward on fake tensors, so they cost no memory."""
    return torch.empty(p.shape, dtype=p.dtype)


def write_configs(kind: Kind, folder: Path) -> None:
    """The folder's scheduler config, null embeddings and other JSON files (everything but the models)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if kind.scheduler:
        name, cfg = kind.scheduler
        _class(f"diffusers.{name}").from_config(cfg).save_pretrained(folder / "scheduler")
    if kind.null:
        save_file({"prompt_embeds": torch.zeros(kind.null)}, str(folder / "null_embeds.safetensors"))
    for name, content in kind.files.items():
        (folder / name).write_text(json.dumps(content, indent=2))


def save_folder(kind: Kind, folder: Path, dtype: torch.dtype = torch.bfloat16) -> dict[str, int]:
    """The kind's folder with random weights in ``dtype``, one part at a time; returns each part's parameter count."""
    write_configs(kind, folder)
    counts = {}
    for part in kind.parts:
        model = fill(empty_model(part, dtype), random_weights)
        counts[part.sub] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(folder / part.sub if part.sub else folder)
        del model
    return counts


def save_config_folder(kind: Kind, folder: Path) -> None:
    """The kind's folder with the models' configs only (and an empty weights file where a loader asks for one): for
    :func:`empty_loading`."""
    write_configs(kind, folder)
    for part in kind.parts:
        sub = folder / part.sub if part.sub else folder
        sub.mkdir(parents=True, exist_ok=True)
        if part.config_cls:
            _class(part.config_cls)(**part.config).save_pretrained(sub)
            (sub / "model.safetensors").write_bytes(b"")
        else:
            with init_empty():
                _class(part.cls).from_config(part.config).save_config(sub)


@contextlib.contextmanager
def init_empty() -> Iterator[None]:
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


@contextlib.contextmanager
def empty_loading() -> Iterator[None]:
    """``from_pretrained`` of every diffusers and transformers model builds the model from the folder's config with
    uninitialised parameters (:func:`unallocated`) instead of reading weights, and reports nothing missing."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    def diffusers_load(cls: type, path: Any, **kwargs: Any) -> Any:
        with init_empty():
            model = cls.from_config(cls.load_config(path))
        return _loaded(model, kwargs.get("torch_dtype"), kwargs)

    def transformers_load(cls: type, path: Any, **kwargs: Any) -> Any:
        config = cls.config_class.from_pretrained(path)
        with init_empty():
            model = cls(config)
        return _loaded(model, kwargs.get("dtype"), kwargs)

    def _loaded(model: torch.nn.Module, dtype: torch.dtype | None, kwargs: dict[str, Any]) -> Any:
        model = fill(model.to(dtype) if dtype else model, unallocated).eval()
        info = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
        return (model, info) if kwargs.get("output_loading_info") else model

    saved = ModelMixin.__dict__["from_pretrained"], PreTrainedModel.__dict__["from_pretrained"]
    ModelMixin.from_pretrained = classmethod(diffusers_load)
    PreTrainedModel.from_pretrained = classmethod(transformers_load)
    try:
        yield
    finally:
        ModelMixin.from_pretrained, PreTrainedModel.from_pretrained = saved
