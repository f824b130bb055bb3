"""Optimal multi-perturbation risks from single-threat models (Tramèr & Boneh 2019, §4).

For perturbation sets S_1..S_n let R_i be the best risk any model reaches on S_i alone. A single
model can at best reach R_i on every S_i at once, so (§4, "optimal error if there is no
robustness trade-off"):

* ``OPT(R_avg) = (1/n) Σ_i R_i``;
* ``OPT(R_max) = max_i R_i`` — reached only if the errors are fully correlated (the same inputs
  are broken by every type, so a maximal number of inputs admit no attack).

Both are *lower bounds* on what a model trained for the union can reach; the paper's experiments
show they are not attained. Accuracies are ``1 − risk`` (the paper prints ``1 − OPT``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from unionrobust.errors import UnionRobustError


def _risks(values: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    items = (
        list(values.items())
        if isinstance(values, Mapping)
        else [(f"S{i + 1}", v) for i, v in enumerate(values)]
    )
    if not items:
        raise UnionRobustError("need at least one single-threat risk")
    out: dict[str, float] = {}
    for name, v in items:
        try:
            r = float(v)
        except (TypeError, ValueError):
            raise UnionRobustError(f"risk for {name} must be a number, got {v!r}") from None
        if not (math.isfinite(r) and 0.0 <= r <= 1.0):
            raise UnionRobustError(f"risk for {name} must lie in [0, 1], got {v!r}")
        out[str(name)] = r
    return out


@dataclass(frozen=True)
class OptBounds:
    """OPT(R_avg) and OPT(R_max) from the single-threat optimal risks ``risks``."""

    risks: dict[str, float] = field(default_factory=dict)
    opt_avg: float = 0.0
    opt_max: float = 0.0

    def as_dict(self) -> dict:
        return {
            "risks": dict(self.risks),
            "opt_avg": self.opt_avg,
            "opt_max": self.opt_max,
            "opt_avg_accuracy": 1.0 - self.opt_avg,
            "opt_max_accuracy": 1.0 - self.opt_max,
        }


def opt_bounds(single_threat_risks: Mapping[str, float] | Sequence[float]) -> OptBounds:
    """Tramèr & Boneh §4: ``OPT(R_avg) = mean R_i`` and ``OPT(R_max) = max R_i``.

    ``single_threat_risks``: the risk (error rate in [0, 1]) of the best model trained for each
    perturbation type alone, on that type — a mapping name → risk or a sequence.
    """
    risks = _risks(single_threat_risks)
    vals = list(risks.values())
    return OptBounds(risks=risks, opt_avg=sum(vals) / len(vals), opt_max=max(vals))


def union_risk_range(
    per_threat_risks: Mapping[str, float] | Sequence[float],
) -> tuple[float, float]:
    """For ONE model with risks R_i on each S_i: ``max_i R_i ≤ R_max ≤ min(1, Σ_i R_i)``.

    (The union error set is the union of the per-type error sets: at least the largest, at most
    their sum.) Useful to sanity-check a reported union accuracy against per-threat ones.
    """
    vals = list(_risks(per_threat_risks).values())
    return max(vals), min(1.0, sum(vals))


__all__ = ["OptBounds", "opt_bounds", "union_risk_range"]
