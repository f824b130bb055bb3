"""Threat models: what a perturbation set is, and unions of them."""

from unionrobust.threats.base import (
    DEFAULT_TOL,
    AdditiveThreat,
    SearchedThreat,
    ThreatModel,
    Union,
    as_union,
)
from unionrobust.threats.lp import L0, L1, L2, Linf
from unionrobust.threats.parse import parse, parse_threat, single_threat, threat_union
from unionrobust.threats.spatial import RotationTranslation

__all__ = [
    "DEFAULT_TOL",
    "L0",
    "L1",
    "L2",
    "AdditiveThreat",
    "Linf",
    "RotationTranslation",
    "SearchedThreat",
    "ThreatModel",
    "Union",
    "as_union",
    "parse",
    "parse_threat",
    "single_threat",
    "threat_union",
]
