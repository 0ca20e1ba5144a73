"""`diffprobe match` and `diffprobe motion` end to end through ``diffprobe`` itself, on real formats: a TAP-Vid DAVIS
pickle of marker videos (:mod:`fixtures_tracking`), the ``pixels`` control, a tiny random diffusers CogVideoX folder
and a tiny random SD folder; and the user's mistakes, each one ``Error:`` line with exit status 2."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from fixtures_tracking import TAPVID_FRAMES, tapvid_marker_video, tapvid_occlusion, tapvid_points
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hf_models_dit import save_tiny_cogvideox  # noqa: E402
from hf_models_unet import save_tiny_sd  # noqa: E402

from diffprobe.cli import main  # noqa: E402
from diffprobe.features.cache import FeatureCache  # noqa: E402
from diffprobe.study.motion import FIGURE_NAME, RESULTS_FILE  # noqa: E402
from diffprobe.study.store import MATCH_TAG, ResultsStore  # noqa: E402
from diffprobe.tasks.matching import TASK  # noqa: E402
from diffprobe.tasks.roles import task_roles  # noqa: E402
from diffprobe.tasks.runner import prior_metrics  # noqa: E402

#: 20 videos: the one split ``all`` is carved 16 / 2 / 2 into train / val / test (data/splits.py), so val and test
#: each hold 2 clips (a standard error needs two)
VIDEOS = 20
#: 9 frames (CogVideoX's 1 + 4k) of 32 x 32: 2 x 2 tokens a frame in the tiny CogVideoX, 8 x 8 in pixels@patch=4
CLIP = "frames=9,size=32"
METRICS = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")
COG_BLOCK, COG_T = 1, 100.0  # the tiny CogVideoX has blocks 0 (latents), 1 and 2 (its two transformer blocks)


def write_marker_pickle(path: Path, videos: int = VIDEOS, height: int = 40, width: int = 64) -> Path:
    """A TAP-Vid DAVIS pickle of :mod:`fixtures_tracking`'s marker videos with their hand-made tracks; every odd
    video is the mirror image (tracks and frames) of the even ones, so the roles do not all hold one clip's copies."""
    occluded = tapvid_occlusion(TAPVID_FRAMES)  # (4, T)
    data = {}
    for i in range(videos):
        points = tapvid_points(TAPVID_FRAMES, height, width)  # (4, T, 2) normalised (x, y) at pixel centres
        if i % 2:
            points[..., 0] = 1.0 - points[..., 0]  # still a pixel centre: (W - 1 - col + 0.5) / W
        data[f"video{i:02d}"] = {"video": tapvid_marker_video(points, occluded, height, width), "points": points,
                                 "occluded": occluded.copy()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data))
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The TAP-Vid pickle and the tiny CogVideoX and SD folders, built once for the module."""
    root = tmp_path_factory.mktemp("analyses")
    return {"tapvid": write_marker_pickle(root / "tapvid" / "tapvid_davis.pkl"),
            "cogvideox": save_tiny_cogvideox(root / "cogvideox"), "sd": save_tiny_sd(root / "sd")}


@pytest.fixture(scope="module")
def data(made: dict[str, Path]) -> str:
    return f"tapvid:{made['tapvid']}@{CLIP}"


def run(args: list[str]) -> Result:
    return CliRunner().invoke(main, args)


def ok(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def one_error_line(result: Result, *needles: str) -> None:
    """A user's mistake: exit status 2, one line ``Error: ...`` naming ``needles``, no traceback."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def match_rows(store: Path) -> dict[str, dict]:
    """The store's point-tracking rows, by metric."""
    with ResultsStore(store) as results:
        return {r["metric"]: r for r in results.query(task=TASK)}


def check_metrics(rows: dict[str, dict]) -> None:
    """Every point-tracking metric stored, finite, in [0, 1], with a finite standard error."""
    for metric in METRICS:
        assert 0.0 <= rows[metric]["value"] <= 1.0, rows[metric]
    assert np.isfinite(rows["average_jaccard_se"]["value"]) and rows["average_jaccard_se"]["value"] >= 0.0


def test_match_with_pixels_on_tapvid_beats_static_points(data: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker squares are distinctive colours on grey and they move, so matching the clip's own pixels tracks
    them: its test AJ beats the static-points prior of the same test targets (measured: 0.66 against 0.02)."""
    monkeypatch.chdir(tmp_path)
    out = ok(["match", "--backbone", "pixels@patch=4", "--dataset", data, "--block", "0", "--cache", "cache",
              "--quiet", "--device", "cpu"])
    assert out.startswith(f"{TASK} (match) on pixels-p4-u1 block 0 t=0 noise seed 0"), out
    assert f"val {data} [all part val of 0.8:0.1:0.1 (seed 0), 2 clips]" in out, out
    assert f"test {data} [all part test of 0.8:0.1:0.1 (seed 0), 2 clips]" in out, out
    assert all(f"{m}=" in out for m in METRICS), out
    rows = match_rows(tmp_path / "results.sqlite")
    check_metrics(rows)
    assert {r["config_hash"][:len(MATCH_TAG)] for r in rows.values()} == {MATCH_TAG}
    assert {r["backbone"] for r in rows.values()} == {"pixels@patch=4"}
    assert f"average_jaccard={rows['average_jaccard']['value']:.4f}" in out

    prior = prior_metrics(task_roles(TASK, data), TASK, FeatureCache(tmp_path / "prior-cache"), progress=False)[0]
    assert rows["average_jaccard"]["value"] > prior["average_jaccard"] + 0.2, prior
    assert rows["average_pts_within_thresh"]["value"] > prior["average_pts_within_thresh"], prior


def test_match_with_a_tiny_cogvideox_on_tapvid(made: dict[str, Path], data: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = f"cogvideox:{made['cogvideox']}"
    args = ["match", "--backbone", spec, "--dataset", data, "--block", str(COG_BLOCK), "--t", f"{COG_T:g}",
            "--cache", "cache", "--quiet", "--device", "cpu"]
    out = ok(args)
    assert f"{TASK} (match) on cogvideox-" in out and f"block {COG_BLOCK} t={COG_T:g}" in out, out
    rows = match_rows(tmp_path / "results.sqlite")
    check_metrics(rows)
    cell = rows["average_jaccard"]
    assert cell["config_hash"].startswith(MATCH_TAG) and cell["backbone"] == spec
    assert (cell["block"], cell["t"], cell["noise_seed"]) == (COG_BLOCK, COG_T, 0)
    assert ok(args).startswith("already in results.sqlite")  # the cell is stored: a second run reads it


def motion_args(spec: str, data: str, block: int, out: str, t: float = 0.0) -> list[str]:
    return ["motion", "--backbone", spec, "--dataset", data, "--block", str(block), "--t", f"{t:g}", "--clips",
            "2", "--out", out, "--device", "cpu"]


def check_motion_folder(out: Path, config: dict) -> float:
    """``motion.json`` holds ``config`` and the clips' ratios and their mean; each figure is a PNG of a 4-column
    figure (the quadrants' variants) over 4 rows; returns the mean ratio."""
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["config"] == config
    assert results["region_names"] == ["top-left", "top-right", "bottom-left", "bottom-right"]
    names = [FIGURE_NAME.format(index=i) for i in range(2)]
    assert [r["figure"] for r in results["clips"]] == names
    assert sorted(p.name for p in out.iterdir()) == sorted([RESULTS_FILE, *names])
    assert results["mean_ratio"] == pytest.approx(np.mean([r["ratio"] for r in results["clips"]]))
    for name in names:
        with Image.open(out / name) as im:
            assert im.format == "PNG"
            w, h = im.size
            # motion_figure: (1.2 + 1.9 K) x (0.6 + 4 x 1.9) inches (K = 4 variants, square clips) at png_bytes'
            # 110 dpi, cropped tight; the title (the spec's and the clip's paths) wraps within the panels' width
            width, height = (1.2 + 1.9 * 4) * 110, (0.6 + 1.9 * 4) * 110
            assert 0.6 * width < w <= 1.05 * width and 0.6 * height < h <= 1.1 * height, im.size
            assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 50  # drawn, not blank
    return results["mean_ratio"]


def test_motion_video_model_sees_later_frames_image_model_does_not(made: dict[str, Path], data: str,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny random CogVideoX's first-frame tokens change with what plays later, most where it plays (ratio
    1.27 on these clips at block 1, t 100); the tiny SD's frame-0 tokens are identical across variants (exactly 1)."""
    monkeypatch.chdir(tmp_path)
    cog = f"cogvideox:{made['cogvideox']}"
    out = ok(motion_args(cog, data, COG_BLOCK, "motion-cog", COG_T))
    assert "mean motion ratio over 2 clip(s)" in out, out
    ratio = check_motion_folder(tmp_path / "motion-cog", {
        "backbone": cog, "dataset": data, "block": COG_BLOCK, "t": COG_T, "noise_seed": 0, "clips": 2,
        "regions": "quadrants"})
    assert ratio > 1.1

    sd = f"sd:{made['sd']}"
    ok(motion_args(sd, data, 1, "motion-sd"))
    assert check_motion_folder(tmp_path / "motion-sd", {
        "backbone": sd, "dataset": data, "block": 1, "t": 0.0, "noise_seed": 0, "clips": 2,
        "regions": "quadrants"}) == 1.0
    clips = json.loads((tmp_path / "motion-sd" / RESULTS_FILE).read_text())["clips"]
    assert all(c["inside"] == 0.0 and c["outside"] == 0.0 for c in clips)


def test_user_mistakes_are_one_error_line(made: dict[str, Path], data: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A block the model does not have and a dataset file that does not exist, for match and motion: one line,
    exit status 2, nothing stored, and an existing --out folder's files left as they were."""
    monkeypatch.chdir(tmp_path)
    cog = f"cogvideox:{made['cogvideox']}"
    gone = f"tapvid:{tmp_path / 'nowhere' / 'tapvid_davis.pkl'}@{CLIP}"
    bad_block = ("block(s) [7] out of range", "has blocks 0..2")
    no_file = (f"{tmp_path / 'nowhere' / 'tapvid_davis.pkl'}: no such file or folder",)
    match = ["match", "--backbone", cog, "--cache", "cache", "--quiet", "--device", "cpu"]
    one_error_line(run([*match, "--dataset", data, "--block", "7"]), *bad_block)
    one_error_line(run([*match, "--dataset", gone, "--block", str(COG_BLOCK)]), *no_file)
    assert not (tmp_path / "results.sqlite").exists() or not match_rows(tmp_path / "results.sqlite")

    held = tmp_path / "held"  # a folder holding a motion run's results and a file of the user's
    held.mkdir()
    (held / RESULTS_FILE).write_text(json.dumps({"config": {"backbone": "walt:elsewhere"}, "mean_ratio": 1.5}))
    (held / "notes.txt").write_text("mine\n")
    before = {p.name: p.read_bytes() for p in held.iterdir()}
    one_error_line(run(motion_args(cog, data, 7, "held")), *bad_block)
    one_error_line(run(motion_args(cog, gone, COG_BLOCK, "held")), *no_file)
    one_error_line(run(motion_args(cog, data, COG_BLOCK, "held")), "another config")
    assert {p.name: p.read_bytes() for p in held.iterdir()} == before
    assert not (tmp_path / "fresh").exists()
    one_error_line(run(motion_args(cog, data, 7, "fresh")), *bad_block)
    assert not (tmp_path / "fresh").exists()  # refused before the folder is made
