"""What every backbone loaded from a model folder on disk shares (diffusers and transformers kinds).

- :class:`ExternalOptions`: the options every such kind takes (``dtype``, ``batch_size``), parsed from the spec.
- :func:`weights_fingerprint`: a hash of the folder's weight and config files (names, sizes, modification times), so
  new weights never reuse cached features; :func:`require_files` names a missing file.
- :class:`BlockTaps`: forward hooks on a model's block modules that keep each asked-for block's output and stop the
  forward right after the deepest one (the rest of the network is never run).
- :class:`VAETiling`: the spatial tiling of a video VAE's encode (diffusers' ``enable_tiling``), on above one tile
  (``vae_tiling=auto``, the default); where it is applied it is named in the identity (:meth:`VAETiling.tag`).
- :class:`LatentDiffusionBackbone`: the template of a latent diffusion model: pixels -> scaled latents (block 0,
  cached once per split through the ``encoder`` path) -> noised to t by the model's own mapping -> one denoiser
  forward -> block tokens ``(B, T_f, H_f, W_f, C)``; ``ensemble`` averages noise draws.
- :func:`null_embeddings`: the null conditioning read from ``null_embeds.safetensors`` in the model folder, or
  computed once by the caller's function and saved there.

diffusers and transformers are imported by the kinds' modules, inside functions, so the core package never needs
them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from diffprobe.backbones.base import Backbone, clip_noise
from diffprobe.config import Config, ConfigError
from diffprobe.errors import DiffprobeError, InputError
from diffprobe.utils.chunks import HalvingChunks

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: files whose bytes decide a model's outputs (weights, configs, tokenizers, null embeddings)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model")
NULL_EMBEDS = "null_embeds.safetensors"


class BackboneLoadError(DiffprobeError, ValueError):
    """A model folder is missing a file, holds a file that does not fit, or cannot give what a kind needs; the
    message names the file."""


@dataclasses.dataclass(frozen=True)
class ExternalOptions(Config):
    """Options every model-folder kind takes after ``@`` in its spec."""

    #: options that only decide how much is computed at once, not what: left out of the identity, so changing them
    #: reuses cached features (the results agree to float rounding). ``vae_tiling`` / ``vae_tile`` change the latents
    #: where tiling is applied: the applied tiling enters the identity by the input's size (:class:`VAETiling`)
    OUTSIDE_IDENTITY: ClassVar[tuple[str, ...]] = ("batch_size", "vae_chunk", "vae_frames", "vae_tiling", "vae_tile")
    #: options left out of the identity while they hold this value (options added later, whose default computes what
    #: the code computed before them: caches made before they existed stay valid)
    IDENTITY_DEFAULTS: ClassVar[dict[str, Any]] = {}

    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    batch_size: int = 0  #: clips per forward inside a batch (0: the whole batch at once)

    def validate(self) -> None:
        if self.batch_size < 0:
            raise ConfigError(f"{type(self).__name__}.batch_size: must be >= 0, got {self.batch_size}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def parse_options(cls: type[ExternalOptions], options: dict[str, Any], spec: str) -> ExternalOptions:
    """Typed options from a spec's parsed ``KEY=VALUE`` pairs; unknown keys are an error listing the known ones."""
    return cls.from_dict(options, where=f"backbone spec {spec!r}")


def require_files(folder: Path, *names: str) -> None:
    """An error naming the first of ``folder/name`` that does not exist."""
    if not folder.is_dir():
        raise BackboneLoadError(f"{folder}: no such model folder")
    for name in names:
        if not (folder / name).exists():
            raise BackboneLoadError(f"{folder / name}: missing (a {folder.name!r} model folder in the library's "
                                    "save_pretrained layout has it)")


def weights_fingerprint(folder: Path) -> str:
    """A short hash of the names, sizes and modification times of every weight / config file under ``folder``."""
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.endswith(WEIGHT_SUFFIXES):
                path = Path(root, name)
                st = path.stat()
                h.update(f"{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def identity_of(kind: str, folder: Path, options: Config, **details: Any) -> str:
    """``<kind>-<folder name>-<hash>``: the hash covers the weights' fingerprint, every option that changes the
    features (dtype, frames, ...; not those in ``OUTSIDE_IDENTITY``, nor those at their ``IDENTITY_DEFAULTS`` value)
    and the ``details`` a kind adds (its conditioning and t mapping)."""
    outside = getattr(options, "OUTSIDE_IDENTITY", ())
    defaults = getattr(options, "IDENTITY_DEFAULTS", {})
    kept = sorted((k, v) for k, v in options.to_dict().items()
                  if k not in outside and not (k in defaults and v == defaults[k]))
    blob = repr((kind, weights_fingerprint(folder), kept, sorted(details.items())))
    stem = "".join(c if c.isalnum() or c in "._+-" else "-" for c in folder.resolve().name)
    return f"{kind}-{stem}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


class _StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a hook after the deepest block asked for: the rest of the forward pass is skipped."""


class BlockTaps:
    """Forward hooks that keep the outputs of ``modules[b - 1]`` for each block ``b`` asked for (1-based) and stop
    the forward pass after the deepest. A module that returns a tuple is taken at its first element (the hidden
    states of diffusers' blocks); ``take`` overrides that choice."""

    def __init__(self, modules: Sequence[nn.Module], take: Callable[[int, Any], torch.Tensor] | None = None) -> None:
        self.modules = list(modules)
        self.take = take or (lambda block, out: out[0] if isinstance(out, (tuple, list)) else out)

    @contextlib.contextmanager
    def capture(self, blocks: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
        """``with taps.capture([2, 5]) as out: taps.run(lambda: model(...))`` fills ``out`` with blocks 2 and 5."""
        wanted = sorted({b for b in blocks if b > 0})
        bad = [b for b in wanted if b > len(self.modules)]
        if bad:
            raise InputError(f"block(s) {bad} out of range: this model has blocks 1..{len(self.modules)}")
        out: dict[int, torch.Tensor] = {}
        last = wanted[-1] if wanted else 0

        def hook(block: int):
            def fn(module: nn.Module, args: Any, output: Any) -> None:
                if block in wanted:
                    out[block] = self.take(block, output)
                if block == last:
                    raise _StopForward
            return fn

        handles = [m.register_forward_hook(hook(i + 1)) for i, m in enumerate(self.modules) if i + 1 <= last]
        try:
            yield out
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def run(forward: Callable[[], Any]) -> None:
        """Run ``forward`` until the hook of the deepest block stops it."""
        with contextlib.suppress(_StopForward):
            forward()


def null_embeddings(folder: Path, names: Sequence[str], compute: Callable[[], dict[str, torch.Tensor]] | None,
                    how: str) -> dict[str, torch.Tensor]:
    """The model's null conditioning: tensors ``names`` of ``folder/null_embeds.safetensors`` when it exists,
    otherwise ``compute()`` (the folder's own text encoder on the empty prompt), saved there for the next run. A
    folder with neither is an error that says ``how`` to provide it."""
    from diffprobe.utils.io import load_tensors, save_tensors

    path = folder / NULL_EMBEDS
    if path.is_file():
        try:
            tensors = load_tensors(path)
        except ValueError as e:
            raise BackboneLoadError(str(e)) from e
        missing = [n for n in names if n not in tensors]
        if missing:
            raise BackboneLoadError(f"{path}: no tensor(s) {missing} (it holds {sorted(tensors)})")
        return {n: tensors[n] for n in names}
    if compute is None:
        raise BackboneLoadError(f"{path}: missing, and the folder has no text encoder to compute it; {how}")
    tensors = {n: t.detach().cpu().contiguous() for n, t in compute().items()}
    save_tensors(path, tensors)
    return {n: tensors[n] for n in names}


@dataclasses.dataclass(frozen=True)
class VAETiling:
    """The spatial tiling of a video VAE's encode, as diffusers' ``enable_tiling`` sets it on the VAE: tiles of
    ``height`` x ``width`` pixels every ``stride_h`` / ``stride_w`` pixels, blended where they overlap. diffusers
    tiles an input whose frames (after the VAE's own ``patch_size`` patchify: ``scale``) are taller or wider than
    one tile, and encodes a smaller one whole; :meth:`applies` is that rule. Tiling changes the latents slightly, so
    where it is applied :meth:`tag` is added to the identity; where it is not, the latents and the identity are
    exactly those of an untiled encode."""

    height: int
    width: int
    stride_h: int
    stride_w: int
    scale: int = 1

    @classmethod
    def enable(cls, vae: nn.Module, tile: int = 0) -> VAETiling:
        """Tiling switched on in ``vae`` (an ``AutoencoderKLCogVideoX`` / ``AutoencoderKLWan``): the VAE's own tiles
        (CogVideoX: half its ``sample_height`` x ``sample_width``, overlapping by 1/6 and 1/5; Wan: 256 x 256 every
        192), or ``tile`` x ``tile`` pixels (a multiple of 32) overlapping by a quarter, which keeps every tile's
        stride whole latent pixels."""
        if hasattr(vae, "tile_sample_stride_height"):  # Wan: strides
            stride = {"tile_sample_stride_height": tile * 3 // 4, "tile_sample_stride_width": tile * 3 // 4}
            vae.enable_tiling(tile_sample_min_height=tile or None, tile_sample_min_width=tile or None,
                              **(stride if tile else {}))
            sh, sw = int(vae.tile_sample_stride_height), int(vae.tile_sample_stride_width)
        else:  # CogVideoX: overlap factors
            quarter = {"tile_overlap_factor_height": 0.25, "tile_overlap_factor_width": 0.25}
            vae.enable_tiling(tile_sample_min_height=tile or None, tile_sample_min_width=tile or None,
                              **(quarter if tile else {}))
            sh = int(vae.tile_sample_min_height * (1 - vae.tile_overlap_factor_height))
            sw = int(vae.tile_sample_min_width * (1 - vae.tile_overlap_factor_width))
        return cls(int(vae.tile_sample_min_height), int(vae.tile_sample_min_width), sh, sw,
                   int(vae.config.get("patch_size") or 1))

    def applies(self, height: int, width: int) -> bool:
        """Whether an encode of frames ``height`` x ``width`` pixels is tiled (diffusers' own test)."""
        return height // self.scale > self.height or width // self.scale > self.width

    def tag(self, height: int, width: int) -> str:
        """What the identity of features of ``height`` x ``width`` frames gets: ``""`` where no tiling applies."""
        if not self.applies(height, width):
            return ""
        return f"+vaetiles{self.height}x{self.width}s{self.stride_h}x{self.stride_w}"


class LatentEncoder(Backbone):
    """Block 0 of a latent diffusion backbone: its scaled VAE latents ``(B, T', h, w, C)``, encoded by ``encode``
    (uint8 video (B, T, H, W, 3) -> latents, with ``vae``), ``frames_per_chunk`` frames at a time where the VAE
    encodes frames independently (0: all frames in one call; halved on out-of-memory, see :class:`HalvingChunks`),
    or ``None`` for a video VAE that takes the whole clip (its ``encode`` sizes its own calls). ``tiling``: the VAE's
    tiling, named in :meth:`identity_at` where it applies."""

    num_blocks = 0

    def __init__(self, identity: str, encode: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 vae: nn.Module, frames_per_chunk: int | None = None, tiling: VAETiling | None = None) -> None:
        self.identity, self._encode, self.device, self.chunk = identity, encode, device, frames_per_chunk
        self.vae = vae  #: the VAE ``encode`` runs (held here so what the encoder weighs is in plain sight)
        self.tiling = tiling
        self.fit = HalvingChunks(frames_per_chunk or 0, "frames", identity)

    def tile_tag(self, height: int, width: int) -> str:
        """``""``, or the tiling this encoder applies to frames of ``height`` x ``width`` pixels."""
        return "" if self.tiling is None else self.tiling.tag(height, width)

    def identity_at(self, frames: int, height: int, width: int) -> str:
        return self.identity + self.tile_tag(height, width)

    @torch.no_grad()
    def features(self, video: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                 noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        if list(blocks) != [0] or t != 0:
            raise InputError(f"{self.identity}: the latents are block 0 at t = 0, asked for {list(blocks)} at t={t}")
        if self.chunk is None:
            return {0: self._encode(video).float()}
        return {0: self.fit(lambda part: self._encode(part).float(), video, dim=1)}  # (B, T', h, w, C)


class LatentDiffusionBackbone(Backbone):
    """The template of a latent diffusion backbone; a kind implements the four abstract methods.

    ``features_from_encoded`` takes the scaled latents ``(B, T', h, w, C)`` (block 0), noises them to ``t`` with
    :meth:`noise` and the per-clip seeded noise, runs :meth:`forward` once with :class:`BlockTaps` on
    :meth:`block_modules`, and turns each block's output into tokens with :meth:`tokens`.
    """

    #: how the kind maps t (0..1000) to its own noise level, named in the identity (e.g. "ddpm", "edm", "flow")
    t_mapping: ClassVar[str]

    def __init__(self, identity: str, encoder: Backbone, device: torch.device, dtype: torch.dtype,
                 batch_size: int = 0) -> None:
        """Subclasses load their modules first, then call this (it hooks :meth:`block_modules`)."""
        self.identity, self.encoder, self.device = identity, encoder, device
        self.dtype, self.batch_size = dtype, batch_size
        self.taps = BlockTaps(self.block_modules())
        self.num_blocks = len(self.taps.modules)

    def identity_at(self, frames: int, height: int, width: int) -> str:
        encoder = self.encoder
        return self.identity + (encoder.tile_tag(height, width) if isinstance(encoder, LatentEncoder) else "")

    def stitch(self, x: torch.Tensor) -> torch.Tensor:
        """A block's tokens ``(B, T_f, ...)`` as the clip's frames (a kind that sees overlapping windows stitches
        them back, see :meth:`TransformerBackbone.stitch`); by default, as they are."""
        return x

    @abstractmethod
    def block_modules(self) -> list[nn.Module]:
        """The denoiser's blocks in execution order (block b = element b - 1)."""

    @abstractmethod
    def noise(self, z: torch.Tensor, t: float, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, timestep)``: latents ``(B, T', h, w, C)`` noised to level ``t`` (0..1000) with ``eps`` and the
        timestep tensor ``(B,)`` the denoiser takes, by the model's own schedule."""

    @abstractmethod
    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor, clean: torch.Tensor) -> None:
        """One denoiser call on noised latents ``(B, T', h, w, C)`` with the null conditioning (``clean``: the
        clean latents, for models conditioned on a frame of the clip)."""

    @abstractmethod
    def tokens(self, block: int, output: torch.Tensor, grid: tuple[int, int, int, int]) -> torch.Tensor:
        """A block's output -> ``(B, T_f, H_f, W_f, C)`` float32 (``grid``: the latents' ``(B, T', h, w)``)."""

    def denoise(self, x_t: torch.Tensor, t: float, clean: torch.Tensor, steps: int) -> torch.Tensor:
        """The clean latents ``(B, T', h, w, C)`` estimated from ``x_t`` at level ``t`` by ``steps`` steps of the
        model's own scheduler with the null conditioning (for ``diffprobe backbone check``)."""
        raise NotImplementedError(f"{type(self).__name__} has no denoising loop for `diffprobe backbone check`")

    @torch.no_grad()
    def features(self, video: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                 noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        z = self.encoder.features(video, clip_ids, [0], 0.0, noise_seed)[0]
        return self.features_from_encoded(z, clip_ids, blocks, t, noise_seed, ensemble)

    @torch.no_grad()
    def features_from_encoded(self, encoded: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int],
                              t: float, noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        step = self.batch_size or len(encoded)
        parts = [self._features(encoded[i:i + step], clip_ids[i:i + step], blocks, t, noise_seed, ensemble)
                 for i in range(0, len(encoded), step)]
        return {b: torch.cat([p[b] for p in parts]) for b in blocks}

    def _features(self, encoded: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                  noise_seed: int, ensemble: int) -> dict[int, torch.Tensor]:
        z = encoded.to(self.device, torch.float32)  # (B, T', h, w, C)
        grid = tuple(z.shape[:4])
        acc: dict[int, torch.Tensor] = {}
        for draw in range(ensemble):
            eps = clip_noise(z, clip_ids, noise_seed, draw)
            x_t, timestep = self.noise(z, t, eps)
            with self.taps.capture(blocks) as out:
                self.taps.run(lambda x_t=x_t, timestep=timestep: self.forward(x_t, timestep, z))
            for b, o in out.items():
                tok = self.stitch(self.tokens(b, o, grid).float())
                acc[b] = acc[b] + tok if b in acc else tok
        result = {b: v / ensemble for b, v in acc.items()}
        if 0 in blocks:
            result[0] = self.stitch(z)
        return result


def require_at_least(options: Config, minimum: int, *names: str) -> None:
    """A :class:`ConfigError` naming the first option of ``names`` below ``minimum`` (for options' ``validate``)."""
    for name in names:
        value = getattr(options, name)
        if value < minimum:
            raise ConfigError(f"{type(options).__name__}.{name}: must be >= {minimum}, got {value}")
