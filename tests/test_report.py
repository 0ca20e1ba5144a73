"""The study report: normalisation formulas against hand-computed values, the headline choice, a self-contained
HTML page with every section and its PNG figures, skipped optional inputs, and the PCA pictures."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from html import escape as html_escape
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from diffprobe.study.config import StudyConfig
from diffprobe.study.figure_data import (
    Bar,
    read_generation,
    relative_bars,
    scale_points,
    summary_sentences,
    sweep_curves,
    table_rows,
)
from diffprobe.study.headline import guess_headline, resolve_headlines
from diffprobe.study.pca import frame_to_feature_index, pca_figure, pca_rgb, upsample_nearest
from diffprobe.study.plan import current_cells, plan_jobs, prior_cell
from diffprobe.study.report import load_report, render_html, write_report
from diffprobe.study.report_data import Stat, aggregate, load_study
from diffprobe.study.report_tasks import (
    PRIOR,
    TASK_METRICS,
    higher_is_better,
    margin_z,
    relative_change,
    relative_percent,
)
from diffprobe.study.store import MATCH_TAG, Cell, ResultsStore, clips_key
from diffprobe.study.tables import headline_table
from diffprobe.utils.io import atomic_write_json

# Headline values (probe seed 0, probe seed 1) of each task's metrics, per backbone.
HEAD = {
    "walt-image": {"top1@image_cls": (0.8, 0.6), "top1@action": (0.3, 0.3), "abs_rel": (0.24, 0.26),
                   "delta1": (0.6, 0.6), "rotation_error_deg": (30.0, 30.0), "translation_error": (1.0, 1.0),
                   "average_jaccard": (0.25, 0.25), "average_pts_within_thresh": (0.4, 0.4),
                   "occlusion_accuracy": (0.8, 0.8), "mean_iou": (0.5, 0.5)},
    "walt-video": {"top1@image_cls": (0.7, 0.7), "top1@action": (0.6, 0.5), "abs_rel": (0.2, 0.2),
                   "delta1": (0.7, 0.7), "rotation_error_deg": (10.0, 20.0), "translation_error": (0.5, 0.5),
                   "average_jaccard": (0.3, 0.5), "average_pts_within_thresh": (0.6, 0.6),
                   "occlusion_accuracy": (0.85, 0.85), "mean_iou": (0.6, 0.6)},
    "walt-untrained": {"top1@image_cls": (0.2, 0.2), "top1@action": (0.1, 0.1), "abs_rel": (0.5, 0.5),
                       "delta1": (0.3, 0.3), "rotation_error_deg": (60.0, 60.0), "translation_error": (2.0, 2.0),
                       "average_jaccard": (0.05, 0.05), "average_pts_within_thresh": (0.1, 0.1),
                       "occlusion_accuracy": (0.5, 0.5), "mean_iou": (0.2, 0.2)},
    "latents": {"top1@image_cls": (0.3, 0.3), "top1@action": (0.15, 0.15), "abs_rel": (0.4, 0.4),
                "delta1": (0.4, 0.4), "rotation_error_deg": (45.0, 45.0), "translation_error": (1.5, 1.5),
                "average_jaccard": (0.1, 0.1), "average_pts_within_thresh": (0.2, 0.2),
                "occlusion_accuracy": (0.6, 0.6), "mean_iou": (0.3, 0.3)},
}
MODES = {"walt-image": "image", "walt-video": "video", "walt-untrained": "video", "latents": "video"}
# Video twin relative to image twin on each task's primary metric, by hand (see HEAD):
EXPECTED_VIDEO_PCT = {"image_cls": 100 * 0.7 / 0.7, "action": 100 * 0.55 / 0.3, "depth": 100 * 0.25 / 0.2,
                      "camera_pose": 100 * 30 / 15, "point_tracking": 100 * 0.4 / 0.25, "box_tracking": 100 * 0.6 / 0.5}
SWEEP = [(2, 0.0), (2, 200.0), (2, 500.0), (1, 200.0), (3, 200.0)]  # a cross centred on block 2, t 200


def _head(backbone: str, task: str, metric: str) -> tuple[float, float]:
    return HEAD[backbone][f"{metric}@{task}" if metric == "top1" else metric]


def _factor(block: int, t: float) -> float:
    """Quality multiplier off the headline: 1 at (2, 200), worse away from it."""
    return 1.0 - abs(t - 200.0) / 2000.0 - 0.05 * abs(block - 2)


def _add(store: ResultsStore, backbone: str, step: int, block: int, t: float, scale: float) -> None:
    for task, metrics in TASK_METRICS.items():
        for seed in (0, 1):
            vals = {}
            for m in metrics:
                v = _head(backbone, task, m)[seed]
                vals[m] = v * scale if higher_is_better(m) else v / scale
            store.add(Cell("demo", backbone, f"{backbone}-id", MODES[backbone], step, block, t, 0, 1, task, "d1",
                                "all", seed, "h1"), vals)


def make_run(run_dir: Path, full: bool = True) -> Path:
    """A run dir: twins swept over a cross of (block, t), controls at one point, two probe seeds; with ``full``
    also a half-trained checkpoint of each twin (every metric half as good), generation.json, a config and a
    PCA npz."""
    with ResultsStore(run_dir / "results.sqlite") as store:
        for b in ("walt-image", "walt-video"):
            for block, t in SWEEP:
                _add(store, b, 1000, block, t, _factor(block, t))
            if full:
                _add(store, b, 500, 2, 200.0, 0.5)
        _add(store, "walt-untrained", 0, 2, 200.0, 1.0)
        _add(store, "latents", 0, 0, 0.0, 1.0)
    if full:
        atomic_write_json(run_dir / "generation.json", [
            {"backbone": b, "mode": MODES[b], "model": "tiny", "checkpoint_step": s, "frechet_distance": fd}
            for b, s, fd in [("walt-image", 500, 90.0), ("walt-image", 1000, 60.0), ("walt-video", 500, 120.0),
                             ("walt-video", 1000, 70.0)]])
        atomic_write_json(run_dir / "study_config.json", {"name": "demo", "blocks": [1, 2, 3], "ts": [0, 200, 500]})
        rng = np.random.default_rng(0)
        frames = np.zeros((4, 32, 32, 3), np.uint8)  # (T, H, W, 3): a square moving right
        for i in range(4):
            frames[i, 10:20, 4 + 5 * i:14 + 5 * i] = (220, 60, 40)
        (run_dir / "pca").mkdir()
        np.savez(run_dir / "pca" / "clip0.npz", frames=frames,
                 **{"tokens__walt-video": rng.normal(size=(2, 8, 8, 16)).astype(np.float32),
                    "tokens__walt-image": rng.normal(size=(4, 8, 8, 16)).astype(np.float32)})
    return run_dir


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


def test_relative_formulas_by_hand() -> None:
    assert relative_percent(0.6, 0.4, True) == pytest.approx(150.0)
    assert relative_percent(0.2, 0.25, False) == pytest.approx(125.0)  # error 0.25 -> 0.2: 100 * 0.25 / 0.2
    assert math.isnan(relative_percent(0.5, 0.0, True)) and math.isnan(relative_percent(0.0, 0.3, False))
    assert relative_change(0.45, 0.5, True) == pytest.approx(-10.0)
    assert relative_change(0.4, 0.5, False) == pytest.approx(25.0)
    assert margin_z(0.6, 0.5, 0.03, 0.04, True) == pytest.approx(2.0)  # 0.1 / hypot(0.03, 0.04)
    assert margin_z(0.2, 0.25, 0.03, 0.04, False) == pytest.approx(1.0)  # lower error: positive
    assert math.isnan(margin_z(0.6, 0.5, 0.0, 0.0, True)) and math.isnan(margin_z(0.6, 0.5, math.nan, 0.1, True))


def test_headline_is_the_centre_of_the_sweep(full_run) -> None:
    data = load_study(full_run / "results.sqlite")
    assert guess_headline(data, "walt-video") == (2, 200.0)
    assert guess_headline(data, "latents") == (0, 0.0)
    heads, notes = resolve_headlines(None, data, override=(3, 200.0))
    assert heads["walt-image"] == (3, 200.0) and heads["latents"] == (0, 0.0)
    assert any("latents was not measured at block 3" in n for n in notes)


def test_relative_bars_equal_hand_computed(full_run) -> None:
    data = load_study(full_run / "results.sqlite")
    heads, _ = resolve_headlines(None, data)
    bars, notes = relative_bars(data, heads)
    assert notes == []
    video = {b.task: b for b in bars if b.backbone == "walt-video"}
    for task, pct in EXPECTED_VIDEO_PCT.items():
        assert video[task].percent == pytest.approx(pct), task
    assert (video["point_tracking"].lo, video["point_tracking"].hi) == pytest.approx((120.0, 200.0))
    assert (video["camera_pose"].lo, video["camera_pose"].hi) == pytest.approx((150.0, 300.0))  # 30/20, 30/10
    image = {b.task: b for b in bars if b.backbone == "walt-image"}
    assert image["image_cls"].percent == pytest.approx(100.0)
    assert (image["image_cls"].lo, image["image_cls"].hi) == pytest.approx((100 * 0.6 / 0.7, 100 * 0.8 / 0.7))
    latents = {b.task: b for b in bars if b.backbone == "latents"}
    assert latents["depth"].percent == pytest.approx(100 * 0.25 / 0.4)
    sentences = summary_sentences(bars, "walt-video")
    assert "video beats image on depth by +25.0% (abs_rel 0.2 vs 0.25, lower is better; n = 2 vs 2)" in sentences[2]
    assert sentences[0].startswith("video and image tie on image_cls")
    worse = [Bar("action", "top1", name, 2, 200.0, Stat((v,)), Stat((0.5,)), relative_percent(v, 0.5, True), 0, 0)
             for name, v in (("walt-image", 0.5), ("walt-video", 0.4))]
    assert summary_sentences(worse, "walt-video") == [
        "image beats video on action: video reaches 80.0% of image (top1 0.4 vs 0.5, higher is better; n = 1 vs 1)."]
    prior = Bar("action", "top1", "prior", 0, 0.0, Stat((0.5,)), Stat((0.5,)), 100.0, 0, 0)
    [sentence] = summary_sentences([*worse, prior], "walt-video")
    assert sentence.endswith("Neither twin beats the no-information prior on action (top1 0.5): "
                             "this difference measures nothing.")
    pixels = dataclasses.replace(prior, backbone="pixels", stat=Stat((0.45,)), percent=90.0)  # below the prior
    [sentence] = summary_sentences([*worse, prior, pixels], "walt-video")
    assert sentence.endswith("this difference measures nothing. The pixels control does not beat the prior "
                             "(0.45): the readout cannot read action from the raw clip at this budget, so a backbone "
                             "at the prior says nothing about the task, and one above it has made the task readable.")
    above = dataclasses.replace(pixels, stat=Stat((0.6,)), percent=120.0)  # the readout can read it: nothing said
    assert "The pixels control" not in summary_sentences([*worse, prior, above], "walt-video")[0]
    better = [*worse, prior.__class__(**{**prior.__dict__, "percent": 90.0})]
    assert "Neither" not in summary_sentences(better, "walt-video")[0]  # the image twin (100%) beats a 90% prior
    # with standard errors stored, the sentence says how many the difference is: (0.4 - 0.5) / hypot(0.032, 0.024)
    noisy = [dataclasses.replace(b, se=se) for b, se in zip(worse, (0.032, 0.024), strict=True)]
    assert "; -2.5 test-set standard errors)" in summary_sentences(noisy, "walt-video")[0]
    noisier = [dataclasses.replace(b, se=0.1) for b in worse]
    assert "; -0.7 test-set standard errors, within the noise)" in summary_sentences(noisier, "walt-video")[0]


def test_sweeps_scale_points_and_best(full_run) -> None:
    data = load_study(full_run / "results.sqlite")
    heads, _ = resolve_headlines(None, data)
    curves, notes = sweep_curves(data, heads)
    assert notes == []
    curves = {(c.backbone, c.task, c.axis): c for c in curves}
    c = curves[("walt-video", "depth", "t")]
    assert c.xs == (0.0, 200.0, 500.0)
    assert c.relative_changes() == pytest.approx([100 * (_factor(2, t) - 1) for t in c.xs])
    assert curves[("walt-untrained", "depth", "block")].xs == (2.0,)
    gen = read_generation(json.loads((full_run / "generation.json").read_text()), full_run / "generation.json")
    points, _ = scale_points(data, heads, gen)
    by = {(p.backbone, p.step): p for p in points}
    assert by[("walt-image", 1000)].quality == pytest.approx(100.0)
    assert by[("walt-image", 500)].quality == pytest.approx(50.0)  # every metric half as good
    assert by[("walt-video", 1000)].quality == pytest.approx(np.mean(list(EXPECTED_VIDEO_PCT.values())))
    assert by[("walt-video", 500)].frechet == 120.0 and by[("latents", 0)].frechet is None
    best = [r for r in table_rows(data, heads) if r.best and r.key.task == "camera_pose"
            and r.key.metric == "rotation_error_deg"]
    assert [(r.key.backbone, r.key.block, r.key.t, r.key.step) for r in best] == [("walt-video", 2, 200.0, 1000)]


def _png_ok(path: Path) -> None:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    px = imread(io.BytesIO(raw))  # (H, W, 3|4) floats
    assert px.shape[0] > 100 and px.shape[1] > 100
    assert len(np.unique(px[..., :3].reshape(-1, 3), axis=0)) > 20  # drawn content, not a blank canvas


def test_write_report_is_self_contained_and_complete(full_run) -> None:
    path = write_report(full_run)
    assert path == full_run / "report" / "report.html"
    html = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html.lower()
    for task in TASK_METRICS:
        assert f"<h3>{task}</h3>" in html
    for pct in EXPECTED_VIDEO_PCT.values():
        assert f"<td class=\"num\">{pct:.1f}%</td>" in html
    assert "video beats image on camera_pose by +100.0%" in html
    assert "<b>0.2 ± 0</b>" in html  # walt-video's abs_rel at the headline: the best of depth
    assert "<details><summary>study config" in html and "&quot;blocks&quot;" in html
    assert 'class="caveat"' not in html  # a config without a caveat shows no warning box
    names = {"fig_video_vs_image.png", "fig_sweeps.png", "fig_relative_change.png", "fig_scaling.png",
             "fig_pca_clip0.png"}
    assert {p.name for p in path.parent.glob("fig_*.png")} == names
    assert html.count('src="data:image/png;base64,') == len(names)
    for name in names:
        _png_ok(path.parent / name)
    assert "120" in html and "Fréchet distance" in html


def test_missing_optional_inputs_are_noted(tmp_path) -> None:
    run = make_run(tmp_path, full=False)
    (run / "report").mkdir()
    (run / "report" / "fig_scaling.png").write_bytes(b"stale")
    html = write_report(run).read_text()
    assert "Section skipped: generation.json is absent; every backbone has a single checkpoint step" in html
    assert "pca/*.npz files: no PCA pictures" in html
    assert "study_config.json not found" in html
    assert not (run / "report" / "fig_scaling.png").exists()
    assert {p.name for p in (run / "report").glob("fig_*.png")} == {
        "fig_video_vs_image.png", "fig_sweeps.png", "fig_relative_change.png"}


def test_empty_or_missing_store_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"results\.sqlite: no results store"):
        write_report(tmp_path)
    ResultsStore(tmp_path / "results.sqlite").close()
    with pytest.raises(ValueError, match=r"results\.sqlite: the results store holds no results"):
        write_report(tmp_path)
    from diffprobe.cli import main

    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 2 and res.output.startswith("Error: ") and "holds no results" in res.output


def test_pca_rgb_shape_first_component_and_sign() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=16)
    v /= np.linalg.norm(v)
    a = rng.exponential(size=(3, 6, 6))  # (T, H, W), skewed so the sign convention is decided by skewness
    tokens = a[..., None] * 5.0 * v + 0.01 * rng.normal(size=(3, 6, 6, 16))  # (T, H, W, C)
    rgb = pca_rgb(tokens)
    assert rgb.shape == (3, 6, 6, 3) and rgb.dtype == np.uint8
    corr = [np.corrcoef(a.ravel(), rgb[..., i].ravel().astype(float))[0, 1] for i in range(3)]
    assert corr[0] > 0.97 and abs(corr[1]) < 0.5 and abs(corr[2]) < 0.5
    np.testing.assert_array_equal(pca_rgb(-tokens), rgb)  # sign convention: flipping all tokens changes nothing
    both = pca_rgb([tokens, tokens[:1]])  # a shared fit: the same tokens get the same colours
    np.testing.assert_array_equal(both[1], both[0][:1])
    with pytest.raises(ValueError, match="3 channels"):
        pca_rgb(tokens[..., :2])


def test_pca_figure_maps_frames_proportionally() -> None:
    assert frame_to_feature_index(8, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert frame_to_feature_index(3, 3).tolist() == [0, 1, 2]
    up = upsample_nearest(np.arange(4).reshape(2, 2), 4, 4)
    assert up.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    fig = pca_figure(frames, {"a": np.random.default_rng(0).normal(size=(2, 4, 4, 8))})
    assert len(fig.axes) == 3 * 4  # frames row + PCA row + PC1 row, 4 frames each
    assert "⌊i·2/4⌋" in fig.axes[4].get_ylabel()


QUICK_CAVEAT = StudyConfig.preset("quick").caveat


def _two_datasets(run_dir: Path) -> Path:
    """Two adhoc probes of one backbone, task, block and t on two Kinetics folders (one seed each), and two seeds on
    a third dataset whose spec the store was not told (as in a store written before specs were recorded)."""
    def cell(dataset: str, seed: int) -> Cell:
        return Cell("adhoc", "walt:runs/video", "walt-video-abc", "video", 1000, 2, 0.0, 0, 1, "action", dataset,
                    "all", seed, "h1")

    with ResultsStore(run_dir / "results.sqlite") as store:
        store.add(cell("dA", 0), {"top1": 1.0}, data_specs=dict.fromkeys(("train", "val", "test"), "kinetics:/k/a"))
        store.add(cell("dB", 0), {"top1": 0.6}, data_specs={"train": "kinetics:/k/b#train",
                                                             "val": "kinetics:/k/b#val", "test": "kinetics:/k/b#test"})
        for seed, value in ((0, 0.5), (1, 0.7)):
            store.add(cell("dC", seed), {"top1": value})
    return run_dir


def test_cells_on_different_datasets_are_not_pooled(tmp_path) -> None:
    run = _two_datasets(tmp_path)
    data = load_study(run / "results.sqlite")
    b_label = "train=kinetics:/k/b#train, val=kinetics:/k/b#val, test=kinetics:/k/b#test"
    assert {k.dataset: (s.n, s.mean) for k, s in data.stats.items()} == {
        "kinetics:/k/a": (1, 1.0), b_label: (1, 0.6), "dataset dC": (2, pytest.approx(0.6))}
    assert data.measure("action", "kinetics:/k/a") == "action on kinetics:/k/a"
    html = write_report(run).read_text()
    rows = re.findall(r"<tr[^>]*><td>(kinetics:/k/a|train=[^<]*|dataset dC)</td><td>top1</td>.*?</tr>", html)
    assert len(rows) == 3, rows  # one full-table row per dataset
    assert "<td>kinetics:/k/a</td><td>top1</td><td>walt:runs/video</td><td>video</td><td class=\"num\">1000</td>" \
           '<td class="num">2</td><td class="num">0</td><td class="num"><b>1</b></td><td class="num">1</td>' in html
    assert "<code>dC</code>" in html and "<i>not recorded</i>" in html  # the datasets table names each hash


def test_report_cli_prints_each_dataset_from_another_folder(tmp_path, monkeypatch) -> None:
    from diffprobe.cli import main

    run = _two_datasets(tmp_path / "run")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    res = CliRunner().invoke(main, ["report", "../run"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    a = next(ln for ln in lines if "kinetics:/k/a" in ln)
    b = next(ln for ln in lines if "kinetics:/k/b#test" in ln)
    c = next(ln for ln in lines if "dataset dC" in ln)
    assert a.split()[-2:] == ["1", "1"] and b.split()[-2:] == ["0.6", "1"] and c.split()[-4:] == ["0.6", "±", "0.14",
                                                                                                   "2"]
    assert "0.8" not in res.output and not lines[0].startswith("note:")  # nothing pooled; no caveat in this run
    assert lines[-1] == "report: ../run/report/report.html" and (run / "report" / "report.html").is_file()


def test_other_probe_configs_of_one_backbone_are_other_cells() -> None:
    def row(config_hash: str, seed: int, value: float, time: str) -> dict:
        cell = Cell("s", "walt-video", "id", "video", 1, 2, 0.0, 0, 1, "action", "d", "all", seed, config_hash)
        return {**dataclasses.asdict(cell), "metric": "top1", "value": value, "time": time}

    data = aggregate("s", [row("old-config", 0, 0.2, "2025-01-01T00:00:00"), row("new-config", 0, 0.6,
                           "2025-02-01T00:00:00"), row("new-config", 1, 0.8, "2025-02-01T00:00:01")])
    assert {k.backbone: (s.n, s.mean) for k, s in data.stats.items()} == {
        "walt-video": (2, pytest.approx(0.7)), "walt-video[probe config old-conf]": (1, 0.2)}
    assert any("the latest is shown as walt-video" in n for n in data.notes)



def test_a_matcher_cell_is_named_beside_the_trained_probe_even_when_it_is_newer() -> None:
    def row(config_hash: str, value: float, time: str) -> dict:
        cell = Cell("s", "walt-video", "id", "video", 1, 2, 0.0, 0, 1, "point_tracking", "d", "all", 0, config_hash)
        return {**dataclasses.asdict(cell), "metric": "average_jaccard", "value": value, "time": time}

    data = aggregate("s", [row("probe-conf", 0.11, "2025-01-01T00:00:00"),
                           row(MATCH_TAG + "abc", 0.04, "2025-02-01T00:00:00")])
    assert {k.backbone: s.mean for k, s in data.stats.items()} == {
        "walt-video": pytest.approx(0.11), "walt-video[matcher]": pytest.approx(0.04)}
    alone = aggregate("s", [row(MATCH_TAG + "abc", 0.04, "2025-02-01T00:00:00")])
    assert [k.backbone for k in alone.stats] == ["walt-video[matcher]"]

def test_the_caveat_heads_the_page_and_the_printed_table(tmp_path) -> None:
    from diffprobe.cli import main

    run = make_run(tmp_path, full=False)
    atomic_write_json(run / "study_config.json", {"name": "demo", "caveat": QUICK_CAVEAT})
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == f"note: {QUICK_CAVEAT}"
    html = (run / "report" / "report.html").read_text()
    box = html.index('<div class="caveat"')
    assert html_escape(QUICK_CAVEAT) in html[box:html.index("</div>", box)] and box < html.index("<table")
    assert box < html.index("<details><summary>study config")  # not only inside the collapsed config


def test_an_earlier_checkpoint_is_its_own_cell_not_another_setup() -> None:
    """A budget checkpoint (walt@100) has its own identity and step: it keeps the backbone's plain name at its own
    step, and the final checkpoint's cells (written earlier) are not relabelled as an older setup."""
    def row(identity: str, step: int, value: float, time: str) -> dict:
        cell = Cell("s", "walt-video", identity, "video", step, 4, 200.0, 0, 1, "action", "d", "all", 0, "h")
        return {**dataclasses.asdict(cell), "metric": "top1", "value": value, "time": time}

    data = aggregate("s", [row("walt-video-abc", 200, 0.6, "2025-01-01T00:00:00"),
                           row("walt-video-abc-step100", 100, 0.4, "2025-01-01T00:00:05")])
    assert {(k.backbone, k.step): s.mean for k, s in data.stats.items()} == {
        ("walt-video", 200): 0.6, ("walt-video", 100): 0.4}
    assert not data.notes


def _cell_value(cfg: StudyConfig, backbone: str, block: int, t: float, probe_seed: int) -> float:
    """A stored value that names its cell: the backbone's place in the config (a model-size variant after them all),
    the block, t and the probe seed."""
    names = [*cfg.backbones, PRIOR]
    place = names.index(backbone) if backbone in names else len(names)
    return 0.01 * place + 0.1 * block + t / 10_000 + 0.001 * probe_seed


def config_store(run_dir: Path, cfg: StudyConfig, extra: tuple[tuple[str, int, int, float], ...] = ()) -> Path:
    """The store ``diffprobe study`` would leave for ``cfg``: every cell of its plan and each task's prior, on the
    config's datasets, clip counts and probe config, with per-clip scores (8 test clips), each value
    :func:`_cell_value`; ``extra`` adds (backbone, step, block, t) cells off the plan (as from an earlier config) on
    the sweep tasks. Writes ``study_config.json`` too."""
    current = current_cells(cfg)
    rng = np.random.default_rng(0)
    probe_hash = cfg.probe.replace(seed=0).hash()

    def add(store: ResultsStore, cell: Cell) -> None:
        value = _cell_value(cfg, cell.backbone, cell.block, cell.t, cell.probe_seed)
        primary, *others = TASK_METRICS[cell.task]
        metrics = {primary: value, f"{primary}_se": 0.01, **dict.fromkeys(others, value + 1)}
        store.add(cell, metrics, per_clip=value + 0.01 * rng.normal(size=8))

    def cell(backbone: str, step: int, block: int, t: float, task: str, seed: int) -> Cell:
        return Cell(cfg.name, backbone, f"{backbone}-id", "image" if backbone == "walt-image" else "video", step,
                    block, t, 0, 1, task, current[task]["dataset"], clips_key(cfg.probe_clips), seed, probe_hash)

    with ResultsStore(run_dir / "results.sqlite") as store:
        for job in plan_jobs(cfg, run_dir):
            add(store, cell(job.backbone, job.step, job.block, job.t, job.task, job.probe_seed))
        for backbone, step, block, t in extra:
            for task in cfg.sweep_tasks:
                add(store, cell(backbone, step, block, t, task, cfg.probe_seeds[0]))
        for task in cfg.tasks:
            add(store, prior_cell(cfg, task, current[task]["dataset"]))
    atomic_write_json(run_dir / "study_config.json", cfg.to_dict())
    return run_dir


#: a study whose headline (block 3, t 200) is not where its sweep is centred: it sweeps the block only, at t 200,
#: one probe seed on one task, so every point of the sweep has as many results and the guess takes the lowest block
OFF_CENTRE = ['tasks=["action"]', 'sweep_tasks=["action"]', "probe_seeds=[0]", "block=3", "t=200",
              "noise_sweep=[200]", "block_sweep=[1,2,3]"]


@pytest.fixture(scope="module")
def off_centre(tmp_path_factory) -> tuple[StudyConfig, Path]:
    """:data:`OFF_CENTRE` run, with the twins' cells of an earlier noise sweep at block 2 (t 0 and 500) in the store:
    without the config, the centre of the stored cross is (2, 200)."""
    cfg = StudyConfig.preset("tiny").override(OFF_CENTRE)
    steps = cfg.twin.train.steps
    extra = tuple((b, steps, 2, t) for b in cfg.reference for t in (0.0, 500.0))
    return cfg, config_store(tmp_path_factory.mktemp("off-centre"), cfg, extra)


def test_the_config_headline_is_used_where_it_is_not_the_sweep_centre(off_centre) -> None:
    cfg, run = off_centre
    inp = load_report(run)
    assert guess_headline(inp.data, "walt-video") == (1, 200.0)  # what guessing would take from the plan's cells
    assert {b: inp.heads[b] for b in cfg.backbones} == {
        "walt-video": (3, 200.0), "walt-image": (3, 200.0), "walt-untrained": (3, 200.0), "latents": (0, 0.0),
        "pixels": (0, 0.0)}
    assert inp.heads[PRIOR] == (0, 0.0) and inp.head_notes == []
    bars, notes = relative_bars(inp.data, inp.heads, cfg.reference[1])
    assert notes == [] and {(b.backbone, b.block, b.t) for b in bars} >= {("walt-video", 3, 200.0),
                                                                          ("walt-image", 3, 200.0)}
    video = next(b for b in bars if b.backbone == "walt-video")
    assert video.stat.mean == pytest.approx(_cell_value(cfg, "walt-video", 3, 200.0, 0))
    assert video.percent == pytest.approx(100 * _cell_value(cfg, "walt-video", 3, 200.0, 0)
                                          / _cell_value(cfg, "walt-image", 3, 200.0, 0))
    marked = {(r.key.backbone, r.key.block, r.key.t) for r in table_rows(inp.data, inp.heads) if r.headline}
    assert {m for m in marked if m[0] == "walt-video"} == {("walt-video", 3, 200.0)}
    html = render_html(inp).read_text()
    assert ("<td>walt-video</td><td>video</td><td>1200</td><td class=\"num\">3</td><td class=\"num\">200</td>"
            in html)
    assert "Headline (block, t) per backbone: the study config&#x27;s" in html and "centre of" not in html
    table = headline_table(cfg, run / "results.sqlite")  # the table ``diffprobe study`` prints reads the same cells
    [top1] = [line.split() for line in table.splitlines() if line.startswith("action") and " top1 " in line]
    names = [*cfg.backbones, PRIOR]
    for name in names:
        block, t = inp.heads[name]
        assert top1[2 + names.index(name)] == f"{_cell_value(cfg, name, block, t, 0):.4f}", name


def test_without_a_config_the_headline_is_the_centre_of_the_sweep(off_centre, tmp_path) -> None:
    cfg, run = off_centre
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "results.sqlite").write_bytes((run / "results.sqlite").read_bytes())  # the same store, no config
    inp = load_report(bare)
    assert inp.cfg is None and inp.heads["walt-video"] == inp.heads["walt-image"] == (2, 200.0)
    bars, _ = relative_bars(inp.data, inp.heads)
    assert {(b.block, b.t) for b in bars if b.backbone in cfg.reference} == {(2, 200.0)}
    html = render_html(inp).read_text()
    assert "without a study config, guessed as the centre of its sweep" in html


def test_block_and_t_override_the_config_headline_where_measured(off_centre) -> None:
    cfg, run = off_centre
    inp = load_report(run, headline=(1, 200.0))
    assert inp.heads["walt-video"] == (1, 200.0) and inp.heads["walt-untrained"] == (3, 200.0)  # not the guess
    assert "walt-untrained was not measured at block 1, t 200; its own headline (block 3, t 200) is used" \
        in inp.head_notes
    assert "--block 1 --t 200 replaced it for every backbone measured there" in inp.head_rule

