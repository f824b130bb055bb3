"""Training strategies: the inner maximisation of adversarial training for one batch.

``make_strategy(name, threats, **options)`` builds one of :func:`strategy_names`; a strategy maps
``(model, x, y, example_ids)`` to a :class:`StrategyOutput` (loss, logits, stats).
"""

from unionrobust.training.strategies.base import Strategy, StrategyOutput
from unionrobust.training.strategies.domains import MinMaxTransforms
from unionrobust.training.strategies.eat import EAT, EATUniform
from unionrobust.training.strategies.minmax import MinMax
from unionrobust.training.strategies.msd import MSDStrategy
from unionrobust.training.strategies.natural import Natural
from unionrobust.training.strategies.objective import LOSSES, Objective
from unionrobust.training.strategies.registry import (
    make_strategy,
    strategy_names,
    strategy_options,
)
from unionrobust.training.strategies.sat import SAT
from unionrobust.training.strategies.single import SingleThreat
from unionrobust.training.strategies.union import Avg, Max

__all__ = [
    "EAT",
    "LOSSES",
    "SAT",
    "Avg",
    "EATUniform",
    "MSDStrategy",
    "Max",
    "MinMax",
    "MinMaxTransforms",
    "Natural",
    "Objective",
    "SingleThreat",
    "Strategy",
    "StrategyOutput",
    "make_strategy",
    "strategy_names",
    "strategy_options",
]
