"""A task = the targets it reads from a clip + the probe's queries + a loss + a metric.

Tasks are defined in the world's output space (video frames T, pixels H x W), whatever the backbone's token grid.
Targets are fixed-shape numpy arrays per clip (padding is always paired with a validity mask), so a split's
targets stack into one array per field and are computed once per split (see :mod:`diffprobe.tasks.targets`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffprobe.metrics import HIGHER_IS_BETTER, metric_standard_error
from diffprobe.readouts import Probe, ReadoutConfig

Clip = dict[str, np.ndarray]


@dataclass(frozen=True)
class TaskContext:
    """What a task needs to know about its data: clip size, label spaces (class names per class field), the most
    boxes and point tracks in a clip, and the point-tracking query mode (TAP-Vid's ``first`` or ``strided``)."""

    frames: int
    height: int
    width: int
    label_spaces: dict[str, tuple[str, ...]]
    max_objects: int
    max_tracks: int = 0  #: 0: every clip has the same number of tracks
    query_mode: str = "first"


class _FirstTableMetric:
    """``Task.primary_metric``: the first of the class's ``table_metrics``, read on the class or an instance."""

    def __get__(self, task: Task | None, cls: type[Task]) -> str:
        return cls.table_metrics[0]


class Task(ABC):
    """One probing task. Subclasses set the class attributes and implement the five methods."""

    name: str
    view: str  #: the backbone input: "clip" (the whole clip) or "frame0" (the first frame as an image)
    fields: tuple[str, ...]  #: the Clip fields its targets read (a dataset without them cannot serve the task)
    version: int = 1  #: bump when :meth:`targets` changes, so cached targets of the old definition are not reused
    #: the metrics the results table shows, primary first (every metric's direction: metrics.HIGHER_IS_BETTER)
    table_metrics: tuple[str, ...]
    #: the metric that stands for the task (model selection, standard errors, figures): ``table_metrics[0]``
    primary_metric = _FirstTableMetric()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "primary_metric" in vars(cls):
            raise TypeError(f"task class {cls.__name__} declares primary_metric; it is the first of its table_metrics")

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    @property
    def higher_is_better(self) -> bool:
        """Whether a higher primary metric is better."""
        return HIGHER_IS_BETTER[self.primary_metric]

    @abstractmethod
    def targets(self, clip: Clip) -> dict[str, np.ndarray]:
        """Fixed-shape target arrays of one clip."""

    @abstractmethod
    def make_probe(self, cfg: ReadoutConfig, feature_dim: int, feature_grid: tuple[int, int, int]) -> Probe:
        """A fresh probe (query encoder + readout) for features of this channel count and grid."""

    def query_inputs(self, targets: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """The query encoder's inputs for a batch (none for learned / patch / frame queries)."""
        return ()

    def training_batch(self, targets: dict[str, Tensor], queries: int, generator: torch.Generator
                       ) -> dict[str, Tensor]:
        """The targets one training step uses: all of them, unless the task asks many queries per clip, in which
        case at most ``queries`` of them (0: all) drawn at random (evaluation always uses all)."""
        return targets

    @abstractmethod
    def loss(self, out: Tensor, targets: dict[str, Tensor]) -> Tensor:
        """Scalar training loss of the probe output ``(B, Q, out_dim)``."""

    @abstractmethod
    def predict(self, out: Tensor, targets: dict[str, Tensor]) -> dict[str, np.ndarray]:
        """Task predictions (numpy, in pixels / classes / poses) of a batch."""

    def baseline(self, train: dict[str, np.ndarray]) -> np.ndarray | None:
        """The head output ``(Q or 1, out_dim)`` that decodes to :meth:`prior`, from training targets alone.

        A probe adds it to its zero-initialised head, so it starts at the prior and learns only what the features
        add to it. ``None``: a zero output already decodes to the prior (offsets from the query)."""
        return None

    @abstractmethod
    def prior(self, train: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Predictions for ``test`` that never look at a clip's pixels: statistics of ``train``'s targets and the
        query itself (the no-information baseline a probe has to beat, and where an untrained probe starts)."""

    @abstractmethod
    def metrics(self, preds: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics over a whole split, from stacked predictions and targets."""

    def per_clip(self, preds: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> np.ndarray:
        """The primary metric of every clip scored alone, ``(N,)``; NaN where a clip has nothing to score.

        Their spread gives the split metric's standard error (clips are the independent units of a test set)."""
        n = len(next(iter(targets.values())))
        out = np.full(n, np.nan)
        for i in range(n):
            one = {k: v[i:i + 1] for k, v in preds.items()}, {k: v[i:i + 1] for k, v in targets.items()}
            out[i] = self.metrics(*one)[self.primary_metric]
        return out

    def evaluate(self, preds: dict[str, np.ndarray], targets: dict[str, np.ndarray]
                 ) -> tuple[dict[str, float], np.ndarray]:
        """:meth:`metrics` plus ``<primary>_se`` (the primary metric's standard error over the split's clips, see
        :func:`~diffprobe.metrics.metric_standard_error`), and the per-clip primary metric ``(N,)`` it comes from (for
        paired comparisons of backbones on the same clips)."""
        per = self.per_clip(preds, targets)
        se = metric_standard_error(self.primary_metric, per)
        return {**self.metrics(preds, targets), f"{self.primary_metric}_se": se}, per
