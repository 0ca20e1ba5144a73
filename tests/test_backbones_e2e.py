"""Every external backbone kind end to end on Probe World through the CLI, with its tiny random model saved the way
its library saves it: `diffprobe probe --backbone KIND:DIR` extracts, trains the probe and stores its result,
`diffprobe match` tracks points with no readout and `diffprobe motion` measures its first-frame tokens; and a study
whose reference pair is an image model (sd) and a video model (svd) runs and reports, its matcher and motion
analyses included."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hf_models_dit import save_tiny_cogvideox, save_tiny_dit, save_tiny_latte, save_tiny_wan
from hf_models_unet import save_tiny_animatediff, save_tiny_sd, save_tiny_svd
from hf_models_vision import save_tiny_dinov2, save_tiny_siglip, save_tiny_videomae, save_tiny_vjepa2

from diffprobe.cli import main
from diffprobe.study.store import ResultsStore

WORLD = "probeworld:tiny@train_size=8,val_size=4,test_size=4,num_tracks=8"
PROBE = ["--set", "steps=2", "--set", "batch_size=4", "--set", "eval_batch_size=4", "--set", "readout.width=16",
         "--set", "readout.heads=2", "--set", "warmup_steps=1", "--set", "eval_every=0"]

#: kind -> (tiny model writer, noise level to probe at, how the kind sees a clip)
KINDS: dict[str, tuple[Callable[[Path], Path], float, str]] = {
    "sd": (save_tiny_sd, 200.0, "image"),
    "animatediff": (save_tiny_animatediff, 200.0, "video"),
    "svd": (save_tiny_svd, 200.0, "video"),
    "dit": (save_tiny_dit, 200.0, "image"),
    "cogvideox": (save_tiny_cogvideox, 200.0, "video"),
    "wan": (save_tiny_wan, 200.0, "video"),
    "latte": (save_tiny_latte, 200.0, "video"),
    "dinov2": (save_tiny_dinov2, 0.0, "image"),
    "siglip": (save_tiny_siglip, 0.0, "image"),
    "videomae": (save_tiny_videomae, 0.0, "video"),
    "vjepa2": (save_tiny_vjepa2, 0.0, "video"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_extracts_and_probes_on_probe_world(kind, tmp_path) -> None:
    save, t, mode = KINDS[kind]
    folder = save(tmp_path / kind)
    store = tmp_path / "results.sqlite"
    result = CliRunner().invoke(main, [
        "probe", "--task", "action", "--backbone", f"{kind}:{folder}", "--block", "1", "--t", str(t),
        "--dataset", WORLD, "--store", str(store), "--cache", str(tmp_path / "cache"), "--quiet", *PROBE],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with ResultsStore(store) as results:
        rows = results.query(task="action")
    values = {r["metric"]: r["value"] for r in rows}
    assert np.isfinite(values["top1"]) and {r["mode"] for r in rows} == {mode}
    assert {r["identity"] for r in rows} != {f"{kind}:{folder}"} and rows[0]["identity"].startswith(kind)

    common = ["--backbone", f"{kind}:{folder}", "--block", "1", "--t", str(t), "--dataset", WORLD]
    matched = CliRunner().invoke(main, ["match", *common, "--store", str(store), "--cache", str(tmp_path / "cache"),
                                        "--quiet"], catch_exceptions=False)
    assert matched.exit_code == 0, matched.output
    with ResultsStore(store) as results:
        [aj] = [r["value"] for r in results.query(task="point_tracking", metric="average_jaccard")]
    assert 0 <= aj <= 1
    moved = CliRunner().invoke(main, ["motion", *common, "--clips", "1", "--out", str(tmp_path / "motion")],
                               catch_exceptions=False)
    assert moved.exit_code == 0, moved.output
    ratio = json.loads((tmp_path / "motion" / "motion.json").read_text())["mean_ratio"]
    assert ratio == 1.0 if mode == "image" else np.isfinite(ratio)  # an image model reads frame 0 alone


def test_a_study_with_sd_and_svd_as_the_reference_pair(tmp_path) -> None:
    from diffprobe.study.config import StudyConfig
    from diffprobe.study.report import write_report
    from diffprobe.study.run import run_study
    from diffprobe.study.tables import headline_table

    sd, svd = save_tiny_sd(tmp_path / "sd"), save_tiny_svd(tmp_path / "svd")
    backbones = {"svd": f"svd:{svd}", "sd": f"sd:{sd}"}
    cfg = StudyConfig.preset("tiny").override([
        f"dataset={WORLD}", f"backbones={json.dumps(backbones)}", 'reference=["svd", "sd"]', "control=",
        'tasks=["action","depth"]', 'sweep_tasks=["action"]', "budget_steps=[]", "sizes={}", "block=1", "t=200",
        "noise_sweep=[0,200]", "block_sweep=[1,2]", "probe.steps=2", "probe.eval_batch_size=4",
        'probe_clips={"train": 8, "val": 4, "test": 4}', "pca_clips=1", "motion_clips=1"])
    run_study(cfg, tmp_path / "study", progress=False)
    assert not (tmp_path / "study" / "tokenizer").exists() and not (tmp_path / "study" / "twins").exists()
    table = headline_table(cfg, tmp_path / "study" / "results.sqlite")
    assert "svd" in table and "sd" in table and "video/image" in table
    with ResultsStore(tmp_path / "study" / "results.sqlite") as store:
        rows = store.query(study=cfg.name, metric="top1")
    assert {(r["backbone"], r["t"]) for r in rows if r["block"] == 1} >= {("svd", 0.0), ("svd", 200.0),
                                                                            ("sd", 0.0), ("sd", 200.0)}
    html = write_report(tmp_path / "study", study=cfg.name).read_text()
    assert (tmp_path / "study" / "report" / "fig_video_vs_image.png").is_file()  # svd relative to sd, per task
    assert "No task has both" not in html and "svd" in html
    matching = html[html.index('<h2 id="match">'):html.index('<h2 id="motion">')]
    assert "svd" in matching and "sd" in matching and "matcher average_jaccard" in matching
    motion = html[html.index('<h2 id="motion">'):html.index('<h2 id="table">')]
    assert 'alt="motion figure of svd"' in motion and 'alt="motion figure of sd"' in motion
    assert "motion ratio" in table and "training-free matcher" in table
