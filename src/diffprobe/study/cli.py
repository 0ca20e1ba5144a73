"""`diffprobe study`: the main job (under torchrun, on every rank; rank 0 prints the table and writes the report)."""

from __future__ import annotations

from pathlib import Path

import click

from diffprobe.utils.cliopts import overrides_option, quiet_option


@click.command("study")
@click.option("--preset", default="tiny", show_default=True, help="StudyConfig preset.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory; running again resumes and redoes only unfinished work.  [default: "
                   "runs/study-PRESET]")
@overrides_option
@click.option("--no-report", is_flag=True, help="Do not write report/report.html at the end.")
@quiet_option
def study_cmd(preset: str, out_dir: Path | None, assignments: tuple[str, ...], no_report: bool, quiet: bool) -> None:
    """Train the tokenizer and the image and video twins, probe every task, print the table, write the report.
    Launched by torchrun, the ranks share the training (DDP), the feature extraction and the probe cells."""
    from diffprobe.study.config import StudyConfig
    from diffprobe.study.run import headline_table, run_study
    from diffprobe.train.distributed import cleanup_distributed, setup_distributed

    cfg = StudyConfig.preset(preset).override(assignments)
    out_dir = out_dir or Path(f"runs/study-{preset}")
    ctx = setup_distributed(cfg.device)
    try:
        if cfg.caveat and ctx.is_main:
            click.echo(f"note: {cfg.caveat}", err=True)
        store = run_study(cfg, out_dir, progress=not quiet)
        if ctx.is_main:
            click.echo(headline_table(cfg, store))
            if not no_report:
                from diffprobe.study.report import write_report

                click.echo(f"report: {write_report(out_dir, study=cfg.name)}")
    finally:
        cleanup_distributed()
