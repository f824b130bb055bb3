"""Min-max attack runs over a dataset (what ``unionrobust minmax`` prints, for Python users):
each weighting (learned min-max weights, the uniform average, fixed weights) attacks every
input in batches, the per-batch results are merged, and :func:`minmax_table` compares them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from unionrobust.attacks.domains import Domains, UniversalGroups
from unionrobust.attacks.minmax import DomainMinMax, MinMaxResult, merge_results
from unionrobust.errors import check_int
from unionrobust.evaluation.checks import clean_verdicts
from unionrobust.evaluation.inputs import progress_bar
from unionrobust.threats import ThreatModel

#: the default comparison: the averaging baseline first (the lift is relative to it)
DEFAULT_WEIGHTINGS: dict[str, str | Sequence[float]] = {"avg": "uniform", "minmax": "minmax"}


def attack_in_batches(
    attack: DomainMinMax,
    domains: Domains,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device | str = "cpu",
    bar: Any = None,
) -> MinMaxResult:
    """``attack(domains, ...)`` over consecutive batches of ``x`` (example ids = positions, so
    results do not depend on the batch size; universal groups are never split), merged. Each
    batch first passes the clean check of every model (:func:`clean_verdicts`): a model with
    non-finite logits on a whole batch is an error, never a 100 % attack success."""
    batch = check_int("batch size", batch_size, 1)
    if isinstance(domains, UniversalGroups):
        batch = max(domains.group, batch - batch % domains.group)
    parts = []
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch].to(device, non_blocking=True)
        yb = y[start : start + batch].to(device, non_blocking=True)
        ids = torch.arange(start, start + xb.shape[0], device=xb.device)
        for model in domains.models():
            clean_verdicts(model, xb, yb)
        parts.append(attack(domains, xb, yb, ids))
        if bar is not None:
            bar.update(xb.shape[0])
    return merge_results(parts)


def run_minmax(
    domains: Domains,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    weightings: Mapping[str, str | Sequence[float]] | None = None,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    progress: bool = True,
    **options: Any,
) -> dict[str, MinMaxResult]:
    """One :class:`DomainMinMax` run per weighting (label → ``weights``), with ``options``
    (steps, alpha, w_lr, gamma, loss, kappa, start, seed) shared; a progress bar per run."""
    out = {}
    for label, weights in (weightings or DEFAULT_WEIGHTINGS).items():
        attack = DomainMinMax(threat, weights=weights, **options)
        with progress_bar(int(x.shape[0]), f"minmax ({label})", progress) as bar:
            out[label] = attack_in_batches(attack, domains, x, y, batch_size, device, bar)
    return out


def _lift(new: float, base: float) -> str:
    return "-" if base == 0 else f"{100 * (new - base) / base:+.2f}%"


def minmax_table(results: Mapping[str, MinMaxResult]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): per weighting the accuracy on each domain, ASR_avg, ASR_all (models) or
    ASR_gp, and its lift over the first weighting (in %)."""
    first = next(iter(results.values()))
    labels = first.labels
    key = "asr_all" if first.kind == "models" else "asr_gp"
    base = first.metrics()[key]
    headers = ["opt"] + [f"acc_{lab}" for lab in labels] + ["asr_avg", key, "lift"]
    rows = []
    for i, (label, res) in enumerate(results.items()):
        m = res.metrics()
        accs = [f"{100 - m[f'asr_{lab}']:.2f}" for lab in labels]
        lift = "-" if i == 0 else _lift(m[key], base)
        rows.append([label, *accs, f"{m['asr_avg']:.2f}", f"{m[key]:.2f}", lift])
    return headers, rows


def minmax_report(results: Mapping[str, MinMaxResult], learned: str = "minmax") -> dict:
    """The JSON-ready numbers: metrics and fooled history per weighting, and the mean weight
    trajectory of the ``learned`` run."""
    mm = results[learned]
    return {
        "domains": list(mm.labels),
        "metrics": {label: res.metrics() for label, res in results.items()},
        "mean_weight_trajectory": mm.trajectory.double().mean(1).tolist(),
        "fooled_history": {
            label: res.fooled_history.double().tolist() for label, res in results.items()
        },
    }
