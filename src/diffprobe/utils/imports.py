"""Objects named ``"package.module:attribute"``, imported when first asked for (how the registries and the CLI keep
heavy modules, and diffusers / transformers, out of a command that does not use them)."""

from __future__ import annotations

import importlib
from typing import Any


def import_target(target: str) -> Any:
    """The attribute ``target`` (``"package.module:attribute"``) names, its module imported now."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
