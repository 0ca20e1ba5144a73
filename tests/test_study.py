"""The study end to end on a miniature config: every stage runs, results land in the store, a rerun recomputes
nothing, a lost cell is recomputed alone, and the report renders. (The real `tiny` study is `-m slow`.)"""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch

from diffprobe.features.cache import FeatureCache
from diffprobe.metrics import paired_difference
from diffprobe.study import run as study_run
from diffprobe.study.config import StudyConfig
from diffprobe.study.disk import planned_features
from diffprobe.study.plan import motion_config, motion_dir, plan_jobs, plan_matches
from diffprobe.study.run import run_study
from diffprobe.study.store import MATCH_TAG, ResultsStore
from diffprobe.study.tables import headline_table
from diffprobe.tasks import TASKS

MINI = [
    "dataset=probeworld:tiny@train_size=48,val_size=16,test_size=16,num_tracks=16",
    "tokenizer.train.steps=3", "tokenizer.stats_clips=16",
    "twin.train.steps=4", "twin.train.ckpt_every=2", "twin.train.keep_steps=[2]", "budget_steps=[2]",
    "twin.model.depth=2", "block=2", "block_sweep=[1,2]", "noise_sweep=[0,200]",
    'sizes={"micro": {"hidden_size": 64, "depth": 2, "num_heads": 2}}',  # the model-size analysis (tiny-more's)
    "feature_net.train.steps=2", "probe.steps=3", "probe.eval_batch_size=16",
    'probe_clips={"train": 32, "val": 16, "test": 16}',
    "generation_samples=8", "sampling_steps=2", "pca_clips=1", "probe_seeds=[0,1]", "motion_clips=2",
    "sweep_tasks=[\"action\"]",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The miniature study, run once for the module; tests read it through ``mini`` or change a copy of it."""
    cfg = StudyConfig.preset("tiny").override(MINI)
    run_dir = tmp_path_factory.mktemp("study")
    run_study(cfg, run_dir, progress=False)
    return cfg, run_dir


def _files(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def mini(built):
    """The built study, read-only: a test that writes into it fails here (tests that change a study use ``study``)."""
    before = _files(built[1])
    yield built
    assert _files(built[1]) == before, "a test changed the module's study; it should change a copy (``study``)"


@pytest.fixture
def study(built, tmp_path):
    """A copy of the built study of the test's own."""
    cfg, run_dir = built
    shutil.copytree(run_dir, tmp_path / "study")
    return cfg, tmp_path / "study"


def test_study_fills_the_store_and_artifacts(mini) -> None:
    cfg, run_dir = mini
    with ResultsStore(run_dir / "results.sqlite") as store:
        rows = store.query(study=cfg.name)
    cells = {(r["backbone"], r["checkpoint_step"], r["block"], r["t"], r["task"], r["probe_seed"]) for r in rows
             if not r["config_hash"].startswith(MATCH_TAG)}
    assert len(cells) == len(plan_jobs(cfg, run_dir)) + len(TASKS)  # every probe cell and each task's prior
    for backbone in ("walt-video", "walt-image", "walt-untrained", "latents", "pixels", "prior"):
        assert {c[4] for c in cells if c[0] == backbone} == set(TASKS)
    assert {(c[1], c[3]) for c in cells if c[0] == "walt-video" and c[4] == "action"} >= {(4, 0.0), (4, 200.0),
                                                                                         (2, 200.0)}
    assert all(np.isfinite(r["value"]) for r in rows if r["metric"] in ("top1", "abs_rel", "mean_iou"))
    gen = json.loads((run_dir / "generation.json").read_text())
    assert {(g["backbone"], g["checkpoint_step"]) for g in gen} == {
        ("walt-video", 4), ("walt-image", 4), ("walt-video", 2), ("walt-image", 2), ("walt-video@micro", 4),
        ("walt-image@micro", 4), ("walt-untrained", 0)}
    assert all(g["frechet_distance"] >= 0 for g in gen) and all("clip_fd" in g for g in gen if g["mode"] == "video")
    pca = np.load(run_dir / "pca" / "clip-000.npz")
    assert pca["frames"].shape == (9, 32, 32, 3)
    assert pca["tokens__walt-image"].shape[0] == 9  # image twin: one token grid per frame
    assert pca["tokens__walt-video"].shape[0] == 5  # video twin: one per latent frame
    table = headline_table(cfg, run_dir / "results.sqlite")
    assert all(task in table for task in TASKS) and "video/image" in table and "prior" in table
    assert table.count("s.e.") == len(TASKS) and "video-untr. z" in table  # a s.e. row under each primary metric
    assert table.count("seed sd") == len(TASKS) and "min z" in table  # two probe seeds: their spread, per-seed z
    assert "paired, same test clips" in table and "walt-video - walt-image" in table
    assert all(f"  {c}: " in table for c in ("walt-untrained", "latents", "pixels", "prior"))  # the controls legend
    with ResultsStore(run_dir / "results.sqlite") as store:  # pixels against the prior, paired, by hand
        pixels = [a for _, a in store.clip_scores(study=cfg.name, backbone="pixels", task="depth", block=0, t=0.0)]
        [(_, prior)] = store.clip_scores(study=cfg.name, backbone="prior", task="depth", block=0, t=0.0)
    z = [paired_difference(a, prior, False)["z"] for a in (np.mean(pixels, axis=0), *pixels)]
    against = table[table.index("paired z against the prior"):].splitlines()
    names = against[0].split()[5:]  # after "paired z against the prior"
    assert names == list(cfg.backbones)
    [row] = [line for line in against if line.startswith("depth ")]
    cell = row[28:].split(")")[names.index("pixels")]
    assert cell.replace(" ", "") == f"{z[0]:.1f}({min(z[1:]):.1f}"  # the seed mean's z, then the worst seed's
    with ResultsStore(run_dir / "results.sqlite") as store:  # the per-clip scores behind the paired comparisons
        scores = store.clip_scores(study=cfg.name, backbone="walt-video", task="depth", block=cfg.block, t=cfg.t)
    assert [c["probe_seed"] for c, _ in scores] == [0, 1]  # the headline cell once per probe seed
    assert scores[0][1].shape == (16,) and np.isfinite(scores[0][1]).all()
    sweep = {(r["block"], r["t"], r["probe_seed"]) for r in rows if r["backbone"] == "walt-video"
             and r["task"] == "action"}
    assert (1, cfg.t, 0) in sweep and (1, cfg.t, 1) not in sweep  # the sweeps run the first probe seed only
    assert all(np.isfinite(r["value"]) and r["value"] >= 0 for r in rows if r["metric"].endswith("_se"))
    assert {r["metric"] for r in rows if r["backbone"] == "prior" and r["task"] == "action"} >= {"top1", "top1_se"}
    assert json.loads((run_dir / "study_config.json").read_text()) == cfg.to_dict()


def test_the_matcher_and_the_motion_experiment_run_in_the_study(mini) -> None:
    cfg, run_dir = mini
    matches = plan_matches(cfg, run_dir)  # each backbone's headline, the reference pair's sweeps
    assert {(j.backbone, j.block, j.t) for j in matches} == {
        ("walt-video", 2, 200.0), ("walt-image", 2, 200.0), ("walt-untrained", 2, 200.0), ("latents", 0, 0.0),
        ("pixels", 0, 0.0), *((b, 2, 0.0) for b in cfg.reference), *((b, 1, 200.0) for b in cfg.reference)}
    with ResultsStore(run_dir / "results.sqlite") as store:
        rows = [r for r in store.query(study=cfg.name, task="point_tracking") if r["config_hash"].startswith(MATCH_TAG)]
    assert {(r["backbone"], r["block"], r["t"]) for r in rows} == {(j.backbone, j.block, j.t) for j in matches}
    assert len({r["config_hash"] for r in rows}) == 1  # one matcher setting across blocks, noise levels and seeds
    aj = [r["value"] for r in rows if r["metric"] == "average_jaccard"]
    assert len(aj) == len(matches) and all(0 <= v <= 1 for v in aj)
    ratios = {}
    for name in cfg.backbones:
        result = json.loads((motion_dir(run_dir, name, motion_config(cfg, name)) / "motion.json").read_text())
        assert len(result["clips"]) == cfg.motion_clips and result["config"]["block"] == cfg.headline_of(name)[0]
        ratios[name] = result["mean_ratio"]
    assert ratios["walt-image"] == 1.0 and ratios["walt-video"] != 1.0  # an image model reads frame 0 alone


def test_the_table_reads_only_the_newest_weights_of_each_backbone(mini, tmp_path) -> None:
    """Cells of weights a backbone was retrained away from (an older identity under the same name, as after --force
    or in a store carried over from another seed) are left out of the table and of its paired blocks."""
    cfg, run_dir = mini
    store = tmp_path / "results.sqlite"
    shutil.copy(run_dir / "results.sqlite", store)
    before = headline_table(cfg, store)
    with sqlite3.connect(store) as db:
        cols = [r[1] for r in db.execute("PRAGMA table_info(results)")]
        old = ", ".join("'walt-image-old'" if c == "identity" else "'2000-01-01T00:00:00'" if c == "time"
                        else "value * 0.5" if c == "value" else c for c in cols)
        db.execute(f"INSERT INTO results SELECT {old} FROM results WHERE backbone = 'walt-image'")
        cols = [r[1] for r in db.execute("PRAGMA table_info(clip_scores)")]
        old = ", ".join("'walt-image-old'" if c == "identity" else c for c in cols)
        db.execute(f"INSERT INTO clip_scores SELECT {old} FROM clip_scores WHERE backbone = 'walt-image'")
    assert headline_table(cfg, store) == before


def test_rerun_recomputes_only_lost_cells(study, monkeypatch) -> None:
    cfg, run_dir = study
    calls = []
    real = study_run.run_probes
    monkeypatch.setattr(study_run, "run_probes",
                        lambda *a, **kw: calls.extend((a[2], c.seed) for c in a[0]) or real(*a, **kw))
    run_study(cfg, run_dir, progress=False)
    assert calls == []  # everything was done: no training, no probe
    with sqlite3.connect(run_dir / "results.sqlite") as db:  # as if the study had been killed before this cell
        db.execute("DELETE FROM results WHERE backbone = 'latents' AND task = 'depth' AND probe_seed = 1")
    run_study(cfg, run_dir, progress=False)
    assert calls == [("depth", 1)]  # one cell, in a bank of its own


def test_changed_artifacts_are_refused_and_the_plan_grows(study, monkeypatch) -> None:
    cfg, run_dir = study
    for change, field in (("twin.train.steps=5", "twin.train.steps"), (f"dataset={cfg.dataset},seed=3", "dataset")):
        with pytest.raises(ValueError, match=rf"trained artifacts were made with other settings; changed: {field}"):
            run_study(cfg.override([change]), run_dir, progress=False)
    calls = []
    real = study_run.run_probes
    monkeypatch.setattr(study_run, "run_probes",
                        lambda *a, **kw: calls.extend((a[2], c.t) for c in a[0]) or real(*a, **kw))
    grown = cfg.replace(noise_sweep=[0.0, 200.0, 400.0])  # one more noise level: only its cells are computed
    run_study(grown, run_dir, progress=False)
    assert sorted(calls) == sorted((task, 400.0) for task in grown.sweep_tasks for _ in grown.reference)
    small = grown.replace(tasks=["action", "depth"], sweep_tasks=["action"])  # a smaller plan reports only its cells
    n = len(calls)
    run_study(small, run_dir, progress=False)
    assert len(calls) == n == 2
    table = headline_table(small, run_dir / "results.sqlite")
    assert "action" in table and "depth" in table and "box_tracking" not in table
    from diffprobe.study.report import write_report

    html = write_report(run_dir, study=cfg.name).read_text()
    assert "box_tracking" not in html and "depth" in html


def test_report_renders(study) -> None:
    from diffprobe.study.report import write_report

    cfg, run_dir = study
    html = write_report(run_dir, study=cfg.name).read_text()
    assert "walt-video" in html and "point_tracking" in html and "data:image/png;base64" in html
    matching = html[html.index('<h2 id="match">'):html.index('<h2 id="motion">')]
    assert "matcher average_jaccard" in matching and "trained probe average_jaccard" in matching
    assert 'alt="matcher vs noise level and block"' in matching  # the reference pair's sweeps
    motion = html[html.index('<h2 id="motion">'):html.index('<h2 id="table">')]
    assert all(name in motion for name in cfg.backbones) and 'alt="motion figure of walt-video"' in motion
    assert (run_dir / "report" / "fig_motion_walt-video.png").is_file()


def test_a_moved_study_finds_its_tokenizer_from_any_directory(mini, tmp_path, monkeypatch) -> None:
    import shutil

    from diffprobe.models.exports import read_walt_run
    from diffprobe.train.denoiser import load_denoiser

    _, run_dir = mini
    moved = tmp_path / "moved"
    shutil.copytree(run_dir / "twins", moved / "twins")
    shutil.copytree(run_dir / "tokenizer", moved / "tokenizer")
    monkeypatch.chdir(tmp_path / "moved" / "twins")  # neither the study's directory nor its parent
    twin = moved / "twins" / "main-video"
    _, cfg, _ = load_denoiser(twin)
    assert cfg.tokenizer == "../../tokenizer"
    assert read_walt_run(twin).tokenizer_dir.resolve() == (moved / "tokenizer").resolve()


def test_each_stage_prints_a_line_and_quick_says_it_measures_nothing(study, capsys) -> None:
    cfg, run_dir = study
    run_study(cfg, run_dir, progress=True)  # finished: only the probe, generation and PCA stages are visited
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("study [")]
    assert [ln.split()[1] for ln in lines] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "[5/5]"]
    assert [ln.split()[-1] for ln in lines] == ["probes", "match", "generation", "pca", "motion", "done"]
    quick = StudyConfig.preset("quick")
    assert quick.caveat and "measure" in quick.caveat and not StudyConfig.preset("tiny").caveat
    tiny = StudyConfig.preset("tiny")  # a fraction of the tiny study's probe steps
    assert len(plan_jobs(quick, run_dir)) * quick.probe.steps < len(plan_jobs(tiny, run_dir)) * tiny.probe.steps / 4
    assert headline_table(cfg.replace(caveat=quick.caveat), run_dir / "results.sqlite").startswith("note: ")


def test_tiny_more_extends_a_tiny_run(tmp_path) -> None:
    from diffprobe.study.artifacts import check_artifacts

    tiny, more = StudyConfig.preset("tiny"), StudyConfig.preset("tiny-more")
    check_artifacts(tiny, more, tmp_path / "study_config.json")  # same trained artifacts, one more size: allowed
    assert more.name == tiny.name and set(plan_jobs(tiny, tmp_path)) < set(plan_jobs(more, tmp_path))
    with pytest.raises(ValueError, match="changed: sizes.micro"):  # a size trained before may not change
        check_artifacts(more, more.override(["sizes.micro.depth=4"]), tmp_path / "study_config.json")


def test_a_streamed_study_gets_the_cached_results_and_writes_no_features(study) -> None:
    cfg, run_dir = study
    query = ("SELECT backbone, block, t, probe_seed, metric, value FROM results WHERE task = 'action' "
             "ORDER BY 1, 2, 3, 4, 5")
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        cached = db.execute(query).fetchall()
        db.execute("DELETE FROM results WHERE task = 'action'")  # the block and noise sweeps' cells among them
    for done in list(run_dir.rglob("complete.json")):  # every denoiser's features (the encoders' and pixels' kept)
        if done.parent.name != "block0_t0_seed0":
            shutil.rmtree(done.parent)
    before = {p for p in run_dir.rglob("complete.json")}
    run_study(cfg.replace(stream=True), run_dir, progress=False)
    assert {p for p in run_dir.rglob("complete.json")} == before  # every feature computed as the probes read it
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        streamed = db.execute(query).fetchall()
    assert len(streamed) == len(cached) > 10
    for s, c in zip(streamed, cached, strict=True):
        assert s[:5] == c[:5]
        assert s[5] == pytest.approx(c[5], rel=1e-3, abs=1e-4), s


def test_the_planned_features_are_the_ones_the_study_cached(mini) -> None:
    from diffprobe.backbones.registry import load_backbone
    from diffprobe.tasks.roles import task_roles
    from diffprobe.utils.io import read_json

    cfg, run_dir = mini
    jobs = plan_jobs(cfg, run_dir)
    backbones = {spec: load_backbone(spec, torch.device("cpu")) for spec in dict.fromkeys(j.spec for j in jobs)}
    roles = {task: task_roles(task, cfg.roles(task)) for task in {j.task for j in jobs}}
    planned = planned_features(cfg, jobs, backbones, roles)
    cache = FeatureCache(run_dir / "cache")
    assert len(planned) > 20
    for key, shape, clips in planned:  # shapes from fake tensors, as the real forward cached them
        meta = read_json(cache.path(key) / "complete.json")
        assert (tuple(meta["feature_shape"]), meta["num_clips"]) == (shape, clips), key


def test_a_study_whose_features_do_not_fit_the_disk_is_refused_before_it_extracts(study, monkeypatch) -> None:
    from diffprobe.errors import InputError
    from diffprobe.features import extract

    cfg, run_dir = study
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        db.execute("DELETE FROM results WHERE task = 'action'")
    for done in list(run_dir.rglob("complete.json")):
        if done.parent.name != "block0_t0_seed0":
            shutil.rmtree(done.parent)
    before = _files(run_dir / "cache")
    monkeypatch.setattr(extract, "free_bytes", lambda path: 10_000)
    with pytest.raises(InputError, match=r"need [0-9.]+ GB and the disk has 0\.0 GB free"):
        run_study(cfg, run_dir, progress=False)
    assert _files(run_dir / "cache") == before
    run_study(cfg.replace(stream=True), run_dir, progress=False)  # streamed, the features need no disk
