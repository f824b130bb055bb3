"""Attacks by name: ``make_attack("pgd", "l2:0.5", steps=100)``.

A factory takes ``(threat, **kwargs)`` and returns an :class:`Attack`. Modules whose import is
costly or optional are registered with :func:`lazy` (imported on first use), e.g.
``"apgd-ce": lazy("apgd", "APGD", loss="ce")``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial
from typing import Any

from unionrobust.attacks.base import Attack
from unionrobust.attacks.msd import MSD
from unionrobust.attacks.pgd import FGSM, MIM, PGD, SLIDE
from unionrobust.attacks.union import WorstOf
from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.threats import ThreatModel, Union, parse

AttackFactory = Callable[..., Attack]


def lazy(module: str, attr: str, **fixed: Any) -> AttackFactory:
    """A factory importing ``unionrobust.attacks.<module>.<attr>`` when first called."""

    def factory(threat: Any, **kwargs: Any) -> Attack:
        cls = getattr(importlib.import_module(f"unionrobust.attacks.{module}"), attr)
        return cls(threat, **{**fixed, **kwargs})

    factory.__name__ = f"{attr}({', '.join(f'{k}={v!r}' for k, v in fixed.items())})"
    return factory


ATTACKS: dict[str, AttackFactory] = {
    "fgsm": FGSM,
    "pgd": PGD,
    "pgd-cw": partial(PGD, loss="cw"),
    "mim": MIM,
    "slide": SLIDE,
    "msd": MSD,
    "msd-1g": partial(MSD, select="gradient"),
    "apgd-ce": lazy("apgd", "APGD", loss="ce"),
    "apgd-dlr": lazy("apgd", "APGD", loss="dlr"),
    "apgd-t": lazy("apgd", "APGD", loss="dlr-targeted"),
    "apgd-cw": lazy("apgd", "APGD", loss="cw"),
    "spatial-grid": lazy("spatial", "GridAttack"),
    "spatial-worst-of-k": lazy("spatial", "WorstOfK"),
    # minimum-norm (attacks/minnorm.py), gradient-free (blackbox.py), peers (adapters.py)
    "deepfool": lazy("minnorm", "DeepFool"),
    "fab": lazy("minnorm", "FAB"),
    "ddn": lazy("minnorm", "DDN"),
    "gaussian-noise": lazy("blackbox", "GaussianNoise"),
    "salt-pepper": lazy("blackbox", "SaltPepper"),
    "pointwise": lazy("blackbox", "Pointwise"),
    "square": lazy("blackbox", "Square"),
    "ta-ead": lazy("adapters", "TAEAD"),
    "ta-cw": lazy("adapters", "TACW"),
    "ta-fab": lazy("adapters", "TAFAB"),
    "ta-square": lazy("adapters", "TASquare"),
    "fb-boundary": lazy("adapters", "FBBoundary"),
    "fb-hsj": lazy("adapters", "FBHopSkipJump"),
    "fb-pointwise": lazy("adapters", "FBPointwise"),
}

#: attacks that take a whole union; the others run once per member, combined by WorstOf
UNION_ATTACKS = {"msd", "msd-1g"}


def attack_names() -> list[str]:
    """The registered attack names, sorted."""
    return sorted(ATTACKS)


def make_attack(name: str, threat: ThreatModel | Union | str, **kwargs: Any) -> Attack:
    """Build attack ``name`` against ``threat`` (a threat model, union, or spec text).

    A single-threat attack given a union of several threat models runs once per member,
    combined per example by :class:`WorstOf` (``shrink=True``).
    """
    if name not in ATTACKS:
        raise unknown_name("attack", name, ATTACKS)
    factory = ATTACKS[name]
    union = parse(threat) if isinstance(threat, str) else threat
    try:
        if name in UNION_ATTACKS:
            return factory(union, **kwargs)
        if isinstance(union, Union) and len(union) > 1:
            return WorstOf([_member_attack(factory, m, kwargs) for m in union])
        if isinstance(union, Union):
            union = union[0]
        return factory(union, **kwargs)
    except TypeError as exc:
        raise UnionRobustError(f"attack {name!r}: {exc}") from None


def _member_attack(factory: AttackFactory, member: ThreatModel, kwargs: dict) -> Attack:
    """The attack for one member of a union; a rotation-translation member (searched, not
    stepped) gets the exhaustive grid attack whatever ``name`` is (issue 4)."""
    if getattr(member, "name", None) == "rt":
        from unionrobust.attacks.spatial import GridAttack

        return GridAttack(member, seed=kwargs.get("seed", 0))
    return factory(member, **kwargs)
