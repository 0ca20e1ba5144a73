"""Tiny random diffusers transformer folders (``dit``, ``cogvideox``, ``wan``, ``latte``) in the libraries'
``save_pretrained`` layout, sized like the diffusers test suites' dummy components, for Probe World's 9-frame 32x32
clips: ``save_tiny_<kind>(folder) -> folder``.

The text kinds get a tiny T5 / UMT5 ``text_encoder/`` and an offline ``tokenizer/`` (a ``tokenizers`` WordLevel
model saved as ``PreTrainedTokenizerFast``; ``AutoTokenizer`` loads it), so their null embeddings are computed on
the first load; ``text_encoder=False`` writes ``null_embeds.safetensors`` instead (no text encoder in the folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TEXT_DIM = 32  #: the tiny text encoders' width (= the transformers' text / caption dims)


def save_tiny_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer that ends every text with ``</s>`` (as T5's does), pads with ``<pad>`` = 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["a", "the", "cat", "dog", "runs", "video", "of"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return folder


def save_tiny_text_encoder(folder: Path, umt5: bool = False) -> Path:
    """A 2-layer T5 (or UMT5) encoder of width :data:`TEXT_DIM` over the tiny tokenizer's vocabulary."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kw: dict[str, Any] = dict(vocab_size=16, d_model=TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                              relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                              decoder_start_token_id=0)
    model = UMT5EncoderModel(UMT5Config(**kw)) if umt5 else T5EncoderModel(T5Config(**kw))
    model.save_pretrained(folder)
    return folder


def _text(folder: Path, text_encoder: bool, null_shape: tuple[int, int, int], umt5: bool = False) -> None:
    if text_encoder:
        save_tiny_tokenizer(folder / "tokenizer")
        save_tiny_text_encoder(folder / "text_encoder", umt5=umt5)
    else:
        from safetensors.torch import save_file

        save_file({"prompt_embeds": torch.randn(null_shape)}, str(folder / "null_embeds.safetensors"))


def save_tiny_dit(folder: Path, num_train_timesteps: int = 1000, num_classes: int = 10) -> Path:
    """DiT: a 2-block DiTTransformer2DModel (patch 2, learned sigma) over a 3-level AutoencoderKL (x4), DDIM."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    DiTTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2,
                          in_channels=4, out_channels=8, num_embeds_ada_norm=num_classes,
                          norm_type="ada_norm_zero").save_pretrained(folder / "transformer")
    _tiny_kl(folder / "vae")
    DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear",
                  clip_sample=False).save_pretrained(folder / "scheduler")
    return folder


def _tiny_kl(folder: Path) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    AutoencoderKL(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=2, layers_per_block=1,
                  sample_size=32, scaling_factor=0.3).save_pretrained(folder)


def save_tiny_cogvideox(folder: Path, text_encoder: bool = True, **transformer: Any) -> Path:
    """CogVideoX: a 2-block CogVideoXTransformer3DModel (5b-like: rotary embeddings; ``transformer`` overrides its
    config, e.g. ``use_rotary_positional_embeddings=False`` for 2b-like sincos, ``patch_size_t=2`` for 1.5) over a
    4-level AutoencoderKLCogVideoX (x8 in space, x4 in time), CogVideoXDDIMScheduler (v-prediction)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    torch.manual_seed(0)
    cfg: dict[str, Any] = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                               time_embed_dim=8, text_embed_dim=TEXT_DIM, num_layers=2, sample_width=4,
                               sample_height=4, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
                               max_text_seq_length=8, use_rotary_positional_embeddings=True)
    cfg.update(transformer)
    CogVideoXTransformer3DModel(**cfg).save_pretrained(folder / "transformer")
    torch.manual_seed(1)
    AutoencoderKLCogVideoX(down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
                           block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
                           temporal_compression_ratio=4, scaling_factor=0.7).save_pretrained(folder / "vae")
    CogVideoXDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                           prediction_type="v_prediction", rescale_betas_zero_snr=True, snr_shift_scale=3.0,
                           timestep_spacing="trailing").save_pretrained(folder / "scheduler")
    _text(folder, text_encoder, (1, cfg["max_text_seq_length"], TEXT_DIM))
    return folder


#: the tiny Wan VAE's per-channel latent statistics (not 0 / 1, so the normalisation is visible)
WAN_MEAN = [0.2, -0.1, 0.05, 0.3]
WAN_STD = [1.5, 0.8, 2.0, 1.2]


def save_tiny_wan(folder: Path, text_encoder: bool = True, **transformer: Any) -> Path:
    """Wan 2.1: a 2-block WanTransformer3DModel (patch (1, 2, 2); ``transformer`` overrides its config) over a tiny
    AutoencoderKLWan (x8 in space, x4 in time, 4 latent channels with :data:`WAN_MEAN` / :data:`WAN_STD`), UniPC with
    flow sigmas (shift 3) as Wan ships; a UMT5 text encoder."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    torch.manual_seed(0)
    cfg: dict[str, Any] = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                               out_channels=4, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2,
                               rope_max_seq_len=32)
    WanTransformer3DModel(**(cfg | transformer)).save_pretrained(folder / "transformer")
    torch.manual_seed(1)
    AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True], latents_mean=WAN_MEAN,
                     latents_std=WAN_STD).save_pretrained(folder / "vae")
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                            num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    _text(folder, text_encoder, (1, 512, TEXT_DIM), umt5=True)
    return folder


def save_tiny_latte(folder: Path, text_encoder: bool = True, video_length: int = 9) -> Path:
    """Latte: a 2+2-block LatteTransformer3DModel (patch 2, learned sigma, ``video_length`` frames) over a per-frame
    3-level AutoencoderKL (x4), DDIM."""
    from diffusers import DDIMScheduler, LatteTransformer3DModel

    torch.manual_seed(0)
    LatteTransformer3DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
                            caption_channels=TEXT_DIM, in_channels=4, cross_attention_dim=24, out_channels=8,
                            num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
                            norm_eps=1e-6, video_length=video_length).save_pretrained(folder / "transformer")
    _tiny_kl(folder / "vae")
    DDIMScheduler(beta_schedule="linear", clip_sample=False).save_pretrained(folder / "scheduler")
    _text(folder, text_encoder, (1, 1, TEXT_DIM))
    return folder


# ---- test helpers ----------------------------------------------------------------------------------------------


def random_clip(batch: int, frames: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 clips (B, T, size, size, 3): smooth random colour fields (so the VAE sees image-like content)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch * frames, 3, 4, 4, generator=g)
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    video = (fine * 255).round().to(torch.uint8).reshape(batch, frames, 3, size, size)
    return video.permute(0, 1, 3, 4, 2).contiguous()


class Hooks:
    """Forward hooks for the tests: ``identity(module)`` makes a block return its input hidden states (so a block's
    tokens are the patch embedding's, in the model's own order); ``inputs(module)`` records a module's call kwargs;
    ``outputs(module)`` records its outputs. ``close()`` removes them all."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.seen: list[Any] = []

    def identity(self, module: torch.nn.Module) -> Hooks:
        def hook(mod: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            if isinstance(output, tuple):  # (hidden_states, encoder_hidden_states): keep the text part as it was
                return (hidden, *output[1:])
            return hidden

        self.handles.append(module.register_forward_hook(hook, with_kwargs=True))
        return self

    def inputs(self, module: torch.nn.Module) -> Hooks:
        def hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            self.seen.append((args, kwargs))

        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def outputs(self, module: torch.nn.Module) -> Hooks:
        def hook(mod: torch.nn.Module, args: tuple, output: Any) -> None:
            self.seen.append(output[0] if isinstance(output, tuple) else output)

        self.handles.append(module.register_forward_hook(hook))
        return self

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
