"""Atomic file writes: every file diffprobe writes goes to a temp file in the same folder, then is renamed.

A run killed mid-write therefore leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from diffprobe.errors import FileProblem, MissingFile


def _open_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the process's umask (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on clean exit it is fsynced and renamed onto ``path``.

    ``suffix`` keeps the extension for writers that infer the format from the name (defaults to ``path``'s).
    The file ends with the mode ``open()`` would give it (umask respected) whatever the writer did to the temp file.
    On an exception the temp file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=(path.suffix if suffix is None else suffix) + ".tmp",
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    mode = _open_mode()
    os.chmod(tmp_path, mode)  # mkstemp creates 0600; give the file the permissions open() would
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, mode)  # again: a writer may have replaced the file (safetensors' save_file makes it 0600)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or corrupt file raises ``ValueError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        if not path.exists():
            raise MissingFile(f"{path}: no such file") from e
        raise FileProblem(f"{path}: cannot read JSON: {e}; restore it, or delete it to have it rewritten") from e


def save_tensors(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Save a dict of torch tensors as safetensors, atomically (tensors are made contiguous, moved to CPU)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=dict(metadata) if metadata else None)


def load_tensors(path: str | Path) -> dict[str, Any]:
    """Load a safetensors file to CPU torch tensors; a missing or corrupt file raises ``ValueError`` naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path}: no such safetensors file")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types; re-raise with the file named
        raise FileProblem(f"{path}: not a readable safetensors file (truncated or damaged): {e}") from e


def tensors_sha256(tensors: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of named tensors' contents: names, dtypes, shapes and bytes in sorted name order. Unlike a hash
    of a safetensors file, whose header the library writes in no fixed order, it is the same for the same
    weights in every process."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
