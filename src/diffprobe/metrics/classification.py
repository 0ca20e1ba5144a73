"""Classification accuracy. Numpy only."""

from __future__ import annotations

import numpy as np


def top1_accuracy(logits_or_predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose top-1 class equals the label.

    ``logits_or_predictions`` is either scores (..., C), reduced by argmax over the last axis (ties go to the lower
    class index), or integer class predictions with the same shape as ``labels`` (...,).
    """
    scores = np.asarray(logits_or_predictions)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size == 0:
        raise ValueError("top1_accuracy of an empty set is undefined")
    if scores.ndim == labels.ndim + 1 and scores.shape[:-1] == labels.shape:
        predictions = np.argmax(scores, axis=-1)
    elif scores.shape == labels.shape:
        if not np.issubdtype(scores.dtype, np.integer):
            raise ValueError(f"predictions shaped like labels must be integer classes, got dtype {scores.dtype}")
        predictions = scores
    else:
        raise ValueError(f"expected logits (..., C) or predictions shaped like labels {labels.shape}, "
                         f"got {scores.shape}")
    return float(np.mean(predictions == labels))
