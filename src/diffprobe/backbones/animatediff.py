"""``animatediff``: AnimateDiff (diffusers ``UNetMotionModel`` = an SD 1.x UNet + a ``MotionAdapter``) + the SD VAE, a
video model.

Spec: ``animatediff:PATH[@dtype=fp32|bf16|fp16,batch_size=N,frames=N,vae_chunk=N]``.

Folder layout: an SD 1.x folder (see :mod:`diffprobe.backbones.sd`) whose UNet is one of::

    PATH/unet/             a UNetMotionModel (config _class_name "UNetMotionModel"): AnimateDiffPipeline.save_pretrained
                           writes this (it also writes motion_adapter/, which is then not read)
    PATH/unet/ + PATH/motion_adapter/
                           a UNet2DConditionModel + a MotionAdapter (MotionAdapter.save_pretrained, e.g.
                           guoyww/animatediff-motion-adapter-v1-5-2), joined by UNetMotionModel.from_unet2d as the
                           pipeline joins them (a symlink to an adapter folder kept elsewhere works)

plus ``vae/``, ``scheduler/``, ``text_encoder/`` + ``tokenizer/`` (or ``null_embeds.safetensors``) as for ``sd``.

Video mode: the UNet sees the clip as one video (``frames=0``, the default) or in consecutive windows of ``frames``
frames (``frames=16``: AnimateDiff's training length), each window its own sample, the last window holding the rest
of the clip when T is not a multiple; features are put back together along time, so every block is ``(B, T, h_b, w_b,
C_b)``. A window may not be longer than the motion modules' ``motion_max_seq_length`` (32 for the public adapters).

Blocks: 0 = the scaled latents of every frame (the SD VAE frame by frame, ``latent_dist.mode() * scaling_factor``, as
the video2video pipeline encodes ``(B, T, h, w, C)``); 1..D = ``unet.down_blocks`` (spatial ResNets / attention, then
the motion module over time), D+1 = ``unet.mid_block``, then ``unet.up_blocks``: outputs ``(B*T, C_b, h_b, w_b)``
returned as ``(B, T, h_b, w_b, C_b)``.

t mapping (DDPM) and conditioning (the empty prompt, repeated for every frame as the pipeline repeats it) as ``sd``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange

from diffprobe.backbones.external import (
    BackboneLoadError,
    ExternalOptions,
    identity_of,
    parse_options,
    require_at_least,
    weights_fingerprint,
)
from diffprobe.backbones.loading import load_part
from diffprobe.backbones.sd import T_MAPPING, SDBackbone, load_sd_parts
from diffprobe.backbones.unets import (
    read_config,
)

if TYPE_CHECKING:
    from diffprobe.backbones.registry import ResolvedBackbone


@dataclasses.dataclass(frozen=True)
class AnimateDiffOptions(ExternalOptions):
    """Options of ``animatediff``: ``dtype``, ``batch_size``, ``frames`` (frames per window, 0: the whole clip) and
    ``vae_chunk`` (frames of a clip per VAE call; 0: all)."""

    frames: int = 0
    vae_chunk: int = 8

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 0, "frames", "vae_chunk")


def load_motion_unet(path: Path, dtype: torch.dtype, device: torch.device) -> tuple[Any, str]:
    """The UNetMotionModel of the folder and which layout it came from (``"unet-motion"`` or ``"unet+adapter"``)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    config = read_config(path, "unet/config.json")
    if config.get("addition_embed_type"):
        raise BackboneLoadError(f"{path / 'unet/config.json'}: addition_embed_type={config['addition_embed_type']!r} "
                                "(an SDXL AnimateDiff UNet, which needs pooled text embeddings and time ids) is not "
                                "supported: animatediff takes SD 1.x motion UNets")
    if config.get("_class_name") == "UNetMotionModel":
        return load_part(UNetMotionModel, path, "unet", dtype, device), "unet-motion"
    if not (path / "motion_adapter").exists():
        raise BackboneLoadError(f"{path / 'motion_adapter'}: missing, and {path / 'unet/config.json'} is a "
                                f"{config.get('_class_name')!r}, not a UNetMotionModel (save a MotionAdapter there, "
                                "or the AnimateDiff pipeline's own unet/)")
    unet = load_part(UNet2DConditionModel, path, "unet", dtype, device)
    adapter = load_part(MotionAdapter, path, "motion_adapter", dtype, device)
    return join_motion_unet(path, unet, adapter).to(device, dtype).eval().requires_grad_(False), "unet+adapter"


def join_motion_unet(path: Path, unet: torch.nn.Module, adapter: torch.nn.Module) -> torch.nn.Module:
    """``UNetMotionModel.from_unet2d(unet, adapter)`` without a second copy of the weights: the joined model is built
    empty (meta device) and takes the parts' own tensors, in their dtype (``from_unet2d`` builds it in fp32 and
    copies). Its weights have the parts' names: the UNet's, the adapter's ``motion_modules`` (and, for an adapter
    with ``conv_in_channels``, conv_in as ``from_unet2d`` joins it)."""
    from accelerate import init_empty_weights
    from diffusers import UNetMotionModel

    try:
        with init_empty_weights():
            motion = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    except Exception as e:  # the adapter's blocks do not fit the UNet's
        raise BackboneLoadError(f"{path / 'motion_adapter'}: does not fit {path / 'unet'}: {e}") from e
    names = set(motion.state_dict())
    state = {k: v for k, v in unet.state_dict().items() if k in names}
    state |= {k: v for k, v in adapter.state_dict().items() if ".motion_modules." in k and k in names}
    if adapter.config.get("conv_in_channels"):  # PIA: the UNet's 4 channels, then the adapter's
        state["conv_in.weight"] = torch.cat([unet.conv_in.weight, adapter.conv_in.weight[:, 4:]], dim=1)
    missing = sorted(names - set(state))
    if missing:
        raise BackboneLoadError(f"{path / 'motion_adapter'}: does not fit {path / 'unet'}: the joined model lacks "
                                f"{', '.join(missing[:5])}" + (f", ... ({len(missing)} in all)" if len(missing) > 5
                                                                else ""))
    motion.load_state_dict(state, assign=True)
    return motion


class AnimateDiffBackbone(SDBackbone):
    """AnimateDiff's motion UNet on the clip (or its windows) with the null prompt; see the module docstring."""

    kind = "animatediff"

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, scheduler: Any, null: torch.Tensor,
                 identity: str, device: torch.device, options: AnimateDiffOptions) -> None:
        self.max_frames = int(getattr(unet.config, "motion_max_seq_length", 32))
        super().__init__(unet, vae, scheduler, null, identity, device, options, window=options.frames)

    def check_frames(self, frames: int) -> None:
        n = min(self.window or frames, frames)
        if n > self.max_frames:
            raise ValueError(f"{self.identity}: a window of {n} frames; the motion modules take at most "
                             f"{self.max_frames} (motion_max_seq_length): set frames= (e.g. frames=16)")

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor, clean: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        b, n = x_t.shape[:2]
        sample = rearrange(x_t, "b t h w c -> b c t h w")  # the pipeline's (B, C, F, h, w)
        prompt = self.null.expand(b * n, -1, -1)  # the pipeline repeats the prompt for every frame
        out = self.unet(sample, timestep, encoder_hidden_states=prompt, return_dict=False)[0]
        return rearrange(out, "b c t h w -> b t h w c")


def load_animatediff(path: Path, options: dict[str, str], spec: str, device: torch.device) -> ResolvedBackbone:
    """The ``animatediff`` factory (see the module docstring)."""
    from diffprobe.backbones.registry import ResolvedBackbone

    opts = parse_options(AnimateDiffOptions, options, spec)
    assert isinstance(opts, AnimateDiffOptions)
    unet, layout = load_motion_unet(path, opts.torch_dtype, device)
    vae, scheduler, null = load_sd_parts(path, unet, opts.torch_dtype, device)
    # a motion_adapter/ symlinked from elsewhere is not walked by the folder's fingerprint: add its own
    adapter = weights_fingerprint(path / "motion_adapter") if layout == "unet+adapter" else ""
    identity = identity_of("animatediff", path, opts, conditioning="empty-prompt", t_mapping=T_MAPPING,
                           layout=layout, adapter=adapter, mode="video")
    backbone = AnimateDiffBackbone(unet, vae, scheduler, null, identity, device, opts)
    return ResolvedBackbone(backbone, "video", 0, None)
