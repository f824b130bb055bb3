"""Parse threat specs such as ``"linf:8/255, l2:0.5, l1:12"``."""

from __future__ import annotations

from fractions import Fraction

from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.threats.base import ThreatModel, Union, as_union
from unionrobust.threats.lp import L0, L1, L2, Linf
from unionrobust.threats.spatial import RotationTranslation

#: accepted spellings of each norm (matched case-insensitively, spaces ignored)
NORM_ALIASES: dict[str, type[ThreatModel]] = {
    "linf": Linf,
    "l_inf": Linf,
    "l-inf": Linf,
    "inf": Linf,
    "l∞": Linf,
    "l2": L2,
    "l_2": L2,
    "l-2": L2,
    "l1": L1,
    "l_1": L1,
    "l-1": L1,
    "l0": L0,
    "l_0": L0,
    "l-0": L0,
}
VALID_NORMS = ("linf", "l2", "l1", "l0")


def parse_number(token: str, context: str) -> float:
    """A float or fraction such as ``8/255`` or ``0.5/255``; errors name ``context``."""
    text = token.strip()
    try:
        if "/" in text:
            num, den = text.replace(" ", "").split("/")
            return float(Fraction(num) / Fraction(den))
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise UnionRobustError(f"{context}: {text!r} is not a number") from None


def parse_rt(text: str) -> RotationTranslation:
    """``"30:3"`` → ±30°, ±3 px; ``"30"`` → ±30°, ±3 px (10° per pixel, the papers' ratio)."""
    parts = text.split(":")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise UnionRobustError(f"threat 'rt:{text}' must look like 'rt:30:3' (degrees:pixels)")
    rot = parse_number(parts[0], f"threat 'rt:{text}'")
    trans = parse_number(parts[1], f"threat 'rt:{text}'") if len(parts) == 2 else rot / 10.0
    return RotationTranslation(rot, trans)


def parse_threat(token: str) -> ThreatModel:
    """One ``norm:radius`` token, e.g. ``"l2:0.5"`` or ``"linf:8/255"``."""
    text = token.strip()
    if ":" not in text:
        raise UnionRobustError(f"threat {text!r} must look like 'norm:radius', e.g. 'l2:0.5'")
    norm, _, radius = text.partition(":")
    key = norm.strip().lower().replace(" ", "")
    if key == "rt":  # rotation-translation, "rt:30:3" (threats/spatial.py)
        return parse_rt(radius)
    cls = NORM_ALIASES.get(key)
    if cls is None:
        raise unknown_name(f"norm in threat {text!r}:", norm.strip(), VALID_NORMS)
    if not radius.strip():
        raise UnionRobustError(f"threat {text!r}: missing radius after ':'")
    value = parse_number(radius, f"threat {text!r}")
    if not value > 0:
        raise UnionRobustError(f"threat {text!r}: radius must be > 0, got {radius.strip()}")
    try:
        return cls(value)
    except UnionRobustError as err:
        raise UnionRobustError(f"threat {text!r}: {err}") from None


def parse(spec: str | ThreatModel | Union) -> Union:
    """Parse a comma-separated union spec (``;`` also separates); a threat model or union
    passes through. Errors are one line naming the bad token."""
    if isinstance(spec, Union):
        return spec
    if isinstance(spec, ThreatModel):
        return Union([spec])
    if not isinstance(spec, str):
        raise UnionRobustError(f"a threat spec must be text, got {type(spec).__name__}")
    if not spec.strip():
        raise UnionRobustError("empty threat spec; write e.g. 'linf:0.3, l2:2, l1:10'")
    tokens = spec.replace(";", ",").split(",")
    for i, t in enumerate(tokens):
        if not t.strip():
            where = "trailing" if i == len(tokens) - 1 else ("leading" if i == 0 else "double")
            raise UnionRobustError(
                f"empty threat ({where} comma, item {i + 1}) in spec {spec!r}; "
                "write e.g. 'linf:0.3, l2:2, l1:10'"
            )
    return Union([parse_threat(t) for t in tokens])


def single_threat(threat: ThreatModel | Union | str, who: str) -> ThreatModel:
    """The one threat model an attack runs against (a spec such as ``"l2:0.5"`` is parsed, a
    one-member union unwrapped); ``who`` names the attack in errors."""
    if isinstance(threat, str):
        threat = parse(threat)
    if isinstance(threat, Union):
        if len(threat) != 1:
            raise UnionRobustError(
                f"{who} attacks one threat model; for the union {threat.spec!r} use MSD or WorstOf"
            )
        threat = threat[0]
    if not isinstance(threat, ThreatModel):
        raise UnionRobustError(f"threat must be a ThreatModel, got {type(threat).__name__}")
    return threat


def threat_union(threats: ThreatModel | Union | str, who: str) -> Union:
    """The union a union attack runs against (a spec is parsed, one threat model wrapped)."""
    if isinstance(threats, str):
        return parse(threats)
    if not isinstance(threats, ThreatModel | Union):
        raise UnionRobustError(
            f"{who} needs a union of threat models or a spec, got {type(threats).__name__}"
        )
    return as_union(threats)
