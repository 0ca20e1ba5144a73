"""The project's own video feature space for Fréchet distances on Probe World (its "FVD").

A real FVD embeds clips with I3D trained on Kinetics. Probe World is not Kinetics, so diffprobe trains the same
I3D architecture (the ``tiny`` width preset) to classify the study dataset's class fields (Probe World: the main
object's category and motion class; any dataset: whichever of ``label`` / ``action`` it has, one head each) and uses
its pooled pre-logit features, with BatchNorm statistics recalibrated on real clips. A dataset with no class field
gives a randomly initialised, data-calibrated I3D (no training steps). The validation accuracies of
both heads are recorded in the export's ``model.json``: at the CPU ``tiny`` budget (150 steps) they stay near chance,
so the space is then in effect that of a randomly initialised, data-calibrated I3D — the random-embedding Fréchet
distance that Naeem et al. (2020) found usable where no pretrained network exists.

Generated *clips* are compared with real clips (clip FD); generated *images*, and the frames of generated clips,
are compared with real frames (frame FD), each frame shown to the network as a still clip, so both twins get a
frame FD on one scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffprobe.data.dataset import LABEL_FIELDS, ClipSequence
from diffprobe.data.splits import resolve_roles
from diffprobe.features.cache import FeatureCache
from diffprobe.features.sources import ensure_videos
from diffprobe.metrics import feature_statistics, frechet_distance
from diffprobe.metrics.i3d import I3D, I3DConfig, video_features
from diffprobe.models import frames_to_input
from diffprobe.models.exports import resolve_recorded_spec
from diffprobe.train.batching import make_batch_fn
from diffprobe.train.export import export_model, load_export, read_export, train_once
from diffprobe.train.loop import fit
from diffprobe.train.runs import FeatureNetRunConfig
from diffprobe.utils.distributed import setup_distributed


class _LabelledVideos(torch.utils.data.Dataset):
    """(video uint8 (T, H, W, 3), labels (F,)) of each clip: its class fields, read from the index, not the pixels."""

    def __init__(self, videos: torch.utils.data.Dataset, clips: ClipSequence, fields: list[str]) -> None:
        self.videos = videos
        self.labels = torch.from_numpy(np.stack([clips.labels(f) for f in fields], axis=1)  # (N, F)
                                       if fields else np.zeros((len(clips), 0), np.int64))

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.videos[i], self.labels[i]


def _make_loss(sizes: list[int]):
    """Summed cross-entropy of one head per class field (``sizes`` classes each, logits side by side)."""
    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator):
        video, labels = batch
        logits = model(frames_to_input(video))  # (B, sum(sizes))
        total, logs, lo = 0.0, {}, 0
        for f, n in enumerate(sizes):
            ce = nn.functional.cross_entropy(logits[:, lo:lo + n], labels[:, f])
            total, logs[f"ce_{f}"], lo = total + ce, ce, lo + n
        return total, logs
    return loss


def _top1(net: nn.Module, data: _LabelledVideos, sizes: list[int], fields: list[str], device: torch.device
          ) -> dict[str, float]:
    with torch.no_grad():
        logits = torch.cat([net(frames_to_input(torch.stack([data.videos[j] for j in range(i, min(i + 64, len(data)))])
                                                .to(device))).cpu() for i in range(0, len(data), 64)])
    out, lo = {}, 0
    for f, (name, n) in enumerate(zip(fields, sizes, strict=True)):
        out[f"val_{name}_top1"] = float((logits[:, lo:lo + n].argmax(1) == data.labels[:, f]).float().mean())
        lo += n
    return out


def train_feature_net(cfg: FeatureNetRunConfig, run_dir: str | Path, cache: FeatureCache, resume: bool = True,
                      progress: bool = True) -> Path:
    """Train (or finish) the feature network in ``run_dir``; returns its exported weights."""
    run_dir = Path(run_dir)
    return train_once(run_dir, cfg, "feature-net", lambda: _train_feature_net(cfg, run_dir, cache, resume, progress))


def _train_feature_net(cfg: FeatureNetRunConfig, run_dir: Path, cache: FeatureCache, resume: bool,
                       progress: bool) -> Path:
    ctx = setup_distributed(cfg.train.device)
    spec = resolve_recorded_spec(run_dir, cfg.dataset)
    roles = resolve_roles({"train": spec, "val": spec})
    ds = roles["train"].dataset
    fields = [f for f in LABEL_FIELDS if f in ds.fields]
    sizes = [len(ds.label_spaces[f]) for f in fields]
    net_cfg = cfg.net.replace(num_classes=max(1, sum(sizes)))
    train = roles["train"].clips
    videos = ensure_videos(train, cache, progress=progress, ctx=ctx).rows()  # clip i: uint8 (T, H, W, 3)
    data = _LabelledVideos(videos, train, fields)
    torch.manual_seed(cfg.train.seed)  # the initial weights are part of the run: same seed, same model
    net = I3D(net_cfg)
    step = 0
    if fields:
        batches = make_batch_fn(data, cfg.train.batch_size, cfg.train.seed, rank=ctx.rank,
                                world_size=ctx.world_size)
        result = fit(net, _make_loss(sizes), batches, cfg.train, run_dir, cfg, resume=resume, progress=progress)
        net, step = result.ema_model(), result.step
    net = net.to(ctx.device)
    recalibrate_batchnorm(net, torch.stack([videos[i] for i in range(min(cfg.calibration_clips, len(videos)))]),
                          ctx.device)
    val = roles["val"].clips
    acc = _top1(net, _LabelledVideos(ensure_videos(val, cache, progress=progress, ctx=ctx).rows(), val, fields), sizes,
                fields, ctx.device)
    return export_model(run_dir, net, cfg, kind="feature-net", step=step,
                        extra={**acc, "net": net_cfg.to_dict(), "fields": fields}, ctx=ctx)


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
    return load_export(run_dir, I3D(I3DConfig.from_dict(meta["net"]))).eval()


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
