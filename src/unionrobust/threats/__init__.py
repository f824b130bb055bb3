"""Threat models: what a perturbation set is, and unions of them."""

from unionrobust.threats.base import DEFAULT_TOL, ThreatModel, Union, as_union
from unionrobust.threats.lp import L0, L1, L2, Linf
from unionrobust.threats.parse import parse, parse_threat

__all__ = [
    "DEFAULT_TOL",
    "L0",
    "L1",
    "L2",
    "Linf",
    "ThreatModel",
    "Union",
    "as_union",
    "parse",
    "parse_threat",
]
