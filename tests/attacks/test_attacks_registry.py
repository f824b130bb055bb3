"""The attack registry and WorstOf (per-example worst case over several attacks)."""

from __future__ import annotations

import pytest
import torch

from unionrobust.attacks import MSD, PGD, SLIDE, Attack, WorstOf, attack_names, make_attack
from unionrobust.attacks.registry import ATTACKS
from unionrobust.errors import UnionRobustError
from unionrobust.threats import L1, L2, Linf, parse

CORE = ["fgsm", "mim", "msd", "pgd", "pgd-cw", "slide"]


def test_core_names_are_registered():
    assert set(CORE) <= set(attack_names())
    assert attack_names() == sorted(ATTACKS)


@pytest.mark.parametrize("name", CORE)
def test_every_core_attack_builds_and_runs(name, tiny_cnn, toy_images):
    threat = L1(2.0) if name == "slide" else "linf:0.1, l2:1"
    kwargs = {} if name == "fgsm" else {"steps": 2}
    attack = make_attack(name, threat, **kwargs)
    assert isinstance(attack, Attack)
    model = tiny_cnn().eval()
    x, y = toy_images(n=4)
    res = attack(model, x, y)
    assert attack.threat.contains(res.x_adv - x, x).all()


def test_single_threat_attacks_on_a_union_become_worst_of():
    attack = make_attack("pgd", "linf:0.1, l2:1", steps=3)
    assert isinstance(attack, WorstOf)
    assert [a.threat for a in attack.attacks] == [Linf(0.1), L2(1.0)]
    assert all(isinstance(a, PGD) and a.steps == 3 for a in attack.attacks)
    assert isinstance(make_attack("pgd", "l2:1"), PGD)
    assert make_attack("pgd-cw", L2(1.0)).loss_name == "cw"
    assert isinstance(make_attack("slide", "l1:5"), SLIDE)
    msd = make_attack("msd", "linf:0.1, l2:1", steps=5)
    assert isinstance(msd, MSD) and msd.threat == parse("linf:0.1, l2:1")


def test_registry_errors_name_the_problem():
    with pytest.raises(UnionRobustError, match=r"unknown attack 'pgdx'; valid: .*fgsm.*pgd"):
        make_attack("pgdx", "l2:1")
    with pytest.raises(UnionRobustError, match=r"attack 'pgd'.*stepz"):
        make_attack("pgd", "l2:1", stepz=3)
    with pytest.raises(UnionRobustError, match="steps"):
        make_attack("msd", "l2:1", steps=-1)


def test_factories_fix_an_option_and_pass_the_rest():
    factory = ATTACKS["pgd-cw"]  # partial(PGD, loss="cw") (the lazy factories deferred nothing)
    attack = factory(L2(0.5), steps=4)
    assert isinstance(attack, PGD) and attack.loss_name == "cw" and attack.steps == 4


# -- WorstOf -----------------------------------------------------------------------------------


def _members():
    return [
        PGD(Linf(0.02), steps=4, seed=1),
        PGD(L2(0.3), steps=4, seed=2),
        PGD(L1(1.5), steps=4, seed=3),
    ]


def test_worst_of_all_is_the_per_example_best_of_each(tiny_cnn, toy_images):
    model = tiny_cnn().eval()
    x, y = toy_images(n=10)
    combo = WorstOf(_members(), shrink=False)
    each = combo.each(model, x, y)
    res = combo(model, x, y)
    alone = [a(model, x, y) for a in _members()]
    for e, a in zip(each, alone, strict=True):
        assert torch.equal(e.x_adv, a.x_adv)
    succ = torch.stack([r.success for r in alone])
    loss = torch.stack([r.loss for r in alone])
    score = torch.where(succ.any(0, keepdim=True) & ~succ, -torch.inf, loss)
    best = score.argmax(0)
    rows = torch.arange(x.shape[0])
    assert torch.equal(res.success, succ.any(0))
    assert torch.equal(res.loss, loss[best, rows])
    assert torch.equal(res.x_adv, torch.stack([r.x_adv for r in alone])[best, rows])
    assert torch.equal(res.threat_index, best)


def test_worst_of_shrink_only_attacks_unbroken_points(tiny_cnn, toy_images):
    model = tiny_cnn().eval()
    x, y = toy_images(n=10)
    res = WorstOf(_members())(model, x, y)
    first = _members()[0](model, x, y)
    # points the first attack broke keep its result
    assert torch.equal(res.x_adv[first.success], first.x_adv[first.success])
    assert (res.threat_index[first.success] == 0).all()
    full = WorstOf(_members(), shrink=False)(model, x, y)
    assert torch.equal(res.success, full.success)  # same verdicts, fewer attack runs
    for i, t in enumerate(res.threat_index.tolist()):
        if t >= 0:
            member = _members()[t].threat
            assert member.contains(res.x_adv[i : i + 1] - x[i : i + 1], x[i : i + 1]).all()
