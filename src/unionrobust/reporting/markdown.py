"""The evaluation report as sections (title + text, tables, pictures) rendered to markdown.

:func:`report_sections` gathers everything once — the summary and per-attack tables of
:mod:`unionrobust.reporting.tables`, the MSD Tables 3–4 view (accuracy against each attack
alone, and against all attacks of a threat), diagnostics, robustness curves, CIFAR-10-C
accuracies, the MultiRobustBench grid and picture slots; :func:`render_markdown` and
:mod:`unionrobust.reporting.html` render the same sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unionrobust.evaluation.mode import FIGURES, EvaluationMode
from unionrobust.evaluation.multirobust import eps_key as _eps_key
from unionrobust.evaluation.report import EvaluationReport
from unionrobust.reporting.tables import format_breakdown, format_summary, format_table, pct

#: picture names used by the reports (and file names next to report.md)
FILTERS_PNG = "filters.png"
CURVES_PNG = "curves.png"
MRB_PNG = "mrb.png"


@dataclass
class Section:
    """A titled list of blocks: ("text", str), ("table", markdown table), ("image", name)."""

    title: str
    blocks: list[tuple[str, str]] = field(default_factory=list)

    def text(self, s: str) -> Section:
        self.blocks.append(("text", s))
        return self

    def table(self, s: str) -> Section:
        self.blocks.append(("table", s))
        return self

    def image(self, name: str) -> Section:
        self.blocks.append(("image", name))
        return self


def per_attack_table(report: EvaluationReport) -> str:
    """MSD Tables 3–4: per threat, one row per attack with the accuracy against that attack
    alone (only known without the cascade) and against all attacks of the threat so far."""
    n = max(report.n_examples, 1)
    cc = report.clean_correct
    rows = []
    for e, key in enumerate(report.entry_keys):
        t = report.entry_threat[e]
        alone = "-" if report.mode.cascade else pct(int((cc & ~report.broken[:, e]).sum()) / n)
        rows.append(
            [
                report.threats[t],
                key,
                alone,
                pct(int(report.threat_robust(e + 1)[:, t].sum()) / n),
            ]
        )
    for spec in report.threats:
        rows.append([spec, "**all attacks**", "", pct(report.per_threat_accuracy[spec])])
    rows.append(["**union**", "**all attacks**", "", pct(report.union_accuracy)])
    return format_table(["threat", "entry", "alone", "with the attacks above"], rows)


def format_diagnostics(diag: dict[str, Any]) -> str:
    """One row per check: fired or not, and its message."""
    if not diag:
        return ""
    rows = []
    for key, title in (
        ("training_mode", "training mode"),
        ("randomized", "randomised outputs"),
        ("probabilities", "probability outputs"),
        ("gradients", "zero/NaN input gradients"),
    ):
        d = diag.get(key)
        if isinstance(d, dict):
            rows.append([title, "**WARNING**" if d.get("flag") else "ok", d.get("message", "")])
    fl = diag.get("first_layer") or {}
    if fl.get("available"):
        count = fl.get("count", 0)
        rows.append(
            [
                "thresholding filters",
                "**WARNING**" if count else "ok",
                f"{count} of {fl.get('filters')} first-layer filters ({fl.get('criterion')})",
            ]
        )
    gm = diag.get("gradient_masking") or {}
    for spec, row in (gm.get("per_threat") or {}).items():
        status = "**WARNING**" if row.get("flag") else ("ok" if row.get("checked") else "n/a")
        rows.append([f"gradient masking {spec}", status, row.get("message", "")])
    return format_table(["check", "status", "detail"], rows)


def format_curve(curve: Any) -> str:
    c = curve if isinstance(curve, dict) else curve.to_dict()
    rows = [[f"{e:.4g}", pct(a)] for e, a in zip(c["eps"], c["accuracy"], strict=True)]
    head = [c.get("x_label", "epsilon"), f"accuracy ({c['label']})"]
    if "ci95" in c:
        head.append("95% CI")
        for row, (lo, hi) in zip(rows, c["ci95"], strict=True):
            row.append(f"[{100 * lo:.1f}, {100 * hi:.1f}]")
    return format_table(head, rows)


def format_corruptions(result: dict[str, Any]) -> str:
    """One row per corruption, one column per severity, and the means (accuracy in %)."""
    sev = result["severities"]
    acc = result["accuracy"]
    rows = [
        [c, *(pct(acc[c][s]) for s in sev), pct(result["per_corruption"][c])]
        for c in result["corruptions"]
    ]
    rows.append(["mean", *(pct(result["per_severity"][s]) for s in sev), pct(result["mean"])])
    return format_table(["corruption", *(f"severity {s}" for s in sev), "mean"], rows)


def format_multirobust(result: dict[str, Any]) -> list[str]:
    """Tables of a :func:`~unionrobust.evaluation.multirobust.multirobust_evaluation` result:
    accuracy per family and strength (percent) with the union, then CR and stability."""
    accs, grid = result["accuracies"], result["grid"]
    families = list(grid)
    clean = f"{accs['NoAttack']:.1f}%"
    rows = [["0 (clean)", *(clean for _ in families), clean]]
    for i, point in enumerate(result["union"]):
        cells = [f"{grid[f][i]:g}: {accs[f][_eps_key(grid[f][i])]:.1f}%" for f in families]
        rows.append([str(i + 1), *cells, f"{point['accuracy']:.1f}%"])
    tables = [format_table(["#", *(f"{f} (eps: acc.)" for f in families), "union"], rows)]
    stab = result["stability"]
    cr = result.get("cr")
    head = ["", *families, "all"]
    metric_rows = [
        [
            "stability: largest drop (points)",
            *(f"{stab['per_family'][f]:.1f}" for f in families),
            f"{stab['max_drop']:.1f}",
        ]
    ]
    if cr:
        for key, name in (("avg", "CR_ind_avg"), ("worst", "CR_ind_worst")):
            metric_rows.append(
                [name, *(f"{cr['per_family'][f][key]:.1f}" for f in families), f"{cr[name]:.1f}"]
            )
    tables.append(format_table(head, metric_rows))
    return tables


def report_sections(
    report: EvaluationReport,
    diagnostics: dict[str, Any] | None = None,
    curves: list[Any] | None = None,
    corruptions: dict[str, Any] | None = None,
    pictures: dict[str, bytes | None] | None = None,
    notes: dict[str, str] | None = None,
    multirobust: dict[str, Any] | None = None,
) -> list[Section]:
    """All sections of a report. ``diagnostics`` defaults to ``report.diagnostics``;
    ``pictures`` maps picture names (FILTERS_PNG, CURVES_PNG) to PNG bytes or None (then
    ``notes[name]`` is shown instead)."""
    diag = report.diagnostics if diagnostics is None else diagnostics
    pictures = pictures or {}
    notes = notes or {}
    out = [_summary_section(report, diag), *_attack_sections(report)]
    out.append(_diagnostics_section(diag, pictures, notes))
    if curves:
        c = Section("Robustness curves")
        for curve in curves:
            c.table(format_curve(curve))
        c.text("Bands and intervals: 95% Wilson score.")
        _picture(c, CURVES_PNG, pictures, notes)
        out.append(c)
    if corruptions:
        out.append(
            Section("CIFAR-10-C accuracy")
            .table(format_corruptions(corruptions))
            .text(f"{corruptions['n']} images per corruption and severity.")
        )
    if multirobust:
        out.append(_multirobust_section(multirobust, pictures, notes))
    return out


def _summary_section(report: EvaluationReport, diag: dict[str, Any] | None) -> Section:
    meta = report.config.get("meta", {}) if report.config else {}
    facts = ", ".join(f"{k}: {v}" for k, v in meta.items() if v is not None)
    title = Section("Summary")
    title.text(
        f"Threats: {', '.join(report.threats)}; suite: {report.suite}; "
        f"{report.n_examples} examples; seed {report.seed}; mode {report.mode.value}; "
        f"unionrobust {report.version}" + (f". {facts}" if facts else "")
    )
    if report.upper_bounds:
        figures = ", ".join(f for f in FIGURES if f in report.upper_bounds)
        title.text(
            f"**Upper bounds ({figures})**: {report.mode.bound_note(report.suite)}."
        )
    if diag and diag.get("flags"):
        title.text("**Warnings: " + ", ".join(diag["flags"]) + "** (see Diagnostics)")
    title.table(format_summary(report))
    title.text(
        "95% CI: Wilson score (average: normal approximation). Union accuracy = 1 - R_max, "
        "average = 1 - R_avg (Maini et al. 2020 §2)."
    )
    return title


def _attack_sections(report: EvaluationReport) -> list[Section]:
    breakdown = (
        Section("Per attack (run order)")
        .table(format_breakdown(report))
        .text(
            "'rejected': claimed successes that failed the re-check (outside the ball or box, "
            "or not misclassified)."
        )
    )
    msd = Section("Per attack and threat (as MSD Tables 3-4)").table(per_attack_table(report))
    if report.mode.cascade:
        union_only = report.mode is EvaluationMode.UNION_ONLY
        msd.text(
            "'alone' needs every attack run on every point (evaluate(..., mode='everything')); "
            "the cascade only attacks points still robust"
            + (" for the union: per-threat rows are upper bounds." if union_only else ".")
        )
    return [breakdown, msd]


def _diagnostics_section(diag: dict[str, Any] | None, pictures: dict, notes: dict) -> Section:
    d = Section("Diagnostics")
    if diag:
        d.table(format_diagnostics(diag))
    else:
        d.text("not run")
    if FILTERS_PNG in pictures or FILTERS_PNG in notes:
        d.text("First-layer filters (MSD App. E; grey = 0, white > 0, black < 0):")
        _picture(d, FILTERS_PNG, pictures, notes)
    return d


def _multirobust_section(multirobust: dict[str, Any], pictures: dict, notes: dict) -> Section:
    m = Section("MultiRobustBench grid")
    for table in format_multirobust(multirobust):
        m.table(table)
    _picture(m, MRB_PNG, pictures, notes)
    m.text(
        f"Suite {multirobust['suite']}, {multirobust['n_examples']} examples; "
        f"{multirobust['monotone']}. CR (Dai et al. 2023): accuracy / reference accuracy "
        "averaged (CR_ind_avg) or minimised (CR_ind_worst) over clean and every strength, "
        "x 100, over the families run here (the leaderboard's CR also covers the families not "
        "run); "
        + ("no reference given (--mrb-reference). " if not multirobust.get("cr") else "")
        + "Not run: "
        + ", ".join(multirobust.get("not_run", []))
        + "."
    )
    return m


def _picture(sec: Section, name: str, pictures: dict, notes: dict) -> None:
    if pictures.get(name) is not None:
        sec.image(name)
    elif name in notes:
        sec.text(f"({notes[name]})")


def render_markdown(sections: list[Section], title: str = "Union robustness report") -> str:
    """Markdown text; pictures are links to files of the same name next to the report."""
    parts = [f"# {title}"]
    for sec in sections:
        parts.append(f"## {sec.title}")
        for kind, body in sec.blocks:
            parts.append(f"![{body}]({body})" if kind == "image" else body)
    return "\n\n".join(parts) + "\n"
