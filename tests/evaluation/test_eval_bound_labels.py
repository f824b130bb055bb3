"""Every printed or written robustness figure is exact (a suite at least as strong as
``standard``, per-threat mode, or an exhaustive search) or labelled an upper bound, in tables
and in pictures (issue 18); identical curves stay distinguishable in curves.png (issue 19)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from _helpers import CONV_MODULE, tiny_data, tiny_mlp
from unionrobust.attacks.spatial import GridAttack, WorstOfK
from unionrobust.cli import main as cli_main
from unionrobust.cli.cmd_affine import format_affine
from unionrobust.cli.cmd_attack import format_attack
from unionrobust.cli.cmd_spatial import format_spatial
from unionrobust.evaluation import evaluate
from unionrobust.evaluation import multirobust as mrb
from unionrobust.evaluation.affine_report import affine_report
from unionrobust.evaluation.attack_report import attack_report
from unionrobust.evaluation.curves import union_curve
from unionrobust.evaluation.minmax import minmax_report, minmax_table, run_minmax
from unionrobust.evaluation.mode import FIGURES, EvaluationMode, attack_bounds, attack_mark
from unionrobust.evaluation.spatial_report import spatial_report
from unionrobust.reporting import plots
from unionrobust.reporting.markdown import (
    curves_note,
    format_curve,
    format_multirobust,
    per_attack_table,
)
from unionrobust.threats import Linf, RotationTranslation, parse
from unionrobust.training.config import EvalConfig
from unionrobust.training.holdout import holdout_bounds

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def problem():
    model = tiny_mlp(seed=1).eval()
    x, _ = tiny_data(16, seed=2)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10
    return model, x, y


def test_one_attack_gives_upper_bounds_unless_exhaustive():
    assert attack_bounds("pgd") == frozenset(FIGURES) and attack_mark("ddn") == "≤ "
    assert attack_bounds("spatial-grid") == frozenset() and attack_mark("spatial-grid") == ""


# ----------------------------------------------------------------------------- curves
def _curve(label, acc, attack="pgd", **extra):
    return {"label": label, "eps": [0.5, 1.0], "accuracy": acc, "attack": attack,
            "method": "per-eps", **extra}  # fmt: skip


def test_curves_are_labelled_upper_bounds_in_tables_json_and_picture(problem):
    model, x, y = problem
    curves = union_curve(model, x, y, "linf:0.05, l2:0.3", scales=[0.5, 1.0], steps=3)
    for c in curves:
        d = c.to_dict()
        assert c.upper_bound and d["upper_bound"] is True and "pgd" in d["upper_bound_note"]
        assert f"≤ accuracy ({c.label})" in format_curve(c)
    assert "upper bound" in curves_note(curves)
    fig = plots.curves_figure(curves)
    axes = fig.get_axes()
    assert all(ax.get_ylabel().startswith("≤ ") for ax in axes)
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend and all(t.startswith("≤ ") for t in legend)
    assert all("upper bound" in ax.get_title() for ax in axes[1:])


def test_exact_curves_carry_no_mark():
    """A curve flagged exact (here: recorded so, or an exhaustive attack) is not marked."""
    exact = [_curve("rt", [0.5, 0.25], attack="spatial-grid"),
             _curve("union", [0.5, 0.25], upper_bound=False)]  # fmt: skip
    assert all("≤" not in format_curve(c) for c in exact) and curves_note(exact) == ""
    fig = plots.curves_figure(exact)
    assert not any("≤" in ax.get_ylabel() for ax in fig.get_axes())
    assert not any("≤" in t.get_text() for t in fig.get_axes()[0].get_legend().get_texts())


def test_identical_curves_stay_distinguishable():
    """Issue 19: the ℓ∞ line hid under an identical union line."""
    items = [_curve("linf", [0.5, 0.25]), _curve("l2", [0.75, 0.5]),
             _curve("union", [0.5, 0.25])]  # fmt: skip
    ax = plots.curves_figure(items).get_axes()[0]
    lines = ax.get_lines()
    linf, union = lines[0], lines[2]
    assert list(linf.get_ydata()) == list(union.get_ydata())  # same numbers ...
    assert linf.get_linestyle() != union.get_linestyle()  # ... drawn differently
    assert linf.get_marker() != union.get_marker()
    assert linf.get_linewidth() > union.get_linewidth() and linf.get_zorder() < union.get_zorder()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["≤ linf (identical to union)", "≤ l2", "≤ union (identical to linf)"]


# ----------------------------------------------------------------------------- eval, mrb
def test_per_attack_table_totals_follow_the_suite(problem):
    model, x, y = problem
    kw = dict(threats="linf:0.05, l2:0.3", progress=False, diagnostics=False)
    quick = evaluate(model, x, y, suite="quick", **kw)
    assert per_attack_table(quick).count("**all attacks** (upper bound)") == 3
    # the labels depend on the suite's name and the mode only (a real standard run is slow)
    strict = per_attack_table(dataclasses.replace(quick, suite="standard"))
    assert "upper bound" not in strict and "≤" not in strict
    union_only = dataclasses.replace(quick, suite="standard", mode=EvaluationMode.UNION_ONLY)
    assert per_attack_table(union_only).count("**all attacks** (upper bound)") == 2


def test_multirobust_grid_is_marked_for_a_weak_suite_only(problem, monkeypatch):
    model, x, y = problem
    grid = {"AutoLinfAttack": [0.02], "AutoL2Attack": [0.2], "AutoL1Attack": [1.0]}
    weak = mrb.evaluate_grid(model, x, y, grid, suite="quick")
    run = mrb.evaluate  # the labels depend on the suite's name only: "standard" runs as quick

    def fast(*args, suite, **kw):
        return run(*args, suite="quick" if suite == "standard" else suite, **kw)

    monkeypatch.setattr(mrb, "evaluate", fast)
    strict = mrb.evaluate_grid(model, x, y, grid, suite="standard")
    assert weak["upper_bound"] is True and "quick" in weak["upper_bound_note"]
    assert strict["upper_bound"] is False and strict["upper_bound_note"] == ""
    for result, marked in ((weak, True), (strict, False)):
        result["stability"] = mrb.stability(result["accuracies"])
        assert ("≤" in format_multirobust(result)[0]) is marked
        ylabels = [ax.get_ylabel() for ax in plots.multirobust_figure(result).get_axes()]
        assert all(lab.startswith("≤ ") is marked for lab in ylabels)


def test_eval_mode_option_and_its_aliases(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli_main, "COMMANDS", ["eval"])
    src = tmp_path / "net.py"
    src.write_text(CONV_MODULE)
    base = ["eval", "--model-module", f"{src}:build", "--n", "6", "--suite",
            "quick", "--threats", "linf:0.05, l2:0.5", "--no-progress"]  # fmt: skip
    for i, (flags, mode) in enumerate([
        (["--mode", "everything"], "everything"),
        (["--union-only"], "union-only"),
        (["--mode", "union-only", "--no-union-only"], "per-threat"),
        ([], "per-threat"),
    ]):  # fmt: skip
        out = tmp_path / f"run{i}"
        assert cli_main.main([*base, *flags, "--out", str(out)]) == 0
        assert json.loads((out / "report.json").read_text())["mode"] == mode
        assert f"mode {mode}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        cli_main.main([*base, "--mode", "cascade"])
    assert bad.value.code == 2
    assert "everything" in capsys.readouterr().err


def test_held_out_bounds_in_result_json():
    assert holdout_bounds(EvalConfig(suite="quick"))["upper_bounds"] == list(FIGURES)
    union = holdout_bounds(EvalConfig(suite="standard", select="union"))
    assert union["upper_bounds"] == ["per-threat", "average"] and union["mode"] == "union-only"
    clean = holdout_bounds(EvalConfig(suite="standard", select="clean"))
    assert clean["upper_bounds"] == [] and clean["upper_bound_note"] == ""


# ----------------------------------------------------------------------------- one attack
def test_attack_and_affine_figures_are_marked(problem):
    model, x, y = problem
    rep = attack_report(model, x, y, "pgd", parse("linf:0.05"), steps=3, progress=False)
    assert rep.to_dict()["upper_bound"] is True
    text = format_attack(rep)
    assert "robust accuracy  ≤ " in text and "≤: one attack (pgd)" in text
    s1, s2 = parse("linf:0.05, l2:0.3")
    aff = affine_report(model, x, y, s1 | s2, [0.0, 1.0], steps=3, progress=False)
    assert aff.to_dict()["upper_bound"] is True
    text = format_affine(aff, s1, s2)
    assert len(re.findall(r"\|\s+≤ \d", text)) == 4  # beta 0, beta 1, union, affine
    assert "≤: one attack (affine PGD)" in text


def test_spatial_grid_is_exact_and_worst_of_k_an_upper_bound(problem):
    model, x, y = problem
    rt = RotationTranslation(10, 1, 3, 3)
    grid = spatial_report(model, x, y, attack=GridAttack(rt), progress=False)
    assert grid.to_dict()["upper_bound"] is False
    text = format_spatial(grid)
    assert "≤" not in text and "exact for the 27-point lattice" in text
    rand = spatial_report(model, x, y, attack=WorstOfK(rt, k=2), progress=False)
    assert rand.to_dict()["upper_bound"] is True
    assert "≤ " in format_spatial(rand) and "spatial-worst-of-k" in format_spatial(rand)


def test_minmax_accuracies_are_marked(problem):
    from unionrobust.attacks.domains import ModelEnsemble

    model, x, y = problem
    domains = ModelEnsemble([model, tiny_mlp(seed=3).eval()])
    results = run_minmax(domains, x, y, Linf(0.05), batch_size=8, progress=False, steps=2)
    headers, _ = minmax_table(results)
    assert [h for h in headers if "acc_" in h] and all(
        h.startswith("≤ ") for h in headers if "acc_" in h
    )
    assert minmax_report(results)["upper_bound"] is True
