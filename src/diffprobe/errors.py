"""diffprobe's own error types: problems with what a user gave (a config, a spec, a path, a file), as opposed to bugs.

The CLI prints any :class:`DiffprobeError` as one line, ``Error: <message>``, and exits with status 2 (``--debug`` or
``DIFFPROBE_DEBUG=1`` shows the traceback); any other exception is a bug and keeps its traceback. Each message names
the file or the setting at fault and, for a damaged file, what to do about it. The stage-specific errors
(``ConfigError``, ``DatasetError``, ``SpecError``, ``CheckpointError``, ...) subclass these, and also ``ValueError`` /
``FileNotFoundError`` as before.
"""

from __future__ import annotations


class DiffprobeError(Exception):
    """An error in what the user gave; shown by the CLI as one line without a traceback."""


class InputError(DiffprobeError, ValueError):
    """An argument that cannot be used (a block the model does not have, noise for a model without noise, ...)."""


class FileProblem(DiffprobeError, ValueError):
    """A file is unreadable, damaged or of the wrong kind; the message names it and what to do."""


class MissingFile(DiffprobeError, FileNotFoundError, ValueError):
    """A file or folder the user named (or a run should hold) does not exist; the message names it. (Also a
    ``ValueError``, as every other bad-input error.)"""
