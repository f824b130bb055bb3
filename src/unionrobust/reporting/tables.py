"""Tables of an evaluation report (markdown or plain text) and atomic JSON/CSV writers."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unionrobust.evaluation.report import EvaluationReport
from unionrobust.evaluation.verdicts import write_csv, write_json, write_outputs

FORMATS = ("markdown", "plain")

__all__ = [
    "FORMATS",
    "format_breakdown",
    "format_report",
    "format_summary",
    "format_table",
    "write_csv",
    "write_json",
]


def pct(v: float | None) -> str:
    """A fraction as a percentage with one decimal ("12.5%"); None or NaN as "-"."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _ci(ci: Sequence[float]) -> str:
    lo, hi = ci
    if math.isnan(lo):
        return "-"
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "markdown"
) -> str:
    """A markdown table, or a plain table with aligned columns."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; valid: {', '.join(FORMATS)}")
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        return "| " + " | ".join(padded) + " |" if fmt == "markdown" else "  ".join(padded)

    out = [line(cells[0])]
    if fmt == "markdown":
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    else:
        out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def format_summary(report: EvaluationReport, fmt: str = "markdown") -> str:
    """Clean, per-threat, union and average accuracy with 95% intervals; the rows of figures
    that are upper bounds (:attr:`EvaluationReport.upper_bounds`) say so."""
    ci = report.intervals()
    bounds = report.upper_bounds

    def bound(figure: str) -> str:
        return " (upper bound)" if figure in bounds else ""

    n = report.n_examples
    acc = report.per_threat_accuracy
    robust = report.threat_robust()
    rows = [
        ["clean", pct(report.clean_accuracy), _ci(ci["clean"]), int(report.clean_correct.sum())]
    ]
    for i, spec in enumerate(report.threats):
        ran = i in report.entry_threat
        label = spec + bound("per-threat") if ran else f"{spec} (no attack run!)"
        rows.append([label, pct(acc[spec]), _ci(ci["per_threat"][spec]), int(robust[:, i].sum())])
    rows.append(
        [
            "union (1 - R_max)" + bound("union"),
            pct(report.union_accuracy),
            _ci(ci["union"]),
            int(report.union_robust.sum()),
        ]
    )
    avg = "average (1 - R_avg)" + bound("average")
    rows.append([avg, pct(report.average_accuracy), _ci(ci["average"]), "-"])
    return format_table(["accuracy", "value", "95% CI", f"robust / {n}"], rows, fmt)


def format_breakdown(report: EvaluationReport, fmt: str = "markdown") -> str:
    """Per attack in run order: points attacked, broken, rejected, accuracies after it."""
    rows = []
    for r in report.breakdown():
        secs = r["seconds"]
        rows.append(
            [
                r["entry"] + 1,
                r["threat"],
                r["key"],
                r["attacked"],
                r["broken"],
                r["rejected"],
                pct(r["threat_accuracy_after"]),
                pct(r["union_accuracy_after"]),
                "-" if secs is None else f"{secs:.1f}",
            ]
        )
    headers = [
        "#",
        "threat",
        "entry",
        "attacked",
        "broken",
        "rejected",
        "threat acc.",
        "union acc.",
        "seconds",
    ]
    return format_table(headers, rows, fmt)


def check_notes(rejected: int, nonfinite: int) -> list[str]:
    """The screen lines a one-attack report adds under its table when the checks fired."""
    notes = [f"rejected by the re-check: {rejected}"] if rejected else []
    if nonfinite:
        notes.append(f"non-finite logits (counted as misclassified): {nonfinite}")
    return notes


def format_report(report: EvaluationReport, fmt: str = "markdown") -> str:
    """The summary and the per-attack breakdown, with a title line."""
    title = (
        f"Union robustness: {', '.join(report.threats)}; suite {report.suite}; "
        f"{report.n_examples} examples; seed {report.seed}; mode {report.mode.value}"
    )
    note = (
        "95% CI: Wilson score (average: normal approx.). 'rejected': claimed successes that "
        "failed the re-check (outside the ball/box or not misclassified)."
    )
    if report.upper_bounds:
        note += f" NOTE: {report.mode.bound_note(report.suite)}."
    return "\n\n".join([title, format_summary(report, fmt), format_breakdown(report, fmt), note])


def write_report(report: EvaluationReport, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Deprecated: :func:`unionrobust.evaluation.verdicts.write_outputs` (report.json and
    verdicts.csv, which ``evaluate(out_dir=...)`` already writes); report.md/.html:
    :func:`unionrobust.reporting.write_reports`."""
    warnings.warn(
        "unionrobust.reporting.write_report is deprecated: evaluate(out_dir=...) writes "
        "report.json and verdicts.csv (unionrobust.evaluation.verdicts.write_outputs); "
        "write_reports writes report.md/.html",
        DeprecationWarning,
        stacklevel=2,
    )
    return write_outputs(report, out_dir)
