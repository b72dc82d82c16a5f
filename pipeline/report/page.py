"""The report's HTML page: self-contained text, figures and embedded pages referenced by relative file names."""

from __future__ import annotations

import dataclasses
import html
import os
from pathlib import Path

from pipeline.formats.atomic import atomic_path

_STYLE = """
body { font-family: sans-serif; max-width: 1300px; margin: 1em auto; color: #222; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
iframe { width: 100%; border: 1px solid #ddd; display: block; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ccc; padding: 2px 6px; }
td.num { text-align: right; font-family: monospace; } .warn { color: #a40; }
"""


@dataclasses.dataclass
class Figure:
    """A figure on the page: the PNG's path relative to the page, and its caption."""

    file: str
    caption: str


@dataclasses.dataclass
class Embedded:
    """A page shown inside the report (an iframe), e.g. the interactive cloud: its path relative to the
    report, its caption and its height in CSS pixels."""

    file: str
    caption: str
    height: int = 640


@dataclasses.dataclass
class Section:
    title: str
    figures: list[Figure | Embedded] = dataclasses.field(default_factory=list)
    html_body: str = ""  # already escaped HTML (tables, notes)


def table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    """An escaped HTML table; columns in ``numeric`` are right-aligned, floats printed with 5 significant digits."""

    def cell(index, value):
        if isinstance(value, float):
            value = f"{value:.5g}"
        elif value is None:
            value = "n/a"
        klass = ' class="num"' if index in numeric else ""
        return f"<td{klass}>{html.escape(str(value))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_page(path: str | os.PathLike, title: str, sections: list[Section], notes: list[str] = ()) -> Path:
    """Write the page atomically; figure and embedded files must lie in (or below) the page's folder."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for note in notes:
        parts.append(f'<p class="warn">{html.escape(note)}</p>')
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.html_body:
            parts.append(section.html_body)
        for figure in section.figures:
            source, caption = html.escape(figure.file, quote=True), html.escape(figure.caption, quote=True)
            if isinstance(figure, Embedded):
                shown = f'<iframe src="{source}" title="{caption}" style="height: {int(figure.height)}px"></iframe>'
            else:
                shown = f'<img src="{source}" alt="{caption}">'
            parts.append(f"<figure>{shown}<figcaption>{html.escape(figure.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    with atomic_path(path, suffix=".html") as tmp:
        tmp.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return Path(path)
