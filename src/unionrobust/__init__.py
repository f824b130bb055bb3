"""unionrobust: attack, train and evaluate neural networks against unions of perturbation models.

The names most users need are importable from here; each layer's package has the rest.
"""

from unionrobust._version import __version__
from unionrobust.allocator import tune_on_import
from unionrobust.attacks import APGD, FGSM, MIM, MSD, PGD, SLIDE, AttackResult, WorstOf, make_attack
from unionrobust.data import get_dataset, load_data, load_embedded_mnist
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import AttackReport, EvaluationReport, attack_report, evaluate
from unionrobust.models import build_model, get_model, load_model, load_weights, save_weights
from unionrobust.threats import L0, L1, L2, Linf, ThreatModel, Union, parse

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
    "Union",
    "UnionRobustError",
    "WorstOf",
    "__version__",
    "attack_report",
    "build_model",
    "evaluate",
    "get_dataset",
    "get_model",
    "load_data",
    "load_embedded_mnist",
    "load_model",
    "load_weights",
    "make_attack",
    "parse",
    "save_weights",
]

# glibc keeps PyTorch's freed buffers mapped instead of faulting them in again at every attack
# step (unionrobust/allocator.py; opt out: UNIONROBUST_MALLOC=system)
tune_on_import()
