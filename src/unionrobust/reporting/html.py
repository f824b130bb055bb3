"""Self-contained HTML and markdown reports of an evaluation, written atomically.

:func:`write_reports` writes ``report.md`` (pictures as PNG files next to it) and
``report.html`` (the same sections, pictures embedded as base64 PNG, inline CSS, no external
resource) into an output folder; every file goes through a temporary file and ``os.replace``.
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from unionrobust.atomic import atomic_write_bytes, atomic_write_text
from unionrobust.evaluation.filters import filter_grid_png
from unionrobust.evaluation.report import EvaluationReport
from unionrobust.evaluation.verdicts import write_json
from unionrobust.outdir import writing
from unionrobust.reporting.markdown import (
    CURVES_PNG,
    FILTERS_PNG,
    MRB_PNG,
    Section,
    render_markdown,
    report_sections,
)
from unionrobust.reporting.plots import MATPLOTLIB_NOTE, curves_png, multirobust_png

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3} .warn{color:#b00;font-weight:bold} img{max-width:100%;margin:.5em 0}
"""


def _inline(text: str) -> str:
    """Escape, then the two markdown marks the sections use: **bold** and `code`."""
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
    return s.replace("<b>WARNING</b>", '<span class="warn">WARNING</span>')


def markdown_table_to_html(table: str) -> str:
    """A table made by :func:`unionrobust.reporting.tables.format_table` (markdown) as HTML."""
    lines = [ln for ln in table.strip().splitlines() if ln.startswith("|")]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    rows = [r for r in rows if not all(set(c) <= {"-", ":"} and c for c in r)]
    if not rows:
        return ""
    head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(
    sections: list[Section],
    pictures: dict[str, bytes | None] | None = None,
    title: str = "Union robustness report",
) -> str:
    """A self-contained HTML page of ``sections``; pictures embedded as base64 PNG."""
    pictures = pictures or {}
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for sec in sections:
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        for kind, body in sec.blocks:
            if kind == "table":
                out.append(markdown_table_to_html(body))
            elif kind == "image":
                data = pictures.get(body)
                if data is not None:
                    b64 = base64.b64encode(data).decode("ascii")
                    out.append(f'<img alt="{html.escape(body)}" src="data:image/png;base64,{b64}">')
            else:
                out.append(f"<p>{_inline(body)}</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def report_pictures(
    model: nn.Module | None, curves: list[Any] | None, multirobust: dict[str, Any] | None = None
) -> tuple[dict[str, bytes | None], dict[str, str]]:
    """(pictures, notes): the first-layer filter grid of ``model``, the curves plot and the
    MultiRobustBench grid plot."""
    pictures: dict[str, bytes | None] = {}
    notes: dict[str, str] = {}
    if model is not None:
        pictures[FILTERS_PNG] = filter_grid_png(model)
        if pictures[FILTERS_PNG] is None:
            notes[FILTERS_PNG] = "the model has no convolution layer to picture"
    if curves:
        pictures[CURVES_PNG] = curves_png(curves)
        if pictures[CURVES_PNG] is None:
            notes[CURVES_PNG] = MATPLOTLIB_NOTE
    if multirobust:
        pictures[MRB_PNG] = multirobust_png(multirobust)
        if pictures[MRB_PNG] is None:
            notes[MRB_PNG] = MATPLOTLIB_NOTE
    return pictures, notes


def write_reports(
    out_dir: str | os.PathLike,
    report: EvaluationReport,
    model: nn.Module | None = None,
    curves: list[Any] | None = None,
    corruptions: dict[str, Any] | None = None,
    diagnostics: dict[str, Any] | None = None,
    multirobust: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the PNG pictures into ``out_dir`` atomically
    (with ``multirobust``, report.json gains its numbers under "multirobustbench").

    ``model``: draws the first-layer filters; ``curves``: RobustnessCurve objects (or dicts);
    ``corruptions``: a :func:`~unionrobust.evaluation.corruptions.corruption_accuracy` result;
    ``diagnostics`` defaults to ``report.diagnostics``; ``multirobust``: a
    :func:`~unionrobust.evaluation.multirobust.multirobust_evaluation` result. Returns the
    paths written by name.
    """
    out = Path(out_dir)
    pictures, notes = report_pictures(model, curves, multirobust)
    sections = report_sections(
        report, diagnostics, curves, corruptions, pictures, notes, multirobust=multirobust
    )
    written: dict[str, Path] = {}
    with writing(out):
        if multirobust:
            written["report.json"] = write_json(
                out / "report.json", {**report.to_dict(), "multirobustbench": multirobust}
            )
        for name, data in pictures.items():
            if data is not None:
                written[name] = atomic_write_bytes(out / name, data)
        written["report.md"] = atomic_write_text(out / "report.md", render_markdown(sections))
        written["report.html"] = atomic_write_text(
            out / "report.html", render_html(sections, pictures)
        )
    return written
