"""Parse threat specs such as ``"linf:8/255, l2:0.5, l1:12"``."""

from __future__ import annotations

from fractions import Fraction

from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.threats.base import ThreatModel, Union
from unionrobust.threats.lp import L0, L1, L2, Linf

#: accepted spellings of each norm
NORM_ALIASES: dict[str, type[ThreatModel]] = {
    "linf": Linf,
    "l_inf": Linf,
    "inf": Linf,
    "lInf": Linf,
    "l2": L2,
    "l_2": L2,
    "l1": L1,
    "l_1": L1,
    "l0": L0,
    "l_0": L0,
}


def parse_number(token: str, context: str) -> float:
    """A float or fraction such as ``8/255``; errors name ``context``."""
    text = token.strip()
    try:
        if "/" in text:
            return float(Fraction(text.replace(" ", "")))
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise UnionRobustError(f"{context}: {text!r} is not a number") from None


def parse_threat(token: str) -> ThreatModel:
    """One ``norm:radius`` token."""
    text = token.strip()
    if ":" not in text:
        raise UnionRobustError(f"threat {text!r} must look like 'norm:radius', e.g. 'l2:0.5'")
    norm, _, radius = text.partition(":")
    key = norm.strip().lower()
    cls = NORM_ALIASES.get(key)
    if cls is None:
        raise unknown_name("norm in threat", norm.strip(), ["linf", "l2", "l1", "l0"])
    value = parse_number(radius, f"threat {text!r}")
    if not value > 0:
        raise UnionRobustError(f"threat {text!r}: radius must be > 0")
    return cls(value)


def parse(spec: str | ThreatModel | Union) -> Union:
    """Parse a comma-separated union spec; a threat model or union passes through."""
    if isinstance(spec, Union):
        return spec
    if isinstance(spec, ThreatModel):
        return Union([spec])
    if not isinstance(spec, str):
        raise UnionRobustError(f"a threat spec must be text, got {type(spec).__name__}")
    tokens = [t for t in spec.replace(";", ",").split(",")]
    if not spec.strip() or any(not t.strip() for t in tokens):
        raise UnionRobustError(f"empty threat in spec {spec!r}; write e.g. 'linf:0.3, l2:2, l1:10'")
    return Union([parse_threat(t) for t in tokens])
