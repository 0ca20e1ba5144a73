"""How the report and the printed tables write numbers."""

from __future__ import annotations

import math
import re


def fmt_num(x: float) -> str:
    """Four significant digits, integers without a decimal point."""
    if math.isnan(x):
        return "n/a"
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.4g}"


def fmt_pct(x: float) -> str:
    """A percentage with one decimal ("n/a" for NaN)."""
    return "n/a" if math.isnan(x) else f"{x:.1f}%"


def fmt_mean_std(mean: float, std: float, n: int) -> str:
    """Mean (4 significant digits) ± std (2 significant digits); the mean alone for a single replicate."""
    return fmt_num(mean) if n == 1 else f"{fmt_num(mean)} ± {std:.2g}"


def safe_name(text: str) -> str:
    """``text`` as a file name: every character but letters, digits, ``_``, ``.`` and ``-`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)
