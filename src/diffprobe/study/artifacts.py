"""What a study folder must still match on resume: its trained artifacts (checked against the config) and which of
its own runs are already exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffprobe.config import ConfigError, dict_changes
from diffprobe.models.exports import META_FILE
from diffprobe.study.config import StudyConfig
from diffprobe.utils.io import read_json


def exported(run_dir: Path, config: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds a finished export of exactly this run config."""
    meta = run_dir / META_FILE
    return meta.is_file() and read_json(meta)["config"] == config


def check_artifacts(stored: StudyConfig, cfg: StudyConfig, path: Path) -> None:
    """A study's trained artifacts (its data, tokenizer, twins, model sizes already trained and feature network) may
    not change under a run directory; its plan (tasks, backbones, sweeps, seeds, probes) may. An error names every
    changed artifact field."""
    old, new = stored.artifacts(), cfg.artifacts()
    changed = list(dict_changes({k: v for k, v in old.items() if k != "sizes"},
                                {k: v for k, v in new.items() if k != "sizes"}))
    changed += [f"sizes.{name}" for name in old["sizes"] if name in new["sizes"] and old["sizes"][name] !=
                new["sizes"][name]]
    if changed:
        raise ConfigError(f"{path}: this study's trained artifacts were made with other settings; changed: "
                          f"{', '.join(changed)}. Use another --out for them (the plan, e.g. tasks, backbones, "
                          f"sweeps and seeds, may change freely)")
