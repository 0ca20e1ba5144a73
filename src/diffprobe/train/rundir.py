"""A run folder is the user's data: what starting, resuming and forcing a training run may do to it.

- **Start**: a folder that already holds a run (a ``config.json``) is refused; ``--resume`` continues it and
  ``--force`` starts over after moving everything it held into ``RUN/previous/<time>/``.
- **Resume** continues the config saved in the folder. An option given again with the same value is fine; a changed
  field is an error naming it, except the fields in :data:`RESUMABLE` (more steps, logging and checkpoint cadence,
  device), which are applied and recorded in ``RUN/changes.json``.
- **A finished run** (one that exported ``model.json``) is never continued over its export without ``--force``, which
  first moves the export into ``RUN/previous/<time>/`` and keeps the finished step's checkpoint.
- **Paths** a run records (its tokenizer run, its dataset's files) are stored relative to the run folder, or absolute
  when the user gave them absolute, so a run folder keeps working from any working directory and after a move
  (see :func:`record_path`, :func:`record_spec` and their readers in ``models.exports``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, TypeVar

from diffprobe.config import Config, ConfigError, dict_changes
from diffprobe.data.registry import map_spec_path
from diffprobe.models.exports import META_FILE, MODEL_FILE
from diffprobe.utils.io import atomic_write_json, read_json
from diffprobe.utils.lock import LOCK_FILE

C = TypeVar("C", bound=Config)

RUN_CONFIG_FILE = "config.json"
CHANGES_FILE = "changes.json"
PREVIOUS_DIR = "previous"

#: config fields (dotted, under the run config) that a resumed run may change; each change is recorded. Everything
#: else defines what the run computes, so changing it is starting another run.
RESUMABLE = frozenset({
    "train.steps", "train.log_every", "train.ckpt_every", "train.keep_last", "train.keep_steps", "train.keep_every",
    "train.device", "train.data_workers", "train.tensorboard", "train.compile", "train.tf32",
})


def config_changes(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ, dotted name -> (old, new)."""
    return dict_changes(old.to_dict(), new.to_dict())


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run (a saved config)."""
    return (run_dir / RUN_CONFIG_FILE).is_file()


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run's export."""
    return (run_dir / META_FILE).is_file()


def move_aside(run_dir: Path, names: list[str] | None = None) -> Path:
    """Move ``names`` (default: everything but earlier ``previous/`` and the lock) into ``RUN/previous/<time>/``;
    returns that folder. Nothing is deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = run_dir / PREVIOUS_DIR / stamp
    n = 1
    while dest.exists():
        n += 1
        dest = run_dir / PREVIOUS_DIR / f"{stamp}-{n}"
    dest.mkdir(parents=True)
    for name in names if names is not None else sorted(os.listdir(run_dir)):
        if name in (PREVIOUS_DIR, LOCK_FILE) or not (run_dir / name).exists():
            continue
        os.replace(run_dir / name, dest / name)
    return dest


def _changes_message(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())


def continue_run(run_dir: Path, saved: C, wanted: C, force: bool) -> tuple[C, list[str]]:
    """The config a resumed run continues with: ``wanted`` (the saved config with the user's options applied) when
    it changes only :data:`RESUMABLE` fields; returns it and the messages to show. A change to any other field is a
    :class:`ConfigError` naming the fields. Changes are recorded in ``RUN/changes.json``; continuing a finished run
    past its export needs ``force`` (the export is moved aside, its step's checkpoint kept)."""
    changes = config_changes(saved, wanted)
    fixed = {k: v for k, v in changes.items() if k not in RESUMABLE}
    if fixed:
        raise ConfigError(f"{run_dir / RUN_CONFIG_FILE}: --resume continues the run as it was started; these options "
                          f"differ from it: {_changes_message(fixed)} (drop them, or train into a new --out)")
    steps = changes.get("train.steps")
    if steps is not None and steps[1] < steps[0]:
        raise ConfigError(f"{run_dir / RUN_CONFIG_FILE}: train.steps {steps[1]} is below the run's {steps[0]}; a "
                          f"resumed run can only go further")
    notes: list[str] = []
    if not changes:
        return saved, notes
    if steps is not None and is_finished(run_dir):
        done = int(read_json(run_dir / META_FILE)["step"])
        if not force:
            raise ConfigError(f"{run_dir}: the run finished at step {done} and exported {MODEL_FILE}; continuing it "
                              f"to step {steps[1]} would replace that export: add --force (the export is moved into "
                              f"{run_dir / PREVIOUS_DIR}/ first)")
        dest = move_aside(run_dir, [MODEL_FILE, META_FILE])
        notes.append(f"moved the step-{done} export into {dest}")
        keep = tuple(sorted({*wanted.to_dict()["train"]["keep_steps"], done}))
        wanted = wanted.override([f"train.keep_steps={list(keep)}"], scale_schedule=False)
        changes = config_changes(saved, wanted)
    history = read_json(run_dir / CHANGES_FILE) if (run_dir / CHANGES_FILE).is_file() else []
    history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}})
    atomic_write_json(run_dir / CHANGES_FILE, history)
    notes.append(f"resuming with {_changes_message(changes)} (recorded in {run_dir / CHANGES_FILE})")
    return wanted, notes


def check_same_run(run_dir: Path, config: Config) -> None:
    """Library-level guard (``train.loop.fit``): a run folder's saved config may differ from the config it is
    continued with only in :data:`RESUMABLE` fields; anything else is a :class:`ConfigError` naming the fields."""
    path = run_dir / RUN_CONFIG_FILE
    if not path.is_file():
        return
    saved = type(config).load(path)
    fixed = {k: v for k, v in config_changes(saved, config).items() if k not in RESUMABLE}
    if fixed:
        raise ConfigError(f"{path}: this folder holds a run with other settings: {_changes_message(fixed)}; train "
                          f"into a new folder, or resume the run as it was started")


def record_path(path: str | Path, run_dir: Path) -> str:
    """How a run records ``path`` (given relative to the working directory, or absolute): absolute stays absolute,
    relative becomes relative to ``run_dir``, so the run reads it from anywhere."""
    p = Path(path)
    if p.is_absolute():
        return str(p)
    return os.path.relpath(Path.cwd() / p, Path.cwd() / run_dir)


def record_spec(spec: str, run_dir: Path) -> str:
    """A dataset spec as a run records it: its file or folder path as :func:`record_path` does (a kind whose PATH
    names a preset, such as ``probeworld:tiny``, is kept as it is)."""
    return map_spec_path(spec, lambda path: record_path(path, run_dir))
