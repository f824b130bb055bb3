"""Strategy registry: ``make_strategy(name, threats, **options)`` and ``strategy_names()``.

Aliases "pinf", "p2", "p1" are single-threat AT on the union's ℓ∞, ℓ2, ℓ1 member (MSD's P∞, P2,
P1). An unknown name lists the valid ones; an unknown option names itself and the valid ones.
"""

from __future__ import annotations

import inspect

from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.threats import ThreatModel, Union, parse
from unionrobust.training.strategies.base import Strategy
from unionrobust.training.strategies.domains import MinMaxTransforms
from unionrobust.training.strategies.eat import EAT, EATUniform
from unionrobust.training.strategies.minmax import MinMax
from unionrobust.training.strategies.msd import MSDStrategy
from unionrobust.training.strategies.natural import Natural
from unionrobust.training.strategies.sat import SAT
from unionrobust.training.strategies.single import SingleThreat
from unionrobust.training.strategies.union import Avg, Max
from unionrobust.training.strategies.universal import Universal

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        Natural,
        SingleThreat,
        Max,
        Avg,
        MSDStrategy,
        SAT,
        EAT,
        EATUniform,
        MinMax,
        Universal,
        MinMaxTransforms,
    )
}

#: alias -> the norm of the member that single-threat AT trains on
ALIASES = {"pinf": "linf", "p2": "l2", "p1": "l1"}

#: options a subclass fixes itself and must not be passed
HIDDEN = {MSDStrategy: {"attack"}, EATUniform: {"sampling"}, MinMax: {"attack"}, Natural: set()}


def strategy_names() -> list[str]:
    """Registered strategy names and aliases, sorted."""
    return sorted([*STRATEGIES, *ALIASES])


def strategy_options(name: str) -> list[str]:
    """The keyword options strategy ``name`` accepts."""
    cls = STRATEGIES["single" if name in ALIASES else name]
    opts: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or not issubclass(klass, Strategy):
            continue
        params = inspect.signature(init).parameters.values()
        named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        opts |= {p.name for p in params if p.kind in named}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break  # this __init__ does not forward further options
    opts -= {"self", "threats"} | HIDDEN.get(cls, set())
    if name in ALIASES:
        opts.discard("threat")
    return sorted(opts)


def make_strategy(name: str, threats: str | ThreatModel | Union, **options) -> Strategy:
    """Build strategy ``name`` for the union ``threats`` (a spec such as "linf:0.3, l2:2")."""
    if not isinstance(name, str) or (name not in STRATEGIES and name not in ALIASES):
        raise unknown_name("strategy", str(name), strategy_names())
    union = parse(threats)
    valid = strategy_options(name)
    bad = sorted(set(options) - set(valid))
    if bad:
        raise UnionRobustError(
            f"strategy {name!r}: unknown option(s) {', '.join(bad)}; valid: {', '.join(valid)}"
        )
    if name in ALIASES:
        norm = ALIASES[name]
        if not any(m.name == norm for m in union):
            raise UnionRobustError(
                f"strategy {name!r} trains on the {norm} threat, which {union.spec!r} lacks"
            )
        strategy = SingleThreat(union, threat=norm, **options)
        strategy.name = name
        return strategy
    return STRATEGIES[name](union, **options)
