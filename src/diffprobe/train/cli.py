"""`diffprobe train-tokenizer`, `diffprobe train` and `diffprobe sample`."""

from __future__ import annotations

from pathlib import Path

import click

from diffprobe.utils.cliopts import cache_option, overrides_option, quiet_option, resume_option

dataset_train_option = click.option(
    "--dataset", default=None, metavar="SPEC",
    help="Dataset spec to train on (its train role), e.g. videos:DIR@size=32,frames=9 (default: the preset's).")


@click.command("train-tokenizer")
@click.option("--preset", default="tiny", show_default=True, help="TokenizerRunConfig preset (tiny, small).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory (config, checkpoints, metrics.csv, TensorBoard, exported model).")
@dataset_train_option
@overrides_option
@cache_option
@resume_option
@quiet_option
def train_tokenizer_cmd(preset: str, out_dir: Path, dataset: str | None, assignments: tuple[str, ...],
                        cache_dir: Path, resume: bool, quiet: bool) -> None:
    """Train the causal video tokenizer (on Probe World unless --dataset) and fix its latent scale."""
    from diffprobe.features.cache import FeatureCache
    from diffprobe.train.export import read_export
    from diffprobe.train.tokenizer import TokenizerRunConfig, train_tokenizer

    cfg = TokenizerRunConfig.preset(preset).override(assignments)
    cfg = cfg.replace(dataset=dataset) if dataset else cfg
    path = train_tokenizer(cfg, out_dir, FeatureCache(cache_dir), resume=resume, progress=not quiet)
    meta = read_export(out_dir, "tokenizer")
    click.echo(f"tokenizer: {path}  latent_scale={meta['latent_scale']:.4f}  latent_shift={meta['latent_shift']:.4f}"
               f"  train PSNR={meta['train_psnr_db']:.2f} dB")


@click.command("train")
@click.option("--model", "preset", default="walt-tiny", show_default=True,
              help="DenoiserRunConfig preset (walt-tiny, walt-S).")
@click.option("--mode", type=click.Choice(["image", "video"]), required=True,
              help="image: every frame is its own 1-frame sample; video: whole clips.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              required=True, help="Run directory of a trained tokenizer.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory.")
@dataset_train_option
@overrides_option
@cache_option
@resume_option
@quiet_option
def train_cmd(preset: str, mode: str, tokenizer_dir: Path, out_dir: Path, dataset: str | None,
              assignments: tuple[str, ...], cache_dir: Path, resume: bool, quiet: bool) -> None:
    """Train a WALT twin (image or video mode) on the tokenizer's latents of a dataset (Probe World unless
    --dataset; image mode: every frame of its clips on its own)."""
    from diffprobe.features.cache import FeatureCache
    from diffprobe.train.denoiser import DenoiserRunConfig, train_denoiser

    cfg = DenoiserRunConfig.preset(preset).replace(mode=mode, tokenizer=str(tokenizer_dir)).override(assignments)
    cfg = cfg.replace(dataset=dataset) if dataset else cfg
    path = train_denoiser(cfg, out_dir, FeatureCache(cache_dir), resume=resume, progress=not quiet)
    click.echo(f"denoiser ({mode}): {path}")


@click.command("sample")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--num", default=16, show_default=True, help="Number of samples.")
@click.option("--steps", default=50, show_default=True, help="DDIM steps.")
@click.option("--seed", default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["gif", "mp4"]), default="gif", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN_DIR/samples).")
@click.option("--device", default="auto", show_default=True)
@quiet_option
def sample_cmd(run_dir: Path, num: int, steps: int, seed: int, fmt: str, out_dir: Path | None, device: str,
               quiet: bool) -> None:
    """Generate clips (video twin) or images (image twin) from a trained WALT run."""
    from diffprobe.data.registry import open_dataset
    from diffprobe.models.exports import load_tokenizer
    from diffprobe.train.denoiser import load_denoiser
    from diffprobe.train.sample import generate, write_samples
    from diffprobe.utils.runtime import resolve_device

    denoiser, cfg, _ = load_denoiser(run_dir)
    tokenizer, _ = load_tokenizer(cfg.tokenizer_dir(run_dir))
    ds = open_dataset(cfg.dataset)
    samples = generate(denoiser, tokenizer, cfg.mode, (ds.frames, ds.height, ds.width), num, steps, seed,
                       resolve_device(device), progress=not quiet)
    grid = write_samples(samples, out_dir or run_dir / "samples", fmt,
                         info={"run": str(run_dir), "num": num, "steps": steps, "seed": seed, "mode": cfg.mode})
    click.echo(f"{num} samples -> {grid.parent} (grid: {grid})")
