"""Attacks: ``attack(model, x, y) -> AttackResult``, written once against the ThreatModel API."""

from unionrobust.attacks.affine import AffineLp, AffineSpatial
from unionrobust.attacks.apgd import APGD
from unionrobust.attacks.base import Attack, AttackResult, frozen_model, loss_and_grad
from unionrobust.attacks.best import BestTracker
from unionrobust.attacks.blackbox import GaussianNoise, Pointwise, SaltPepper
from unionrobust.attacks.ddn import DDN
from unionrobust.attacks.linearised import FAB, DeepFool
from unionrobust.attacks.minmax import (
    DomainMinMax,
    ModelEnsemble,
    TransformDomains,
    UniversalGroups,
)
from unionrobust.attacks.minnorm import MinNormResult
from unionrobust.attacks.msd import MSD
from unionrobust.attacks.pgd import FGSM, MIM, PGD, SLIDE
from unionrobust.attacks.registry import ATTACKS, attack_names, default_attack, make_attack
from unionrobust.attacks.spatial import GridAttack, WorstOfK
from unionrobust.attacks.square import Square
from unionrobust.attacks.union import WorstOf

__all__ = [
    "APGD",
    "ATTACKS",
    "DDN",
    "FAB",
    "FGSM",
    "MIM",
    "MSD",
    "PGD",
    "SLIDE",
    "AffineLp",
    "AffineSpatial",
    "Attack",
    "AttackResult",
    "BestTracker",
    "DeepFool",
    "DomainMinMax",
    "GaussianNoise",
    "GridAttack",
    "MinNormResult",
    "ModelEnsemble",
    "Pointwise",
    "SaltPepper",
    "Square",
    "TransformDomains",
    "UniversalGroups",
    "WorstOf",
    "WorstOfK",
    "attack_names",
    "default_attack",
    "frozen_model",
    "loss_and_grad",
    "make_attack",
]
