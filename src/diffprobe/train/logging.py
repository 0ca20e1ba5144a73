"""Training metrics: ``metrics.csv`` (one row per step and metric) and TensorBoard events, rank 0 only.

``metrics.csv`` has the columns ``step,name,value,wall_time`` (``wall_time`` in Unix seconds) and is appended
to as training runs; values are written with ``repr`` so they read back bit-exact. A run resumed from step
``s`` first drops every row with a step after ``s`` (rewriting the file atomically), so the curve holds each
step once. A torn last line left by a kill is dropped too.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffprobe.errors import FileProblem
from diffprobe.utils.io import atomic_write_text

METRICS_FILE = "metrics.csv"
TB_SUBDIR = "tb"
HEADER = ("step", "name", "value", "wall_time")


def read_metrics(path: str | Path) -> list[tuple[int, str, float, float]]:
    """Rows of a ``metrics.csv`` as ``(step, name, value, wall_time)``; a torn final line is skipped.

    Any other malformed line raises ``ValueError`` naming the file and line.
    """
    path = Path(path)
    text = path.read_text()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        lines.pop()  # no trailing newline: the last row was being written when the run was killed
    if not lines:
        return []
    header = next(csv.reader([lines[0]]))
    if tuple(header) != HEADER:
        raise FileProblem(f"{path}: line 1: expected header {','.join(HEADER)}, got {lines[0]!r}")
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = next(csv.reader([line]))
        try:
            step, name, value, wall = fields
            rows.append((int(step), name, float(value), float(wall)))
        except ValueError as e:
            raise FileProblem(f"{path}: line {lineno}: malformed metrics row {line!r}") from e
    return rows


def _format_rows(rows: list[tuple[int, str, float, float]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows((step, name, repr(value), repr(wall)) for step, name, value, wall in rows)
    return buf.getvalue()


class MetricsLogger:
    """Appends scalar metrics to ``run_dir/metrics.csv`` and TensorBoard; does nothing when ``enabled`` is False.

    ``start_step`` is the step training (re)starts from: rows logged after it by an earlier, killed run are
    dropped, and TensorBoard events after it are purged.
    """

    def __init__(self, run_dir: str | Path, *, start_step: int = 0, enabled: bool = True,
                 tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._file: Any = None
        self._writer: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r[0] <= start_step] if self.path.exists() else []
        atomic_write_text(self.path, ",".join(HEADER) + "\n" + _format_rows(kept))
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 - kept open for the whole run, closed in close()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(Path(run_dir) / TB_SUBDIR), purge_step=start_step + 1)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write one row per metric for ``step`` (flushed at once, so a kill loses no finished row)."""
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError(f"{self.path}: logger is closed")
        wall = time.time()
        rows = []
        for name, value in metrics.items():
            value = float(value)
            if "," in name or "\n" in name:
                raise ValueError(f"metric name {name!r} must not contain commas or newlines")
            rows.append((step, name, value, wall))
            if self._writer is not None and math.isfinite(value):
                self._writer.add_scalar(name, value, global_step=step, walltime=wall)
        self._file.write(_format_rows(rows))
        self._file.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Close the CSV file and the TensorBoard writer (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
