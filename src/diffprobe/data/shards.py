"""Clip shards on disk: safetensors files of Clip-contract dicts, with a reader that returns the same dicts.

Layout of a shard folder::

    DIR/shard-00000.safetensors   clips 0 .. S-1
    DIR/shard-00001.safetensors   clips S .. 2S-1 ...

Every tensor is keyed ``"{index:06d}/{field}"`` (``000012/video``); ``label`` and ``action`` are 0-d int64 tensors,
``visible`` / ``box_visible`` are bool. The safetensors metadata of each file holds ``format`` (``diffprobe-clips/1``),
``source`` (JSON: the generator's name, config and split), ``indices`` (JSON list of the clip indices inside) and
``fields``. Read it with :class:`ShardDataset` (a ``torch.utils.data.Dataset``) or :func:`read_shard`::

    from diffprobe.data.shards import ShardDataset
    clips = ShardDataset("DIR")
    clip = clips[0]   # {"video": uint8 (T, H, W, 3), ..., "label": int, "action": int}

Shards are written atomically; a run killed half-way keeps its complete shards and writes only the missing ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from diffprobe.errors import DiffprobeError
from diffprobe.utils.io import save_tensors

FORMAT = "diffprobe-clips/1"
SHARD_PATTERN = re.compile(r"^shard-(\d{5})\.safetensors$")
SCALAR_FIELDS = ("label", "action")


class ShardError(DiffprobeError, ValueError):
    """A shard file is unreadable, foreign, or does not match the run that wants to use it."""


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


def _to_tensors(index: int, clip: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for field, value in clip.items():
        if field in SCALAR_FIELDS:
            out[f"{index:06d}/{field}"] = torch.tensor(int(value), dtype=torch.int64)
        elif isinstance(value, np.ndarray):
            out[f"{index:06d}/{field}"] = torch.from_numpy(np.ascontiguousarray(value))
        else:
            raise ShardError(f"clip {index}: field {field!r} of type {type(value).__name__} cannot be stored")
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of a shard (``format``, ``source``, ``indices``, ``fields``); errors name the file."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types; re-raise naming the file
        raise ShardError(f"{path}: not a readable safetensors file: {e}") from e
    if meta.get("format") != FORMAT:
        raise ShardError(f"{path}: not a diffprobe clip shard (format {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        return {"format": meta["format"], "source": json.loads(meta["source"]),
                "indices": [int(i) for i in json.loads(meta["indices"])], "fields": json.loads(meta["fields"])}
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise ShardError(f"{path}: corrupt shard metadata: {e}") from e


def read_shard(path: str | Path) -> dict[int, dict[str, Any]]:
    """All clips of one shard, index -> Clip dict (numpy arrays; ``label`` / ``action`` as int)."""
    from safetensors import safe_open

    path = Path(path)
    meta = read_metadata(path)
    clips: dict[int, dict[str, Any]] = {}
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for index in meta["indices"]:
            clip = {}
            for field in meta["fields"]:
                key = f"{index:06d}/{field}"
                if key not in keys:
                    raise ShardError(f"{path}: missing tensor {key!r}")
                value = f.get_tensor(key).numpy()
                clip[field] = int(value) if field in SCALAR_FIELDS else value
            clips[index] = clip
    return clips


def write_shards(out_dir: str | Path, num: int, make_clips: Callable[[Sequence[int]], list[dict[str, Any]]],
                 source: dict[str, Any], shard_size: int = 256, progress: bool = True) -> list[Path]:
    """Write clips ``0 .. num-1`` made by ``make_clips(indices)`` into shards of ``shard_size`` clips.

    ``source`` (JSON-able, e.g. the world config and split) is stored in every shard; existing shards with the same
    source and indices are kept (resume), a shard made from a different source is an error naming it.
    """
    if num < 0 or shard_size < 1:
        raise ValueError(f"write_shards: need num >= 0 and shard_size >= 1, got {num}, {shard_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source_json = json.dumps(source, sort_keys=True)
    paths = []
    starts = range(0, num, shard_size)
    for number, start in enumerate(tqdm(starts, desc=f"shards -> {out_dir}", unit="shard", disable=not progress)):
        indices = list(range(start, min(start + shard_size, num)))
        path = out_dir / shard_name(number)
        paths.append(path)
        if path.exists():
            meta = read_metadata(path)
            if json.dumps(meta["source"], sort_keys=True) != source_json or meta["indices"] != indices:
                raise ShardError(f"{path}: exists but holds other clips (source or indices differ); remove it or "
                                 "choose another output folder")
            continue
        clips = make_clips(indices)
        tensors: dict[str, torch.Tensor] = {}
        for index, clip in zip(indices, clips, strict=True):
            tensors.update(_to_tensors(index, clip))
        metadata = {"format": FORMAT, "source": source_json, "indices": json.dumps(indices),
                    "fields": json.dumps(list(clips[0]))}
        save_tensors(path, tensors, metadata)
    return paths


class ShardDataset(Dataset):
    """The clips of a shard folder in index order, as the same dicts :class:`~diffprobe.data.ProbeWorld` returns."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        files = sorted(p for p in self.folder.iterdir() if SHARD_PATTERN.match(p.name)) if self.folder.is_dir() else []
        if not files:
            raise ShardError(f"{self.folder}: no shard-NNNNN.safetensors files")
        self._where: dict[int, Path] = {}
        self.source: dict[str, Any] | None = None
        for path in files:
            meta = read_metadata(path)
            if self.source is None:
                self.source = meta["source"]
            elif meta["source"] != self.source:
                raise ShardError(f"{path}: comes from another source than {files[0].name}")
            for index in meta["indices"]:
                self._where[index] = path
        self._indices = sorted(self._where)
        if self._indices != list(range(len(self._indices))):
            missing = sorted(set(range(self._indices[-1] + 1)) - set(self._indices))
            raise ShardError(f"{self.folder}: clips missing from the shards: {missing[:10]}")
        self._cache: tuple[Path, dict[int, dict[str, Any]]] | None = None

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips in {self.folder}")
        path = self._where[index]
        if self._cache is None or self._cache[0] != path:  # one shard held in memory: sequential reads are cheap
            self._cache = (path, read_shard(path))
        return self._cache[1][index]
