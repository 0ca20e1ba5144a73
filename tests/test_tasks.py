"""Tasks read the right targets from Probe World clips, score perfect predictions perfectly, and their probes learn
from features that carry the answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffprobe.data import CATEGORIES, MOTIONS, ProbeWorld, ProbeWorldConfig
from diffprobe.features.cache import FeatureCache, FeatureKey
from diffprobe.tasks import TASKS, Task, TaskContext, make_task
from diffprobe.tasks.probe_config import ProbeConfig
from diffprobe.tasks.probing import train_probe
from diffprobe.tasks.targets import compute_targets, load_targets, save_targets

CFG = ProbeWorldConfig.preset("tiny").replace(num_tracks=16, train_size=48, val_size=16, test_size=16)
CTX = TaskContext(frames=CFG.frames, height=CFG.height, width=CFG.width,
                  label_spaces={"label": tuple(CATEGORIES), "action": tuple(MOTIONS)}, max_objects=CFG.max_objects)


@pytest.fixture(scope="module")
def clips() -> list[dict]:
    return ProbeWorld(CFG, "val").batch(list(range(8)))


def _perfect(task_name: str, targets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The predictions a perfect probe would make, in each task's prediction format."""
    if task_name in ("image_cls", "action"):
        n = len(CTX.label_spaces["label" if task_name == "image_cls" else "action"])
        return {"logits": np.eye(n, dtype=np.float32)[targets["label"]] * 10}
    if task_name == "depth":
        return {"depth": targets["depth"]}
    if task_name == "camera_pose":
        return {"rotation": targets["rotation"], "translation": targets["translation"]}
    if task_name == "point_tracking":
        return {"tracks": targets["tracks"], "visible": targets["visible"]}
    return {"boxes": targets["boxes"]}


def test_targets_and_perfect_scores(clips, tmp_path) -> None:
    tasks = [make_task(n, CTX) for n in TASKS]
    targets = compute_targets(tasks, clips, len(clips), progress=False)
    save_targets(tmp_path / "t.safetensors", targets)
    for task in tasks:
        tgt = load_targets(tmp_path / "t.safetensors", task.name)
        assert all(np.array_equal(tgt[k], targets[task.name][k]) for k in tgt)
        m = task.metrics(_perfect(task.name, tgt), tgt)
        # (metric, ideal value, tolerance): rotations are float32, whose arccos near 1 resolves ~0.01 degree
        ideal = {"image_cls": ("top1", 1.0, 0), "action": ("top1", 1.0, 0), "depth": ("abs_rel", 0.0, 1e-6),
                 "camera_pose": ("rotation_error_deg", 0.0, 0.05), "point_tracking": ("average_jaccard", 1.0, 0),
                 "box_tracking": ("mean_iou", 1.0, 1e-6)}[task.name]
        assert m[ideal[0]] == pytest.approx(ideal[1], abs=ideal[2]), (task.name, m)
    pt = targets["point_tracking"]
    assert pt["query"].shape == (8, 16, 3) and pt["tracks"].shape == (8, 16, CFG.frames, 2)
    # each valid query sits on its track at its first visible frame
    for i in range(8):
        for n in np.flatnonzero(pt["valid"][i]):
            t = int(pt["query"][i, n, 0])
            assert pt["visible"][i, n, t] and not pt["visible"][i, n, :t].any()
            assert np.allclose(pt["query"][i, n, 1:], pt["tracks"][i, n, t, ::-1])
    bt = targets["box_tracking"]
    assert bt["boxes"].shape == (8, CFG.max_objects, CFG.frames, 4)
    assert np.array_equal(bt["valid"][:, 0], [c["box_visible"][0, 0] for c in clips])  # main object first
    assert targets["action"]["label"].tolist() == [c["action"] for c in clips]
    pose = targets["camera_pose"]
    assert np.allclose(pose["rotation"][:, 0], np.eye(3), atol=1e-5) and np.allclose(pose["translation"][:, 0], 0,
                                                                                      atol=1e-5)


def test_wrong_predictions_score_worse(clips) -> None:
    task = make_task("box_tracking", CTX)
    tgt = compute_targets([task], clips, len(clips), progress=False)["box_tracking"]
    shifted = {"boxes": tgt["boxes"] + np.array([4, 0, 4, 0], np.float32)}
    assert task.metrics(shifted, tgt)["mean_iou"] < 0.9


def test_per_clip_scores_average_to_the_split_metric(clips) -> None:
    """Each clip scored alone: their mean is the split's primary metric (per-clip means for every task but box
    tracking, which pools (box, frame) pairs), a clip with nothing to score is NaN, and the reported standard error
    is the spread of those scores over sqrt(N), or for an accuracy (a proportion) the Agresti-Coull one."""
    tasks = [make_task(n, CTX) for n in TASKS]
    targets = compute_targets(tasks, clips, len(clips), progress=False)
    for task in tasks:
        tgt = targets[task.name]
        prior = task.prior(tgt, tgt)
        per = task.per_clip(prior, tgt)
        assert per.shape == (len(clips),)
        m, _ = task.evaluate(prior, tgt)
        if task.name != "box_tracking":
            assert np.nanmean(per) == pytest.approx(m[task.primary_metric], rel=1e-9), task.name
        finite = per[np.isfinite(per)]
        if task.primary_metric != "top1":
            assert m[f"{task.primary_metric}_se"] == pytest.approx(np.std(finite, ddof=1) / np.sqrt(finite.size))
    # classification: a clip's score is whether it is right, so the s.e. is a proportion's: with k of N right,
    # p~ = (k + 2) / (N + 4) and se = sqrt(p~ (1 - p~) / (N + 4)) (Agresti-Coull; never 0)
    task = make_task("action", CTX)
    tgt = targets["action"]
    logits = np.zeros((len(clips), len(MOTIONS)), np.float32)
    logits[np.arange(len(clips)), tgt["label"]] = 1.0
    logits[:3] = np.roll(logits[:3], 1, axis=1)  # three clips wrong
    assert task.per_clip({"logits": logits}, tgt).tolist() == [0.0] * 3 + [1.0] * (len(clips) - 3)
    p = (len(clips) - 3 + 2) / (len(clips) + 4)
    assert task.evaluate({"logits": logits}, tgt)[0]["top1_se"] == pytest.approx(
        np.sqrt(p * (1 - p) / (len(clips) + 4)))
    logits[:3] = np.roll(logits[:3], -1, axis=1)  # every clip right: the s.e. is not 0
    p = (len(clips) + 2) / (len(clips) + 4)
    m, _ = task.evaluate({"logits": logits}, tgt)
    assert m["top1"] == 1.0 and m["top1_se"] > 0
    assert m["top1_se"] == pytest.approx(np.sqrt(p * (1 - p) / (len(clips) + 4)))
    # point tracking: a clip without a valid query has no score
    task = make_task("point_tracking", CTX)
    tgt = {k: v.copy() for k, v in targets["point_tracking"].items()}
    tgt["valid"][0] = False
    per = task.per_clip(task.prior(tgt, tgt), tgt)
    assert np.isnan(per[0]) and np.isfinite(per[1:]).all()


def test_probe_learns_from_features_that_carry_the_answer(tmp_path) -> None:
    """Features = a fixed random embedding of the action label: the probe must reach high accuracy; features of
    pure noise must stay near chance. Both go through the cache and the validation-selected probe."""
    world = {s: ProbeWorld(CFG.replace(train_size=96, val_size=32, test_size=32), s) for s in ("train", "val", "test")}
    task = make_task("action", CTX)
    cache = FeatureCache(tmp_path)
    emb = torch.randn(len(MOTIONS), 8, generator=torch.Generator().manual_seed(0))
    splits = {}
    for split, w in world.items():
        labels = torch.tensor([w.scene(i).motion[0] for i in range(len(w))])
        tgt = {"label": labels.numpy()}
        for name, feats in (("signal", emb[labels]), ("noise", torch.randn(len(w), 8))):
            grid = feats[:, None, None, None, :].expand(-1, 2, 2, 2, -1).contiguous()  # (N, 2, 2, 2, 8)
            key = FeatureKey(name, "toy", split, "clip", 0, 0.0, 0)
            cache.write_shard(key, 0, torch.arange(len(w)), grid)
            cache.mark_complete(key, len(w), len(w), (2, 2, 2, 8), "float32")
            splits[name, split] = (cache.open(key), tgt)
    cfg = ProbeConfig.preset("tiny").override(["steps=100", "readout.width=32", "readout.heads=2",
                                               "readout.learning_rates=[0.001,0.003]"])
    good = train_probe(task, cfg, *(splits["signal", s] for s in ("train", "val", "test")), torch.device("cpu"),
                       progress=False)
    bad = train_probe(task, cfg, *(splits["noise", s] for s in ("train", "val", "test")), torch.device("cpu"),
                      progress=False)
    assert good.test["top1"] >= 0.9 and bad.test["top1"] <= 0.4
    assert good.chosen_lr in (0.001, 0.003) and len(good.val) == 2


def test_point_tracking_trains_on_a_random_subset_of_valid_tracks(clips) -> None:
    task = make_task("point_tracking", CTX)
    tgt = compute_targets([task], clips, len(clips), progress=False)["point_tracking"]
    batch = {k: torch.from_numpy(v) for k, v in tgt.items()}
    gen = torch.Generator().manual_seed(0)
    sub = task.training_batch(batch, 4, gen)
    assert sub["query"].shape == (len(clips), 4, 3) and sub["tracks"].shape == (len(clips), 4, CFG.frames, 2)
    assert sub["valid"].all()  # every clip has >= 4 valid tracks, and valid ones are drawn first
    for i in range(len(clips)):  # every field of a picked track comes from the same track
        for q, tr in zip(sub["query"][i], sub["tracks"][i], strict=True):
            j = int((batch["query"][i] == q).all(-1).logical_and((batch["tracks"][i] == tr).all((-1, -2))).nonzero()[0])
            assert batch["valid"][i, j]
    assert task.training_batch(batch, 0, gen) is batch  # 0: all tracks
    assert make_task("depth", CTX).training_batch(batch, 4, gen) is batch  # other tasks use every target


def test_validation_selects_the_best_state_along_training(tmp_path) -> None:
    """With evaluation every few steps, the reported probe is the best validation state, not the last one."""
    world = {s: ProbeWorld(CFG.replace(train_size=64, val_size=32, test_size=32), s) for s in ("train", "val", "test")}
    task = make_task("action", CTX)
    cache = FeatureCache(tmp_path)
    splits = []
    for split, w in world.items():
        labels = torch.tensor([w.scene(i).motion[0] for i in range(len(w))])
        grid = torch.randn(len(w), 2, 2, 2, 8, generator=torch.Generator().manual_seed(len(split)))  # noise
        key = FeatureKey("noise", "toy", split, "clip", 0, 0.0, 0)
        cache.write_shard(key, 0, torch.arange(len(w)), grid)
        cache.mark_complete(key, len(w), len(w), (2, 2, 2, 8), "float32")
        splits.append((cache.open(key), {"label": labels.numpy()}))
    cfg = ProbeConfig.preset("tiny").override(["steps=60", "eval_every=10", "readout.width=32", "readout.heads=2"])
    res = train_probe(task, cfg, *splits, torch.device("cpu"), progress=False)
    assert res.chosen_step % 10 == 0 and 10 <= res.chosen_step <= 60
    final = train_probe(task, cfg.replace(eval_every=0), *splits, torch.device("cpu"), progress=False)
    assert final.chosen_step == 60
    assert res.val[0]["top1"] >= final.val[0]["top1"]  # the selected state is at least as good on validation


def test_priors_are_the_no_information_baselines(clips) -> None:
    """Each task's prior uses only training targets and the query: hand-checkable predictions and scores."""
    tgt = compute_targets([make_task(n, CTX) for n in TASKS], clips, len(clips), progress=False)
    cls = make_task("image_cls", CTX)
    train, test = {"label": np.array([3, 3, 1])}, {"label": np.array([3, 1, 1, 5])}
    assert cls.metrics(cls.prior(train, test), test)["top1"] == 0.25  # always the majority class 3
    depth = make_task("depth", CTX)
    d = tgt["depth"]["depth"]
    pred = depth.prior({"depth": d[:4]}, {"depth": d[4:]})["depth"]
    assert pred.shape == d[4:].shape and np.allclose(pred[0], np.exp(np.log(d[:4]).mean(0)), rtol=1e-5)
    pose = make_task("camera_pose", CTX)
    p = tgt["camera_pose"]
    pred = pose.prior({k: v[:4] for k, v in p.items()}, {k: v[4:] for k, v in p.items()})
    assert np.array_equal(pred["rotation"][2, 5], np.eye(3)) and np.allclose(pred["translation"][1],
                                                                              p["translation"][:4].mean(0))
    pts = make_task("point_tracking", CTX)
    t = tgt["point_tracking"]
    pred = pts.prior(t, t)
    i, n = np.argwhere(t["valid"])[0]
    frame = int(t["query"][i, n, 0])
    assert np.allclose(pred["tracks"][i, n, frame], t["tracks"][i, n, frame], atol=1e-4)  # the query point itself
    assert pred["visible"].all()
    boxes = make_task("box_tracking", CTX)
    b = tgt["box_tracking"]
    pred = boxes.prior(b, b)["boxes"]
    assert np.array_equal(pred[:, :, 0], b["boxes"][:, :, 0]) and np.array_equal(pred[:, :, -1], b["boxes"][:, :, 0])
    assert boxes.metrics({"boxes": pred}, b)["mean_iou"] < 1.0  # objects move: copying the box is not perfect


def test_an_untrained_probe_predicts_its_task_prior(clips) -> None:
    """Zero-initialised head + the task's baseline from training targets = exactly ``Task.prior`` on any features."""
    from diffprobe.readouts import ReadoutConfig

    tgt = compute_targets([make_task(n, CTX) for n in TASKS], clips, len(clips), progress=False)
    feats = torch.randn(4, 2, 2, 2, 8, generator=torch.Generator().manual_seed(0))  # (B, T_f, H_f, W_f, C)
    cfg = ReadoutConfig.preset("tiny")
    for name in TASKS:
        task = make_task(name, CTX)
        train = {k: v[:4] for k, v in tgt[name].items()}
        test = {k: v[4:] for k, v in tgt[name].items()}
        baseline = task.baseline(train)
        probe = task.make_probe(cfg, 8, (2, 2, 2)).set_baseline(
            None if baseline is None else torch.from_numpy(baseline))
        batch = {k: torch.from_numpy(v) for k, v in test.items()}
        with torch.no_grad():
            preds = task.predict(probe(feats, *task.query_inputs(batch)), batch)
        prior = task.prior(train, test)
        assert preds.keys() == prior.keys(), name
        for key in prior:
            assert preds[key].shape == prior[key].shape, (name, key)
            assert np.allclose(preds[key], prior[key], rtol=1e-5, atol=1e-5), (name, key)
        if name == "depth":  # the baseline is not trivial: it decodes to the per-pixel geometric mean
            assert np.allclose(preds["depth"][0], np.exp(np.log(train["depth"]).mean(0)), rtol=1e-5)
    with pytest.raises(ValueError, match="does not fit a head"):
        make_task("action", CTX).make_probe(cfg, 8, (2, 2, 2)).set_baseline(torch.zeros(1, 3))


def test_task_metadata_is_declared_once_on_the_task(monkeypatch) -> None:
    """A task declares its table metrics, primary first, and nothing else: its primary metric (for the task, its
    instances and the report) is read from them, so changing them changes it everywhere, and a task class that
    declares a primary metric of its own is refused."""
    from diffprobe.metrics import HIGHER_IS_BETTER
    from diffprobe.study.report_tasks import TASK_METRICS, primary_metric

    for name, cls in TASKS.items():
        assert not [k for k in cls.__mro__ if k is not Task and "primary_metric" in vars(k)], name
        assert TASK_METRICS[name] == cls.table_metrics and all(m in HIGHER_IS_BETTER for m in cls.table_metrics)
        assert primary_metric(name) == cls.primary_metric == make_task(name, CTX).primary_metric == cls.table_metrics[0]
    depth = TASKS["depth"]
    monkeypatch.setattr(depth, "table_metrics", ("delta1", "abs_rel"))  # the one declaration changed: all follow
    assert depth.primary_metric == primary_metric("depth") == make_task("depth", CTX).primary_metric == "delta1"
    assert make_task("depth", CTX).higher_is_better is True
    monkeypatch.undo()
    assert make_task("depth", CTX).higher_is_better is False and make_task("action", CTX).higher_is_better is True
    with pytest.raises(TypeError, match="declares primary_metric"):
        type("Twice", (depth,), {"table_metrics": ("abs_rel",), "primary_metric": "abs_rel"})
    with pytest.raises(KeyError, match="no known primary metric"):
        primary_metric("no_such_task")
