"""``diffprobe report RUN_DIR``: one self-contained HTML page (plus its PNG figures) from a study's run directory.

Reads ``RUN_DIR/results.sqlite`` and, when present, ``RUN_DIR/generation.json``, ``RUN_DIR/pca/*.npz`` and
``RUN_DIR/study_config.json``; writes ``RUN_DIR/report/report.html`` and ``RUN_DIR/report/fig_*.png``, and prints
the headline cells as a table. Sections and formulas are described in docs/report.md.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import click

from diffprobe.data.splits import ROLES
from diffprobe.study import figures, pca
from diffprobe.study.config import StudyConfig
from diffprobe.study.figure_data import (
    TableRow,
    read_generation,
    relative_bars,
    scale_points,
    summary_sentences,
    sweep_curves,
    table_rows,
)
from diffprobe.study.formatting import fmt_mean_std, fmt_num, fmt_pct, safe_name
from diffprobe.study.headline import Heads, headline_rule, resolve_headlines
from diffprobe.study.plan import planned_cells
from diffprobe.study.report_analyses import match_section, motion_section
from diffprobe.study.report_data import StudyData, load_study
from diffprobe.study.report_html import caveat_box, esc, img, note, page, table
from diffprobe.study.report_tasks import IMAGE, TASK_METRICS, VIDEO, control_legend
from diffprobe.utils.io import atomic_write_bytes, atomic_write_text, read_json

FORMULA = (
    "Relative value of a backbone with mean <i>v</i> against the image twin's mean <i>i</i> (same task, primary "
    "metric, each at its headline block and t and final checkpoint): <b>100&middot;v/i</b> when higher is better, "
    "<b>100&middot;i/v</b> when lower is better (errors), so above 100% is always better and 200% means double the "
    "accuracy or half the error. Means are over replicates (noise seed &times; probe seed); whiskers span the "
    "backbone's worst to best replicate, each divided the same way by <i>i</i>."
)


def _datasets(data: StudyData) -> str:
    """The datasets of the results: each label, the spec of each role and the hash the store keys them by."""
    rows = []
    for label, info in sorted(data.datasets.items()):
        roles = info.roles or {}
        specs = [esc(roles.get(r, "")) for r in ROLES] if roles else ['<i>not recorded</i>'] + [""] * (len(ROLES) - 1)
        rows.append([esc(label), *specs, f"<code>{esc(info.digest)}</code>"])
    return ("<h3>datasets</h3>" + table(["dataset", *(f"{r} spec" for r in ROLES), "hash"], rows)
            + '<p class="meta">Results on different datasets are different cells: a mean is only ever over seeds.</p>')


def _header(run_dir: Path, data: StudyData, heads: Heads, caveat: str, rule: str) -> str:
    rows = []
    for b in data.backbones:
        steps = data.steps(b)
        tasks = sorted({k.task for k in data.stats if k.backbone == b})
        rows.append([esc(b), esc(data.mode(b)), esc(", ".join(str(s) for s in steps)), esc(heads[b][0]),
                     esc(fmt_num(heads[b][1])), esc(len(tasks))])
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    meta = (f'<table class="meta"><tr><td>run directory</td><td><code>{esc(run_dir)}</code></td></tr>'
            f"<tr><td>report written</td><td>{esc(now)}</td></tr>"
            f"<tr><td>results</td><td>{data.n_rows} metric rows, {len(data.stats)} cells, "
            f"from {esc(data.first_time)} to {esc(data.last_time)}</td></tr>"
            f"<tr><td>config hashes</td><td>{esc(', '.join(data.config_hashes))}</td></tr></table>")
    out = [f"<h1>diffprobe study: {esc(data.study)}</h1>", *([caveat_box(caveat)] if caveat else []), meta,
           '<nav><a href="#summary">summary</a><a href="#fig1">video vs image</a><a href="#fig5">noise &amp; block'
           '</a><a href="#scaling">size &amp; budget</a><a href="#pca">PCA</a><a href="#match">matching</a>'
           '<a href="#motion">motion</a><a href="#table">full table</a></nav>',
           table(["backbone", "mode", "checkpoint steps", "headline block", "headline t", "tasks"], rows,
                 [False, False, False, True, True, True]), _datasets(data)]
    cfg_path = run_dir / "study_config.json"
    if cfg_path.is_file():
        cfg = json.dumps(read_json(cfg_path), indent=2, sort_keys=True)
        out.append(f"<details><summary>study config (<code>study_config.json</code>)</summary><pre>{esc(cfg)}</pre>"
                   "</details>")
    else:
        out.append(note(f"{cfg_path.name} not found in the run directory: no config shown."))
    out.append(f'<p class="meta">{esc(rule)} Highlighted rows in the full table.</p>')
    return "\n".join(out)


def study_config(run_dir: Path) -> StudyConfig | None:
    """The run's ``study_config.json`` as a :class:`StudyConfig`; ``None`` for a run without one, or with a config
    written before studies named their backbones and reference pair (its headlines are then guessed)."""
    cfg_path = run_dir / "study_config.json"
    data = read_json(cfg_path) if cfg_path.is_file() else {}
    return StudyConfig.load(cfg_path) if {"backbones", "reference"} <= set(data) else None


def _summary(bars: list, notes: list[str], pair: tuple[str, str]) -> str:
    video, image = pair
    sentences = summary_sentences(bars, video, image)
    items = "".join(f"<li>{esc(s)}</li>" for s in sentences)
    body = f'<ul>{items}</ul>' if sentences else f"<p>No task has both {video} and {image} results.</p>"
    return (f'<h2 id="summary">Summary</h2><div class="summary">{body}</div>'
            + "".join(note(n) for n in notes))


def _fig1(bars: list, notes: list[str], figs: dict[str, bytes], image: str) -> str:
    out = ['<h2 id="fig1">1. Video vs image per task (paper Fig. 1)</h2>']
    if not bars:
        return "".join(out) + "".join(note(n) for n in notes)
    figs["fig_video_vs_image.png"] = figures.png_bytes(figures.relative_bars_figure(bars, image))
    legend = "; ".join(esc(line) for line in control_legend({b.backbone for b in bars}))
    out.append(img(figs["fig_video_vs_image.png"], "video vs image per task",
                   FORMULA + (f" Controls: {legend}." if legend else "")))
    rows = [[esc(b.task), esc(b.dataset), esc(b.metric), esc(b.backbone), esc(b.block), esc(fmt_num(b.t)),
             esc(fmt_mean_std(b.stat.mean, b.stat.std, b.stat.n)), esc(b.stat.n), esc(fmt_pct(b.percent)),
             esc(f"{fmt_pct(b.lo)} – {fmt_pct(b.hi)}" if b.stat.n > 1 else "")] for b in bars]
    out.append("<details><summary>numbers behind the figure</summary>"
               + table(["task", "dataset", "metric", "backbone", "block", "t", "mean ± std", "n", "relative to image",
                        "replicate range"], rows, [False, False, False, False, True, True, True, True, True, True])
               + "</details>")
    return "".join(out) + "".join(note(n) for n in notes)


def _fig5(data: StudyData, heads: Heads, figs: dict[str, bytes]) -> str:
    out = ['<h2 id="fig5">2. Noise level and block (paper Fig. 5)</h2>']
    curves, notes = sweep_curves(data, heads)
    if not any(len(c.xs) > 1 for c in curves):
        return "".join(out) + note("No backbone was measured at more than one noise level or block: nothing to "
                                   "sweep.") + "".join(note(n) for n in notes)
    figs["fig_sweeps.png"] = figures.png_bytes(figures.sweeps_figure(curves))
    figs["fig_relative_change.png"] = figures.png_bytes(figures.relative_change_figure(curves))
    out.append(img(figs["fig_relative_change.png"], "relative change vs noise level and block",
                   "Relative change of each task's primary metric from the curve's own value at its headline point "
                   "(0%): <b>100&middot;(v/h &minus; 1)</b> when higher is better, <b>100&middot;(h/v &minus; 1)</b> "
                   "when lower is better (<i>v</i> the value, <i>h</i> the headline value); positive = better. "
                   "Left: vs noise level t at the headline block; right: vs block at the headline t."))
    out.append(img(figs["fig_sweeps.png"], "metric vs noise level and block",
                   "Absolute primary metric (mean over replicates, band = ±1 std) vs t at the headline block (left) "
                   "and vs block at the headline t (right); circles mark the headline point. A backbone measured at "
                   "a single point on an axis is drawn as a dashed horizontal line."))
    return "".join(out) + "".join(note(n) for n in notes)


def _scaling(run_dir: Path, data: StudyData, heads: Heads, figs: dict[str, bytes], image: str) -> str:
    out = ['<h2 id="scaling">3. Model size and training budget</h2>']
    gen_path = run_dir / "generation.json"
    generation = read_generation(read_json(gen_path), gen_path) if gen_path.is_file() else []
    points, notes = scale_points(data, heads, generation, image)
    multi_step = any(len(data.steps(b)) > 1 for b in data.backbones)
    sizes = any("@" in b for b in data.backbones)
    if not points or not (generation or multi_step or sizes):
        missing = [] if gen_path.is_file() else ["generation.json is absent"]
        if not multi_step:
            missing.append("every backbone has a single checkpoint step")
        if not sizes:
            missing.append("there are no model-size variants (backbone@size)")
        reason = "; ".join(missing) if missing else "no point has every task at its headline"
        return "".join(out) + note(f"Section skipped: {reason}.") + "".join(note(n) for n in notes)
    if not gen_path.is_file():
        notes.insert(0, "generation.json is absent: generation quality is not plotted.")
    figs["fig_scaling.png"] = figures.png_bytes(figures.scaling_figure(points, image))
    out.append(img(figs["fig_scaling.png"], "representation vs generation quality",
                   f"Representation quality of a (backbone, checkpoint) = mean over tasks of its primary metric "
                   f"relative to {image} at its final checkpoint (100&middot;v/i, or 100&middot;i/v for errors), "
                   f"each at the backbone's headline block and t. Fréchet distance from "
                   f"<code>generation.json</code> (lower is better)."))
    tasks = list(points[0].per_task)  # every point has the same tasks, in the report's order
    rows = [[esc(p.backbone), esc(p.mode), esc(p.model if p.model is not None else ""), esc(p.step),
             esc(fmt_num(p.frechet) if p.frechet is not None else ""), f"<b>{esc(fmt_pct(p.quality))}</b>"]
            + [esc(fmt_pct(p.per_task[t])) for t in tasks] for p in points]
    out.append(table(["backbone", "mode", "model", "step", "Fréchet distance", "quality", *tasks], rows,
                     [False, False, False, True, True, True] + [True] * len(tasks)))
    return "".join(out) + "".join(note(n) for n in notes)


def _pca(run_dir: Path, figs: dict[str, bytes]) -> str:
    out = ['<h2 id="pca">4. PCA of features (paper Fig. 3)</h2>']
    files = sorted((run_dir / "pca").glob("*.npz"))
    if not files:
        return "".join(out) + note(f"No {run_dir / 'pca'}/*.npz files: no PCA pictures.")
    for path in files:
        frames, tokens = pca.load_pca_npz(path)
        name = f"fig_pca_{safe_name(path.stem)}.png"
        figs[name] = figures.png_bytes(pca.pca_figure(frames, tokens, title=path.stem), dpi=100)
        out.append(f"<h3>{esc(path.stem)}</h3>")
        out.append(img(figs[name], f"PCA of features, clip {path.stem}",
                       "Top row: input frames. Per backbone: the first three principal components of its tokens as "
                       "RGB, then the first component alone (inferno colour map). Each backbone's PCA is fitted on "
                       "all its tokens of this clip; each axis is signed so its projections have positive skew "
                       "(the salient minority is bright) and scaled from its 1st to 99th percentile."))
    return "".join(out)


def _full_table(data: StudyData, heads: Heads) -> str:
    out = ['<h2 id="table">7. Full table</h2>',
           "<p class=\"meta\">Mean ± sample std over replicates (noise seed &times; probe seed), n replicates. "
           "<b>Bold</b>: best mean of its task, dataset and metric in the study. Highlighted: the backbone's "
           "headline (block, t) at its final checkpoint.</p>"]
    rows = table_rows(data, heads)
    for task in data.tasks:
        mine = [r for r in rows if r.key.task == task]
        cells = []
        for r in mine:
            ms = esc(fmt_mean_std(r.stat.mean, r.stat.std, r.stat.n))
            cells.append([esc(r.key.dataset), esc(r.key.metric), esc(r.key.backbone), esc(r.key.mode), esc(r.key.step),
                          esc(r.key.block), esc(fmt_num(r.key.t)), f"<b>{ms}</b>" if r.best else ms,
                          esc(r.stat.n)])
        out.append(f"<h3>{esc(task)}</h3>")
        out.append(table(["dataset", "metric", "backbone", "mode", "step", "block", "t", "mean ± std", "n"], cells,
                         [False, False, False, False, True, True, True, True, True],
                         ["headline" if r.headline else "" for r in mine]))
    return "".join(out)


@dataclass
class ReportInput:
    """What a report is made of: the run, its config (None without one), its caveat and its averaged results."""

    run_dir: Path
    cfg: StudyConfig | None
    caveat: str
    data: StudyData
    heads: Heads  #: :func:`~diffprobe.study.headline.resolve_headlines`
    head_notes: list[str]
    head_rule: str  #: how the headlines were chosen, in words (:func:`~diffprobe.study.headline.headline_rule`)
    pair: tuple[str, str]  #: (video, image) reference pair


def _caveat(run_dir: Path) -> str:
    """The study config's ``caveat`` (e.g. the quick preset's: trained too little to measure anything); "" if none."""
    cfg_path = run_dir / "study_config.json"
    raw = read_json(cfg_path) if cfg_path.is_file() else {}
    caveat = raw.get("caveat", "") if isinstance(raw, dict) else ""
    return caveat.strip() if isinstance(caveat, str) else ""


def load_report(run_dir: Path, study: str | None = None, headline: tuple[int, float] | None = None) -> ReportInput:
    """Read a run directory's results and config, and choose each backbone's headline (block, t): the config's, or
    for a run without one the centre of its sweep (:func:`~diffprobe.study.headline.resolve_headlines`).

    ``study`` selects a study when the store holds several; ``headline=(block, t)`` overrides the headline point
    of every backbone measured there. Raises ``ValueError`` naming the file when the store is missing or empty.
    """
    run_dir = Path(run_dir)
    cfg = study_config(run_dir)
    keep = planned_cells(cfg, run_dir) if cfg is not None else None
    data = load_study(run_dir / "results.sqlite", study, keep)
    heads, head_notes = resolve_headlines(cfg, data, headline)
    pair = cfg.reference if cfg is not None else (VIDEO, IMAGE)
    return ReportInput(run_dir, cfg, _caveat(run_dir), data, heads, head_notes, headline_rule(cfg, headline), pair)


def render_html(inp: ReportInput) -> Path:
    """Write ``run_dir/report/report.html`` and its ``fig_*.png`` figures; return the HTML path."""
    run_dir, data, heads, pair = inp.run_dir, inp.data, inp.heads, inp.pair
    bars, bar_notes = relative_bars(data, heads, pair[1])
    figs: dict[str, bytes] = {}
    body = "\n".join([
        _header(run_dir, data, heads, inp.caveat, inp.head_rule),
        _summary(bars, data.notes + inp.head_notes, pair),
        _fig1(bars, bar_notes, figs, pair[1]),
        _fig5(data, heads, figs),
        _scaling(run_dir, data, heads, figs, pair[1]),
        _pca(run_dir, figs),
        match_section(data, heads, figs),
        motion_section(run_dir, inp.cfg, figs),
        _full_table(data, heads),
    ])
    out_dir = run_dir / "report"
    for name, png in figs.items():
        atomic_write_bytes(out_dir / name, png)
    for stale in out_dir.glob("fig_*.png"):  # figures of an earlier report that this one no longer has
        if stale.name not in figs:
            stale.unlink()
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, page(f"diffprobe report: {data.study}", body))
    return html_path


def write_report(run_dir: Path, study: str | None = None, headline: tuple[int, float] | None = None) -> Path:
    """Write ``run_dir/report/report.html`` and its ``fig_*.png`` figures; return the HTML path (arguments as
    :func:`load_report`)."""
    return render_html(load_report(run_dir, study, headline))


def headline_rows(data: StudyData, heads: Heads) -> list[TableRow]:
    """The rows the printed table shows: for each task, dataset and backbone, the primary metric (every metric of
    a task without a known one) at the backbone's headline and final checkpoint, or, where that cell was not
    measured, at every (block, t) it was measured at its final checkpoint, so that no result goes unshown."""
    rows = table_rows(data, heads)
    out = []
    for task, ds in data.measures():
        metrics = TASK_METRICS[task][:1] if task in TASK_METRICS else sorted({r.key.metric for r in rows
                                                                           if r.key.task == task})
        for b in data.backbones:
            mine = [r for r in rows if r.key.task == task and r.key.dataset == ds and r.key.backbone == b
                    and r.key.metric in metrics and r.key.step == data.final_step(b)]
            out += [r for r in mine if r.headline] or mine
    return out


def text_table(inp: ReportInput) -> str:
    """The printed report: the config's caveat first, then :func:`headline_rows` as a plain-text table."""
    data = inp.data
    head = ["task", "dataset", "metric", "backbone", "block", "t", "mean ± std", "n"]
    rows = [[r.key.task, r.key.dataset, r.key.metric, r.key.backbone, str(r.key.block), fmt_num(r.key.t),
             fmt_mean_std(r.stat.mean, r.stat.std, r.stat.n), str(r.stat.n)] for r in headline_rows(data, inp.heads)]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    right = {4, 5, 6, 7}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                strict=True))).rstrip()

    n_data = len({k.dataset for k in data.stats})
    out = [f"note: {inp.caveat}"] if inp.caveat else []
    out += [f"study {data.study}: {len(data.backbones)} backbone(s), {len(data.tasks)} task(s), {n_data} dataset(s);"
            " each backbone at its headline block and t and final checkpoint; mean ± std over n seeds",
            line(head), "-" * len(line(head)), *(line(r) for r in rows)]
    return "\n".join(out)


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--study", default=None, help="Study to report when the store holds several.")
@click.option("--block", type=click.IntRange(min=0), default=None,
              help="Headline block (with --t) of every backbone measured there; default: the study config's, or "
                   "without one the centre of each backbone's sweep.")
@click.option("--t", "t", type=click.FloatRange(0, 1000), default=None,
              help="Headline noise level 0..1000 (with --block).")
def report(run_dir: Path, study: str | None, block: int | None, t: float | None) -> None:
    """Print the headline cells and write RUN_DIR/report/report.html (self-contained) and its PNG figures from
    RUN_DIR/results.sqlite."""
    if (block is None) != (t is None):
        raise click.UsageError("give both --block and --t, or neither")
    inp = load_report(run_dir, study, None if block is None else (block, t))
    click.echo(text_table(inp))
    click.echo(f"report: {render_html(inp)}")
