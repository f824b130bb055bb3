"""Suites (named and user lists) and the interval metrics."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import get_suite, suite_names, wilson_interval
from unionrobust.evaluation.metrics import mean_score, proportion
from unionrobust.evaluation.suites import Suite
from unionrobust.threats import L1, parse

THREATS = "linf:0.3, l2:2, l1:10"


def test_suite_names():
    assert {"quick", "standard", "msd-paper", "msd-paper-cifar"} <= set(suite_names())


def test_unknown_suite_lists_valid_names():
    with pytest.raises(UnionRobustError, match="unknown suite") as info:
        get_suite("strongest", THREATS)
    msg = str(info.value)
    assert all(name in msg for name in suite_names()) and "\n" not in msg


def test_standard_suite_is_autoattack_apgd_then_a_survivor_round_per_threat():
    from unionrobust.attacks.apgd import APGD
    from unionrobust.evaluation.suites import escalation_tier

    full = get_suite("standard", THREATS)
    assert len(set(full.labels())) == len(full)  # every pass told apart in progress
    # the escalation (issue 16) is tested in test_eval_escalation.py
    suite = Suite(
        "standard",
        full.threats,
        tuple(e for e in full.entries if escalation_tier(e) not in ("probe", "masked", "filters")),
    )
    # the ℓ∞/ℓ2 survivor pass gives way on models with thresholding filters ("unmasked")
    assert [escalation_tier(e) for e in suite.entries] == [None, None, "unmasked"] * 2 + [None] * 6
    survivors = {False: ["apgd-t"], True: ["apgd-t", "apgd-ce", "apgd-cw", "apgd-ce"]}
    assert [(e.threat_index, e.attack) for e in suite.entries] == [
        (i, a) for i in range(3) for a in ("apgd-ce", "apgd-t", *survivors[i == 2])
    ]
    union = parse(THREATS)
    for i in range(3):
        entries = [e for e in suite.entries if e.threat_index == i]
        attacks = [e.build(union[i], 5) for e in entries]
        assert all(isinstance(a, APGD) and a.threat == union[i] for a in attacks)
        l1 = isinstance(union[i], L1)
        # AutoAttack 'standard': APGD-CE 1 restart (ℓ1: 5), APGD-T 9 targets (ℓ1: 5), 100 steps,
        # ℓ1 with the large-ε schedule of "Mind the box" (use_largereps), in the entry's
        # description too (the run's config hash)
        ce, t = attacks[:2]
        assert (ce.loss, ce.steps, ce.restarts, ce.seed) == ("ce", 100, 5 if l1 else 1, 5)
        assert (t.loss, t.steps, t.restarts, t.seed) == ("dlr-targeted", 100, 1, 5)
        assert t.n_targets == (5 if l1 else 9)
        assert all(a.large_eps == l1 for a in attacks)
        assert all(dict(e.params).get("large_eps", False) == l1 for e in entries)
        # the survivor round: every pass with fresh random starts (its own seed); ℓ1 a
        # targeted pass, then longer runs, then AutoAttack's CE budget from new starts (the
        # 1,000-step run is in the masked tier: test_eval_escalation.py)
        rest = attacks[2:]
        assert len({a.seed for a in rest} - {5}) == len(rest)
        if l1:
            assert [(a.loss, a.steps, a.restarts) for a in rest] == [
                ("dlr-targeted", 100, 1),  # 3 targets (the survivors fall to the likeliest)
                ("ce", 300, 2),
                ("cw", 300, 2),
                ("ce", 100, 5),  # AutoAttack's ℓ1 APGD-CE budget again, from new starts
            ]
            assert [a.seed for a in rest] == [6, 7, 8, 10]  # pass 5's draws: the long run
        else:
            assert [(a.loss, a.steps, a.n_targets, a.start) for a in rest] == [
                ("dlr-targeted", 100, 3, "surface")
            ]
        assert rest[0].n_targets == 3
        assert len(set(suite.labels())) == len(suite)  # every pass told apart in progress


@pytest.mark.parametrize(
    ("name", "threats", "steps", "alphas"),
    [
        ("msd-paper", "linf:0.3, l2:2, l1:10", (100, 200, 100), (0.01, 0.1, 0.8)),
        ("msd-paper", "linf:0.15, l2:1, l1:5", (100, 200, 100), (0.005, 0.05, 0.4)),
        ("msd-paper-cifar", "linf:0.03, l2:0.5, l1:12", (100, 500, 100), (0.003, 0.05, 1.0)),
    ],
)
def test_msd_paper_suite_follows_appendix_c1(name, threats, steps, alphas):
    from unionrobust.attacks.pgd import PGD

    suite = get_suite(name, threats)
    union = parse(threats)
    assert len(suite) == 3
    for e, s, a in zip(suite.entries, steps, alphas, strict=True):
        attack = e.build(union[e.threat_index], 0)
        assert isinstance(attack, PGD)
        assert attack.steps == s and attack.alpha == pytest.approx(a)
        assert attack.restarts == 10 and attack.start == "zero_then_random"
        if isinstance(attack.threat, L1):
            assert attack.threat.step_rule == "random_k" and attack.threat.k_range == (5, 20)
        assert attack.threat.size == union[e.threat_index].size


def test_quick_suite_is_one_pgd_per_threat():
    from unionrobust.attacks.pgd import PGD

    suite = get_suite("quick", "linf:0.1, l1:3")
    union = parse("linf:0.1, l1:3")
    assert [e.threat_index for e in suite.entries] == [0, 1]
    assert all(isinstance(e.build(union[e.threat_index], 0), PGD) for e in suite.entries)


def test_suite_described_for_config_hash():
    a = get_suite("msd-paper", THREATS).describe()
    b = get_suite("msd-paper", "linf:0.3, l2:2, l1:12").describe()
    assert a != b and a[0]["params"]["restarts"] == 10


def _registry():
    return pytest.importorskip("unionrobust.attacks.registry")


def test_user_list_of_attacks():
    reg = _registry()
    names = reg.attack_names()
    two = [n for n in ("pgd", "apgd-ce") if n in names]
    suite = get_suite(", ".join(two), THREATS)
    assert [(e.threat_index, e.attack) for e in suite.entries] == [
        (i, n) for i in range(3) for n in two
    ]
    union = parse(THREATS)
    for e in suite.entries:
        assert e.build(union[e.threat_index], 0).threat == union[e.threat_index]
    per_threat = get_suite({"l1:10": ["pgd"], 0: "pgd"}, THREATS)
    assert [(e.threat_index, e.attack) for e in per_threat.entries] == [(0, "pgd"), (2, "pgd")]
    text = get_suite("l1:10=pgd; linf:0.3=pgd+fgsm", THREATS)
    assert [(e.threat_index, e.attack) for e in text.entries] == [
        (0, "pgd"),
        (0, "fgsm"),
        (2, "pgd"),
    ]
    with pytest.raises(UnionRobustError, match="per-threat suite"):
        get_suite("=pgd", THREATS)
    with pytest.raises(UnionRobustError, match="unknown attack"):
        get_suite(["pgd", "nope"], THREATS)
    with pytest.raises(UnionRobustError, match="unknown threat in suite"):
        get_suite({"l2:3": ["pgd"]}, THREATS)


# ------------------------------------------------------------------------------ metrics
@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.data())
def test_wilson_interval_contains_estimate(n, data):
    k = data.draw(st.integers(0, n))
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert hi - lo > 0


def test_wilson_interval_known_values():
    # Wilson (1927) / Newcombe (1998) table: 0/10 -> [0, 0.2775]; 5/10 -> [0.2366, 0.7634]
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_interval_shrinks_with_n():
    w = [wilson_interval(n // 2, n) for n in (10, 100, 1000)]
    widths = [hi - lo for lo, hi in w]
    assert widths[0] > widths[1] > widths[2]


def test_mean_score_interval():
    s = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0] * 25)
    m, (lo, hi) = mean_score(s)
    assert m == pytest.approx(0.5) and lo < 0.5 < hi
    half = 1.959963984540054 * float(s.std()) / 10
    assert hi - 0.5 == pytest.approx(half)
    binary = torch.tensor([1.0] * 7 + [0.0] * 3)
    assert mean_score(binary)[1] == wilson_interval(7, 10)
    p, ci = proportion(binary.bool())
    assert p == 0.7 and ci == wilson_interval(7, 10)
