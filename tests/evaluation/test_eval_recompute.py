"""Every file a run writes agrees with itself (issue 18): for every named suite, with and without
the peers' attacks, every figure of report.json and report.md is recomputed from verdicts.csv
alone, and every non-robust verdict is explained by a ``broken[KEY]`` column of its threat (or
by a clean misclassification).

The suites keep their entries and keys; only the attacks' budgets are cut (steps, restarts,
targets, repeats) so that the test stays fast on a tiny linear model and 12 points.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from test_eval_support import linear_problem

from unionrobust.evaluation import Suite, evaluate, get_suite
from unionrobust.evaluation import suites as suites_module
from unionrobust.evaluation.metrics import mean_score, proportion
from unionrobust.evaluation.mode import EvaluationMode
from unionrobust.reporting import write_reports

THREATS = "linf:0.03, l2:0.2, l1:0.4"
#: attribute -> ceiling: the budgets cut for the test (the entries and keys stay the suite's)
BUDGET = {"steps": 6, "restarts": 1, "n_targets": 2, "repeats": 2}
KEY = re.compile(r"^(?P<attack>[^@]+)@(?P<threat>.+?)(?:#(?P<pass>\d+))?$")
PEER_PACKAGES = ("foolbox", "torchattacks")
PEER_ATTACKS = {name for per in suites_module.FULL_PEERS.values() for name, _, _ in per}


def _small(attack):
    for name, ceiling in BUDGET.items():
        value = getattr(attack, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > ceiling:
            setattr(attack, name, ceiling)
    return attack


def cut_budgets(suite: Suite) -> Suite:
    """The same entries (same keys, seeds and parameters) with smaller attack budgets."""

    def entry(e):
        def factory(threat, seed, _e=e):
            return _small(_e.factory(threat, seed))

        return replace(e, factory=factory)

    return Suite(suite.name, suite.threats, tuple(entry(e) for e in suite.entries))


def _tables(md: str) -> list[list[list[str]]]:
    """Every markdown table of ``md`` as rows of cells (header first, separator dropped)."""
    out, current = [], []
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            out.append([current[0], *current[2:]])
            current = []
    return out


def _table(md: str, first_header: list[str]) -> list[list[str]]:
    found = [t for t in _tables(md) if t[0][: len(first_header)] == first_header]
    assert len(found) == 1, first_header
    return found[0]


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _eps(spec: str) -> float:
    return float(spec.split(":", 1)[1])


def check_recomputable(out: Path) -> None:
    """Recompute report.json and report.md from verdicts.csv; assert they agree."""
    rows = list(csv.DictReader((out / "verdicts.csv").open()))
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    mode = EvaluationMode.of(report["mode"])
    n = len(rows)
    header = list(rows[0])
    keys = [c[len("broken[") : -1] for c in header if c.startswith("broken[")]
    robust_col = "robust_upper_bound" if "per-threat" in mode.upper_bounds() else "robust"
    threats = [c[len(robust_col) + 1 : -1] for c in header if c.startswith(robust_col + "[")]
    threats = [t for t in threats if t != "union"]
    # one column pair per entry, named by the entry's key, in the report's run order
    assert keys == [r["key"] for r in report["per_attack"]] == [a["key"] for a in report["attacks"]]
    assert len(set(keys)) == len(keys) and threats == report["threats"]
    assert [c for c in header if c.startswith("norm[")] == [f"norm[{k}]" for k in keys]
    threat_of = {k: KEY.match(k)["threat"] for k in keys}
    assert set(threat_of.values()) <= set(threats)

    cc = [int(r["clean_correct"]) for r in rows]
    broken = {k: [int(r[f"broken[{k}]"]) for r in rows] for k in keys}
    ran = {k: [r[f"norm[{k}]"] != "" for r in rows] for k in keys}

    # per example: robust for t iff clean-correct and no entry of t broke it; each non-robust
    # verdict explained by a broken column of its threat (or by clean misclassification)
    robust = {t: [0] * n for t in threats}
    for i, r in enumerate(rows):
        for t in threats:
            mine = [k for k in keys if threat_of[k] == t]
            broke = [k for k in mine if broken[k][i]]
            robust[t][i] = int(cc[i] and not broke)
            assert int(r[f"{robust_col}[{t}]"]) == robust[t][i], (i, t)
            if not robust[t][i]:
                assert not cc[i] or broke, f"example {r['id']}: {t} not robust, unexplained"
        assert int(r["robust[union]"]) == min(robust[t][i] for t in threats)
        for k in keys:
            if broken[k][i]:  # a break is a re-checked point inside the threat's ball
                assert ran[k][i] and float(r[f"norm[{k}]"]) <= _eps(threat_of[k]) * 1.001 + 1e-6
    union = [min(robust[t][i] for t in threats) for i in range(n)]
    scores = [sum(robust[t][i] for t in threats) / len(threats) for i in range(n)]

    import torch

    def prop(values):
        return proportion(torch.tensor(values, dtype=torch.bool))

    clean = prop(cc)
    per_threat = {t: prop(robust[t]) for t in threats}
    union_acc = prop(union)
    average = mean_score(torch.tensor(scores, dtype=torch.float64))
    assert report["n_examples"] == n
    for name, (value, ci) in (("clean", clean), ("union", union_acc), ("average", average)):
        assert report[f"{name}_accuracy"] == pytest.approx(value)
        assert report[f"{name}_accuracy_ci95"] == pytest.approx(list(ci))
    for t in threats:
        value, ci = per_threat[t]
        got = report["per_threat"][t]
        assert got["accuracy"] == pytest.approx(value) and got["ci95"] == pytest.approx(list(ci))
        assert got["attacks"] == sum(threat_of[k] == t for k in keys)

    # per entry, in run order: points attacked (which the mode says), broken, accuracies after
    state = {t: list(cc) for t in threats}
    after = []
    # standard's masked tier runs only on evidence of gradient masking (issue 16)
    masked = {
        d["key"]
        for d in report["attacks"]
        if d["params"].get("escalate") in ("masked", "filters")
    }
    gated = masked & {r["key"] for r in report["per_attack"] if r["attacked"] == 0}
    for e, k in enumerate(keys):
        t = threat_of[k]
        if k in gated:
            todo = [False] * n
        elif mode is EvaluationMode.EVERYTHING:
            todo = [True] * n
        elif mode is EvaluationMode.UNION_ONLY:
            todo = [all(state[s][i] for s in threats) for i in range(n)]
        else:
            todo = [bool(state[t][i]) for i in range(n)]
        assert ran[k] == todo, k  # the entry ran exactly on the points the mode gives it
        for i in range(n):
            state[t][i] &= 1 - broken[k][i]
        row = report["per_attack"][e]
        threat_after = sum(state[t]) / n
        union_after = sum(all(state[s][i] for s in threats) for i in range(n)) / n
        assert row["threat"] == t and row["attacked"] == sum(todo)
        assert row["broken"] == sum(broken[k])
        assert row["threat_accuracy_after"] == pytest.approx(threat_after)
        assert row["union_accuracy_after"] == pytest.approx(union_after)
        after.append((sum(todo), sum(broken[k]), threat_after, union_after))

    # which figures are bounds: the mode's one answer, in the json and in every md row
    bounds = mode.upper_bounds(report["suite"])
    assert report["upper_bounds"] == [f for f in ("per-threat", "union", "average") if f in bounds]

    def label(base: str, figure: str) -> str:
        return base + (" (upper bound)" if figure in bounds else "")

    summary = _table(md, ["accuracy", "value", "95% CI"])
    expect = [["clean", _pct(clean[0]), str(sum(cc))]]
    expect += [
        [label(t, "per-threat"), _pct(per_threat[t][0]), str(sum(robust[t]))] for t in threats
    ]
    expect.append([label("union (1 - R_max)", "union"), _pct(union_acc[0]), str(sum(union))])
    expect.append([label("average (1 - R_avg)", "average"), _pct(average[0]), "-"])
    assert [[r[0], r[1], r[3]] for r in summary[1:]] == expect
    runs = _table(md, ["#", "threat", "entry"])
    assert [r[2] for r in runs[1:]] == keys
    for r, (attacked, nb, ta, ua) in zip(runs[1:], after, strict=True):
        assert r[3:5] == [str(attacked), str(nb)] and r[6:8] == [_pct(ta), _pct(ua)]
    msd = _table(md, ["threat", "entry", "alone"])
    assert [r[1] for r in msd[1 : len(keys) + 1]] == keys
    assert [r[3] for r in msd[1 : len(keys) + 1]] == [_pct(a[2]) for a in after]
    if not mode.cascade:  # every entry on every point: accuracy against it alone
        alone = [_pct(sum(c and not b for c, b in zip(cc, broken[k], strict=True)) / n)
                 for k in keys]  # fmt: skip
        assert [r[2] for r in msd[1 : len(keys) + 1]] == alone
    totals = {r[0]: r[3] for r in msd[len(keys) + 1 :]}
    assert totals == {t: _pct(per_threat[t][0]) for t in threats} | {
        "**union**": _pct(union_acc[0])
    }


def _peers_installed() -> bool:
    return all(importlib.util.find_spec(p) is not None for p in PEER_PACKAGES)


CASES = [
    ("quick", "per-threat", False),
    ("msd-paper", "per-threat", False),
    ("standard", "per-threat", False),
    ("standard", "union-only", False),
    ("full", "per-threat", False),
    ("full", "union-only", True),
    ("full", "everything", True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "mode", "peers"), CASES)
def test_every_figure_is_recomputable_from_verdicts_csv(name, mode, peers, tmp_path, monkeypatch):
    if peers and not _peers_installed():
        pytest.skip("the peers extra (foolbox, torchattacks) is not installed")
    if not peers:
        monkeypatch.setattr(suites_module, "_installed", lambda package: False)
    model, x, y = linear_problem(n=12, flip=2)
    suite = get_suite(name, THREATS)
    attacks = {e.attack for e in suite.entries}
    assert bool(attacks & PEER_ATTACKS) == (peers and name == "full")
    rep = evaluate(model, x, y, threats=THREATS, suite=cut_budgets(suite), mode=mode,
                   out_dir=tmp_path, batch_size=8, progress=False)  # fmt: skip
    write_reports(tmp_path, rep)  # report.md and report.html, as the eval command writes them
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted(r["key"] for r in report["per_attack"]) == sorted(suite.keys())
    assert report["suite"] == name
    # not a vacuous check: points broken and points kept, repeated passes run on survivors
    assert 0 < report["union_accuracy"] < report["clean_accuracy"]
    assert sum(r["broken"] for r in report["per_attack"]) > 0
    passes = [r["attacked"] for r in report["per_attack"] if "#" in r["key"]]
    assert (sum(passes) > 0) == (name in ("standard", "full"))
    check_recomputable(tmp_path)


def test_the_check_catches_a_lost_column(tmp_path):
    """The check fails on the issue's bug: a repeated pass overwriting an earlier column."""
    model, x, y = linear_problem(n=12, flip=2)
    rep = evaluate(model, x, y, threats=THREATS, suite=cut_budgets(get_suite("standard", THREATS)),
                   out_dir=tmp_path, batch_size=8, progress=False, diagnostics=False)  # fmt: skip
    write_reports(tmp_path, rep)
    check_recomputable(tmp_path)
    path = tmp_path / "verdicts.csv"
    rows = list(csv.DictReader(path.open()))
    fields = [f for f in rows[0] if not f.endswith("@linf:0.03#2]")]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(AssertionError):
        check_recomputable(tmp_path)
