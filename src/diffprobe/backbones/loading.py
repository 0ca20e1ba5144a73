"""How the diffusers transformer kinds (``dit``, ``cogvideox``, ``wan``, ``latte``) load a model folder: one path.

- :meth:`TransformerFolder.load`: the steps every such loader takes, in this order: the spec's options parsed into the
  kind's options class; ``transformer/config.json``, ``vae/config.json`` and ``scheduler/scheduler_config.json``
  required; the folder entries the kind refuses (``refused``); the transformer and the VAE in the options' dtype on
  the device (:func:`load_part`); the scheduler (:func:`load_scheduler`).
- :meth:`TransformerFolder.null_prompt`: the empty prompt's embeddings ``(1, L, D)``, read from
  ``null_embeds.safetensors`` or computed once by the pipeline's own ``encode_prompt("")`` and saved there, checked
  against the transformer's text width.
- :meth:`TransformerFolder.resolve`: the latent encoder and the backbone, named ``identity_of(kind + "-latents")`` and
  ``identity_of(kind)`` over the same details, as the registry's :class:`ResolvedBackbone`.
- :func:`load_part` / :func:`load_scheduler` / :func:`load_text_parts`: a folder's parts by the library's own
  ``from_pretrained``; a missing file, a config that does not fit its weights (wrong shapes, missing or unused
  weights) or an unknown scheduler class is a :class:`BackboneLoadError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from torch import nn

from diffprobe.backbones.external import (
    BackboneLoadError,
    ExternalOptions,
    LatentEncoder,
    VAETiling,
    identity_of,
    null_embeddings,
    parse_options,
    require_files,
)

if TYPE_CHECKING:
    from diffprobe.backbones.registry import ResolvedBackbone
    from diffprobe.backbones.transformers3d import TransformerBackbone

#: the files every diffusers transformer folder has (``save_pretrained`` layout)
REQUIRED = ("transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json")
NULL_HOW = ("give the folder its text_encoder/ and tokenizer/ (the pipeline's own), or write null_embeds.safetensors "
            "with a tensor prompt_embeds (1, L, D): the pipeline's encode_prompt('') output")

O = TypeVar("O", bound=ExternalOptions)


# ---- parts -------------------------------------------------------------------------------------------------------


def _has_module(model: nn.Module, key: str) -> bool:
    prefix = key.rpartition(".")[0]
    try:
        model.get_submodule(prefix)
    except AttributeError:
        return False
    return True


def _unfit_keys(model: nn.Module, info: dict[str, Any]) -> list[str]:
    """Weights the config asks for that the file lacks, and weights of the file for modules the config does not
    have (a stray tensor of a module the model has, e.g. an old buffer, is tolerated, as are keys the library itself
    ignores)."""
    ignored = [re.compile(p) for p in (getattr(type(model), "_keys_to_ignore_on_load_unexpected", None) or [])]
    missing = sorted(info.get("missing_keys") or [])
    unused = sorted(k for k in info.get("unexpected_keys") or []
                    if not any(p.search(k) for p in ignored) and not _has_module(model, k))
    mismatched = [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or []]
    return [f"missing {k}" for k in missing] + [f"unused {k}" for k in unused] + [f"mismatched {k}" for k in
                                                                                  mismatched]


def load_part(cls: type, folder: Path, sub: str, dtype: torch.dtype | None = None, device: torch.device | None = None,
              config_name: str = "config.json") -> nn.Module:
    """``cls.from_pretrained(folder / sub)`` (a diffusers or transformers class) in ``dtype`` on ``device`` (``None``:
    the saved dtype, the CPU), frozen and in eval mode."""
    require_files(folder, f"{sub}/{config_name}")
    path = folder / sub
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["torch_dtype" if cls.__module__.startswith("diffusers") else "dtype"] = dtype
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    except Exception as e:  # the libraries raise OSError / ValueError / RuntimeError / ...: name the folder
        raise BackboneLoadError(f"{path}: cannot load a {cls.__name__} from {config_name} and its weights: {e}") from e
    bad = _unfit_keys(model, info)
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise BackboneLoadError(f"{path}: the weights do not fit {path / config_name} ({shown})")
    if device is not None:
        model = model.to(device)
    return model.eval().requires_grad_(False)


def load_scheduler(folder: Path, expect: Sequence[str] = (), ddpm: bool = False) -> Any:
    """The folder's scheduler, of the class its ``scheduler/scheduler_config.json`` names (``expect``: the classes
    the kind accepts, empty for any; ``ddpm``: it must hold a DDPM-family ``alphas_cumprod``)."""
    import diffusers

    require_files(folder, "scheduler/scheduler_config.json")
    path = folder / "scheduler" / "scheduler_config.json"
    try:
        name = json.loads(path.read_text())["_class_name"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BackboneLoadError(f"{path}: not a diffusers scheduler config (no _class_name): {e}") from e
    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise BackboneLoadError(f"{path}: unknown scheduler class {name!r} (diffusers {diffusers.__version__})")
    if expect and name not in expect:
        raise BackboneLoadError(f"{path}: _class_name {name!r} is not one of {list(expect)}")
    try:
        scheduler = cls.from_pretrained(folder / "scheduler")
    except Exception as e:
        raise BackboneLoadError(f"{path}: {name} does not load: {e}") from e
    if ddpm and getattr(scheduler, "alphas_cumprod", None) is None:
        raise BackboneLoadError(f"{path}: {name} has no alphas_cumprod (not a DDPM-family schedule)")
    return scheduler


def load_text_parts(folder: Path, encoder_cls: type, dtype: torch.dtype, device: torch.device) -> tuple[Any, nn.Module]:
    """The folder's ``tokenizer/`` (``AutoTokenizer``) and ``text_encoder/`` (``encoder_cls``)."""
    from transformers import AutoTokenizer

    require_files(folder, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    except Exception as e:
        raise BackboneLoadError(f"{folder / 'tokenizer'}: AutoTokenizer does not load it: {e}") from e
    return tokenizer, load_part(encoder_cls, folder, "text_encoder", dtype, device)


def has_text_encoder(folder: Path) -> bool:
    return (folder / "text_encoder" / "config.json").is_file() and (folder / "tokenizer").is_dir()


def check_null_embeds(folder: Path, embeds: torch.Tensor, dim: int, length: int | None = None,
                      dim_from: str = "the model's text width") -> None:
    """``prompt_embeds`` must be (1, L, dim) (and L = ``length`` where the model fixes it); ``dim_from`` says which
    config value gives ``dim``, for the message."""
    path = folder / "null_embeds.safetensors"
    if embeds.ndim != 3 or embeds.shape[0] != 1 or embeds.shape[2] != dim:
        raise BackboneLoadError(f"{path}: prompt_embeds is {tuple(embeds.shape)}, expected (1, L, {dim}) "
                                f"({dim_from})")
    if length is not None and embeds.shape[1] != length:
        raise BackboneLoadError(f"{path}: prompt_embeds has {embeds.shape[1]} tokens, the transformer's positional "
                                f"embedding takes {length} (its max_text_seq_length)")


# ---- the folder --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TransformerFolder(Generic[O]):
    """A loaded diffusers transformer folder of one kind: its options, transformer, VAE and scheduler."""

    kind: str
    path: Path
    opts: O
    device: torch.device
    transformer: nn.Module
    vae: nn.Module
    scheduler: Any

    @classmethod
    def load(cls, kind: str, path: Path, options: dict[str, Any], spec: str, device: torch.device,
             options_cls: type[O], transformer_cls: type, vae_cls: type,
             refused: Mapping[str, str] | None = None) -> TransformerFolder[O]:
        """The folder's parts (see the module docstring); ``refused``: entries of the folder this kind does not take
        (name -> why), an error naming the entry when present."""
        opts = parse_options(options_cls, options, spec)
        assert isinstance(opts, options_cls)
        require_files(path, *REQUIRED)
        for name, why in (refused or {}).items():
            if (path / name).exists():
                raise BackboneLoadError(f"{path / name}: {why}")
        transformer = load_part(transformer_cls, path, "transformer", opts.torch_dtype, device)
        vae = load_part(vae_cls, path, "vae", opts.torch_dtype, device)
        return cls(kind, path, opts, device, transformer, vae, load_scheduler(path))

    @property
    def dtype(self) -> torch.dtype:
        return self.opts.torch_dtype

    def check_text_to_video(self, vae_channels: int, vae_has: str, model: str = "") -> None:
        """An image-to-video transformer (more input channels than the VAE's latents: the conditioning frame's) is
        refused; ``vae_has`` names the VAE's channels in the message, ``model`` the text-to-video family."""
        channels = self.transformer.config.in_channels
        if channels != vae_channels:
            raise BackboneLoadError(f"{self.path / 'transformer' / 'config.json'}: in_channels {channels} != the "
                                    f"VAE's {vae_has} (an image-to-video model; this kind takes text-to-video{model})")

    def null_prompt(self, pipeline_cls: type, encoder_cls: type, dim: int, length: int | None = None,
                    **encode: Any) -> torch.Tensor:
        """The empty prompt's embeddings ``(1, L, dim)`` (L = ``length`` where the model fixes it): the tensor
        ``prompt_embeds`` of ``null_embeds.safetensors``, or ``pipeline_cls(...).encode_prompt("", **encode)`` with
        the folder's ``text_encoder/`` (``encoder_cls``) and ``tokenizer/``, computed once and saved there."""

        def compute() -> dict[str, torch.Tensor]:
            tokenizer, text_encoder = load_text_parts(self.path, encoder_cls, self.dtype, self.device)
            pipe = pipeline_cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=self.vae,
                                transformer=self.transformer, scheduler=self.scheduler)
            with torch.no_grad():
                embeds, _ = pipe.encode_prompt("", do_classifier_free_guidance=False, device=self.device,
                                               dtype=self.dtype, **encode)
            return {"prompt_embeds": embeds.float()}

        null = null_embeddings(self.path, ["prompt_embeds"], compute if has_text_encoder(self.path) else None,
                               NULL_HOW)["prompt_embeds"]
        check_null_embeds(self.path, null, dim, length)
        return null

    def resolve(self, backbone_cls: Callable[..., TransformerBackbone], details: dict[str, str],
                encode: Callable[[torch.Tensor], torch.Tensor], mode: str, frames_per_chunk: int | None = None,
                tiling: VAETiling | None = None, **kwargs: Any) -> ResolvedBackbone:
        """``backbone_cls(identity, encoder, self, **kwargs)`` with its latent encoder (``encode``, block 0;
        ``frames_per_chunk`` and ``tiling`` as :class:`LatentEncoder` takes them), both named by :func:`identity_of`
        over the folder, the options and ``details`` (conditioning, t mapping, latents)."""
        from diffprobe.backbones.registry import ResolvedBackbone

        encoder = LatentEncoder(identity_of(f"{self.kind}-latents", self.path, self.opts, **details), encode,
                                self.device, self.vae, frames_per_chunk=frames_per_chunk, tiling=tiling)
        backbone = backbone_cls(identity_of(self.kind, self.path, self.opts, **details), encoder, self, **kwargs)
        return ResolvedBackbone(backbone, mode=mode, step=0, trained_on=None)
