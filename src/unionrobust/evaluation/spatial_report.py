"""A rotation-translation attack on a dataset, with the engine's checks (``unionrobust spatial``).

The clean pass refuses a model whose logits are non-finite on a whole batch and counts an
isolated non-finite row as not correct (:func:`~unionrobust.evaluation.checks.clean_verdicts`);
every output is re-checked (:func:`~unionrobust.evaluation.checks.recheck`): it must be the
recorded transform T_θ(x) with θ inside the threat's bounds, and the prediction is recomputed
there. The attack's own ``success`` never counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unionrobust.attacks.spatial import GridAttack, WorstOfK
from unionrobust.errors import check_int
from unionrobust.evaluation.checks import checked_attack, clean_batches, rejected
from unionrobust.evaluation.inputs import device_for, progress_bar, read_examples
from unionrobust.evaluation.metrics import proportion


@dataclass
class SpatialReport:
    """Per example: ``clean_correct``, ``broken`` (a re-checked transform is misclassified),
    ``params`` (B, 3) the (degrees, tx, ty) the attack returned. Robust = correct, not broken."""

    threat: str
    attack: str
    lattice_points: int
    clean_correct: torch.Tensor
    broken: torch.Tensor
    params: torch.Tensor
    rejected: int
    nonfinite: int
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def robust(self) -> torch.Tensor:
        return self.clean_correct & ~self.broken

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary (report.json of ``unionrobust spatial``)."""
        clean, clean_ci = proportion(self.clean_correct)
        acc, acc_ci = proportion(self.robust)
        return {
            "threat": self.threat,
            "attack": self.attack,
            "lattice_points": self.lattice_points,
            "n_examples": int(self.broken.numel()),
            "clean_accuracy": clean,
            "clean_accuracy_ci95": list(clean_ci),
            "robust_accuracy": acc,
            "robust_accuracy_ci95": list(acc_ci),
            "params": self.params.tolist(),
            "broken": self.broken.tolist(),
            "rejected": self.rejected,
            "nonfinite_logits": self.nonfinite,
            "seconds": self.seconds,
            "model": self.meta,
        }


def spatial_report(
    model: nn.Module,
    x_or_dataset: Any,
    y: torch.Tensor | None = None,
    *,
    attack: GridAttack | WorstOfK,
    batch_size: int = 250,
    device: str | torch.device | None = None,
    progress: bool = True,
    n: int | None = None,
    meta: dict[str, Any] | None = None,
) -> SpatialReport:
    """Run the search ``attack`` (grid or worst-of-k) on every example, each output re-checked;
    data as for :func:`~unionrobust.evaluation.evaluate`."""
    atk, threat = attack, attack.threat
    batch_size = check_int("batch size", batch_size, 1)
    dev = device_for(model, device)
    x, y = read_examples(x_or_dataset, y, n)
    count = x.shape[0]
    clean = torch.zeros(count, dtype=torch.bool)
    broken = torch.zeros(count, dtype=torch.bool)
    params = torch.zeros(count, 3)
    n_rejected = nonfinite = 0

    def inside(result: Any, xb: torch.Tensor) -> torch.Tensor:
        return threat.contains(result.x_adv - xb, xb, params=result.params)

    t0 = time.perf_counter()
    with progress_bar(count, atk.name, progress) as bar:
        for idx, xb, yb, correct, bad in clean_batches(model, x, y, batch_size, dev, bar):
            result, b, _ = checked_attack(model, atk, None, xb, yb, idx.to(dev), inside)
            clean[idx], broken[idx] = correct.cpu(), b.cpu()
            params[idx] = result.params.float().cpu()
            n_rejected += int(rejected(result, b).sum())
            nonfinite += bad
    return SpatialReport(
        threat=threat.spec,
        attack=atk.name,
        lattice_points=int(threat.grid().shape[0]),
        clean_correct=clean,
        broken=broken,
        params=params,
        rejected=n_rejected,
        nonfinite=nonfinite,
        seconds=time.perf_counter() - t0,
        meta=dict(meta or {}),
    )
