"""The dataset layer: specs through the registry, Probe World as a dataset, the train / val / test role rule,
cached targets keyed by task version, streamed reading with DataLoader workers, the shared geometry."""

from __future__ import annotations

import numpy as np
import pytest

from diffprobe.config import ConfigError
from diffprobe.data import ClipDataset, DatasetError, open_dataset, resolve_roles
from diffprobe.data.dataset import IndexedClips
from diffprobe.data.registry import DATASETS
from diffprobe.data.transforms import apply_boxes, apply_intrinsics, apply_points, plan_geometry
from diffprobe.data.world.dataset import probeworld_spec, world_identity
from diffprobe.features.cache import FeatureCache
from diffprobe.features.sources import iter_clips
from diffprobe.spec import DatasetSpec, SpecError
from diffprobe.study.store import Cell, ResultsStore
from diffprobe.tasks import TASKS, make_task
from diffprobe.tasks.roles import task_context, task_roles
from diffprobe.tasks.runner import ensure_targets


class Toy(ClipDataset):
    """A dataset with the given splits of ``n`` clips each; clip i of split s has ``label`` i."""

    kind = "toy"

    def __init__(self, splits: tuple[str, ...], n: int = 20) -> None:
        super().__init__()
        self.spec, self.identity, self.splits = f"toy:{','.join(splits)}", "toy-" + "-".join(splits), splits
        self.fields, self.label_spaces = frozenset({"video", "label"}), {"label": tuple(map(str, range(n)))}
        self.frames, self.height, self.width, self.n = 1, 4, 4, n

    def split(self, name: str):
        return IndexedClips(self.identity, name, list(range(self.n)),
                                lambda i: {"video": np.full((1, 4, 4, 3), i, np.uint8), "label": i})


@pytest.fixture
def toy_kind(monkeypatch):
    monkeypatch.setitem(DATASETS, "toy", lambda spec: Toy(tuple(spec.path.split(","))))


def test_specs_and_the_registry() -> None:
    assert DatasetSpec.parse("tapvid:/d/davis.pkl@mode=strided,size=128") == DatasetSpec(
        "tapvid", "/d/davis.pkl", (("mode", "strided"), ("size", 128)))
    with pytest.raises(DatasetError, match=r"unknown kind 'nope'; known kinds are \['davis'"):
        open_dataset("nope:/x")
    with pytest.raises(DatasetError, match="expected KIND:PATH"):
        open_dataset("probeworld")
    with pytest.raises(SpecError, match="is not KEY=VALUE"):
        open_dataset("probeworld:tiny@height=48,width")
    with pytest.raises(ConfigError, match="unknown preset 'tiny@height'"):  # no KEY=VALUE after the @: the path's
        open_dataset("probeworld:tiny@height")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['heigth'\]; known keys are"):
        open_dataset("probeworld:tiny@heigth=48")


def test_probe_world_is_a_dataset_whose_identity_follows_its_config() -> None:
    ds = open_dataset("probeworld:tiny@train_size=6,height=48")
    assert ds.identity == world_identity(ds.config) and ds.splits == ("train", "val", "test")
    assert (ds.frames, ds.height, ds.width) == (9, 48, 32) and ds.max_tracks == 64
    assert open_dataset(probeworld_spec(ds.config)).identity == ds.identity
    assert open_dataset("probeworld:tiny@train_size=7,height=48").identity != ds.identity
    clips = ds.clips("train")
    assert len(clips) == 6 and clips[2]["video"].shape == (9, 48, 32, 3)
    assert list(clips.labels("action")) == [c["action"] for c in clips.batch(range(6))]


@pytest.mark.parametrize(("splits", "expect"), [
    (("train", "val", "test"), {"train": "train", "val": "val", "test": "test"}),
    (("train", "val"), {"train": "train part", "val": "train part", "test": "val"}),  # report on the official val
    (("train", "test"), {"train": "train part", "val": "train part", "test": "test"}),
    (("all",), {"train": "all part", "val": "all part", "test": "all part"}),
])
def test_the_role_rule(toy_kind, splits, expect) -> None:
    spec = "toy:" + ",".join(splits)
    roles = resolve_roles(dict.fromkeys(("train", "val", "test"), spec))
    assert {r: rd.source.split(" of ")[0].removesuffix(f" {r}") for r, rd in roles.items()} == expect
    carved = [r for r, s in expect.items() if "part" in s]
    if carved:  # a seeded division: disjoint, complete, in proportion 0.8 : 0.1 : 0.1
        parts = [set(roles[r].clips.indices) for r in carved]
        assert sum(map(len, parts)) == 20 and len(set.union(*parts)) == 20
        assert len(roles["train"].clips) == (16 if len(carved) == 3 else 18)
        again = resolve_roles(dict.fromkeys(("train", "val", "test"), spec))
        assert all(roles[r].clips.indices == again[r].clips.indices for r in carved)
        assert roles["train"].clips.name != roles[carved[1]].clips.name


def test_roles_from_different_datasets_and_explicit_splits(toy_kind) -> None:
    roles = resolve_roles({"train": "toy:train,val", "val": "toy:train,val#train", "test": "toy:all"})
    assert len(roles["test"].clips) == 20 and roles["test"].source == "all"  # one user of its only split: whole
    assert roles["val"].source == "train" and len(roles["train"].clips) == 20
    with pytest.raises(DatasetError, match="no split 'nope'"):
        resolve_roles({"train": "toy:train#nope"})
    with pytest.raises(DatasetError, match="cannot tell which of its splits"):
        resolve_roles({"train": "toy:a,b"})


def test_clips_of_one_task_must_agree(toy_kind) -> None:
    with pytest.raises(DatasetError, match="cannot serve one task"):
        task_context(resolve_roles({"train": "toy:all", "val": "toy:all",
                                    "test": "probeworld:tiny@test_size=2"}))
    with pytest.raises(DatasetError, match=r"task 'action' needs the Clip field\(s\) \['action'\]"):
        task_roles("action", "toy:all")


def test_targets_are_cached_per_dataset_task_and_version(tmp_path) -> None:
    roles = task_roles("action", "probeworld:tiny@train_size=8,val_size=4,test_size=4")
    task = make_task("action", task_context(roles))
    cache = FeatureCache(tmp_path)
    reads = []
    clips = roles["test"].clips
    real_batch = clips.batch
    clips.batch = lambda ids: reads.append(list(ids)) or real_batch(ids)
    path = ensure_targets(task, clips, cache, progress=False)
    assert path.name == "action-v1.safetensors" and clips.name.split("/")[0] in str(path)
    # one pass over the clips fills every task's own file (Probe World has every field)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        f"{name}-v{cls.version}.safetensors" for name, cls in TASKS.items())
    assert reads == [[0, 1, 2, 3]]
    assert ensure_targets(make_task("depth", task.ctx), clips, cache, progress=False).is_file() and len(reads) == 1
    first2 = ensure_targets(task, roles["test"].clips, cache, limit=2, progress=False)
    assert first2 != path and first2.name == "action-v1-first2.safetensors"
    task.version = 2  # a changed target definition is a different file, never the old one
    assert ensure_targets(task, roles["test"].clips, cache, progress=False).name == "action-v2.safetensors"


def test_workers_stream_the_same_clips() -> None:
    clips = open_dataset("probeworld:tiny@val_size=6").clips("val")
    batches = [[0, 1, 2], [3, 4], [5]]
    seen = [c for b in iter_clips(clips, batches, workers=2) for c in b]
    direct = clips.batch(range(6))
    assert all(np.array_equal(a["video"], b["video"]) and a["label"] == b["label"]
               for a, b in zip(seen, direct, strict=True))


def test_one_geometry_moves_pixels_points_boxes_and_intrinsics() -> None:
    g = plan_geometry(60, 80, 32, "crop")  # 60 x 80 -> 32 x 43 (short side), centre crop 32 x 32
    assert (g.rh, g.rw, g.oy, g.ox) == (32, 43, 0, 5)
    k = np.array([[70.0, 0, 41.0], [0, 65.0, 29.0], [0, 0, 1]])
    point = np.array([0.3, -0.2, 2.0])  # a camera-frame point, projected in the source and in the output frame
    src = (k @ point)[:2] / point[2]
    out_k = apply_intrinsics(k, g)
    assert np.allclose(apply_points(src, g), (out_k @ point)[:2] / point[2], atol=1e-4)
    boxes, visible = apply_boxes(np.array([[[0.0, 10, 20, 40], [78, 0, 80, 5]]]), np.array([[True, True]]), g)
    assert np.allclose(boxes[0, 0], [0, 10 * 32 / 60, 20 * 43 / 80 - 5, 40 * 32 / 60], atol=1e-5)
    assert list(visible[0]) == [True, False]  # the second box falls outside the crop


def test_a_nan_metric_survives_the_store(tmp_path) -> None:
    cell = Cell("s", "b", "b-id", "video", 0, 1, 0.0, 0, 1, "action", "d", "all", 0, "h")
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.add(cell, {"top1": 1.0, "top1_se": float("nan")})  # one test clip: no standard error
        rows = {r["metric"]: r["value"] for r in store.query()}
    assert rows["top1"] == 1.0 and np.isnan(rows["top1_se"])
