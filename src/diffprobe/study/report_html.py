"""HTML building blocks of the report: one self-contained page (inline CSS, images as data URIs, no scripts)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #222;
       max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fcfcfc; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 8px; padding-top: 8px; border-top: 1px solid #ddd; }
h3 { font-size: 15px; margin: 20px 0 6px; }
.meta { color: #555; margin: 0 0 12px; }
.meta td { padding: 1px 14px 1px 0; vertical-align: top; }
nav { margin: 10px 0 18px; font-size: 13px; }
nav a { margin-right: 14px; color: #2a5db0; text-decoration: none; }
.summary { background: #f1f5fb; border-left: 4px solid #4C72B0; padding: 10px 16px; margin: 12px 0; }
.summary li { margin: 3px 0; }
.note { color: #7a5200; background: #fff7e6; border-left: 4px solid #e0a030; padding: 6px 12px; margin: 8px 0;
        font-size: 13px; }
.caveat { color: #7a1010; background: #fdecea; border: 2px solid #c0392b; border-radius: 4px; padding: 10px 16px;
          margin: 12px 0 16px; font-size: 15px; }
.formula { font-size: 13px; color: #333; background: #f6f6f6; padding: 8px 12px; border-radius: 4px; }
code { font-size: 12.5px; background: #f0f0f0; padding: 0 3px; border-radius: 3px; }
figure { margin: 12px 0; }
figure img { max-width: 100%; border: 1px solid #e4e4e4; background: white; }
figcaption { font-size: 12.5px; color: #555; margin-top: 4px; }
table.data { border-collapse: collapse; font-size: 12.5px; margin: 6px 0 14px; }
table.data th { background: #eef1f5; text-align: left; padding: 3px 10px; border-bottom: 1px solid #ccd; }
table.data td { padding: 2px 10px; border-bottom: 1px solid #eee; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.data tr.headline td { background: #fff9e0; }
details { margin: 8px 0; }
details pre { background: #f6f6f6; padding: 10px; font-size: 12px; overflow-x: auto; max-height: 480px; }
"""


def esc(text: object) -> str:
    """HTML-escape ``text`` (quotes included)."""
    return html.escape(str(text), quote=True)


def img(png: bytes, alt: str, caption: str | None = None) -> str:
    """A figure with ``png`` embedded as a base64 data URI and an optional (already-escaped HTML) caption."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def note(text: str) -> str:
    return f'<div class="note">{esc(text)}</div>'


def caveat_box(text: str) -> str:
    """A prominent warning box (the study config's caveat), for the top of the page."""
    return f'<div class="caveat" role="alert"><b>Caveat:</b> {esc(text)}</div>'


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] | None = None,
          row_classes: Sequence[str] | None = None) -> str:
    """A data table; cells are HTML (escape text with :func:`esc` first); ``numeric`` columns align right."""
    numeric = numeric if numeric is not None else [False] * len(headers)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="num">{c}</td>' if n else f"<td>{c}</td>" for c, n in zip(row, numeric,
                                                                                            strict=True))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def page(title: str, body: str) -> str:
    """The whole HTML document."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
