"""One identity per suite entry (issue 18): the key ``attack@threat[#pass]`` names each entry in
progress, the verdict log and resume, verdicts.csv, report.json/md and the diagnostics."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch
from test_eval_support import THREATS, Noise, OneStep, linear_problem

from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import Suite, SuiteEntry, evaluate, get_suite
from unionrobust.evaluation.suites import entry_key
from unionrobust.evaluation.verdicts import LOG_NAME, read_log
from unionrobust.threats import parse

ISSUE_THREATS = "linf:0.05, l2:1, l1:6"


def test_standard_keys_are_distinct_and_name_each_pass():
    suite = get_suite("standard", ISSUE_THREATS)
    assert suite.keys() == [
        "apgd-ce@linf:0.05",
        "apgd-t@linf:0.05",
        "apgd-t@linf:0.05#2",
        "square@linf:0.05",  # the escalation (issue 16): probe, then the masked tier
        "fab-t@linf:0.05",
        "square@linf:0.05#2",
        "apgd-ce@l2:1",
        "apgd-t@l2:1",
        "apgd-t@l2:1#2",
        "square@l2:1",
        "fab-t@l2:1",
        "square@l2:1#2",
        "square@l2:1#3",
        "apgd-ce@l1:6",
        "apgd-t@l1:6",
        "apgd-t@l1:6#2",
        "apgd-ce@l1:6#3",
        "apgd-cw@l1:6#4",
        "apgd-ce@l1:6#6",
        "square@l1:6",
        "apgd-ce@l1:6#5",  # pass 5, the 1,000-step run, keeps its draws in the masked tier
        "fab-t@l1:6",
        "square@l1:6#2",
        "pointwise@l1:6",
    ]
    assert suite.labels() == suite.keys()  # progress shows the key
    assert [d["key"] for d in suite.describe()] == suite.keys()
    # union-first order keeps the keys (another order, same names)
    assert sorted(suite.union_first().keys()) == sorted(suite.keys())


def test_seed_offset_is_a_field_and_keeps_todays_seeds():
    """The pass's seed is the run's seed + seed_offset, exactly as the hidden parameter gave."""
    suite = get_suite("standard", ISSUE_THREATS)
    union = parse(ISSUE_THREATS)
    for e in suite.entries:
        assert "seed_offset" not in dict(e.params)
        assert e.build(union[e.threat_index], 7).seed == 7 + e.seed_offset
    # then the escalation: the Square probe, FAB-T, Square pass 2 (ℓ2: pass 3; ℓ1: the long
    # APGD-CE run first, Pointwise last)
    offsets = [e.seed_offset for e in suite.entries if e.threat_index == 2]
    assert offsets == [0, 0, 1, 2, 3, 5, 0, 4, 0, 1, 0]
    assert [e.seed_offset for e in suite.entries if e.threat_index == 1] == [0, 0, 1, 0, 0, 1, 2]
    assert [e.seed_offset for e in suite.entries if e.threat_index == 0] == [0, 0, 1, 0, 0, 1]


def test_a_new_entry_is_one_line():
    e = SuiteEntry(0, "pgd", {"steps": 3}, seed_offset=2)
    union = parse("linf:0.1")
    assert e.params == (("steps", 3),) and e.key(union) == "pgd@linf:0.1#3"
    attack = e.build(union[0], 10)
    assert attack.steps == 3 and attack.seed == 12
    assert entry_key("pgd", "linf:0.1") == "pgd@linf:0.1"
    with pytest.raises(UnionRobustError, match="seed_offset"):
        SuiteEntry(0, "pgd", seed_offset=-1)


@pytest.mark.parametrize(
    "suite", ["pgd, pgd", ["pgd", "mim", "pgd"], "linf:0.3=pgd+pgd", {"l1:10": "pgd, pgd"}]
)
def test_duplicate_entries_are_refused_naming_them(suite):
    with pytest.raises(UnionRobustError, match="repeats pgd@") as info:
        get_suite(suite, "linf:0.3, l1:10")
    assert "\n" not in str(info.value)


def test_duplicate_suite_entries_refused_also_when_built_by_hand():
    union = parse("linf:0.3")
    with pytest.raises(UnionRobustError, match=r"repeats pgd@linf:0.3\b"):
        Suite("s", union, (SuiteEntry(0, "pgd"), SuiteEntry(0, "pgd", {"steps": 5})))
    # the same attack as another pass is fine
    Suite("s", union, (SuiteEntry(0, "pgd"), SuiteEntry(0, "pgd", seed_offset=1)))


def _repeated_suite(threats: str) -> Suite:
    """Per threat: onestep, noise, noise as pass 2 (fresh random draws)."""
    union = parse(threats)
    entries = []
    for i in range(len(union)):
        entries += [
            SuiteEntry(i, "onestep", (), lambda t, s: OneStep(t, seed=s, scale=0.5)),
            SuiteEntry(i, "noise", (), lambda t, s: Noise(t, seed=s)),
            SuiteEntry(i, "noise", (), lambda t, s: Noise(t, seed=s), seed_offset=1),
        ]
    return Suite("repeated", union, tuple(entries))


@pytest.mark.parametrize("union_only", [False, True])
def test_every_file_names_each_entry_by_its_key(tmp_path, union_only):
    model, x, y = linear_problem()
    suite = _repeated_suite(THREATS)
    rep = evaluate(
        model, x, y, threats=THREATS, suite=suite, batch_size=16, out_dir=tmp_path,
        progress=False, union_only=union_only,
    )  # fmt: skip
    keys = rep.entry_keys
    assert sorted(keys) == sorted(suite.keys()) and len(set(keys)) == 9
    # verdicts.csv: one broken/norm column per entry, none overwritten
    rows = list(csv.DictReader((tmp_path / "verdicts.csv").open()))
    assert [c[7:-1] for c in rows[0] if c.startswith("broken[")] == keys
    assert [c[5:-1] for c in rows[0] if c.startswith("norm[")] == keys
    for e, k in enumerate(keys):
        assert [int(r[f"broken[{k}]"]) for r in rows] == rep.broken[:, e].int().tolist()
    # report.json per-attack rows and the diagnostics
    data = json.loads((tmp_path / "report.json").read_text())
    assert [r["key"] for r in data["per_attack"]] == keys
    assert [a["key"] for a in data["attacks"]] == keys
    # the log's attack records name their entry by key
    _, records, _ = read_log(tmp_path / LOG_NAME)
    assert {r["entry"] for r in records if r["type"] == "attack"} <= set(keys)
    # the markdown tables
    from unionrobust.reporting.markdown import render_markdown, report_sections

    md = render_markdown(report_sections(rep))
    for k in keys:  # a row in the run-order table and one in the MSD Tables 3-4 view
        assert len(re.findall(rf"\| +{re.escape(k)} +\|", md)) == 2


def test_resume_replays_records_by_key(tmp_path):
    """A log written in per-threat order replays into nothing else: records carry keys."""
    model, x, y = linear_problem()
    kw = dict(threats=THREATS, batch_size=16, out_dir=tmp_path, progress=False)
    ref = evaluate(model, x, y, suite=_repeated_suite(THREATS), **kw)
    again = evaluate(model, x, y, suite=_repeated_suite(THREATS), resume=True, **kw)
    assert torch.equal(ref.broken, again.broken)
    _, records, _ = read_log(tmp_path / LOG_NAME)
    assert all(isinstance(r["entry"], str) for r in records if r["type"] == "attack")
