"""The vectorised probe bank: every probe trains as it would alone (torch's own AdamW and gradient clipping as the
reference), per-probe clipping and decay are exact, every task trains in a bank end to end, and a probe's result
does not depend on which other probes share its bank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffprobe.config import ConfigError
from diffprobe.data import CATEGORIES, MOTIONS, ProbeWorld, ProbeWorldConfig
from diffprobe.features.cache import FeatureCache, FeatureKey
from diffprobe.readouts import Member, ProbeBank, ReadoutConfig
from diffprobe.study.config import StudyConfig
from diffprobe.study.plan import bank_groups, plan_jobs
from diffprobe.tasks import TASKS, TaskContext, make_task
from diffprobe.tasks.probe_config import ProbeConfig, bank_size
from diffprobe.tasks.probing import ProbeFeatures, _train_batches, train_probes
from diffprobe.tasks.targets import compute_targets

WORLD = ProbeWorldConfig.preset("tiny").replace(num_tracks=8, train_size=20, val_size=8, test_size=8)
CTX = TaskContext(frames=WORLD.frames, height=WORLD.height, width=WORLD.width,
                  label_spaces={"label": tuple(CATEGORIES), "action": tuple(MOTIONS)}, max_objects=WORLD.max_objects)
READOUT = ReadoutConfig.preset("tiny").replace(width=16, heads=2, fourier_bands=2)
SHAPE = (2, 4, 4, 8)  # (T_f, H_f, W_f, C)


@pytest.fixture(scope="module")
def targets() -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """role -> task -> targets of Probe World clips."""
    tasks = [make_task(n, CTX) for n in TASKS]
    out = {}
    for role in ("train", "val", "test"):
        world = ProbeWorld(WORLD, role)
        out[role] = compute_targets(tasks, world.batch(list(range(len(world)))), len(world), progress=False)
    return out


@pytest.fixture(scope="module")
def features(tmp_path_factory, targets) -> dict[tuple[str, str], object]:
    """(backbone, role) -> a cached FeatureSet of random features, the train role in two shards."""
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    out = {}
    for b, name in enumerate(("one", "two")):
        for role in ("train", "val", "test"):
            n = len(targets[role]["action"]["label"])
            feats = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(10 * b + len(role)))
            key = FeatureKey(name, "toy", role, "clip", 0, 0.0, 0)
            cut = n // 2 if role == "train" else n
            cache.write_shard(key, 0, torch.arange(cut), feats[:cut])
            if cut < n:
                cache.write_shard(key, 1, torch.arange(cut, n), feats[cut:])
            cache.mark_complete(key, n, cut, SHAPE, "float32")
            out[name, role] = cache.open(key)
    return out


def _batch(targets: dict[str, np.ndarray], rows: list[int]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v[rows]) for k, v in targets.items()}


@pytest.mark.parametrize("task_name", list(TASKS))
def test_each_probe_of_a_bank_trains_as_it_would_alone(task_name, targets) -> None:
    """Three probes (two seeds, their own rates, decays, clips and batches) against each trained alone with
    torch.optim.AdamW and clip_grad_norm_: the same losses at every step, the same outputs after."""
    task = make_task(task_name, CTX)
    tgt = targets["train"][task_name]
    members = [Member(0, 1e-3, 0.05, 1.0), Member(1, 3e-3, 0.0, 0.0), Member(0, 2e-3, 0.5, 0.05)]
    rows = [[0, 1, 2, 3], [4, 5, 6, 7], [2, 9, 11, 3]]  # each probe's own clips
    gen = torch.Generator().manual_seed(0)
    steps = [(torch.randn(3, 4, *SHAPE, generator=gen), scale) for scale in (0.2, 1.0, 0.6)]  # batches, lr scales
    bank = ProbeBank(lambda: task.make_probe(READOUT, SHAPE[-1], SHAPE[:3]), members, task.query_inputs, task.loss)
    batch = {k: torch.stack([_batch(tgt, r)[k] for r in rows]) for k in tgt}  # (P, B, ...)
    bank_losses = []
    for feats, scale in steps:
        bank.set_lr_scale(scale)
        bank_losses.append(bank.step(feats, batch))
    for p, (m, r) in enumerate(zip(members, rows, strict=True)):
        torch.manual_seed(m.seed)
        probe = task.make_probe(READOUT, SHAPE[-1], SHAPE[:3])
        opt = torch.optim.AdamW(probe.parameters(), lr=m.lr, weight_decay=m.weight_decay)
        for s, (feats, scale) in enumerate(steps):
            opt.param_groups[0]["lr"] = m.lr * scale
            loss = task.loss(probe(feats[p], *task.query_inputs(_batch(tgt, r))), _batch(tgt, r))
            assert loss.item() == pytest.approx(bank_losses[s][p].item(), rel=1e-4, abs=1e-6), (task_name, p, s)
            opt.zero_grad()
            loss.backward()
            if m.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(probe.parameters(), m.grad_clip)
            opt.step()
        # the trained probes compute the same function (compared as outputs: the key bias has no gradient in exact
        # arithmetic, so Adam moves it by its float noise, differently in each implementation, to no effect)
        fresh = torch.randn(4, *SHAPE, generator=gen)
        inputs = task.query_inputs(_batch(tgt, [12, 13, 14, 15]))
        with torch.no_grad():
            torch.testing.assert_close(bank.probe(p)(fresh, *inputs), probe(fresh, *inputs), rtol=1e-3, atol=1e-4)


def test_per_probe_clip_and_decay_by_hand(targets) -> None:
    """Two probes from one seed on one batch: probe 0 clipped to norm 1e-3 and decayed at 0.5, probe 1 neither.
    With eps = 1 the update is nearly the clipped gradient itself, so the clip shows in the weights."""
    task = make_task("action", CTX)
    tgt = _batch(targets["train"]["action"], [0, 1, 2, 3])
    members = [Member(7, 0.1, 0.5, 1e-3), Member(7, 0.1, 0.0, 0.0)]
    bank = ProbeBank(lambda: task.make_probe(READOUT, SHAPE[-1], SHAPE[:3]), members, task.query_inputs, task.loss,
                     eps=1.0)
    feats = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    batch = {k: v.expand(2, *v.shape) for k, v in tgt.items()}
    moments = [(0.0, 0.0), (0.0, 0.0)]
    for step in (1, 2):
        before = bank.flat.detach().clone()
        grads = []
        for p in range(2):  # each probe's own gradient, from a standalone copy
            probe = bank.probe(p)
            task.loss(probe(feats), tgt).backward()
            grads.append(torch.cat([q.grad.flatten() for q in probe.parameters()]))
        bank.step(feats.expand(2, *feats.shape), batch)
        for p, (m, g) in enumerate(zip(members, grads, strict=True)):
            if m.grad_clip:
                g = g * min(1.0, m.grad_clip / (g.norm().item() + 1e-6))
            m1, m2 = moments[p]
            m1, m2 = 0.9 * m1 + 0.1 * g, 0.999 * m2 + 0.001 * g * g
            moments[p] = (m1, m2)
            update = (m1 / (1 - 0.9**step)) / ((m2 / (1 - 0.999**step)).sqrt() + 1.0)
            want = before[p] * (1 - 0.1 * m.weight_decay) - 0.1 * update
            torch.testing.assert_close(bank.flat[p].detach(), want, rtol=1e-5, atol=1e-7)
        assert grads[0].norm() > 1e-2  # so the clip to 1e-3 was in force
    moved = (bank.flat[0] - bank.flat[1]).abs().max().item()
    assert moved > 1e-3  # clip and decay made the two probes of one seed differ


@pytest.mark.parametrize("task_name", list(TASKS))
def test_every_task_trains_in_a_bank_and_no_result_depends_on_its_bank(task_name, targets, features) -> None:
    """Three cells (two backbones' features, two seeds) x two learning rates in one bank, in a bank of their own,
    and split by a tiny memory or FLOP budget: every cell's selected state and test metrics are the same."""
    task = make_task(task_name, CTX)
    cfg = ProbeConfig.preset("tiny").replace(readout=READOUT.replace(learning_rates=(1e-3, 3e-3)), steps=6,
                                             eval_every=3, batch_size=4, train_queries=4, warmup_steps=2,
                                             bank_size=0, bank_gflop=0.0)
    roles = tuple(targets[r][task_name] for r in ("train", "val", "test"))
    cells = [ProbeFeatures(*(features[b, r] for r in ("train", "val", "test")), seed)
             for b, seed in (("one", 0), ("two", 1), ("one", 2))]
    together = train_probes(task, cfg, cells, roles, torch.device("cpu"), progress=False)
    alone = [train_probes(task, cfg, [c], roles, torch.device("cpu"), progress=False)[0] for c in cells[1:]]
    split = train_probes(task, cfg.replace(bank_memory_gb=1e-9), cells, roles, torch.device("cpu"), progress=False)
    by_flops = train_probes(task, cfg.replace(bank_gflop=1e-6), cells, roles, torch.device("cpu"), progress=False)
    assert bank_size(cfg.replace(bank_memory_gb=1e-9), SHAPE) == 1 and bank_size(cfg.replace(bank_size=4), SHAPE) == 4
    assert len(together) == 3 and len(together[0].val) == 2
    for got, want in [*zip(together[1:], alone, strict=True), *zip(together, split, strict=True),
                      *zip(together, by_flops, strict=True)]:
        assert got.chosen_lr == want.chosen_lr and got.chosen_step == want.chosen_step
        assert got.test.keys() == want.test.keys()
        for k, v in want.test.items():
            assert got.test[k] == pytest.approx(v, rel=1e-4, abs=1e-6, nan_ok=True), (task_name, k)
        np.testing.assert_allclose(got.final_losses, want.final_losses, rtol=1e-4)
    assert all(math.isfinite(r.test[task.primary_metric]) for r in together)


def test_batches_are_full_and_cover_every_clip_once_per_epoch(features) -> None:
    """Shards of 10 and 10 clips, batches of 6: the first epoch's 20 clips come in 3 full batches and the start of
    a fourth, which the next epoch completes."""
    feats = features["one", "train"]
    stream = _train_batches(feats, 6, seed=3)
    batches = [next(stream) for _ in range(5)]
    assert all(len(i) == 6 and f.shape == (6, *SHAPE) for i, f in batches)
    seen = torch.cat([i for i, _ in batches])
    assert sorted(seen[:20].tolist()) == list(range(20))
    all_feats = torch.cat([feats.load_shard(s)[1] for s in range(feats.num_shards)])
    for index, f in batches:  # each batch holds the features of the clips it names
        torch.testing.assert_close(f, all_feats[index])


def test_the_study_trains_each_task_in_one_bank(tmp_path) -> None:
    cfg = StudyConfig.preset("tiny")
    jobs = plan_jobs(cfg, tmp_path)
    groups = bank_groups(cfg, jobs)
    assert sorted(i for g in groups for i in g) == list(range(len(jobs)))
    assert len(groups) == len(cfg.tasks) and all(len({jobs[i].task for i in g}) == 1 for g in groups)
    shared = bank_groups(cfg, jobs, world_size=4)  # cut into one part per rank, none empty
    assert len(shared) == 4 * len(cfg.tasks) and all(shared)
    assert sorted(i for g in shared for i in g) == list(range(len(jobs)))


def test_a_probe_config_saved_with_one_weight_decay_still_loads(tmp_path) -> None:
    """Run folders written before the decay grid hold ``readout.weight_decay``: they load as a grid of one."""
    old = ProbeConfig.preset("tiny").to_dict()
    old["readout"]["weight_decay"] = old["readout"].pop("weight_decays")[0] * 2
    cfg = ProbeConfig.from_dict(old)
    assert cfg.readout.weight_decays == (0.1,)
    # both keys at once is no earlier config: refused
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \[.weight_decay.\]"):
        ProbeConfig.from_dict({**old, "readout": {**old["readout"], "weight_decays": [0.1]}})
