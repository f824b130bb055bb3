"""Affine attacks β·S1 + (1−β)·S2 on a dataset, with the engine's checks (``unionrobust affine``;
Tramèr & Boneh 2019, §2.5).

One attack per β, every example attacked at every β. The clean pass refuses a model whose logits
are non-finite on a whole batch (:func:`~unionrobust.evaluation.checks.clean_verdicts`); every
output is re-checked (:func:`~unionrobust.evaluation.checks.recheck`): it must decompose into its
recorded parts inside β·S1 and (1−β)·S2 (:func:`~unionrobust.attacks.affine.affine_contains`),
and the prediction is recomputed there. The attack's own ``success`` never counts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unionrobust.attacks.affine import affine_attack, affine_contains, check_betas
from unionrobust.errors import UnionRobustError, check_int
from unionrobust.evaluation.checks import checked_attack, clean_batches, rejected
from unionrobust.evaluation.inputs import device_for, progress_bar, read_examples
from unionrobust.threats import ThreatModel, Union, parse


@dataclass
class AffineReport:
    """Per β, per example: ``robust[β]`` (clean correct and no re-checked adversarial input at
    that β). ``union_accuracy``: robust at β = 0 and β = 1 (both ends given), the union of S1
    and S2; ``affine_accuracy``: robust at every β."""

    threats: str
    betas: tuple[float, ...]
    clean_correct: torch.Tensor
    robust: dict[float, torch.Tensor]
    seconds: dict[float, float]
    rejected: int
    nonfinite: int
    steps: int
    meta: dict[str, Any] = field(default_factory=dict)

    def accuracy(self, beta: float) -> float:
        return float(self.robust[beta].double().mean())

    @property
    def union_accuracy(self) -> float | None:
        if 0.0 not in self.robust or 1.0 not in self.robust:
            return None
        return float((self.robust[0.0] & self.robust[1.0]).double().mean())

    @property
    def affine_accuracy(self) -> float:
        return float(torch.stack(list(self.robust.values())).all(0).double().mean())

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary (report.json of ``unionrobust affine``)."""
        return {
            "threats": self.threats,
            "betas": list(self.betas),
            "n_examples": int(self.clean_correct.numel()),
            "clean_accuracy": float(self.clean_correct.double().mean()),
            "accuracy": {str(b): self.accuracy(b) for b in self.betas},
            "union_accuracy": self.union_accuracy,
            "affine_accuracy": self.affine_accuracy,
            "rejected": self.rejected,
            "nonfinite_logits": self.nonfinite,
            "steps": self.steps,
            "seconds": {str(b): s for b, s in self.seconds.items()},
            "model": self.meta,
        }


def affine_report(
    model: nn.Module,
    x_or_dataset: Any,
    y: torch.Tensor | None = None,
    threats: str | Union = "linf:0.3, l1:10",
    betas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    *,
    k: int = 10,
    steps: int = 50,
    loss: str = "ce",
    seed: int = 0,
    batch_size: int = 250,
    device: str | torch.device | None = None,
    progress: bool = True,
    n: int | None = None,
    meta: dict[str, Any] | None = None,
) -> AffineReport:
    """The affine attack on the two threats S1, S2 of ``threats`` at every β of ``betas``
    (``k`` transforms per β for linf + rt), each output re-checked; data as for
    :func:`~unionrobust.evaluation.evaluate`."""
    s1, s2 = affine_pair(threats)
    betas = check_betas(betas)
    batch_size = check_int("batch size", batch_size, 1)
    attacks = {
        b: affine_attack(s1, s2, k=k, betas=[b], steps=steps, loss=loss, seed=seed) for b in betas
    }
    dev = device_for(model, device)
    x, y = read_examples(x_or_dataset, y, n)
    count = x.shape[0]
    clean = torch.zeros(count, dtype=torch.bool)
    robust = {b: torch.zeros(count, dtype=torch.bool) for b in betas}
    seconds = dict.fromkeys(betas, 0.0)
    n_rejected = nonfinite = 0
    with progress_bar(count * len(betas), "affine", progress) as bar:
        for idx, xb, yb, correct, bad in clean_batches(model, x, y, batch_size, dev):
            clean[idx] = correct.cpu()
            nonfinite += bad
            for b, atk in attacks.items():
                t0 = time.perf_counter()

                def inside(result: Any, xq: torch.Tensor, atk: Any = atk) -> torch.Tensor:
                    return affine_contains(result, xq, atk)

                result, broken, _ = checked_attack(model, atk, None, xb, yb, idx.to(dev), inside)
                robust[b][idx] = (correct & ~broken).cpu()
                n_rejected += int(rejected(result, broken).sum())
                seconds[b] += time.perf_counter() - t0
                if bar is not None:
                    bar.set_postfix_str(f"beta={b:g}")
                    bar.update(idx.numel())
    return AffineReport(
        threats=f"{s1.spec}, {s2.spec}",
        betas=betas,
        clean_correct=clean,
        robust=robust,
        seconds=seconds,
        rejected=n_rejected,
        nonfinite=nonfinite,
        steps=int(steps),
        meta=dict(meta or {}),
    )


def affine_pair(threats: str | ThreatModel | Union) -> tuple[ThreatModel, ThreatModel]:
    """(S1, S2) of a union of exactly two threats; one-line error otherwise."""
    union = parse(threats)
    if len(union) != 2:
        raise UnionRobustError(f"--threats needs exactly two threat models, got {union.spec!r}")
    s1, s2 = union.members
    return s1, s2
