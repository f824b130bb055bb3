"""Suite texts with attack budgets (evaluation/suite_grammar.py): parsing, one-line errors that
list the valid parameters, and the budgets recorded in the report."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import unionrobust as ur
from unionrobust.cli import main as cli_main
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import get_suite
from unionrobust.evaluation.suite_grammar import parse_call, parse_value, split_top

THREATS = "linf:0.3, l2:2"


def test_calls_and_values():
    call = parse_call("apgd-ce(steps=200, restarts=2)")
    assert call == ("apgd-ce", {"steps": 200, "restarts": 2})
    assert parse_call(" mim ") == ("mim", {})
    assert parse_value("8/255") == pytest.approx(8 / 255)
    assert parse_value("0.5/255") == pytest.approx(0.5 / 255)
    assert parse_value("true") is True and parse_value("ce") == "ce" and parse_value("3") == 3
    assert split_top("a(x=1,y=2), b; c", ",;") == ["a(x=1,y=2)", "b", "c"]


def test_the_issue_example_sets_the_budgets():
    suite = get_suite("linf:0.3=apgd-ce(steps=200,restarts=2)+square(queries=10000)", THREATS)
    assert [(e.threat_index, e.attack, dict(e.params)) for e in suite.entries] == [
        (0, "apgd-ce", {"steps": 200, "restarts": 2}),
        (0, "square", {"steps": 10000}),  # a query per step: queries is steps
    ]
    assert suite.name == "linf:0.3: apgd-ce(restarts=2,steps=200),square(steps=10000)"
    built = suite.entries[0].build(suite.threats[0], 0)
    assert (built.steps, built.restarts) == (200, 2)


def test_repeats_is_the_suites_own_field():
    strict = get_suite("standard(repeats=5)", THREATS)
    assert strict.name == "standard" and strict.repeats == 5  # still the strict suite
    assert get_suite("rand(eot=4,repeats=3)", THREATS).name == "rand(eot=4)"


def test_quick_is_adjustable():
    assert dict(get_suite("quick", THREATS).entries[0].params)["steps"] == 20
    suite = get_suite("quick(steps=50, restarts=3)", THREATS)
    assert suite.name == "quick(restarts=3,steps=50)"
    params = [dict(e.params) for e in suite.entries]
    assert all(p["steps"] == 50 and p["restarts"] == 3 for p in params)
    every = get_suite("pgd(steps=7), mim", THREATS)  # calls for every threat
    calls = [(e.attack, dict(e.params)) for e in every.entries[:2]]
    assert calls == [("pgd", {"steps": 7}), ("mim", {})]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("linf:0.3=apgd-ce(stepz=200)", "attack 'apgd-ce' has no parameter 'stepz'; valid: alpha,"),
        ("quick(stepz=3)", "suite 'quick' has no parameter 'stepz'; valid: repeats, restarts,"),
        ("standard(steps=3)", "suite 'standard' has no parameter 'steps'; valid: repeats"),
        ("pgd(steps=-1)", "pgd@linf:0.3: steps must be an integer >= 1, got -1"),
        ("quick(steps=2.5)", "pgd@linf:0.3: steps must be an integer >= 1, got 2.5"),
        ("pgd(steps=5", "unbalanced '('"),
        ("pgd(steps)", "must look like key=value"),
        ("pgd(repeats=0)", "repeats must be an integer >= 1, got 0"),
    ],
)
def test_bad_budgets_are_one_line_errors(text, needle):
    with pytest.raises(UnionRobustError) as err:
        get_suite(text, THREATS)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_parameter_lists_the_valid_ones_on_the_command_line(monkeypatch, capsys):
    monkeypatch.setattr(cli_main, "COMMANDS", ["eval"])
    code = cli_main.main(["eval", "--model", "small-cnn", "--n", "4", "--threats", "linf:0.3",
                          "--suite", "linf:0.3=apgd-ce(stepz=200)", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "valid: alpha, amp, early_stop, eot" in err


def test_report_records_the_budgets(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    x, y = torch.rand(6, 8), torch.randint(0, 3, (6,))
    report = ur.evaluate(model, x, y, threats="linf:8/255", suite="pgd(steps=3,restarts=2)",
                         progress=False, out_dir=tmp_path / "run")  # fmt: skip
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["suite"] == "pgd(restarts=2,steps=3)"
    assert saved["attacks"][0]["params"] == {"restarts": 2, "steps": 3}
    table = ur.reporting.markdown.per_attack_table(report)
    row = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    assert row[1] == "pgd@linf:8/255"  # the entry keeps its one name
    assert row[-1] == "steps=3, restarts=2"  # and its budget has a column


def test_a_second_pass_of_the_same_attack_needs_its_own_seed_offset():
    suite = get_suite("linf:0.3=pgd(steps=10)+pgd(steps=100,seed_offset=1)", THREATS)
    assert suite.keys() == ["pgd@linf:0.3", "pgd@linf:0.3#2"]
    assert suite.name == "linf:0.3: pgd(steps=10),pgd(seed_offset=1,steps=100)"
    with pytest.raises(UnionRobustError, match=r"repeats pgd@linf:0\.3"):
        get_suite("linf:0.3=pgd(steps=10)+pgd(steps=100)", THREATS)
