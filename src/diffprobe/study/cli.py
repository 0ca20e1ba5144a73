"""`diffprobe study`: the main job (under torchrun, on every rank; rank 0 prints the table and writes the report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from diffprobe.utils.cliopts import overrides_option, quiet_option

if TYPE_CHECKING:
    from diffprobe.study.config import StudyConfig


@click.command("study")
@click.option("--preset", default="tiny", show_default=True, help="StudyConfig preset.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory; running again resumes and redoes only unfinished work.  [default: "
                   "runs/study-PRESET]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="A JSON object of overrides over the preset, one KEY: VALUE per field in the grammar of --set "
                   "(dotted keys reach nested configs; --set still applies after it). See the README's "
                   "\"Your own data and models\".")
@overrides_option
@click.option("--no-report", is_flag=True, help="Do not write report/report.html at the end.")
@quiet_option
@click.option("--estimate", is_flag=True, help="Print the study's model FLOPs per stage and the wall time they imply, "
              "and exit (runs nothing, writes nothing).")
@click.option("--peak-tflops", type=click.FloatRange(0, min_open=True), default=None,
              help="With --estimate: a device's peak (e.g. 989 for an H100's dense bf16). [default: this machine's "
                   "measured matmul peak on the study's device]")
@click.option("--mfu", type=click.FloatRange(0, 1, min_open=True), default=0.3, show_default=True,
              help="With --estimate: the fraction of the peak sustained.")
@click.option("--step-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="With --estimate: overhead per step (kernel launches, Python) on top of the FLOPs.")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --estimate: torchrun ranks sharing the work (ideal scaling).")
def study_cmd(preset: str, out_dir: Path | None, config_file: Path | None, assignments: tuple[str, ...],
              no_report: bool, quiet: bool, estimate: bool, peak_tflops: float | None, mfu: float, step_ms: float,
              devices: int) -> None:
    """Train the tokenizer and the image and video twins, probe every task, print the table, write the report.
    Launched by torchrun, the ranks share the training (DDP), the feature extraction and the probe cells."""
    from diffprobe.study.config import StudyConfig

    cfg = StudyConfig.preset(preset).override([*config_assignments(config_file), *assignments])
    out_dir = out_dir or Path(f"runs/study-{preset}")
    if estimate:
        _print_estimate(cfg, peak_tflops, mfu, step_ms, devices, out_dir / "cache")
        return
    from diffprobe.data.registry import skips_reported
    from diffprobe.study.run import run_study
    from diffprobe.study.tables import headline_table
    from diffprobe.utils.distributed import cleanup_distributed, setup_distributed
    from diffprobe.utils.lock import folder_lock

    ctx = setup_distributed(cfg.device)
    try:
        with folder_lock(out_dir, what="study"):  # the study and its report: one writer
            if cfg.caveat and ctx.is_main:
                click.echo(f"note: {cfg.caveat}", err=True)
            with skips_reported(out_dir, enabled=ctx.is_main):
                store = run_study(cfg, out_dir, progress=not quiet)
            if ctx.is_main:
                click.echo(headline_table(cfg, store))
                if not no_report:
                    from diffprobe.study.report import write_report

                    click.echo(f"report: {write_report(out_dir, study=cfg.name)}")
    finally:
        cleanup_distributed()


def config_assignments(path: Path | None) -> list[str]:
    """The ``KEY=VALUE`` overrides of a ``--config`` JSON file (a JSON object; each value is given as JSON)."""
    if path is None:
        return []
    from diffprobe.config import ConfigError
    from diffprobe.utils.io import read_json

    data = read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of KEY: VALUE overrides, got {type(data).__name__}")
    return [f"{key}={json.dumps(value)}" for key, value in data.items()]


def _print_estimate(cfg: StudyConfig, peak_tflops: float | None, mfu: float, step_ms: float, devices: int,
                    cache: Path) -> None:
    from diffprobe.study.estimate import device_flops_per_s, estimate_study, format_estimate
    from diffprobe.utils.runtime import resolve_device

    if peak_tflops:
        peak, source = peak_tflops * 1e12, "given"
    else:
        device = resolve_device(cfg.device)
        peak = device_flops_per_s(device)
        source = f"measured {'bf16' if device.type == 'cuda' else 'fp32'} matmul on {device}"
    click.echo(format_estimate(estimate_study(cfg), peak, mfu, step_ms / 1e3, devices, source, cache, cfg.stream))
