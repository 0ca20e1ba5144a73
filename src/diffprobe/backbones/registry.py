"""Backbones by spec: ``KIND:PATH[@KEY=VALUE,...]`` (the grammar of :mod:`diffprobe.spec`), resolved through one
registry (kind -> factory).

| spec | backbone |
| ``walt:RUN`` | a trained WALT twin (its run's mode: image or video), exported EMA weights |
| ``walt:RUN@step=STEP`` | the same twin at training checkpoint STEP (EMA weights) |
| ``walt-untrained:RUN[@seed=S]`` | the same architecture and tokenizer as RUN, randomly initialised (seed 0) |
| ``latents:RUN`` | the tokenizer latents themselves (RUN: a tokenizer run or a twin run), video mode |
| ``pixels[@patch=P,tubelet=U]`` | the clip's own RGB in P x P x U patches (defaults 4 and 1); no path |

Each kind declares the options it takes as a typed config, so an unknown option is an error listing the known ones.
The caller chooses the data: a backbone knows only the spec of the data its weights were trained on
(``trained_on``), which commands use as their default dataset. A kind that reads no files (``pixels``) takes no
``:PATH``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from diffprobe.backbones.base import Backbone
from diffprobe.backbones.pixels import PixelBackbone, PixelOptions
from diffprobe.backbones.shapes import forward_shapes
from diffprobe.backbones.walt import LatentBackbone, WALTBackbone
from diffprobe.config import Config
from diffprobe.data.dataset import ClipDataset
from diffprobe.data.registry import DEFAULT_DATASET
from diffprobe.models import WALT
from diffprobe.models.exports import (
    check_clip_size,
    export_clip_size,
    latents_identity,
    load_tokenizer,
    read_walt_run,
    resolve_recorded_spec,
    run_kind,
)
from diffprobe.spec import BackboneSpec, SpecError
from diffprobe.utils.imports import import_target


@dataclass(frozen=True)
class ResolvedBackbone:
    backbone: Backbone
    mode: str  #: "video" or "image" (how the backbone sees a clip)
    step: int  #: training step of the weights (0 for untrained / not applicable)
    trained_on: str | None  #: dataset spec its weights were trained on, when known
    #: clip size (frames, height, width) its weights were trained on, when known (our runs); other sizes need asking
    trained_size: tuple[int, int, int] | None = None

    def dataset_or_default(self, dataset: str | None) -> str:
        """The dataset a command reads: the one asked for, else the one the weights were trained on, else
        :data:`~diffprobe.data.registry.DEFAULT_DATASET`."""
        return dataset or self.trained_on or DEFAULT_DATASET

    def check_clips(self, datasets: Iterable[ClipDataset], spec: str, allow_size_change: bool) -> None:
        """Before any clip is read: each dataset's frames are the size the weights were trained on (unless
        ``allow_size_change``), and one grey clip of each clip shape goes through the backbone, so a shape it cannot
        take (frames the tokenizer does not) is an :class:`~diffprobe.errors.InputError` now, not after extraction."""
        shapes = set()
        for ds in datasets:
            check_clip_size(self.trained_size, ds, f"the backbone {spec}", allow_size_change)
            shapes.add((ds.frames, ds.height, ds.width))
        for shape in sorted(shapes):
            block_shapes(self.backbone, *shape)


#: a factory: (path, options, spec text, device) -> resolved backbone
Factory = Callable[[Path, dict[str, Any], str, torch.device], ResolvedBackbone]


@dataclass(frozen=True)
class WaltOptions(Config):
    """Options of ``walt``."""

    step: int | None = None  #: a training checkpoint's step (EMA weights); none: the exported weights


@dataclass(frozen=True)
class UntrainedOptions(Config):
    """Options of ``walt-untrained``."""

    seed: int = 0  #: the seed of the random initialisation


@dataclass(frozen=True)
class NoOptions(Config):
    """A kind that takes no options."""


C = TypeVar("C", bound=Config)


def _typed(cls: type[C], options: dict[str, Any], spec: str) -> C:
    return cls.from_dict(options, where=f"backbone spec {spec!r}")


def _walt(path: Path, options: dict[str, Any], spec: str, device: torch.device) -> ResolvedBackbone:
    opts = _typed(WaltOptions, options, spec)
    run = read_walt_run(path)
    tokenizer, tok_meta = load_tokenizer(run.tokenizer_dir)
    encoder = latents_identity(tok_meta["sha256"], run.mode)
    if opts.step is not None:
        step = opts.step
        denoiser, identity = run.checkpoint(step), f"walt-{run.mode}-{run.sha256[:12]}-step{step}"
    else:
        step, denoiser, identity = run.step, run.denoiser(), f"walt-{run.mode}-{run.sha256[:12]}"
    return ResolvedBackbone(WALTBackbone(tokenizer, denoiser, run.mode, identity, device, encoder_identity=encoder),
                            run.mode, step, run.dataset, export_clip_size(path))


def _walt_untrained(path: Path, options: dict[str, Any], spec: str, device: torch.device) -> ResolvedBackbone:
    seed = _typed(UntrainedOptions, options, spec).seed
    run = read_walt_run(path)
    tokenizer, tok_meta = load_tokenizer(run.tokenizer_dir)
    torch.manual_seed(seed)
    denoiser = WALT(run.model).eval()
    identity = f"walt-untrained-{run.model.hash()}-{tok_meta['sha256'][:12]}" + (f"-seed{seed}" if seed else "")
    backbone = WALTBackbone(tokenizer, denoiser, run.mode, identity, device,
                            encoder_identity=latents_identity(tok_meta["sha256"], run.mode))
    return ResolvedBackbone(backbone, run.mode, 0, run.dataset, export_clip_size(path))


def _latents(path: Path, options: dict[str, Any], spec: str, device: torch.device) -> ResolvedBackbone:
    _typed(NoOptions, options, spec)
    tok_run = path if run_kind(path) == "tokenizer" else read_walt_run(path).tokenizer_dir
    tokenizer, meta = load_tokenizer(tok_run)
    return ResolvedBackbone(LatentBackbone(tokenizer, latents_identity(meta["sha256"], "video"), device), "video", 0,
                            resolve_recorded_spec(tok_run, meta["config"]["dataset"]), export_clip_size(tok_run))


def _pixels(path: Path, options: dict[str, Any], spec: str, device: torch.device) -> ResolvedBackbone:
    opts = _typed(PixelOptions, options, spec)
    return ResolvedBackbone(PixelBackbone(opts.patch, opts.tubelet, device), "video", 0, None)


#: the packages of the ``hf`` extra, which the external kinds import when they load a model
HF_PACKAGES = ("diffusers", "transformers", "accelerate")


def _lazy(target: str) -> Factory:
    """A factory that imports ``module:function`` on first use (diffusers / transformers load only when asked)."""
    def factory(path: Path, options: dict[str, Any], spec: str, device: torch.device) -> ResolvedBackbone:
        try:
            return import_target(target)(path, options, spec, device)
        except ImportError as e:
            if (e.name or "").split(".")[0] not in HF_PACKAGES:
                raise
            raise SpecError(f"backbone spec {spec!r}: this kind needs {e.name}, which is not installed; install the "
                            f"hf extra (pip install -e '.[hf]')") from e

    factory.__qualname__ = target
    return factory


#: kind -> factory; docs/backbones.md documents each kind's folder layout, blocks, t mapping and conditioning
BACKBONES: dict[str, Factory] = {
    "walt": _walt,
    "walt-untrained": _walt_untrained,
    "latents": _latents,
    "pixels": _pixels,
    "sd": _lazy("diffprobe.backbones.sd:load_sd"),
    "animatediff": _lazy("diffprobe.backbones.animatediff:load_animatediff"),
    "svd": _lazy("diffprobe.backbones.svd:load_svd"),
    "dit": _lazy("diffprobe.backbones.dit:load_dit"),
    "cogvideox": _lazy("diffprobe.backbones.cogvideox:load_cogvideox"),
    "wan": _lazy("diffprobe.backbones.wan:load_wan"),
    "latte": _lazy("diffprobe.backbones.latte:load_latte"),
    "dinov2": _lazy("diffprobe.backbones.vision:load_dinov2"),
    "videomae": _lazy("diffprobe.backbones.vision:load_videomae"),
    "vjepa2": _lazy("diffprobe.backbones.vision:load_vjepa2"),
    "siglip": _lazy("diffprobe.backbones.vision:load_siglip"),
}


def block_shapes(backbone: Backbone, frames: int, height: int, width: int) -> dict[int, tuple[int, ...]]:
    """``{block: (T_f, H_f, W_f, C)}`` of every block for one clip of ``frames x height x width``: a forward on
    fake tensors (shapes only, no compute; a real forward on a grey clip for a kind that cannot run fake, see
    :mod:`diffprobe.backbones.shapes`). What ``diffprobe backbone info`` prints."""
    return forward_shapes(backbone, frames, height, width).shapes


#: kinds whose only block is 0 and that ignore the noise level: a study reads them at block 0, t 0
BLOCKLESS_KINDS = frozenset({"latents", "pixels"})
#: kinds that read no files: their spec is ``KIND[@OPTIONS]`` (path "")
PATHLESS_KINDS = frozenset({"pixels"})


def parse_backbone_spec(spec: str | BackboneSpec) -> BackboneSpec:
    """The typed spec (see :class:`~diffprobe.spec.BackboneSpec`): its kind known, and a ``:PATH`` exactly when the
    kind reads files (:data:`PATHLESS_KINDS`)."""
    parsed = BackboneSpec.parse(spec)
    if parsed.kind not in BACKBONES:
        raise SpecError(f"backbone spec {str(spec)!r}: unknown kind {parsed.kind!r}; known kinds are "
                        f"{sorted(BACKBONES)}")
    pathless = parsed.kind in PATHLESS_KINDS
    if pathless and parsed.path:
        raise SpecError(f"backbone spec {str(spec)!r}: this kind reads no files; write it without ':PATH', e.g. "
                        f"pixels@patch=4,tubelet=1")
    if not pathless and not parsed.path:
        raise SpecError(f"backbone spec {str(spec)!r}: expected {BackboneSpec.EXAMPLE}")
    return parsed


def load_backbone(spec: str | BackboneSpec, device: torch.device) -> ResolvedBackbone:
    """Resolve a spec (see the module docstring); errors name the spec and the problem."""
    parsed = parse_backbone_spec(spec)
    return BACKBONES[parsed.kind](Path(parsed.path), parsed.option_dict(), str(parsed), device)
