"""One evaluation mode (issue 18): EvaluationMode says which points each attack runs on and
which figures are exact or upper bounds; every table, plot, CLI note and held-out figure asks it."""

from __future__ import annotations

import json

import pytest
import torch
from test_eval_support import THREATS, dummy_suite, linear_problem

from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import evaluate
from unionrobust.evaluation.mode import FIGURES, EvaluationMode
from unionrobust.reporting import format_report

PT, UO, EV = EvaluationMode.PER_THREAT, EvaluationMode.UNION_ONLY, EvaluationMode.EVERYTHING
ALL = frozenset(FIGURES)


@pytest.mark.parametrize(
    ("mode", "suite", "bounds"),
    [
        (PT, "standard", frozenset()),
        (EV, "full", frozenset()),
        (UO, "standard", {"per-threat", "average"}),
        (UO, "full", {"per-threat", "average"}),
        (PT, "quick", ALL),
        (UO, "quick", ALL),
        (PT, "msd-paper", ALL),  # PGD only: weaker than AutoAttack, as cmd_train said
        (PT, "pgd,mim", ALL),
        (PT, None, frozenset()),  # the mode's own answer (verdicts.csv columns)
        (UO, None, {"per-threat", "average"}),
    ],
)
def test_one_method_says_which_figures_are_upper_bounds(mode, suite, bounds):
    assert mode.upper_bounds(suite) == bounds
    assert bool(mode.bound_note(suite)) == bool(bounds)
    for f in FIGURES:
        assert mode.mark(f, suite) == ("≤ " if f in bounds else "")


def test_mode_from_names_and_flags():
    assert EvaluationMode.resolve(None) is PT
    assert EvaluationMode.resolve(None, union_only=True) is UO
    assert EvaluationMode.resolve(None, cascade=False) is EV
    assert EvaluationMode.resolve("union-only") is UO and EvaluationMode.resolve(EV) is EV
    with pytest.raises(UnionRobustError, match="cascade=False"):
        EvaluationMode.resolve(None, cascade=False, union_only=True)
    with pytest.raises(UnionRobustError, match="not both"):
        EvaluationMode.resolve("union-only", union_only=True)
    with pytest.raises(UnionRobustError, match="unknown evaluation mode") as info:
        EvaluationMode.of("fast")
    assert "per-threat" in str(info.value) and "\n" not in str(info.value)


def test_attacked_points_per_mode():
    robust = torch.tensor([[True, True], [True, False], [False, False]])
    assert PT.attacked(robust, 0).tolist() == [True, True, False]
    assert UO.attacked(robust, 0).tolist() == [True, False, False]
    assert EV.attacked(robust, 1).tolist() == [True, True, True]


def test_evaluate_mode_keyword_equals_the_older_flags():
    model, x, y = linear_problem()
    kw = dict(threats=THREATS, batch_size=16, progress=False, diagnostics=False)
    for mode, flags in ((UO, {"union_only": True}), (EV, {"cascade": False}), (PT, {})):
        a = evaluate(model, x, y, suite=dummy_suite(THREATS), mode=mode.value, **kw)
        b = evaluate(model, x, y, suite=dummy_suite(THREATS), **flags, **kw)
        assert a.mode is b.mode is mode
        assert torch.equal(a.broken, b.broken) and a.attacked == b.attacked
        # report.ran and the engine agree: an entry attacked exactly the points it ran on
        assert [int(a.ran(e).sum()) for e in range(len(a.entries))] == a.attacked


def test_quick_suite_tables_label_every_robust_figure(tmp_path):
    model, x, y = linear_problem()
    rep = evaluate(model, x, y, threats="linf:0.05", suite="quick", out_dir=tmp_path,
                   progress=False, diagnostics=False)  # fmt: skip
    text = format_report(rep, "plain")
    assert "linf:0.05 (upper bound)" in text and "union (1 - R_max) (upper bound)" in text
    d = json.loads((tmp_path / "report.json").read_text())
    assert d["upper_bounds"] == ["per-threat", "union", "average"]
    assert "quick" in d["upper_bound_note"]
    # the per-example columns are the suite's own verdicts: complete in per-threat mode
    assert "robust[linf:0.05]" in (tmp_path / "verdicts.csv").read_text()


def test_train_note_follows_the_holdout_mode(capsys):
    """cmd_train's held-out figures: a standard held-out run selecting by union runs union-only,
    so its average is marked as a bound and its union is not (issue 18)."""
    from types import SimpleNamespace

    from unionrobust.cli.cmd_train import report
    from unionrobust.training.config import EvalConfig
    from unionrobust.training.holdout import holdout_mode

    mode = holdout_mode(EvalConfig(suite="standard", select="union"))
    assert mode is UO and holdout_mode(EvalConfig(suite="standard", select="clean")) is PT
    result = SimpleNamespace(
        epochs=1, steps=2, time_per_epoch=1.0, best=None, out_dir=None,
        history=[{"clean_acc": 0.9, "union_acc": 0.4, "average_acc": 0.6}],
    )  # fmt: skip
    report(result, "standard", mode)
    out = capsys.readouterr().out
    assert "clean 90.0%, union 40.0%, average ≤ 60.0%" in out and "union-only" in out
    report(result, "msd-paper", PT)
    out = capsys.readouterr().out
    assert "union ≤ 40.0%" in out and "msd-paper: upper bounds" in out


def test_compare_columns_and_plot_ask_the_mode(tmp_path, monkeypatch):
    from unionrobust.training import compare_table

    assert compare_table.upper_bound_columns("msd-paper", False, ["linf:0.3"]) == [
        "linf:0.3", "union", "average",
    ]  # fmt: skip
    assert compare_table.upper_bound_columns("standard", True, ["linf:0.3"]) == [
        "linf:0.3", "average",
    ]  # fmt: skip
    assert "union-only" in compare_table.bounds_note("standard", True)
    pytest.importorskip("matplotlib")
    figs = []
    monkeypatch.setattr(compare_table, "atomic_savefig", lambda fig, path, **kw: figs.append(fig))
    rows = [{"strategy": "msd", "clean": [0.9], "union": [0.4], "average": [0.5],
             "per_threat": {"linf:0.3": [0.5]}, "time_per_epoch": [1.0]}]  # fmt: skip
    bounds = compare_table.upper_bound_columns("standard", True, ["linf:0.3"])
    assert compare_table.plot(rows, ["linf:0.3"], tmp_path / "c.png", bounds) is None
    ax = figs[0].axes[0]
    hatched = {c.get_label(): bool(c.patches[0].get_hatch()) for c in ax.containers}
    assert hatched == {"clean": False, "≤ linf:0.3": True, "union": False, "≤ average": True}
    assert [t.get_text() for t in ax.texts] == ["≤", "≤"]  # one mark above each bounded bar
