"""``standard``'s escalation (issue 16): a short Square probe on the survivors always, FAB-T,
Square and the decision-based search only on evidence of gradient masking; the masking check
reports its evidence (the points only gradient-free attacks broke, the thresholding filters)."""

from __future__ import annotations

import pytest
import torch
from test_diagnostics import centre_data, centre_model
from torch import nn

from unionrobust.evaluation.diagnostics import is_gradient_free
from unionrobust.evaluation.engine import evaluate
from unionrobust.evaluation.suites import (
    ESCALATION,
    SuiteEntry,
    escalation_open,
    escalation_tier,
    get_suite,
    masking_filters,
)
from unionrobust.reporting.markdown import format_diagnostics
from unionrobust.threats import parse

THREATS = "linf:0.3, l2:2, l1:10"
#: the tiers that give way to the masked tier on a model with thresholding filters
GIVE_WAY = ("unmasked", "probe")
GATED = ("unmasked", "probe", "masked", "filters")


class FourClasses(nn.Module):
    """The 2-class centre model with two far-away extra classes (``standard``'s targeted APGD
    needs at least 4 classes)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        return torch.cat([z, torch.full_like(z, -100.0)], dim=1)


def test_standard_ends_each_threat_with_its_escalation():
    suite = get_suite("standard", THREATS)
    for i, norm in enumerate(("linf", "l2", "l1")):
        mine = [e for e in suite.entries if e.threat_index == i]
        tiers = [escalation_tier(e) for e in mine]
        k = tiers.index("probe")
        # APGD and the survivor round first; the ℓ∞/ℓ2 survivor pass only without filters
        assert tiers[:k] == [None, None] + (["unmasked"] if norm != "l1" else [None] * 4)
        assert [(escalation_tier(e), e.attack) for e in mine[k:]] == [
            (tier, name) for tier, name, _ in ESCALATION[norm]
        ]
        names = [e.attack for e in mine[k:]]
        if norm == "l1":  # the survivor round's 1,000-step run opens the masked tier
            long_run = mine[k + 1].build(suite.threats[i], 3)
            assert (long_run.steps, long_run.restarts, long_run.loss) == (1000, 1, "ce")
            assert long_run.large_eps and mine[k + 1].seed_offset == 4
            assert "1000" not in str([e.params for e in mine[:k]])
            names.pop(1)
        assert names[:3] == ["square", "fab-t", "square"]
        assert names[3:] == {"linf": [], "l2": ["square"], "l1": ["pointwise"]}[norm]
        square_seeds = []
        for e in mine[k:]:  # every entry builds, with AutoAttack's budgets where masked
            a = e.build(suite.threats[i], 3)
            if e.attack == "fab-t":
                assert (a.steps, a.n_targets, a.early_stop) == (100, 9, True)
            if e.attack == "square" and escalation_tier(e) == "masked":
                assert (a.steps, a.p_init) == (5000, 0.8)
                # ℓ∞: AutoAttack's run, then two more on its near misses only
                want = (3, 0.05, True) if norm == "linf" else (1, None, False)
                assert (a.restarts, a.near_miss, a.parallel) == want
                square_seeds.append(a.seed)
            if e.attack == "pointwise":
                assert a.restarts == 10
            if e.attack == "square" and e.seed_offset == 2:  # ℓ2: two more runs, one loop
                assert (norm, a.restarts, a.parallel) == ("l2", 2, True)
        # each masked Square pass draws its own: seeds 3 + 1, 3 + 2, ...
        assert square_seeds == list(range(4, 4 + len(square_seeds)))
    assert len(set(suite.labels())) == len(suite)


def test_masked_tier_opens_on_filters_or_a_gradient_free_break():
    probe = SuiteEntry(1, "square", (("escalate", "probe"),))
    masked = SuiteEntry(1, "fab-t", (("escalate", "masked"),))
    other = SuiteEntry(0, "square", (("escalate", "probe"),))
    apgd = SuiteEntry(1, "apgd-ce")
    assert escalation_open(apgd, [], 0, is_gradient_free)
    assert escalation_open(probe, [], 0, is_gradient_free)
    assert not escalation_open(masked, [(probe, False), (apgd, True)], 0, is_gradient_free)
    assert escalation_open(masked, [(probe, True)], 0, is_gradient_free)
    assert escalation_open(masked, [(probe, False)], 2, is_gradient_free)
    # evidence is per threat: another threat's gradient-free break does not count
    assert not escalation_open(masked, [(other, True)], 0, is_gradient_free)
    # with thresholding filters the probe and the survivor pass give way to the masked tier
    survivor = SuiteEntry(1, "apgd-t", (("escalate", "unmasked"),))
    assert escalation_open(survivor, [], 0, is_gradient_free)
    assert not escalation_open(survivor, [], 2, is_gradient_free)
    assert not escalation_open(probe, [], 2, is_gradient_free)
    # the extra ℓ2 Square runs: only with thresholding filters, not on a probe's break alone
    extra = SuiteEntry(1, "square", (("escalate", "filters"),), seed_offset=2)
    assert escalation_open(extra, [], 2, is_gradient_free)
    assert not escalation_open(extra, [(probe, True)], 0, is_gradient_free)


def test_thresholding_filters_count_everywhere_but_for_linf_fab_t():
    """The filters mask the gradients of the other norms (MSD §5.1); for ℓ∞ they are the
    defence: only the masked tier's gradient attack (FAB-T) ignores them."""
    union = parse(THREATS)
    assert [masking_filters(t, "masked", False, 3) for t in union] == [0, 3, 3]
    for tier, free in (("masked", True), ("unmasked", False), ("probe", True)):
        assert [masking_filters(t, tier, free, 3) for t in union] == [3, 3, 3]
    assert [masking_filters(t, "masked", free, 0) for t in union for free in (0, 1)] == [0] * 6


@pytest.mark.slow
def test_unmasked_model_skips_the_masked_tier():
    """No thresholding filter, nothing for the probe to find: the masked tier attacks nothing."""
    model = FourClasses(centre_model(False)).eval()
    x, y = centre_data(8)
    report = evaluate(model, x, y, threats="linf:0.05", progress=False)
    assert report.union_accuracy == 1.0  # every point is 0.1 from the boundary
    tiers = [e["params"].get("escalate") for e in report.entries]
    for e, tier in enumerate(tiers):
        if tier == "masked":
            assert report.attacked[e] == 0 and report.timings["entries"][e] == 0.0
        if tier == "probe":
            assert report.attacked[e] == 8
    row = report.diagnostics["gradient_masking"]["per_threat"]["linf:0.05"]
    assert row["checked"] and not row["flag"] and row["points"] == []


@pytest.mark.slow
def test_thresholding_model_gets_the_escalation_and_the_evidence_is_reported():
    """ℓ2 on a model with a thresholding filter: the masked tier at once, the survivor pass and
    the probe give way. ℓ∞ on the same model: the survivor pass and the probe give way to the
    5,000-query Square, which runs at once, and FAB-T (a gradient attack of the masked tier)
    waits for a gradient-free break before it."""
    model = FourClasses(centre_model(True)).eval()
    x, y = centre_data(40)
    ids = torch.arange(100, 140)
    report = evaluate(model, x, y, threats="l2:0.15, linf:0.15", progress=False, example_ids=ids)
    entries = report.entries

    def tier_entries(threat: str, tiers: tuple[str, ...]) -> list[int]:
        return [
            e
            for e, d in enumerate(entries)
            if d["threat"] == threat and d["params"].get("escalate") in tiers
        ]

    masked = tier_entries("l2:0.15", ("masked",))
    assert masked and report.attacked[masked[0]] > 0
    skipped = tier_entries("l2:0.15", GIVE_WAY)
    assert len(skipped) == 2 and all(report.attacked[e] == 0 for e in skipped)
    linf = {entries[e]["key"]: report.attacked[e] for e in tier_entries("linf:0.15", GATED)}
    assert linf["apgd-t@linf:0.15#2"] == 0  # the survivor pass gives way
    assert linf["square@linf:0.15"] == 0  # the probe gives way
    assert linf["fab-t@linf:0.15"] == 0  # nothing gradient-free broke a point before it
    assert linf["square@linf:0.15#2"] > 0  # the masked tier's Square, at once
    assert report.union_accuracy == 0.0  # every class-0 point falls to a gradient-free pass
    for threat in ("l2:0.15", "linf:0.15"):
        row = report.diagnostics["gradient_masking"]["per_threat"][threat]
        assert row["flag"] and row["thresholding_filters"] == 1
        assert row["points"] and set(row["points"]) <= set(range(100, 140, 2))  # class 0
        assert len(row["points"]) == row["broken_only_by_gradient_free"]
        assert str(row["points"][0]) in row["message"]
        assert "first-layer filters" in row["message"]
        table = format_diagnostics(report.diagnostics)
        assert f"gradient masking {threat}" in table and str(row["points"][0]) in table
        assert (
            report.to_dict()["diagnostics"]["gradient_masking"]["per_threat"][threat]["points"]
            == row["points"]
        )
