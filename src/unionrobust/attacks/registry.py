"""Attacks by name: ``make_attack("pgd", "l2:0.5", steps=100)``, and the default attack for a
threat model of either kind: ``default_attack(threat, purpose="eval" | "train")``.

A factory takes ``(threat, **kwargs)`` and returns an :class:`Attack` (a class, or a
``functools.partial`` of one fixing an option).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from unionrobust.attacks.adapters import (
    TACW,
    TAEAD,
    TAFAB,
    FBBoundary,
    FBHopSkipJump,
    FBPointwise,
    TASquare,
)
from unionrobust.attacks.apgd import APGD
from unionrobust.attacks.base import Attack
from unionrobust.attacks.blackbox import GaussianNoise, Pointwise, SaltPepper
from unionrobust.attacks.ddn import DDN
from unionrobust.attacks.decision import BoundarySearch
from unionrobust.attacks.linearised import FAB, DeepFool
from unionrobust.attacks.msd import MSD
from unionrobust.attacks.pgd import FGSM, MIM, PGD, SLIDE
from unionrobust.attacks.spatial import GridAttack, WorstOfK
from unionrobust.attacks.square import Square
from unionrobust.attacks.union import WorstOf
from unionrobust.errors import UnionRobustError, check_choice, unknown_name
from unionrobust.threats import SearchedThreat, ThreatModel, Union, parse

AttackFactory = Callable[..., Attack]

ATTACKS: dict[str, AttackFactory] = {
    "fgsm": FGSM,
    "pgd": PGD,
    "pgd-cw": partial(PGD, loss="cw"),
    "mim": MIM,
    "slide": SLIDE,
    "msd": MSD,
    "msd-1g": partial(MSD, select="gradient"),
    "apgd-ce": partial(APGD, loss="ce"),
    "apgd-dlr": partial(APGD, loss="dlr"),
    "apgd-t": partial(APGD, loss="dlr-targeted"),
    "apgd-cw": partial(APGD, loss="cw"),
    "spatial-grid": GridAttack,
    "spatial-worst-of-k": WorstOfK,
    # minimum-norm (attacks/linearised.py, ddn.py on minnorm.py), gradient-free (blackbox.py,
    # square.py), peers (adapters.py: the peer packages are imported when the attack first runs)
    "deepfool": DeepFool,
    "fab": FAB,
    "fab-t": partial(FAB, n_targets=9, steps=100),
    "ddn": DDN,
    "gaussian-noise": GaussianNoise,
    "salt-pepper": SaltPepper,
    "pointwise": Pointwise,
    "square": Square,
    "boundary-search": BoundarySearch,
    "ta-ead": TAEAD,
    "ta-cw": TACW,
    "ta-fab": TAFAB,
    "ta-square": TASquare,
    "fb-boundary": FBBoundary,
    "fb-hsj": FBHopSkipJump,
    "fb-pointwise": FBPointwise,
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


def _kind(factory: AttackFactory) -> type[ThreatModel]:
    """The threat kind the attack class behind ``factory`` accepts."""
    return getattr(factory, "func", factory).threat_kind


def _member_attack(factory: AttackFactory, member: ThreatModel, kwargs: dict) -> Attack:
    """The attack for one member of a union: ``factory``'s if it accepts the member's kind,
    else the member's :func:`default_attack` (a rotation-translation member given a gradient
    attack gets the exhaustive grid attack, issue 4)."""
    if not isinstance(member, _kind(factory)):
        return default_attack(member, "eval", seed=kwargs.get("seed", 0))
    return factory(member, **kwargs)


PURPOSES = ("eval", "train")


def default_attack(
    threat: ThreatModel,
    purpose: str = "eval",
    steps: int | None = None,
    seed: int = 0,
    amp: bool = False,
) -> Attack:
    """The attack a threat model gets when none is named, by kind and purpose.

    Searched threats: ``"eval"`` → :class:`GridAttack` (exact within the lattice; Engstrom et al.
    2019), ``"train"`` → :class:`WorstOfK` with ``k = steps`` (their worst-of-10 training).
    Additive threats: ``"eval"`` → APGD-CE (Croce & Hein 2020), ``"train"`` → PGD with the
    threat's default step size (Madry et al.). ``steps`` None keeps each attack's default.
    """
    check_choice("purpose", purpose, PURPOSES)
    opts: dict[str, Any] = {"seed": seed, "amp": amp}
    if isinstance(threat, SearchedThreat):
        if purpose == "eval":
            return GridAttack(threat, **opts)
        return WorstOfK(threat, **opts, **({} if steps is None else {"k": steps}))
    if steps is not None:
        opts["steps"] = steps
    return APGD(threat, loss="ce", **opts) if purpose == "eval" else PGD(threat, **opts)
