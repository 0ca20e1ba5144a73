"""The project's own video feature space for Fréchet distances on Probe World (its "FVD").

A real FVD embeds clips with I3D trained on Kinetics. Probe World is not Kinetics, so diffprobe trains the same
I3D architecture (the ``tiny`` width preset) to classify Probe World's object category and motion class, and uses
its pooled pre-logit features, with BatchNorm statistics recalibrated on real clips. The validation accuracies of
both heads are recorded in the export's ``model.json``: at the CPU ``tiny`` budget (150 steps) they stay near chance,
so the space is then in effect that of a randomly initialised, data-calibrated I3D — the random-embedding Fréchet
distance that Naeem et al. (2020) found usable where no pretrained network exists.

Generated *clips* are compared with real clips (clip FD); generated *images*, and the frames of generated clips,
are compared with real frames (frame FD), each frame shown to the network as a still clip, so both twins get a
frame FD on one scale.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from diffprobe.config import Config, ConfigError
from diffprobe.data import CATEGORIES, MOTIONS, ProbeWorld, ProbeWorldConfig
from diffprobe.features.cache import FeatureCache
from diffprobe.features.sources import ensure_videos
from diffprobe.metrics import feature_statistics, frechet_distance
from diffprobe.metrics.i3d import I3D, I3DConfig, video_features
from diffprobe.models import frames_to_input
from diffprobe.train.batching import make_batch_fn
from diffprobe.train.config import TrainConfig
from diffprobe.train.distributed import setup_distributed
from diffprobe.train.export import export_model, load_export, read_export
from diffprobe.train.loop import fit


@dataclasses.dataclass(frozen=True)
class FeatureNetRunConfig(Config):
    """The Fréchet feature network: an I3D classifying category + motion of the main object."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"world": ProbeWorldConfig.PRESETS["tiny"],
                 "net": {**I3DConfig.PRESETS["tiny"], "num_classes": len(CATEGORIES) + len(MOTIONS),
                         "dropout": 0.0},
                 "train": {"steps": 150, "batch_size": 32, "lr": 2e-3, "warmup_steps": 15, "log_every": 10,
                           "ckpt_every": 50}},
    }

    world: ProbeWorldConfig = dataclasses.field(default_factory=ProbeWorldConfig)
    net: I3DConfig = dataclasses.field(default_factory=I3DConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    calibration_clips: int = 512  #: training clips whose statistics replace the BatchNorm running averages

    def validate(self) -> None:
        if self.net.num_classes != len(CATEGORIES) + len(MOTIONS):
            raise ConfigError(f"FeatureNetRunConfig.net.num_classes must be {len(CATEGORIES)} categories + "
                              f"{len(MOTIONS)} motions = {len(CATEGORIES) + len(MOTIONS)}, got {self.net.num_classes}")


class _LabelledVideos(torch.utils.data.Dataset):
    """(video uint8 (T, H, W, 3), category, motion) of the main object of each training clip."""

    def __init__(self, videos: torch.Tensor, world: ProbeWorld) -> None:
        self.videos = videos
        scenes = [world.scene(i) for i in range(len(world))]  # labels without rendering
        self.labels = torch.tensor([[s.category[0], s.motion[0]] for s in scenes], dtype=torch.long)  # (N, 2)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.videos[i], self.labels[i]


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator):
    video, labels = batch
    logits = model(frames_to_input(video))  # (B, categories + motions)
    n = len(CATEGORIES)
    ce = nn.functional.cross_entropy
    cat, mot = ce(logits[:, :n], labels[:, 0]), ce(logits[:, n:], labels[:, 1])
    acc = (logits[:, n:].argmax(1) == labels[:, 1]).float().mean()
    return cat + mot, {"category_ce": cat, "motion_ce": mot, "motion_acc": acc}


def train_feature_net(cfg: FeatureNetRunConfig, run_dir: str | Path, cache: FeatureCache, resume: bool = True,
                      progress: bool = True) -> Path:
    """Train (or finish) the feature network in ``run_dir``; returns its exported weights."""
    ctx = setup_distributed(cfg.train.device)
    videos = ensure_videos(cfg.world, "train", cache, progress=progress).load_all()[1]  # (N, T, H, W, 3)
    data = _LabelledVideos(videos, ProbeWorld(cfg.world, "train"))
    batches = make_batch_fn(data, cfg.train.batch_size, cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size)
    torch.manual_seed(cfg.train.seed)  # the initial weights are part of the run: same seed, same model
    result = fit(I3D(cfg.net), _loss, batches, cfg.train, run_dir, cfg, resume=resume, progress=progress)
    net = result.ema_model()
    recalibrate_batchnorm(net, videos[:cfg.calibration_clips], ctx.device)
    val = ensure_videos(cfg.world, "val", cache, progress=progress).load_all()[1]
    labels = _LabelledVideos(val, ProbeWorld(cfg.world, "val")).labels
    with torch.no_grad():
        logits = torch.cat([net(frames_to_input(val[i:i + 64].to(ctx.device))).cpu() for i in range(0, len(val), 64)])
    n = len(CATEGORIES)
    acc = {"val_category_top1": float((logits[:, :n].argmax(1) == labels[:, 0]).float().mean()),
           "val_motion_top1": float((logits[:, n:].argmax(1) == labels[:, 1]).float().mean())}
    return export_model(run_dir, net, cfg, kind="feature-net", step=result.step, extra=acc)


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, videos: torch.Tensor, device: torch.device, batch_size: int = 64) -> None:
    """Replace every BatchNorm's running statistics by their exact average over ``videos`` (uint8 (N, T, H, W, 3)).

    I3D's BatchNorm momentum (0.01, as in the reference) leaves the running statistics far from the data after a
    short training run, and the mismatch compounds over its ~20 layers until eval-mode features collapse to a
    constant; a pass in train mode with cumulative averaging fixes that without changing any weight.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: equal weight for every batch
    net.train()
    for lo in range(0, len(videos), batch_size):
        net(frames_to_input(videos[lo:lo + batch_size].to(device)))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    net.eval()


def load_feature_net(run_dir: str | Path) -> I3D:
    meta = read_export(run_dir, "feature-net")
    return load_export(run_dir, I3D(FeatureNetRunConfig.from_dict(meta["config"]).net)).eval()


class FrechetEvaluator:
    """Fréchet distances of generated clips or images to one split of real Probe World clips."""

    def __init__(self, net: I3D, real_videos: np.ndarray, max_frames: int = 4096) -> None:
        self.net = net
        self.frames = real_videos.shape[1]
        self.real_clip = feature_statistics(self._embed(real_videos))
        frames = real_videos.reshape(-1, 1, *real_videos.shape[2:])  # every frame as a 1-frame clip
        pick = np.random.default_rng(0).permutation(len(frames))[:max_frames]
        self.real_frame = feature_statistics(self._embed(frames[np.sort(pick)]))

    def _embed(self, videos: np.ndarray) -> np.ndarray:
        if videos.shape[1] == 1:  # a still clip of the network's clip length
            videos = np.repeat(videos, self.frames, axis=1)
        return video_features(videos, self.net, size=videos.shape[2], batch_size=64)

    def __call__(self, samples: np.ndarray) -> dict[str, float]:
        """``frame_fd`` for any samples (frames of clips or images); ``clip_fd`` too for clips."""
        frames = samples.reshape(-1, 1, *samples.shape[2:])
        out = {"frame_fd": frechet_distance(*self.real_frame, *feature_statistics(self._embed(frames)))}
        if samples.shape[1] > 1:
            out["clip_fd"] = frechet_distance(*self.real_clip, *feature_statistics(self._embed(samples)))
        return out
