"""Accuracies and their 95% confidence intervals.

Proportions (clean, per-threat and union accuracy) get the Wilson score interval (Wilson 1927),
which stays inside [0, 1] and behaves at 0% and 100%, unlike the normal (Wald) interval.
The average accuracy 1 − R_avg is the mean over examples of a per-example score
s_i = (1/T) Σ_t robust_{i,t} ∈ [0, 1], not a proportion: its interval is the normal (CLT) interval
mean ± z·sd/√n clipped to [0, 1]; when every s_i is 0 or 1 (then s is a proportion, e.g. T = 1 or
all threats agree) it is the Wilson interval instead.
"""

from __future__ import annotations

import math

import torch

#: two-sided 95% normal quantile
Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials; (nan, nan) when n = 0."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # guard round-off so that lo <= p <= hi always holds exactly
    return (min(lo, p), max(hi, p))


def proportion(mask: torch.Tensor) -> tuple[float, tuple[float, float]]:
    """Fraction of True in a bool vector and its Wilson 95% interval."""
    n = int(mask.numel())
    k = int(mask.sum())
    p = k / n if n else math.nan
    return p, wilson_interval(k, n)


def mean_score(scores: torch.Tensor, z: float = Z95) -> tuple[float, tuple[float, float]]:
    """Mean of per-example scores in [0, 1] and a 95% interval (see the module docstring)."""
    s = scores.detach().double().reshape(-1)
    n = int(s.numel())
    if n == 0:
        return math.nan, (math.nan, math.nan)
    mean = float(s.mean())
    if bool(((s == 0) | (s == 1)).all()):
        return mean, wilson_interval(int(s.sum()), n, z)
    sd = float(s.std(unbiased=True)) if n > 1 else 0.0
    half = z * sd / math.sqrt(n)
    return mean, (max(0.0, mean - half), min(1.0, mean + half))
