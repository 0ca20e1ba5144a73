"""The on-disk feature cache: extract once, train many probes.

Layout (one folder per cache key, see :class:`FeatureKey`)::

    ROOT/<backbone>/<dataset>/<split>/<view>/block<L>_t<t>_seed<S>[_ens<E>][_pool<grid>]/
        shard-00000.safetensors   # "features" (n, T_f, H_f, W_f, C), "index" (n,) int64 clip indices
        shard-00001.safetensors
        complete.json             # written last: number of clips, shard size, feature shape and dtype

Shards are written atomically and independently, so an interrupted extraction resumes at the first missing shard;
``complete.json`` marks a key as finished. Reads are streamed shard by shard, so no more than one shard is in memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from diffprobe.errors import FileProblem, MissingFile
from diffprobe.utils.io import atomic_write_json, load_tensors, read_json, save_tensors

_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


def _slug(text: str) -> str:
    return _SAFE.sub("-", text)


@dataclass(frozen=True)
class FeatureKey:
    """Everything that determines a set of features.

    ``backbone`` is the backbone's identity (name + checkpoint hash), ``dataset`` the dataset's identity
    (name + config hash); ``view`` is the input given to the backbone ("clip", or "frame0" for single images);
    ``pool`` the grid the tokens are averaged to (:class:`~diffprobe.features.pooling.Pool`, "" for none).
    """

    backbone: str
    dataset: str
    split: str
    view: str
    block: int
    t: float
    noise_seed: int
    ensemble: int = 1
    pool: str = ""

    def relpath(self) -> Path:
        leaf = f"block{self.block}_t{self.t:g}_seed{self.noise_seed}" + (
            f"_ens{self.ensemble}" if self.ensemble > 1 else "") + (f"_pool{self.pool}" if self.pool else "")
        return Path(_slug(self.backbone), _slug(self.dataset), self.split, self.view, leaf)


class FeatureCache:
    """A folder of cached features, one sub-folder per :class:`FeatureKey`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: FeatureKey) -> Path:
        return self.root / key.relpath()

    def is_complete(self, key: FeatureKey) -> bool:
        return (self.path(key) / "complete.json").is_file()

    def shard_path(self, key: FeatureKey, shard: int) -> Path:
        return self.path(key) / f"shard-{shard:05d}.safetensors"

    def has_shard(self, key: FeatureKey, shard: int) -> bool:
        return self.shard_path(key, shard).is_file()

    def write_shard(self, key: FeatureKey, shard: int, index: torch.Tensor, features: torch.Tensor) -> None:
        """Write one shard atomically: ``index`` (n,) clip indices, ``features`` (n, T_f, H_f, W_f, C)."""
        if features.ndim != 5 or index.shape != features.shape[:1]:
            raise ValueError(f"shard {shard} of {key}: expected index (n,) and features (n,T,H,W,C), "
                             f"got {tuple(index.shape)} and {tuple(features.shape)}")
        save_tensors(self.shard_path(key, shard), {"index": index.long(), "features": features},
                     metadata={"key": str(asdict(key))})

    def shard_header(self, key: FeatureKey, shard: int) -> tuple[int, tuple[int, ...]]:
        """``(clips, feature shape (T_f, H_f, W_f, C))`` of one written shard, from its header (no data read);
        errors name the file."""
        from safetensors import safe_open

        path = self.shard_path(key, shard)
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_slice("index").get_shape()[0], tuple(f.get_slice("features").get_shape()[1:])
        except Exception as e:  # safetensors raises its own error types; re-raise naming the file
            raise FileProblem(f"{path}: not a readable feature shard: {e} (delete {self.path(key)} to extract it "
                              "again)") from e

    def read_shard(self, key: FeatureKey, shard: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index (n,), features (n, T_f, H_f, W_f, C))`` of one written shard; errors name the file."""
        return read_shard(self.shard_path(key, shard))

    def mark_complete(self, key: FeatureKey, num_clips: int, shard_size: int, shape: tuple[int, ...],
                      dtype: str) -> None:
        atomic_write_json(self.path(key) / "complete.json", {
            "key": asdict(key), "num_clips": num_clips, "shard_size": shard_size,
            "feature_shape": list(shape), "dtype": dtype,
        })

    def open(self, key: FeatureKey) -> FeatureSet:
        """The finished feature set for ``key``; an unfinished one is an error naming the folder."""
        if not self.is_complete(key):
            raise MissingFile(f"{self.path(key)}: no complete features for {key} (run `diffprobe extract`)")
        return FeatureSet(self.path(key))


def read_shard(file: Path, feature_shape: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one feature shard, checking its keys (and feature shape when given); errors name the file."""
    try:
        data = load_tensors(file)
    except FileProblem as e:
        raise FileProblem(f"{e} (delete {file.parent} to extract these features again)") from e
    shape_ok = feature_shape is None or tuple(data["features"].shape[1:]) == feature_shape
    if set(data) != {"index", "features"} or not shape_ok:
        raise FileProblem(f"{file}: not a feature shard of shape (n, {feature_shape}) (delete its folder to extract "
                          f"it again); "
                         f"holds {[(k, tuple(v.shape)) for k, v in data.items()]}")
    return data["index"], data["features"]


class FeatureSet:
    """Read access to one finished cache folder, streamed shard by shard."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta = read_json(self.path / "complete.json")
        self.num_clips: int = meta["num_clips"]
        self.shard_size: int = meta["shard_size"]
        self.feature_shape: tuple[int, ...] = tuple(meta["feature_shape"])  # (T_f, H_f, W_f, C)
        self.num_shards = -(-self.num_clips // self.shard_size)
        self._last: tuple[int, torch.Tensor] | None = None  # the most recently read shard, for sequential take()

    def __len__(self) -> int:
        return self.num_clips

    def load_shard(self, shard: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index (n,), features (n, T_f, H_f, W_f, C))`` of one shard; errors name the file."""
        return read_shard(self.path / f"shard-{shard:05d}.safetensors", self.feature_shape)

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        """Features ``(n, T_f, H_f, W_f, C)`` of clips ``indices``; the last shard read stays in memory, so a
        sequential pass reads every shard once."""
        rows = []
        for i in indices:
            if not 0 <= i < self.num_clips:
                raise IndexError(f"{self.path}: clip {i} out of range 0..{self.num_clips - 1}")
            shard = i // self.shard_size
            if self._last is None or self._last[0] != shard:
                self._last = (shard, self.load_shard(shard)[1])
            rows.append(self._last[1][i - shard * self.shard_size])
        return torch.stack(rows)

    def iter_shards(self, order: list[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield shards in ``order`` (default: on-disk order)."""
        for shard in order if order is not None else range(self.num_shards):
            yield self.load_shard(shard)

    def rows(self) -> Rows:
        """The clips' features as a map-style dataset that reads one clip at a time from its shard (memory-mapped),
        for random access over a whole split without holding it in memory (training data)."""
        return Rows(self)

    def load_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every clip's features, sorted by clip index (only for sets known to fit in memory, e.g. in tests)."""
        parts = list(self.iter_shards())
        index = torch.cat([p[0] for p in parts])
        feats = torch.cat([p[1] for p in parts])
        order = torch.argsort(index)
        return index[order], feats[order]


class Rows(torch.utils.data.Dataset):
    """``rows[i]``: features ``(T_f, H_f, W_f, C)`` of clip ``i``, sliced from its memory-mapped shard."""

    def __init__(self, features: FeatureSet) -> None:
        self.features = features
        self._open: dict[int, Any] = {}  # shard -> safe_open handle (opened lazily, per process)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> torch.Tensor:
        from safetensors import safe_open

        fs = self.features
        if not 0 <= i < len(fs):
            raise IndexError(f"{fs.path}: clip {i} out of range 0..{len(fs) - 1}")
        shard, row = divmod(int(i), fs.shard_size)
        if shard not in self._open:
            path = fs.path / f"shard-{shard:05d}.safetensors"
            try:
                self._open[shard] = safe_open(str(path), framework="pt")
            except Exception as e:  # safetensors raises its own error types; re-raise naming the file
                raise FileProblem(f"{path}: not a readable feature shard: {e} (delete {fs.path} to extract it "
                                  "again)") from e
        return self._open[shard].get_slice("features")[row]
