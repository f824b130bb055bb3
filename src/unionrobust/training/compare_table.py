"""The strategy comparison's results as text and a picture: the markdown table, the note on
upper bounds, and the grouped-bar plot (:mod:`unionrobust.training.compare` runs the comparison;
this module sits in ``training`` because the layers above it may not be imported from there)."""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unionrobust.atomic import atomic_savefig
from unionrobust.evaluation.mode import EvaluationMode


def _fmt(values: list[float], pct: bool = True) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "–"
    scale = 100.0 if pct else 1.0
    mean = statistics.fmean(vals) * scale
    if len(vals) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(vals) * scale:.1f}"


def _seconds(values: list[float]) -> str:
    """Whole CPU seconds: the mean over seeds (± std with several)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "–"
    spread = f" ± {statistics.stdev(vals):.0f}" if len(vals) > 1 else ""
    return f"{statistics.fmean(vals):.0f}{spread}"


def _cell(r: dict[str, Any], col: str) -> str:
    """One accuracy cell: ``value [lo, hi]`` (95 %) for one seed, else mean ± std."""
    vals = r["per_threat"][col] if col in r["per_threat"] else r[col]
    cis = (r.get("ci95") or {}).get(col)
    if len(vals) != 1 or not cis:
        return _fmt(vals)
    lo, hi = cis[0]
    return f"{100 * vals[0]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def table(rows: list[dict[str, Any]], threats: list[str], upper_bounds: Sequence[str] = ()) -> str:
    """Markdown table of the aggregated rows (one per strategy); the cells of the columns named
    in ``upper_bounds`` start with "≤" (their figures are upper bounds)."""
    cols = ["clean", *threats, "union", "average"]
    costs = [c for c in COST_COLUMNS if all(c in r for r in rows)]
    head = ["strategy", *cols, "s/epoch", *(COST_COLUMNS[c] for c in costs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["strategy"]]
        cells += [("≤ " if is_bound(r, c, upper_bounds) else "") + _cell(r, c) for c in cols]
        cells.append(_fmt(r["time_per_epoch"], pct=False))
        cells += [_seconds(r[c]) for c in costs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: a row's cost keys (lists over seeds, CPU seconds) -> their column heads, shown when present
COST_COLUMNS = {"train_cpu": "train CPU s", "eval_cpu": "eval CPU s"}


def compare_mode(union_only: bool) -> EvaluationMode:
    """The mode of the comparison's evaluation."""
    return EvaluationMode.resolve(None, union_only=bool(union_only))


def is_bound(row: dict[str, Any], col: str, upper_bounds: Sequence[str] = ()) -> bool:
    """Whether the cell ``col`` of ``row`` is an upper bound rather than a measurement: the
    row's own per-cell flag ``row["is_bound"][col]`` when it has one, else whether ``col`` is
    one of the ``upper_bounds`` columns."""
    flags = row.get("is_bound") or {}
    return bool(flags[col]) if col in flags else col in upper_bounds


def upper_bound_columns(suite: str, union_only: bool, threats: Sequence[str]) -> list[str]:
    """Columns whose figures are upper bounds, as :meth:`EvaluationMode.upper_bounds` says for
    the comparison's ``suite`` and mode: every robust column for a suite weaker than
    ``standard`` (e.g. ``quick``, ``msd-paper``), the per-threat and average ones in union-only
    mode (the union is exact there)."""
    bounds = compare_mode(union_only).upper_bounds(suite)
    per_threat = list(threats) if "per-threat" in bounds else []
    return per_threat + [c for c in ("union", "average") if c in bounds]


def plot(
    rows: list[dict[str, Any]], threats: list[str], path: Path, bounds: Sequence[str] = ()
) -> str | None:
    """Grouped bars per strategy; whiskers: the 95 % interval (one seed) or ± std (seeds).

    A cell that is an upper bound (:func:`is_bound`) is never drawn as a measurement: its bar
    is hollow and hatched, marked "≤" above it, and the legend says so."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'unionrobust[plot]'): no plot written"
    cols = ["clean", *threats, "union", "average"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 3.6))
    width = 0.8 / len(cols)
    any_bound = False
    for j, col in enumerate(cols):
        means, errs = [], []
        for r in rows:
            vals = r["per_threat"][col] if col in threats else r[col]
            mean = statistics.fmean(vals)
            cis = (r.get("ci95") or {}).get(col)
            if len(vals) == 1 and cis:  # the 95 % interval
                lo, hi = cis[0]
                err = (mean - lo, hi - mean)
            else:  # the spread over seeds
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                err = (sd, sd)
            means.append(100 * mean)
            errs.append((100 * err[0], 100 * err[1]))
        xs = [i + (j - (len(cols) - 1) / 2) * width for i in range(len(rows))]
        yerr = [[e[0] for e in errs], [e[1] for e in errs]]
        every_bound = bool(rows) and all(is_bound(r, col, bounds) for r in rows)
        bars = ax.bar(xs, means, width, yerr=yerr if any(map(any, yerr)) else None,
                      label=f"≤ {col}" if every_bound else col,
                      capsize=2, error_kw={"elinewidth": 0.8})  # fmt: skip
        colour = bars.patches[0].get_facecolor() if bars.patches else None
        for r, x, m, patch in zip(rows, xs, means, bars.patches, strict=True):
            if is_bound(r, col, bounds):  # hollow, hatched, "≤": a bound, not a measurement
                any_bound = True
                patch.set_facecolor("none")
                patch.set_edgecolor(colour)
                patch.set_hatch("///")
                ax.text(x, min(m + 1, 96), "≤", ha="center", va="bottom", fontsize=6)
    if any_bound:
        from matplotlib.patches import Patch

        handles, labels = ax.get_legend_handles_labels()
        handles.append(Patch(facecolor="none", edgecolor="grey", hatch="///"))
        labels.append("≤ upper bound")
    ax.set_xticks(range(len(rows)), [r["strategy"] for r in rows])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    if any_bound:
        ax.legend(handles, labels, fontsize=7, ncol=len(cols), loc="upper center",
                  bbox_to_anchor=(0.5, 1.22))  # fmt: skip
    else:
        ax.legend(fontsize=7, ncol=len(cols), loc="upper center", bbox_to_anchor=(0.5, 1.15))
    with warnings.catch_warnings():  # a narrow figure (one strategy) cannot fit the legend
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    return None


def bounds_note(suite: str, union_only: bool) -> str:
    """The sentence on upper bounds (:meth:`EvaluationMode.bound_note`)."""
    note = compare_mode(union_only).bound_note(suite)
    if not note:
        return "every accuracy is the strict figure of the suite; "
    return f"≤: upper bounds (hatched in compare.png) — {note}; "
