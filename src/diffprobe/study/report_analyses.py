"""The report's sections past the trained probes: the training-free matcher beside the trained point-tracking probe,
and the motion experiment (the paper's Figure 4). Formulas and protocols: docs/readouts.md, docs/motion.md."""

from __future__ import annotations

import statistics
from pathlib import Path

from diffprobe.study import figures
from diffprobe.study.config import StudyConfig
from diffprobe.study.figure_data import sweep_curves
from diffprobe.study.formatting import fmt_mean_std, fmt_num, safe_name
from diffprobe.study.headline import Heads
from diffprobe.study.motion import RESULTS_FILE
from diffprobe.study.plan import motion_config, motion_dir
from diffprobe.study.report_data import StudyData, label_name
from diffprobe.study.report_html import esc, img, note, table
from diffprobe.study.report_tasks import PRIOR, TASK_METRICS, UNBLOCKED, backbone_order
from diffprobe.tasks.roles import MATCH_TASK
from diffprobe.utils.io import read_json

MATCH_CAPTION = (
    "Training-free matching (no readout trained): each query point's feature is matched against every frame's "
    "features by cosine similarity, the track is a soft-argmax around the peak, a frame is occluded where the peak "
    "is below a threshold; temperature, window and threshold are chosen on the val split, never on test "
    "(docs/readouts.md). Dashed: the trained probe of the same backbone, where its sweep was measured.")


def _probe_of(data: StudyData, matcher: str) -> str | None:
    """The trained probe's label beside a matcher label (``name[matcher]`` -> ``name``), if measured."""
    base = label_name(matcher)
    return base if base in data.backbones and not data.is_matcher(base) else None


def match_section(data: StudyData, heads: Heads, figs: dict[str, bytes]) -> str:
    """Section: the matcher's point-tracking metrics at each backbone's headline beside the trained probe's and the
    prior's, and the matcher's noise-level and block sweeps beside the probe's."""
    out = ['<h2 id="match">5. Training-free matching (point tracking)</h2>']
    base = {b: label_name(b) for b in data.backbones if data.is_matcher(b)}  # matcher label -> backbone name
    order = backbone_order(set(base.values()))
    matchers = sorted(base, key=lambda b: (order.index(base[b]), b))  # the twins and controls first, as elsewhere
    if not matchers:
        return "".join(out) + note("No matcher cells: the study's match is off and no `diffprobe match` result was "
                                   "stored under this study.")
    metrics = TASK_METRICS[MATCH_TASK]
    primary = metrics[0]
    rows = []
    for ds in data.task_datasets(MATCH_TASK):
        prior = data.get(PRIOR, 0, *UNBLOCKED, MATCH_TASK, ds, primary)
        for m in matchers:
            block, t = heads[m]
            step = data.final_step(m)
            got = [data.get(m, step, block, t, MATCH_TASK, ds, k) for k in metrics]
            if got[0] is None:
                continue
            probe = _probe_of(data, m)
            trained = None if probe is None else data.get(probe, data.final_step(probe), block, t, MATCH_TASK, ds,
                                                          primary)
            rows.append([esc(data.measure(MATCH_TASK, ds)), esc(label_name(m)), esc(block), esc(fmt_num(t))]
                        + [esc(fmt_mean_std(s.mean, s.std, s.n)) if s else "" for s in got]
                        + [esc(fmt_mean_std(trained.mean, trained.std, trained.n)) if trained else "",
                           esc(fmt_num(prior.mean)) if prior else ""])
    out.append(table(["task", "backbone", "block", "t", *(f"matcher {k}" for k in metrics), f"trained probe {primary}",
                      f"prior {primary}"], rows, [False, False, True, True] + [True] * (len(metrics) + 2)))
    curves, _ = sweep_curves(data, heads, matchers, [MATCH_TASK])
    if any(len(c.xs) > 1 for c in curves):
        probes = [p for p in (_probe_of(data, m) for m in matchers) if p is not None]
        trained, _ = sweep_curves(data, heads, probes, [MATCH_TASK])
        swept = {(label_name(c.backbone), c.axis) for c in curves if len(c.xs) > 1}
        figs["fig_match_sweeps.png"] = figures.png_bytes(figures.sweeps_figure(
            curves + [c for c in trained if (c.backbone, c.axis) in swept and len(c.xs) > 1],
            dashed={c.backbone for c in trained}))
        out.append(img(figs["fig_match_sweeps.png"], "matcher vs noise level and block", MATCH_CAPTION))
    else:
        out.append(f"<p class=\"meta\">{MATCH_CAPTION}</p>")
    return "".join(out)


def motion_section(run_dir: Path, cfg: StudyConfig | None, figs: dict[str, bytes]) -> str:
    """Section: each backbone's motion ratio (mean and spread over clips) and, for the reference pair, the figure
    of the first clip."""
    out = ['<h2 id="motion">6. Motion sensitivity of first-frame tokens (paper Fig. 4)</h2>']
    if cfg is None or not cfg.motion_clips:
        return "".join(out) + note("The study config plans no motion experiment (motion_clips 0, or no config).")
    rows = []
    for name in cfg.backbones:
        config = motion_config(cfg, name)
        path = motion_dir(run_dir, name, config) / RESULTS_FILE
        if not path.is_file():
            rows.append([esc(name), esc(config.block), esc(fmt_num(config.t)), "", "not run yet", ""])
            continue
        result = read_json(path)
        ratios = [c["ratio"] for c in result["clips"]]
        spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        rows.append([esc(name), esc(config.block), esc(fmt_num(config.t)), esc(len(ratios)),
                     f"<b>{esc(fmt_mean_std(result['mean_ratio'], spread, len(ratios)))}</b>",
                     esc(f"{min(ratios):.3f} – {max(ratios):.3f}")])
        if name in cfg.reference:
            fig = path.parent / result["clips"][0]["figure"]
            figs[f"fig_motion_{safe_name(name)}.png"] = fig.read_bytes()
    out.append(table(["backbone", "block", "t", "clips", "motion ratio (mean ± std over clips)", "range"], rows,
                     [False, True, True, True, True, True]))
    for name in cfg.reference:
        key = f"fig_motion_{safe_name(name)}.png"
        if key in figs:
            out.append(img(figs[key], f"motion figure of {name}", (
                f"{esc(name)}, first test clip. Each column is one variant of the clip: only the marked region plays, "
                "the rest stays at frame 0, so frame 0 is the same in every variant. Rows: frame 0 with the region "
                "played, the last frame, the first principal component of the variant's first-frame tokens (one "
                "PCA over the variants) and each token's change (distance to its mean over the variants). Motion "
                "ratio: mean change of tokens inside the playing region over outside it; 1 for a model that reads "
                "frame 0 alone, at most K&minus;1 (docs/motion.md).")))
    return "".join(out)
