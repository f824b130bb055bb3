"""The two kinds of threat model (additive balls, searched transformation sets), the attacks that
accept each, and ``default_attack`` (issue 10 item 1)."""

from __future__ import annotations

import pytest
import torch

from unionrobust.attacks import APGD, MSD, PGD, GridAttack, WorstOf, WorstOfK
from unionrobust.attacks.affine import AffineLp, AffineSpatial, affine_attack
from unionrobust.attacks.base import attacks_accepting
from unionrobust.attacks.registry import default_attack, make_attack
from unionrobust.errors import UnionRobustError
from unionrobust.threats import (
    L0,
    L1,
    L2,
    AdditiveThreat,
    Linf,
    RotationTranslation,
    SearchedThreat,
    parse,
)

ADDITIVE = [Linf(0.1), L2(1.0), L1(5.0), L0(3)]


@pytest.mark.parametrize("threat", ADDITIVE, ids=lambda t: t.spec)
def test_lp_threats_are_additive(threat):
    assert isinstance(threat, AdditiveThreat) and not isinstance(threat, SearchedThreat)


def test_rotation_translation_is_searched():
    rt = RotationTranslation(30, 3)
    assert isinstance(rt, SearchedThreat) and not isinstance(rt, AdditiveThreat)
    assert attacks_accepting(rt) == ["spatial-grid", "spatial-worst-of-k"]
    assert {"pgd", "apgd", "msd", "fgsm"} <= set(attacks_accepting(Linf(0.1)))
    for call in (
        lambda: rt.project(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)),
        lambda: rt.step(torch.zeros(1, 1, 4, 4), 0.1, torch.zeros(1, 1, 4, 4), None),
        lambda: rt.default_alpha(10),
    ):
        with pytest.raises(UnionRobustError, match="spatial-grid or spatial-worst-of-k") as err:
            call()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "build",
    [
        lambda t: PGD(t, steps=3),
        lambda t: APGD(t, steps=3),
        lambda t: MSD(parse("linf:0.1") | t, steps=3),
        lambda t: make_attack("pgd", t),
    ],
    ids=["pgd", "apgd", "msd", "registry"],
)
def test_additive_attacks_name_the_attacks_for_a_searched_threat(build):
    with pytest.raises(UnionRobustError, match=r"additive .*rt:30:3.*spatial-grid") as err:
        build(RotationTranslation(30, 3))
    assert "\n" not in str(err.value)


def test_default_attack_by_kind_and_purpose():
    rt, linf = RotationTranslation(10, 1), Linf(0.1)
    assert type(default_attack(rt)) is GridAttack and default_attack(rt, seed=3).seed == 3
    train = default_attack(rt, "train", steps=7)
    assert type(train) is WorstOfK and train.k == 7
    ev = default_attack(linf, "eval", steps=5)
    assert type(ev) is APGD and ev.loss == "ce" and ev.steps == 5
    tr = default_attack(linf, "train", steps=4)
    assert type(tr) is PGD and tr.steps == 4 and tr.alpha == linf.default_alpha(4)
    with pytest.raises(UnionRobustError, match=r"purpose.*eval, train"):
        default_attack(rt, "test")


def test_registry_gives_each_member_an_attack_of_its_kind(tiny_cnn):
    both = make_attack("pgd", "linf:0.05, rt:10:1", steps=3, seed=2)
    assert isinstance(both, WorstOf) and type(both.attacks[0]) is PGD
    assert type(both.attacks[1]) is GridAttack and both.attacks[1].seed == 2
    # and the other way round: a search attack named for a union with an additive member
    other = make_attack("spatial-grid", "linf:0.05, rt:10:1")
    assert type(other.attacks[0]) is APGD and type(other.attacks[1]) is GridAttack
    x = torch.rand(4, 1, 8, 8)
    y = torch.arange(4)
    res = both(tiny_cnn(), x, y)
    assert (parse("linf:0.05, rt:10:1").contains(res.x_adv - x, x) | ~res.success).all()


def test_affine_attack_picks_the_class_by_the_second_kind():
    assert type(affine_attack(Linf(0.1), L1(2.0), betas=[0.5])) is AffineLp
    assert type(affine_attack(Linf(0.1), RotationTranslation(), k=3, betas=[0.5])) is AffineSpatial
