"""unionrobust: attack, train and evaluate neural networks against unions of perturbation models.

The names most users need are importable from here; each layer's package has the rest.
The union of threat models is exported as ``ThreatUnion`` (``from unionrobust import *`` must not
shadow ``typing.Union``); ``unionrobust.Union`` and ``unionrobust.get_model`` still work but
warn (DeprecationWarning): use ``ThreatUnion`` (or ``unionrobust.threats.Union``) and
``load_model``.
"""

import warnings as _warnings
from typing import Any as _Any

from unionrobust._version import __version__
from unionrobust.allocator import tune_on_import
from unionrobust.attacks import APGD, FGSM, MIM, MSD, PGD, SLIDE, AttackResult, WorstOf, make_attack
from unionrobust.data import get_dataset, load_data, load_embedded_mnist
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import AttackReport, EvaluationReport, attack_report, evaluate
from unionrobust.models import build_model, load_model, load_weights, save_weights
from unionrobust.threats import L0, L1, L2, Linf, ThreatModel, parse
from unionrobust.threats import Union as ThreatUnion

__all__ = [
    "APGD",
    "FGSM",
    "L0",
    "L1",
    "L2",
    "MIM",
    "MSD",
    "PGD",
    "SLIDE",
    "AttackReport",
    "AttackResult",
    "EvaluationReport",
    "Linf",
    "ThreatModel",
    "ThreatUnion",
    "UnionRobustError",
    "WorstOf",
    "__version__",
    "attack_report",
    "build_model",
    "evaluate",
    "get_dataset",
    "load_data",
    "load_embedded_mnist",
    "load_model",
    "load_weights",
    "make_attack",
    "parse",
    "save_weights",
]

#: deprecated top-level names: old name -> (replacement, where it lives)
_DEPRECATED = {
    "Union": ("ThreatUnion", "unionrobust.threats", "Union"),
    "get_model": ("load_model", "unionrobust.models.loader", "load_model"),
}


def __getattr__(name: str) -> _Any:
    """``unionrobust.Union`` and ``unionrobust.get_model``: the old names, with a warning."""
    if name not in _DEPRECATED:
        raise AttributeError(f"module 'unionrobust' has no attribute {name!r}")
    new, module, attr = _DEPRECATED[name]
    _warnings.warn(
        f"unionrobust.{name} is deprecated; use unionrobust.{new}", DeprecationWarning, stacklevel=2
    )
    import importlib

    return getattr(importlib.import_module(module), attr)
# glibc keeps PyTorch's freed buffers mapped instead of faulting them in again at every attack
# step (unionrobust/allocator.py; opt out: UNIONROBUST_MALLOC=system)
tune_on_import()
