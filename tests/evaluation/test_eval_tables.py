"""Reporting: the on-screen tables and the atomic JSON/CSV writers."""

from __future__ import annotations

import csv
import json
import math

import pytest
from test_eval_support import THREATS, dummy_suite, linear_problem

from unionrobust.evaluation import evaluate
from unionrobust.reporting import format_report, format_table, write_csv, write_json


@pytest.fixture(scope="module")
def report():
    model, x, y = linear_problem()
    return evaluate(
        model, x, y, threats=THREATS, suite=dummy_suite(THREATS), batch_size=16, progress=False
    )


@pytest.mark.parametrize("fmt", ["markdown", "plain"])
def test_report_table_shows_every_number(report, fmt):
    text = format_report(report, fmt)
    ci = report.intervals()
    assert f"{100 * report.union_accuracy:.1f}%" in text
    assert f"{100 * report.average_accuracy:.1f}%" in text
    assert f"{100 * report.clean_accuracy:.1f}%" in text
    lo, hi = ci["union"]
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in text
    for spec, acc in report.per_threat_accuracy.items():
        line = next(ln for ln in text.splitlines() if spec in ln and "%" in ln)
        assert f"{100 * acc:.1f}%" in line
    # one breakdown row per suite entry
    rows = [ln for ln in text.splitlines() if "onestep" in ln or "noise" in ln]
    assert len(rows) == len(report.entries)
    assert ("|" in text) == (fmt == "markdown")


def test_format_table_aligns_and_rejects_unknown_format():
    t = format_table(["a", "bb"], [["x", 1], ["yyy", 22]], "plain").splitlines()
    assert len({len(line) for line in t}) == 1
    with pytest.raises(ValueError, match="unknown table format"):
        format_table(["a"], [], "html")


def test_writers_are_atomic_and_json_safe(tmp_path):
    write_json(tmp_path / "r.json", {"a": math.nan, "b": [1.5, math.inf], "c": {"d": 1}})
    assert json.loads((tmp_path / "r.json").read_text()) == {
        "a": None,
        "b": [1.5, None],
        "c": {"d": 1},
    }
    write_csv(tmp_path / "v.csv", [{"id": 0, "x": "1"}, {"id": 1, "x": ""}])
    rows = list(csv.DictReader((tmp_path / "v.csv").open()))
    assert rows == [{"id": "0", "x": "1"}, {"id": "1", "x": ""}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "v.csv"]


def test_report_dict_is_strict_json(report):
    text = json.dumps(report.to_dict(), allow_nan=False)
    back = json.loads(text)
    assert (
        back["per_threat"][THREATS.split(",")[0].strip()]["ci95"][0] <= back["union_accuracy"] + 1
    )
    assert len(back["per_attack"]) == len(report.entries)
    assert back["per_attack"][-1]["union_accuracy_after"] == pytest.approx(report.union_accuracy)


def test_a_threat_without_attacks_is_flagged():
    model, x, y = linear_problem()
    union = THREATS
    suite = dummy_suite(union)
    from unionrobust.evaluation import Suite

    only_first = Suite(
        "partial", suite.threats, tuple(e for e in suite.entries if e.threat_index == 0)
    )
    rep = evaluate(model, x, y, threats=union, suite=only_first, progress=False)
    text = format_report(rep)
    flagged = [ln for ln in text.splitlines() if "no attack run" in ln]
    assert len(flagged) == 2
    d = rep.to_dict()["per_threat"]
    assert [v["attacks"] for v in d.values()] == [2, 0, 0]
