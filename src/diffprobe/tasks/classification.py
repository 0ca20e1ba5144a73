"""Image classification (category of the main object, from the first frame alone) and action recognition (its
motion class, from the whole clip): learned queries, cross-entropy, top-1."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffprobe.metrics import top1_accuracy
from diffprobe.readouts import LearnedQueries, Probe, ReadoutConfig, class_logits, classification_loss
from diffprobe.tasks.base import Clip, Task


class ClassificationTask(Task):
    """Predict the integer clip field ``field`` among ``num_classes`` classes."""

    field: str
    table_metrics = ("top1",)

    def num_classes(self) -> int:
        """Size of the label space of :attr:`field`."""
        return len(self.ctx.label_spaces[self.field])

    def targets(self, clip: Clip) -> dict[str, np.ndarray]:
        return {"label": np.asarray(clip[self.field], dtype=np.int64)}

    def make_probe(self, cfg: ReadoutConfig, feature_dim: int, feature_grid: tuple[int, int, int]) -> Probe:
        return Probe(cfg, LearnedQueries(cfg, self.num_classes()), feature_dim, feature_grid)

    def loss(self, out: Tensor, targets: dict[str, Tensor]) -> Tensor:
        return classification_loss(class_logits(out), targets["label"])

    def predict(self, out: Tensor, targets: dict[str, Tensor]) -> dict[str, np.ndarray]:
        return {"logits": class_logits(out).detach().float().cpu().numpy()}  # (B, K)

    def baseline(self, train: dict[str, np.ndarray]) -> np.ndarray:
        """The training label frequencies as logits ``(1, K)``, shared by every learned query."""
        freq = np.bincount(train["label"], minlength=self.num_classes()) / len(train["label"])  # (K,)
        return np.log(np.maximum(freq, 1e-6)).astype(np.float32)[None]

    def prior(self, train: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The training label frequencies as logits: the majority class, with the prior's cross-entropy."""
        return {"logits": np.repeat(self.baseline(train), len(test["label"]), axis=0)}  # (N, K)

    def metrics(self, preds: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
        logits, labels = preds["logits"], targets["label"]  # (N, K), (N,)
        ce = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
        return {"top1": top1_accuracy(logits, labels), "cross_entropy": float(ce)}


class ImageClassification(ClassificationTask):
    name = "image_cls"
    view = "frame0"
    field = "label"
    fields = ("video", "label")


class ActionRecognition(ClassificationTask):
    name = "action"
    view = "clip"
    field = "action"
    fields = ("video", "action")
