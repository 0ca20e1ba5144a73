"""One writer per folder: a lock file ``FOLDER/.diffprobe.lock`` holding the owner's pid, host, start time and command.

A run, an extraction or a study takes the lock of the folder it writes before it writes anything. A second process
that wants the same folder is refused with one line naming the holder. A lock left by a process that has died (same
host, pid no longer alive) is taken over with a message. Under torchrun only rank 0 takes the lock: the other ranks
are the same job.

The lock file is created with ``O_CREAT | O_EXCL``, so two processes racing for a free folder cannot both win.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from diffprobe.errors import DiffprobeError

LOCK_FILE = ".diffprobe.lock"


class FolderLocked(DiffprobeError, RuntimeError):
    """Another live process holds the lock of a folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The lock file's record; ``None`` when the file is gone or unreadable (a torn write by a killed process)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} since {started} ({holder.get('command', '?')})"


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _try_create(path: Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    return True


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "run") -> Iterator[None]:
    """Hold ``folder``'s lock for the duration of the block (created if missing); refuse if a live process holds it.

    Re-entrant within one process (a study that trains a run inside its own folder takes that run's lock too; the
    same folder locked twice by one process is allowed and released by the outer holder).
    """
    folder = Path(folder)
    if not _is_rank_zero():
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    record = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
    for _ in range(3):  # a stale lock is removed and the creation retried; another process may win the race
        if _try_create(path, record):
            break
        holder = _holder(path)
        if holder is None:  # unreadable: a process killed while writing it, or removed between the two calls
            if path.exists() and time.time() - path.stat().st_mtime < 5:
                time.sleep(0.2)  # being written right now
                continue
            path.unlink(missing_ok=True)
            continue
        if holder.get("pid") == os.getpid() and holder.get("host") == record["host"]:
            yield  # this process already holds it (outer scope releases)
            return
        if holder.get("host") == record["host"] and not _pid_alive(int(holder.get("pid", -1))):
            print(f"{folder}: taking over the lock of a {what} that is no longer running ({_describe(holder)})",
                  file=sys.stderr)
            path.unlink(missing_ok=True)
            continue
        raise FolderLocked(f"{folder}: in use by {_describe(holder)}; wait for it to finish, or if that process is "
                           f"gone, delete {path}")
    else:
        raise FolderLocked(f"{folder}: could not take the lock {path} (another process keeps taking it)")
    try:
        yield
    finally:
        if (_holder(path) or {}).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
