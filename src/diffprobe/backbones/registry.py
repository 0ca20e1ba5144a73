"""Backbones by spec: ``KIND[@OPTIONS]:PATH``, resolved through one registry (kind -> factory).

| spec | backbone |
| ``walt:RUN`` | a trained WALT twin (its run's mode: image or video), exported EMA weights |
| ``walt@STEP:RUN`` (``walt@step=STEP:RUN``) | the same twin at training checkpoint STEP (EMA weights) |
| ``walt-untrained:RUN`` | the same architecture and tokenizer as RUN, randomly initialised (``seed``, default 0) |
| ``latents:RUN`` | the tokenizer latents themselves (RUN: a tokenizer run or a twin run), video mode |
| ``pixels[@patch=P,tubelet=U]`` | the clip's own RGB in P x P x U patches (defaults 4 and 1); no path |

Options are ``KEY=VALUE`` pairs separated by commas; each kind declares the ones it takes, so an unknown option is an
error listing the known ones. The caller chooses the data: a backbone knows only the spec of the data its weights
were trained on (``trained_on``), which commands use as their default dataset. A kind that reads no files
(``pixels``) takes no ``:PATH``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffprobe.backbones.base import Backbone
from diffprobe.backbones.pixels import PixelBackbone
from diffprobe.backbones.walt import LatentBackbone, WALTBackbone
from diffprobe.data.dataset import ClipDataset
from diffprobe.errors import DiffprobeError
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


class SpecError(DiffprobeError, ValueError):
    """A backbone spec is malformed, names an unknown kind, or gives an option the kind does not take."""


@dataclass(frozen=True)
class ResolvedBackbone:
    backbone: Backbone
    mode: str  #: "video" or "image" (how the backbone sees a clip)
    step: int  #: training step of the weights (0 for untrained / not applicable)
    trained_on: str | None  #: dataset spec its weights were trained on, when known
    #: clip size (frames, height, width) its weights were trained on, when known (our runs); other sizes need asking
    trained_size: tuple[int, int, int] | None = None

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


#: a factory: (path, options, spec, device) -> resolved backbone
Factory = Callable[[Path, dict[str, str], str, torch.device], ResolvedBackbone]


def _options(spec: str, options: dict[str, str], known: dict[str, type]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SpecError(f"backbone spec {spec!r}: unknown option(s) {unknown}; this kind takes {sorted(known)}")
    out = {}
    for key, value in options.items():
        try:
            out[key] = known[key](value)
        except ValueError as e:
            raise SpecError(f"backbone spec {spec!r}: option {key}={value!r} is not a {known[key].__name__}") from e
    return out


def _walt(path: Path, options: dict[str, str], spec: str, device: torch.device) -> ResolvedBackbone:
    opts = _options(spec, options, {"step": int})
    run = read_walt_run(path)
    tokenizer, tok_meta = load_tokenizer(run.tokenizer_dir)
    encoder = latents_identity(tok_meta["sha256"], run.mode)
    if "step" in opts:
        step = opts["step"]
        denoiser, identity = run.checkpoint(step), f"walt-{run.mode}-{run.sha256[:12]}-step{step}"
    else:
        step, denoiser, identity = run.step, run.denoiser(), f"walt-{run.mode}-{run.sha256[:12]}"
    return ResolvedBackbone(WALTBackbone(tokenizer, denoiser, run.mode, identity, device, encoder_identity=encoder),
                            run.mode, step, run.dataset, export_clip_size(path))


def _walt_untrained(path: Path, options: dict[str, str], spec: str, device: torch.device) -> ResolvedBackbone:
    seed = _options(spec, options, {"seed": int}).get("seed", 0)  # documented default: seed 0
    run = read_walt_run(path)
    tokenizer, tok_meta = load_tokenizer(run.tokenizer_dir)
    torch.manual_seed(seed)
    denoiser = WALT(run.model).eval()
    identity = f"walt-untrained-{run.model.hash()}-{tok_meta['sha256'][:12]}" + (f"-seed{seed}" if seed else "")
    backbone = WALTBackbone(tokenizer, denoiser, run.mode, identity, device,
                            encoder_identity=latents_identity(tok_meta["sha256"], run.mode))
    return ResolvedBackbone(backbone, run.mode, 0, run.dataset, export_clip_size(path))


def _latents(path: Path, options: dict[str, str], spec: str, device: torch.device) -> ResolvedBackbone:
    _options(spec, options, {})
    tok_run = path if run_kind(path) == "tokenizer" else read_walt_run(path).tokenizer_dir
    tokenizer, meta = load_tokenizer(tok_run)
    return ResolvedBackbone(LatentBackbone(tokenizer, latents_identity(meta["sha256"], "video"), device), "video", 0,
                            resolve_recorded_spec(tok_run, meta["config"]["dataset"]), export_clip_size(tok_run))


def _pixels(path: Path, options: dict[str, str], spec: str, device: torch.device) -> ResolvedBackbone:
    opts = _options(spec, options, {"patch": int, "tubelet": int})
    patch, tubelet = opts.get("patch", 4), opts.get("tubelet", 1)  # documented defaults (module docstring)
    return ResolvedBackbone(PixelBackbone(patch, tubelet, device), "video", 0, None)


#: the packages of the ``hf`` extra, which the external kinds import when they load a model
HF_PACKAGES = ("diffusers", "transformers", "accelerate")


def _lazy(target: str) -> Factory:
    """A factory that imports ``module:function`` on first use (diffusers / transformers load only when asked)."""
    module, attr = target.split(":")

    def factory(path: Path, options: dict[str, str], spec: str, device: torch.device) -> ResolvedBackbone:
        try:
            return getattr(importlib.import_module(module), attr)(path, options, spec, device)
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
    """``{block: (T_f, H_f, W_f, C)}`` of every block for one clip of ``frames x height x width`` (a forward pass
    on a grey clip at t = 0): what ``diffprobe backbone info`` prints."""
    video = torch.full((1, frames, height, width, 3), 128, dtype=torch.uint8, device=backbone.device)
    blocks = list(range(backbone.num_blocks + 1))
    with torch.no_grad():
        feats = backbone.features(video, torch.zeros(1, dtype=torch.long), blocks, 0.0, 0)
    return {b: tuple(feats[b].shape[1:]) for b in blocks}


#: kinds whose only block is 0 and that ignore the noise level: a study reads them at block 0, t 0
BLOCKLESS_KINDS = frozenset({"latents", "pixels"})
#: kinds that read no files: their spec is ``KIND[@OPTIONS]`` (path "")
PATHLESS_KINDS = frozenset({"pixels"})


def parse_backbone_spec(spec: str) -> tuple[str, dict[str, str], str]:
    """``KIND[@OPTIONS]:PATH`` -> ``(kind, options, path)``; ``walt@STEP`` is short for ``walt@step=STEP``; a
    kind in :data:`PATHLESS_KINDS` has no ``:PATH``."""
    head, sep, path = spec.partition(":")
    pathless = head.partition("@")[0] in PATHLESS_KINDS
    if pathless and sep:
        raise SpecError(f"backbone spec {spec!r}: this kind reads no files; write it without ':PATH', e.g. "
                        f"pixels@patch=4,tubelet=1")
    if not pathless and (not sep or not head or not path):
        raise SpecError(f"backbone spec {spec!r}: expected KIND[@OPTIONS]:PATH, e.g. walt:runs/video; known kinds "
                        f"are {sorted(BACKBONES)}")
    kind, _, text = head.partition("@")
    options: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            key, value = "step", item  # walt@400
        options[key.strip()] = value.strip()
    return kind, options, path


def load_backbone(spec: str, device: torch.device) -> ResolvedBackbone:
    """Resolve a spec (see the module docstring); errors name the spec and the problem."""
    kind, options, path = parse_backbone_spec(spec)
    if kind not in BACKBONES:
        raise SpecError(f"backbone spec {spec!r}: unknown kind {kind!r}; known kinds are {sorted(BACKBONES)}")
    return BACKBONES[kind](Path(path), options, spec, device)
