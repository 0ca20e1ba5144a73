"""`diffprobe train-tokenizer`, `diffprobe train` and `diffprobe sample`."""

from __future__ import annotations

from pathlib import Path

import click

from diffprobe.utils.cliopts import cache_option, overrides_option, quiet_option, resume_option

dataset_train_option = click.option(
    "--dataset", default=None, metavar="SPEC",
    help="Dataset spec to train on (its train role), e.g. videos:DIR@size=32,frames=9 (default: the preset's; for "
         "`train`, the tokenizer's).")
force_option = click.option(
    "--force", is_flag=True,
    help="Start over in a folder that holds a run, or continue a finished run past its export: what it held is "
         "first moved into OUT/previous/<time>/ (nothing is deleted).")
out_option = click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
    help="Run directory (config, checkpoints, metrics.csv, TensorBoard, exported model); one run per folder.")


def _preset_given(ctx: click.Context) -> bool:
    return ctx.get_parameter_source("preset") is click.core.ParameterSource.COMMANDLINE


def _same_location(run_dir: Path, recorded: str, given: str, spec: bool) -> bool:
    """Whether two recorded paths (or dataset specs) of ``run_dir`` name the same place."""
    from diffprobe.models.exports import resolve_recorded_path, resolve_recorded_spec

    try:
        if spec:
            return resolve_recorded_spec(run_dir, recorded) == resolve_recorded_spec(run_dir, given)
        return resolve_recorded_path(run_dir, recorded, "").resolve() == resolve_recorded_path(run_dir, given,
                                                                                                "").resolve()
    except ValueError:
        return recorded == given


def _run_config(out_dir: Path, cls: type, preset: str, preset_given: bool, assignments: tuple[str, ...],
                given: dict[str, str], resume: bool, force: bool):
    """The config to train with in ``out_dir``: a new run's (preset, then ``--set``, then the options in ``given``,
    paths recorded relative to the run folder), or with ``--resume`` the run's saved config with the user's changes,
    checked by :func:`~diffprobe.train.rundir.continue_run`. Prints what it decided."""
    from diffprobe.config import ConfigError
    from diffprobe.train.rundir import RUN_CONFIG_FILE, continue_run, holds_run, move_aside

    if holds_run(out_dir):
        if resume:
            saved = cls.load(out_dir / RUN_CONFIG_FILE)
            base = cls.preset(preset).override(assignments) if preset_given else \
                saved.override(assignments, scale_schedule=False)
            paths = {k: v for k, v in given.items()
                     if not _same_location(out_dir, getattr(saved, k), v, spec=k == "dataset")}
            cfg, notes = continue_run(out_dir, saved, base.replace(**paths), force)
            for note in notes:
                click.echo(note, err=True)
            return cfg
        if not force:
            raise ConfigError(f"{out_dir}: holds a run already ({RUN_CONFIG_FILE}); continue it with --resume, start "
                              f"over with --force (what it holds is moved into {out_dir}/previous/), or choose "
                              f"another --out")
        click.echo(f"--force: moved the earlier run into {move_aside(out_dir)}", err=True)
    elif resume:
        raise ConfigError(f"{out_dir}: no run to resume (no {RUN_CONFIG_FILE}); drop --resume to start one")
    return cls.preset(preset).override(assignments).replace(**given)


@click.command("train-tokenizer")
@click.option("--preset", default="tiny", show_default=True, help="TokenizerRunConfig preset (tiny, small).")
@out_option
@dataset_train_option
@overrides_option
@cache_option
@resume_option
@force_option
@quiet_option
@click.pass_context
def train_tokenizer_cmd(ctx: click.Context, preset: str, out_dir: Path, dataset: str | None,
                        assignments: tuple[str, ...], cache_dir: Path, resume: bool, force: bool, quiet: bool) -> None:
    """Train the causal video tokenizer (on Probe World unless --dataset) and fix its latent scale."""
    from diffprobe.data.registry import skips_reported
    from diffprobe.features.cache import FeatureCache
    from diffprobe.train.export import read_export
    from diffprobe.train.rundir import record_spec
    from diffprobe.train.tokenizer import TokenizerRunConfig, train_tokenizer
    from diffprobe.utils.lock import folder_lock

    with folder_lock(out_dir):
        given = {"dataset": record_spec(dataset, out_dir)} if dataset else {}
        cfg = _run_config(out_dir, TokenizerRunConfig, preset, _preset_given(ctx), assignments, given, resume, force)
        with skips_reported(out_dir):
            path = train_tokenizer(cfg, out_dir, FeatureCache(cache_dir), resume=resume, progress=not quiet)
    meta = read_export(out_dir, "tokenizer")
    click.echo(f"tokenizer: {path}  latent_scale={meta['latent_scale']:.4f}  latent_shift={meta['latent_shift']:.4f}"
               f"  train PSNR={meta['train_psnr_db']:.2f} dB")


@click.command("train")
@click.option("--model", "preset", default="walt-tiny", show_default=True,
              help="DenoiserRunConfig preset (walt-tiny, walt-S).")
@click.option("--mode", type=click.Choice(["image", "video"]), default=None,
              help="image: every frame is its own 1-frame sample; video: whole clips. Required for a new run.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, help="Run directory of a trained tokenizer. Required for a new run.")
@out_option
@dataset_train_option
@click.option("--allow-size-change", is_flag=True,
              help="Train on clips of another size than the tokenizer was trained on (otherwise an error).")
@overrides_option
@cache_option
@resume_option
@force_option
@quiet_option
@click.pass_context
def train_cmd(ctx: click.Context, preset: str, mode: str | None, tokenizer_dir: Path | None, out_dir: Path,
              dataset: str | None, allow_size_change: bool, assignments: tuple[str, ...], cache_dir: Path,
              resume: bool, force: bool, quiet: bool) -> None:
    """Train a WALT twin (image or video mode) on the tokenizer's latents of a dataset (the tokenizer's own data
    unless --dataset; image mode: every frame of its clips on its own)."""
    from diffprobe.config import ConfigError
    from diffprobe.data.registry import open_dataset, skips_reported
    from diffprobe.features.cache import FeatureCache
    from diffprobe.models.exports import check_clip_size, export_clip_size, resolve_recorded_spec
    from diffprobe.train.denoiser import DenoiserRunConfig, train_denoiser
    from diffprobe.train.export import read_export
    from diffprobe.train.rundir import holds_run, record_path, record_spec
    from diffprobe.utils.lock import folder_lock

    with folder_lock(out_dir):
        new = not (resume and holds_run(out_dir))
        if new and (mode is None or tokenizer_dir is None):
            raise ConfigError("diffprobe train: a new run needs --mode (image or video) and --tokenizer RUN")
        given = {"mode": mode} if mode else {}
        if tokenizer_dir is not None:
            given["tokenizer"] = record_path(tokenizer_dir, out_dir)
        if dataset:
            given["dataset"] = record_spec(dataset, out_dir)
        elif new and not any(a.split("=", 1)[0].strip() == "dataset" for a in assignments):
            tok_cfg = read_export(tokenizer_dir, "tokenizer")["config"]
            tok_spec = resolve_recorded_spec(tokenizer_dir, tok_cfg["dataset"])
            given["dataset"] = record_spec(tok_spec, out_dir)
            click.echo(f"dataset: {tok_spec} (the tokenizer's; --dataset to train on other data)", err=True)
        cfg = _run_config(out_dir, DenoiserRunConfig, preset, _preset_given(ctx), assignments, given, resume, force)
        tok_dir = cfg.tokenizer_dir(out_dir)
        ds = open_dataset(resolve_recorded_spec(out_dir, cfg.dataset))
        check_clip_size(export_clip_size(tok_dir), ds, f"the tokenizer in {tok_dir}", allow_size_change)
        with skips_reported(out_dir):
            path = train_denoiser(cfg, out_dir, FeatureCache(cache_dir), resume=resume, progress=not quiet)
    click.echo(f"denoiser ({cfg.mode}): {path}")


@click.command("sample")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--num", type=click.IntRange(min=1), default=16, show_default=True, help="Number of samples.")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True, help="DDIM steps.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["gif", "mp4"]), default="gif", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN_DIR/samples/seedSEED-ddimSTEPS-nNUM: one folder per setting, so "
                   "earlier samples are never overwritten).")
@click.option("--device", default="auto", show_default=True)
@quiet_option
def sample_cmd(run_dir: Path, num: int, steps: int, seed: int, fmt: str, out_dir: Path | None, device: str,
               quiet: bool) -> None:
    """Generate clips (video twin) or images (image twin) from a trained WALT run."""
    from diffprobe.data.registry import open_dataset
    from diffprobe.models.exports import load_tokenizer, resolve_recorded_spec
    from diffprobe.train.denoiser import load_denoiser
    from diffprobe.train.sample import generate, write_samples
    from diffprobe.utils.runtime import resolve_device

    denoiser, cfg, _ = load_denoiser(run_dir)
    tokenizer, _ = load_tokenizer(cfg.tokenizer_dir(run_dir))
    ds = open_dataset(resolve_recorded_spec(run_dir, cfg.dataset))
    samples = generate(denoiser, tokenizer, cfg.mode, (ds.frames, ds.height, ds.width), num, steps, seed,
                       resolve_device(device), progress=not quiet)
    out_dir = out_dir or run_dir / "samples" / f"seed{seed}-ddim{steps}-n{num}"
    grid = write_samples(samples, out_dir, fmt,
                         info={"run": str(run_dir), "num": num, "steps": steps, "seed": seed, "mode": cfg.mode})
    click.echo(f"{num} samples -> {grid.parent} (grid: {grid})")
