"""Datasets by spec: ``KIND:PATH[@KEY=VALUE,...]`` resolved through one registry (kind -> factory).

    open_dataset("probeworld:tiny@train_size=2048")      # the embedded procedural world (PATH: a preset)
    open_dataset("tapvid:/data/tapvid_davis.pkl@mode=strided")
    open_dataset("kinetics:/data/k400@frames=16,stride=4,size=128")

Option values are parsed as JSON where they parse (numbers, true/false) and taken as strings otherwise; each kind
declares its options as a typed config, so an unknown option or a wrong type is an error that lists the known ones.
Reader modules are imported when their kind is opened. :func:`opened_datasets` collects the datasets a block of code
opens (a training function opens its own), so a command can report what ``on_bad=skip`` left out of them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from diffprobe.data.dataset import ClipDataset, DatasetError

#: a factory: (path, options, spec) -> dataset
Factory = Callable[[str, dict[str, Any], str], ClipDataset]


def _lazy(target: str) -> Factory:
    """A factory that imports ``module:function`` on first use (readers pull in PyAV, Pillow, pickle readers)."""
    module, attr = target.split(":")

    def factory(path: str, options: dict[str, Any], spec: str) -> ClipDataset:
        return getattr(importlib.import_module(module), attr)(path, options, spec)

    factory.__qualname__ = target
    return factory


#: kind -> factory; the table in docs/datasets.md documents each kind's layout, fields and options
DATASETS: dict[str, Factory] = {
    "probeworld": _lazy("diffprobe.data.world.dataset:open_probeworld"),
    "tapvid": _lazy("diffprobe.data.readers.tapvid:open_tapvid"),
    "davis": _lazy("diffprobe.data.readers.davis:open_davis"),
    "imagefolder": _lazy("diffprobe.data.readers.imagefolder:open_imagefolder"),
    "kinetics": _lazy("diffprobe.data.readers.kinetics:open_kinetics"),
    "ssv2": _lazy("diffprobe.data.readers.ssv2:open_ssv2"),
    "scannet": _lazy("diffprobe.data.readers.scannet:open_scannet"),
    "re10k": _lazy("diffprobe.data.readers.re10k:open_re10k"),
    "videos": _lazy("diffprobe.data.readers.folders:open_videos"),
    "images": _lazy("diffprobe.data.readers.folders:open_images"),
}


#: kinds whose PATH names a preset, not a file or folder (runs record these specs as given)
NAMED_KINDS: frozenset[str] = frozenset({"probeworld"})

def parse_options(text: str, spec: str) -> dict[str, Any]:
    """``"a=1,b=x"`` -> ``{"a": 1, "b": "x"}``; a malformed item is an error naming the spec."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DatasetError(f"dataset spec {spec!r}: option {item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``KIND:PATH[@OPTIONS]`` -> ``(kind, path, options)``."""
    kind, sep, rest = spec.partition(":")
    if not sep or not kind or not rest:
        raise DatasetError(f"dataset spec {spec!r}: expected KIND:PATH[@KEY=VALUE,...], e.g. probeworld:tiny or "
                           f"tapvid:davis.pkl@mode=strided; known kinds are {sorted(DATASETS)}")
    path, _, options = rest.partition("@") if "@" in rest else (rest, "", "")
    return kind, path, parse_options(options, spec)


#: the lists of the :func:`opened_datasets` blocks running now (innermost last)
_COLLECTORS: list[list[ClipDataset]] = []


def map_spec_path(spec: str, fn: Callable[[str], str]) -> str:
    """``spec`` with its file or folder PATH replaced by ``fn(PATH)``, options and ``#SPLIT`` kept; a kind whose PATH
    names a preset (:data:`NAMED_KINDS`) and an absolute PATH are returned as they are. How runs record the data they
    read relative to their own folder, and read it back."""
    kind, path, _ = parse_spec(spec.split("#")[0])
    if kind in NAMED_KINDS or Path(path).is_absolute():
        return spec
    rest = spec[len(kind) + 1 + len(path):]  # "@options" and/or "#split"
    return f"{kind}:{fn(path)}{rest}"


def open_dataset(spec: str) -> ClipDataset:
    """The dataset a spec names (see the module docstring); unknown kinds are an error listing the known ones."""
    kind, path, options = parse_spec(spec)
    if kind not in DATASETS:
        raise DatasetError(f"dataset spec {spec!r}: unknown kind {kind!r}; known kinds are {sorted(DATASETS)}")
    ds = DATASETS[kind](path, options, spec)
    for found in _COLLECTORS:
        found.append(ds)
    return ds


@contextlib.contextmanager
def opened_datasets() -> Iterator[list[ClipDataset]]:
    """A list of every dataset :func:`open_dataset` opens inside the ``with`` block (by any caller, e.g. a training
    function), for a command to report their skips when it ends (:func:`skips_reported` does both).
    """
    found: list[ClipDataset] = []
    _COLLECTORS.append(found)
    try:
        yield found
    finally:  # by identity: an outer block's list may hold the same datasets
        del _COLLECTORS[next(i for i, f in enumerate(_COLLECTORS) if f is found)]


@contextlib.contextmanager
def skips_reported(out_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Run a command's block, then (also when it fails) report the clips ``on_bad=skip`` left out of every dataset
    opened inside it, into ``out_dir/skipped.json`` (see :func:`~diffprobe.utils.cliopts.report_skipped`);
    ``enabled=False`` (a torchrun rank other than 0) collects without reporting."""
    from diffprobe.utils.cliopts import report_skipped

    with opened_datasets() as opened:
        try:
            yield
        finally:
            if enabled:
                report_skipped(opened, out_dir)
