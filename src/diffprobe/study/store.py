"""The results store: one SQLite file, one row per measured number, queryable and exportable to CSV.

A *cell* is one trained probe, keyed by everything that changes its numbers: the study, the backbone's display name
and its identity (weights, dtype, conditioning), mode, checkpoint step, block, t, noise seed, ensemble size, task,
the clips of its train / val / test roles and how many of each were used, probe seed and the probe config hash. A
cell's metric rows are written in one transaction, so a cell is either fully in the store or absent, and a cell
already present is never recomputed.

The ``dataset`` column is a hash of the clips (``tasks.runner.data_identity``); the side table ``datasets`` maps each
hash to the dataset spec of each role (``{role: spec}`` as JSON), written with the cell when the caller gives it, so
a report can name the data. Stores written before that table existed read as having no specs.

A store has one writing process: under torchrun the study's rank 0 writes the cells every rank computed (gathered
after each round, see ``study.run._run_probes``), since SQLite's file locking is not to be trusted on the network
filesystems that several machines share.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np

from diffprobe.config import Config
from diffprobe.errors import FileProblem
from diffprobe.utils.io import atomic_write_text

#: prefix of the config hash of a training-free matcher's cell (`diffprobe match`): never a trained probe's
MATCH_TAG = "match-"


def match_config_hash(blocks: Sequence[int], grid: Config) -> str:
    """The ``config_hash`` of a matcher cell: :data:`MATCH_TAG` and a hash of the grid (``MatchGrid``) searched on
    validation and of the blocks concatenated to the cell's own (``blocks[1:]``; the cell's ``block`` column is
    ``blocks[0]``), so the cells of one matcher setting at other blocks, noise levels and seeds share it (the noise
    seeds averaged are the cell's ``ensemble``)."""
    blob = json.dumps({"extra_blocks": list(blocks[1:]), "grid": grid.to_dict()}, sort_keys=True)
    return MATCH_TAG + hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Cell:
    """The coordinates of one probe result."""

    study: str
    backbone: str  #: display name (walt-video, svd, ...)
    identity: str  #: the backbone's identity: weights, dtype, conditioning, t mapping
    mode: str
    checkpoint_step: int
    block: int
    t: float
    noise_seed: int
    ensemble: int
    task: str
    dataset: str  #: which clips filled the task's train / val / test roles (tasks.runner.data_identity)
    clips: str  #: clips used per role, "train/val/test" counts ("all" where a role was used whole)
    probe_seed: int
    config_hash: str  #: hash of the probe config (its seed aside: that is probe_seed)


CELL_COLUMNS = [f.name for f in fields(Cell)]


def clips_key(limits: Mapping[str, int] | None) -> str:
    """The ``clips`` column: the first-N limits of the train / val / test roles, "all" without limits."""
    return "all" if limits is None else "/".join(str(limits[r]) for r in ("train", "val", "test"))
COLUMNS = CELL_COLUMNS + ["metric", "value", "time"]
_SQL_TYPES = {int: "INTEGER", float: "REAL", str: "TEXT"}

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results ("
    + ", ".join(f"{name} {_SQL_TYPES[tp]} NOT NULL" for name, tp in get_type_hints(Cell).items())
    + ", metric TEXT NOT NULL, value REAL, time TEXT NOT NULL, "  # value NULL: NaN (SQLite has no NaN)
    + f"UNIQUE ({', '.join(CELL_COLUMNS)}, metric))"
)


#: the per-clip primary metric of each cell (JSON list, null for a clip with nothing to score), for paired tests
_SCORES_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS clip_scores ("
    + ", ".join(f"{name} {_SQL_TYPES[tp]} NOT NULL" for name, tp in get_type_hints(Cell).items())
    + f", scores TEXT NOT NULL, UNIQUE ({', '.join(CELL_COLUMNS)}))"
)


#: the dataset spec of each role behind a ``dataset`` hash (JSON ``{role: spec}``)
_DATASETS_SCHEMA = "CREATE TABLE IF NOT EXISTS datasets (dataset TEXT PRIMARY KEY, roles TEXT NOT NULL)"


class ResultsStore:
    """Append-only results in SQLite (standard library); safe against a kill between cells."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path)
            self._db.execute(_SCHEMA)
            self._db.execute(_SCORES_SCHEMA)
            self._db.commit()
            have = [r[1] for r in self._db.execute("PRAGMA table_info(results)")]
        except sqlite3.DatabaseError as e:
            raise FileProblem(f"{self.path}: not a diffprobe results store ({e}); restore it, or move it away to start "
                              "a new store") from e
        if have != COLUMNS:
            self._db.close()
            raise FileProblem(f"{self.path}: a results store of another diffprobe version (columns {have}, expected "
                             f"{COLUMNS}); move it away to start a new one, or use the diffprobe that wrote it")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, cell: Cell) -> bool:
        """Whether this cell's results are already stored."""
        where = " AND ".join(f"{c} = ?" for c in CELL_COLUMNS)
        row = self._db.execute(f"SELECT 1 FROM results WHERE {where} LIMIT 1", astuple_cell(cell)).fetchone()
        return row is not None

    def add(self, cell: Cell, metrics: Mapping[str, float], per_clip: np.ndarray | None = None,
            data_specs: Mapping[str, str] | None = None) -> None:
        """Store every metric of ``cell``, its per-clip primary metric and the dataset spec of each role
        (``{role: spec}``, recorded under ``cell.dataset``) in one transaction (all or nothing)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        rows = [(*astuple_cell(cell), name, float(value), stamp) for name, value in metrics.items()]
        with self._db:  # one transaction
            self._db.executemany(
                f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                rows)
            if per_clip is not None:
                scores = json.dumps([None if not np.isfinite(v) else float(v) for v in np.asarray(per_clip).ravel()])
                self._db.execute(f"INSERT OR REPLACE INTO clip_scores ({', '.join(CELL_COLUMNS)}, scores) VALUES "
                                 f"({', '.join('?' * (len(CELL_COLUMNS) + 1))})", (*astuple_cell(cell), scores))
            if data_specs is not None:
                self._put_specs(cell.dataset, data_specs)

    def add_data_specs(self, dataset: str, data_specs: Mapping[str, str]) -> None:
        """Record the spec of each role behind the ``dataset`` hash on its own (e.g. for cells stored before specs
        were recorded)."""
        with self._db:
            self._put_specs(dataset, data_specs)

    def _put_specs(self, dataset: str, data_specs: Mapping[str, str]) -> None:
        self._db.execute(_DATASETS_SCHEMA)  # made here, so an older store still opens read-only
        self._db.execute("INSERT OR REPLACE INTO datasets (dataset, roles) VALUES (?, ?)",
                         (dataset, json.dumps(dict(data_specs), sort_keys=True)))

    def data_specs(self) -> dict[str, dict[str, str]]:
        """``{dataset hash: {role: spec}}`` of every dataset whose specs were recorded (none in an older store)."""
        found = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'datasets'").fetchone()
        if found is None:
            return {}
        return {ds: json.loads(roles) for ds, roles in self._db.execute("SELECT dataset, roles FROM datasets")}

    def clip_scores(self, **filters: Any) -> list[tuple[dict[str, Any], np.ndarray]]:
        """``(cell columns, per-clip primary metric (N,))`` of the cells matching ``column=value`` filters."""
        unknown = sorted(set(filters) - set(CELL_COLUMNS))
        if unknown:
            raise ValueError(f"unknown cell column(s) {unknown}; columns are {CELL_COLUMNS}")
        where = " AND ".join(f"{c} = ?" for c in filters) or "1"
        out = []
        for *cell, scores in self._db.execute(f"SELECT {', '.join(CELL_COLUMNS)}, scores FROM clip_scores WHERE "
                                              f"{where}", tuple(filters.values())):
            values = np.array([np.nan if v is None else v for v in json.loads(scores)], np.float64)
            out.append((dict(zip(CELL_COLUMNS, cell, strict=True)), values))
        return out

    def query(self, **filters: Any) -> list[dict[str, Any]]:
        """Rows matching ``column=value`` filters (a list/tuple value means "any of")."""
        unknown = sorted(set(filters) - set(COLUMNS))
        if unknown:
            raise ValueError(f"unknown result column(s) {unknown}; columns are {COLUMNS}")
        clauses, args = [], []
        for col, val in filters.items():
            if isinstance(val, (list, tuple)):
                clauses.append(f"{col} IN ({', '.join('?' * len(val))})")
                args.extend(val)
            else:
                clauses.append(f"{col} = ?")
                args.append(val)
        sql = f"SELECT {', '.join(COLUMNS)} FROM results"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY " + ", ".join(CELL_COLUMNS + ["metric"])
        rows = [dict(zip(COLUMNS, r, strict=True)) for r in self._db.execute(sql, args)]
        for row in rows:
            row["value"] = float("nan") if row["value"] is None else row["value"]  # stored NaN comes back as NaN
        return rows

    def export_csv(self, path: str | Path, rows: Iterable[Mapping[str, Any]] | None = None) -> None:
        """Write all rows (or the given ones) as CSV, atomically."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(self.query() if rows is None else rows)
        atomic_write_text(path, buf.getvalue())


def astuple_cell(cell: Cell) -> tuple[Any, ...]:
    d = asdict(cell)
    return tuple(d[c] for c in CELL_COLUMNS)
