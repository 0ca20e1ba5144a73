"""Task targets of a whole split, computed once from the clips and stored beside the feature cache.

File layout: one safetensors file per (clips, task, task version) with keys ``"<task>/<field>"``, each an array
stacked over the split's clips in index order (``(N, ...)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffprobe.errors import FileProblem
from diffprobe.tasks.base import Clip, Task
from diffprobe.utils.io import load_tensors, save_tensors

Targets = dict[str, np.ndarray]


def compute_targets(tasks: Sequence[Task], clips: Iterable[Clip], num_clips: int,
                    progress: bool = True) -> dict[str, Targets]:
    """``{task: {field: (N, ...)}}`` of the first ``num_clips`` clips of a stream (clips in index order)."""
    rows: dict[str, dict[str, list[np.ndarray]]] = {t.name: {} for t in tasks}
    stream = iter(clips)
    for _ in tqdm(range(num_clips), desc="targets", unit="clip", disable=not progress, dynamic_ncols=True):
        clip = next(stream)
        for task in tasks:
            for field, value in task.targets(clip).items():
                rows[task.name].setdefault(field, []).append(value)
    return {name: {f: np.stack(v) for f, v in fields.items()} for name, fields in rows.items()}


def save_targets(path: str | Path, targets: dict[str, Targets]) -> None:
    """Write every task's targets into one safetensors file, atomically."""
    flat = {f"{task}/{field}": torch.from_numpy(np.ascontiguousarray(a))
            for task, fields in targets.items() for field, a in fields.items()}
    save_tensors(path, flat)


def load_targets(path: str | Path, task: str) -> Targets:
    """One task's targets from a file written by :func:`save_targets`; a missing task is an error naming the file."""
    data = load_tensors(path)
    prefix = f"{task}/"
    out = {k[len(prefix):]: v.numpy() for k, v in data.items() if k.startswith(prefix)}
    if not out:
        tasks = sorted({k.split("/", 1)[0] for k in data})
        raise FileProblem(f"{path}: no targets for task {task!r}; it holds {tasks} (delete the file to compute it "
                          "again)")
    return out
