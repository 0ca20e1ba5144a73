"""Class folders of images (the ImageNet / torchvision ``ImageFolder`` layout), as 1-frame clips.

``imagefolder:DIR`` reads either layout::

    DIR/train/<class>/<image>      DIR/<class>/<image>
    DIR/val/<class>/<image>        (one split, "all")
    DIR/test/<class>/<image>

Splits are the sub-folders named ``train``, ``val``, ``test`` when ``DIR`` has any (then it may have no other
sub-folders), else one split ``all``. Images are ``.jpg .jpeg .png .bmp .webp`` (any case) anywhere under a class
folder; other files are ignored. Fields: ``video`` uint8 ``(1, size, size, 3)`` (the image resized / cropped) and
``label`` (index into the sorted class folder names of every split together, so a class has the same index in every
split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffprobe.data.dataset import (
    ClipSequence,
    DatasetError,
    FileDataset,
    IndexedClips,
    dataset_identity,
    fingerprint,
    require_files,
)
from diffprobe.data.readers.folders import (
    IMAGE_EXTENSIONS,
    FileClip,
    ImageLoader,
    ImageOptions,
    describe_entry,
    find_files,
    has_bytes,
    output_size,
)
from diffprobe.spec import DatasetSpec

#: the split folder names, in the order the splits are listed
SPLIT_FOLDERS: tuple[str, ...] = ("train", "val", "test")


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_splits(root: Path) -> dict[str, Path]:
    """split -> folder of class folders: ``DIR/train`` ... when present, else ``{"all": DIR}``."""
    folders = _subfolders(root)
    splits = [s for s in SPLIT_FOLDERS if s in folders]
    if not splits:
        return {"all": root}
    others = [f for f in folders if f not in SPLIT_FOLDERS]
    if others:
        raise DatasetError(f"{root}: has split folders {splits} beside other folders {others[:5]}; expected either "
                           f"only {'/'.join(SPLIT_FOLDERS)} or only class folders")
    return {s: root / s for s in splits}


def index_split(folder: Path) -> dict[str, list[Path]]:
    """class -> its images (sorted) in one split folder; an image outside a class folder is an error."""
    loose = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)]
    if loose:
        raise DatasetError(f"{loose[0]}: image directly in {folder}; every image must be in a class folder")
    return {name: find_files(folder / name, IMAGE_EXTENSIONS) for name in _subfolders(folder)}


class ImageFolderDataset(FileDataset):
    """``imagefolder:DIR`` (see the module docstring)."""

    kind = "imagefolder"

    def __init__(self, root: Path, opts: ImageOptions, spec: str) -> None:
        super().__init__(root, opts, spec)
        split_folders = find_splits(root)
        tables = {split: index_split(folder) for split, folder in split_folders.items()}
        names = sorted({name for table in tables.values() for name in table})
        if not names:
            raise DatasetError(f"{root}: no class folders")
        index = {name: i for i, name in enumerate(names)}
        self.entries = {split: self._index(split, table, index) for split, table in tables.items()}
        images = [e.path for entries in self.entries.values() for e in entries]
        if not images:
            raise DatasetError(f"{root}: no images ({' '.join(IMAGE_EXTENSIONS)}) in its class folders")
        class_folders = [folder / name for split, folder in split_folders.items() for name in tables[split]]
        self.splits = tuple(tables)
        self.fields = frozenset({"video", "label"})
        self.label_spaces = {"label": tuple(names)}
        self.frames = 1
        self.height, self.width = output_size(opts.size, opts.resize, images[0], is_video=False, where=root)
        self.loader = ImageLoader.of(opts, self.height, self.width)
        # the class folders too: an added (even empty) class folder changes the label space
        self.identity = dataset_identity(self.kind, root, opts, fingerprint(images + class_folders, root))

    def _index(self, split: str, table: dict[str, list[Path]], index: dict[str, int]) -> list[FileClip]:
        """The clips of one split, class by class; an empty (0-byte) image is an error or (``on_bad=skip``)
        skipped."""
        skipped: list[dict[str, Any]] = []
        paths = [(p, name) for name, ps in table.items() for p in ps]
        entries = [FileClip(p, targets=(("label", index[name]),)) for i, (p, name) in enumerate(paths)
                   if has_bytes(p, skipped, self.on_bad, i)]
        if skipped:
            self.skipped[split] = skipped
        return entries

    def split(self, name: str) -> ClipSequence:
        entries = self.entries[name]
        labels = np.array([dict(e.targets)["label"] for e in entries], dtype=np.int64)
        return IndexedClips(self.identity, name, entries, self.loader, describe_entry, labels={"label": labels})


def open_imagefolder(spec: DatasetSpec) -> ImageFolderDataset:
    """The registry's factory for ``imagefolder:DIR[@size=..,resize=..,on_bad=..]``."""
    opts = spec.typed(ImageOptions)
    root = Path(spec.path).expanduser()
    require_files(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    return ImageFolderDataset(root, opts, str(spec))
