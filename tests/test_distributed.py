"""Across ranks: ``diffprobe extract`` and ``diffprobe study`` launched by torchrun (two CPU ranks, Gloo) give exactly
what one process gives, and a multi-rank extraction that lost a shard resumes with only that shard.

Both sides run with one intra-op thread (torchrun gives each worker ``OMP_NUM_THREADS=1``; the single-process runs
pin ``torch.set_num_threads(1)``), so float reductions are summed in the same order and results compare exactly."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from diffprobe.features.cache import FeatureSet
from diffprobe.study.config import StudyConfig
from diffprobe.study.plan import plan_jobs, plan_matches
from diffprobe.study.run import run_study
from diffprobe.utils.distributed import DistContext, rank_share

DATA = "probeworld:tiny@train_size=24,val_size=8,test_size=8,num_tracks=8"
#: a study with no twins: the tokenizer-latents control under two names, two tasks, two probe seeds (8 cells)
SETS = [
    f"dataset={DATA}", "tokenizer.train.steps=2", "tokenizer.stats_clips=8",
    'backbones={"lat": "latents:{tokenizer}", "lat2": "latents:{tokenizer}"}', 'reference=["lat", "lat2"]',
    "control=", "tasks=[\"action\", \"depth\"]", "sweep_tasks=[\"action\"]", "noise_sweep=[]", "block_sweep=[]",
    "probe.steps=3", "probe.eval_batch_size=8", 'probe_clips={"train": 24, "val": 8, "test": 8}',
    "probe_seeds=[0,1]", "pca_clips=1", "device=cpu",
]


def _torchrun(*args: str, timeout: float = 240) -> None:
    """``torchrun --standalone --nproc_per_node 2 -m diffprobe.cli ARGS`` on CPU; fails with its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "diffprobe.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single(tmp_path_factory, one_thread) -> tuple[StudyConfig, Path]:
    """The miniature study run in this process (it trains the tokenizer that every test here reads)."""
    cfg = StudyConfig.preset("tiny").override(SETS)
    run = tmp_path_factory.mktemp("single") / "run"
    run_study(cfg, run, progress=False)
    return cfg, run


def _extract(cache: Path, tokenizer: Path) -> list[str]:
    return ["extract", "--backbone", f"latents:{tokenizer}", "--dataset", DATA, "--split", "train", "--split",
            "val", "--block", "0", "--batch-size", "3", "--shard-size", "4", "--device", "cpu", "--cache",
            str(cache), "--quiet"]


def _sets(cache: Path) -> dict[str, FeatureSet]:
    return {str(p.parent.relative_to(cache)): FeatureSet(p.parent) for p in sorted(cache.rglob("complete.json"))}


def test_rank_share_is_round_robin() -> None:
    ctxs = [DistContext(rank=r, world_size=3, local_rank=r, device=torch.device("cpu")) for r in range(3)]
    assert [rank_share(range(7), c) for c in ctxs] == [[0, 3, 6], [1, 4], [2, 5]]


def test_rank_zero_names_a_shard_it_cannot_see(tmp_path, monkeypatch) -> None:
    from diffprobe.features import extract
    from diffprobe.features.cache import FeatureCache, FeatureKey

    monkeypatch.setattr(extract, "SHARED_DISK_GRACE", 0.0)
    cache, key = FeatureCache(tmp_path), FeatureKey("bb", "toy", "train", "clip", 0, 0.0, 0)
    cache.write_shard(key, 0, torch.arange(2), torch.zeros(2, 1, 1, 1, 1))  # rank 1's shard 1 went to another disk
    with pytest.raises(FileNotFoundError, match=r"shard-00001.safetensors: written by another rank .* every rank "
                                                r"shares"):
        extract._check_shards(cache, [key], 4, {key: 2})


def test_two_rank_extraction_equals_one_process_and_resumes(single, tmp_path) -> None:
    from diffprobe.cli import main

    tokenizer = single[1] / "tokenizer"
    result = CliRunner().invoke(main, _extract(tmp_path / "one", tokenizer))
    assert result.exit_code == 0, result.output
    _torchrun(*_extract(tmp_path / "two", tokenizer))
    one, two = _sets(tmp_path / "one"), _sets(tmp_path / "two")
    assert set(one) == set(two) and len(one) == 4  # pixels and latents of train and val
    latents = next(k for k in two if k.startswith("latents") and "/train/" in k)
    assert two[latents].num_shards == 6  # 24 clips in shards of 4: ranks 0 and 1 both wrote some
    for name, fs in one.items():
        assert json.loads((fs.path / "complete.json").read_text()) == json.loads(
            (two[name].path / "complete.json").read_text())
        a, b = fs.load_all(), two[name].load_all()
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), name

    # a multi-rank extraction killed before its end: one of rank 1's shards lost, complete.json not yet written
    folder = two[latents].path
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*")}
    (folder / "shard-00003.safetensors").unlink()
    (folder / "complete.json").unlink()
    _torchrun(*_extract(tmp_path / "two", tokenizer))
    again = FeatureSet(folder)
    assert torch.equal(again.load_all()[1], one[latents].load_all()[1])
    now = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*")}
    assert {k: v for k, v in now.items() if k != "shard-00003.safetensors"} == {
        k: v for k, v in kept.items() if k != "shard-00003.safetensors"}  # the other shards were not rewritten


def _results(run: Path) -> tuple[list[tuple], list[tuple]]:
    """Every stored result and per-clip score row, without time stamps, sorted."""
    with sqlite3.connect(run / "results.sqlite") as db:
        cols = [r[1] for r in db.execute("PRAGMA table_info(results)") if r[1] != "time"]
        rows = sorted(db.execute(f"SELECT {', '.join(cols)} FROM results").fetchall(), key=repr)
        scores = sorted(db.execute("SELECT * FROM clip_scores").fetchall(), key=repr)
    return rows, scores


def test_two_rank_study_stores_what_one_process_stores(single, tmp_path) -> None:
    cfg, run = single
    two = tmp_path / "two"
    shutil.copytree(run / "tokenizer", two / "tokenizer")  # the trained artifact; features and cells are redone
    args = ["study", "--out", str(two), "--no-report", "--quiet", *[a for s in SETS for a in ("--set", s)]]
    _torchrun(*args)
    rows, scores = _results(two)
    assert (rows, scores) == _results(run)  # the same cells, each once, with the same values and per-clip scores
    cells = {r[:14] for r in rows}
    assert len(cells) == len(plan_jobs(cfg, run)) + len(cfg.tasks) + len(plan_matches(cfg, run)) == 12  # 8 probe
    # cells, 2 priors and each backbone's matcher cell
    assert (two / "pca" / "clip-000.npz").is_file() and (two / "results.csv").is_file()  # rank 0's stages ran
    assert len(list((two / "motion").glob("*/motion.json"))) == len(cfg.backbones)


def _stamps(run: Path) -> dict[tuple, str]:
    """Every stored row's time stamp, by its cell and metric."""
    with sqlite3.connect(run / "results.sqlite") as db:
        cols = [r[1] for r in db.execute("PRAGMA table_info(results)") if r[1] not in ("value", "time")]
        return {tuple(r[:-1]): r[-1] for r in db.execute(f"SELECT {', '.join(cols)}, time FROM results")}


@pytest.mark.slow
def test_two_rank_study_resumes_without_recomputing(single, tmp_path) -> None:
    _, run = single
    two = tmp_path / "two"
    shutil.copytree(run, two)
    with sqlite3.connect(two / "results.sqlite") as db:  # as if the ranks had been killed before these cells
        db.execute("DELETE FROM results WHERE backbone = 'lat2' AND probe_seed = 1")
        db.execute("DELETE FROM clip_scores WHERE backbone = 'lat2' AND probe_seed = 1")
    before = _stamps(two)
    _torchrun("study", "--out", str(two), "--no-report", "--quiet", *[a for s in SETS for a in ("--set", s)])
    assert _results(two) == _results(run)
    after = _stamps(two)
    assert all(after[k] == v for k, v in before.items())  # the stored cells were not recomputed
