"""unionrobust: attack, train and evaluate neural networks against unions of perturbation models."""

from unionrobust._version import __version__
from unionrobust.errors import UnionRobustError
from unionrobust.threats import L0, L1, L2, Linf, ThreatModel, Union, parse

__all__ = [
    "L0",
    "L1",
    "L2",
    "Linf",
    "ThreatModel",
    "Union",
    "UnionRobustError",
    "__version__",
    "parse",
]
