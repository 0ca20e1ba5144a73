"""Datasets by spec: ``KIND:PATH[@KEY=VALUE,...]`` (the grammar of :mod:`diffprobe.spec`) resolved through one
registry (kind -> factory).

    open_dataset("probeworld:tiny@train_size=2048")      # the embedded procedural world (PATH: a preset)
    open_dataset("tapvid:/data/tapvid_davis.pkl@mode=strided")
    open_dataset("kinetics:/data/k400@frames=16,stride=4,size=128")

Each kind declares its options as a typed config (:meth:`~diffprobe.spec.Spec.typed`), so an unknown option or a
wrong type is an error that lists the known ones.
Reader modules are imported when their kind is opened. :func:`opened_datasets` collects the datasets a block of code
opens (a training function opens its own), so a command can report what ``on_bad=skip`` left out of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from diffprobe.data.dataset import ClipDataset, DatasetError
from diffprobe.spec import DatasetSpec
from diffprobe.utils.imports import import_target

#: a factory: spec -> dataset
Factory = Callable[[DatasetSpec], ClipDataset]


def _lazy(target: str) -> Factory:
    """A factory that imports ``module:function`` on first use (readers pull in PyAV, Pillow, pickle readers)."""
    def factory(spec: DatasetSpec) -> ClipDataset:
        return import_target(target)(spec)

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


#: the dataset a command reads when neither the user nor the backbone's weights name one
DEFAULT_DATASET = "probeworld:tiny"

#: kinds whose PATH names a preset, not a file or folder (runs record these specs as given)
NAMED_KINDS: frozenset[str] = frozenset({"probeworld"})

#: the lists of the :func:`opened_datasets` blocks running now (innermost last)
_COLLECTORS: list[list[ClipDataset]] = []


def map_spec_path(spec: str, fn: Callable[[str], str]) -> str:
    """``spec`` with its file or folder PATH replaced by ``fn(PATH)``, options and ``#SPLIT`` kept; a kind whose PATH
    names a preset (:data:`NAMED_KINDS`) and an absolute PATH are returned as they are. How runs record the data they
    read relative to their own folder, and read it back."""
    parsed = DatasetSpec.parse(spec)
    if parsed.kind in NAMED_KINDS or Path(parsed.path).is_absolute():
        return spec
    return str(parsed.with_path(fn(parsed.path)))


def open_dataset(spec: str | DatasetSpec) -> ClipDataset:
    """The dataset a spec names (see the module docstring; a ``#SPLIT`` is the caller's, see
    :mod:`~diffprobe.data.splits`); unknown kinds are an error listing the known ones."""
    parsed = DatasetSpec.parse(spec)
    if parsed.split is not None:
        raise DatasetError(f"dataset spec {str(spec)!r}: a #SPLIT names a task's role data; open the dataset without "
                           f"it")
    if not parsed.path:
        raise DatasetError(f"dataset spec {str(spec)!r}: expected {DatasetSpec.EXAMPLE}; known kinds are "
                           f"{sorted(DATASETS)}")
    if parsed.kind not in DATASETS:
        raise DatasetError(f"dataset spec {str(spec)!r}: unknown kind {parsed.kind!r}; known kinds are "
                           f"{sorted(DATASETS)}")
    ds = DATASETS[parsed.kind](parsed)
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
