"""Theory of multi-perturbation robustness: Tramèr & Boneh (2019) §2 and §4, made executable.

``synthetic``: Tsipras et al.'s distribution, linear classifiers and their exact/Monte-Carlo risks
under ℓ∞ and ℓ1 perturbations; ``theorem1``: the classifiers of §2.3 and the Theorem 1
experiment (R_avg ≥ 1/2). ``bounds``: the
optimal multi-perturbation risks OPT(R_avg), OPT(R_max) from single-threat models (§4).
"""

from unionrobust.theory.bounds import OptBounds, opt_bounds, union_risk_range
from unionrobust.theory.synthetic import (
    LinearClassifier,
    Risks,
    SyntheticTask,
    coupling_risks,
    exact_linear_risks,
    monte_carlo_linear_risks,
)
from unionrobust.theory.theorem1 import (
    Theorem1Result,
    linear_family,
    natural_classifier,
    theorem1_experiment,
)

__all__ = [
    "LinearClassifier",
    "OptBounds",
    "Risks",
    "SyntheticTask",
    "Theorem1Result",
    "coupling_risks",
    "exact_linear_risks",
    "linear_family",
    "monte_carlo_linear_risks",
    "natural_classifier",
    "opt_bounds",
    "theorem1_experiment",
    "union_risk_range",
]
