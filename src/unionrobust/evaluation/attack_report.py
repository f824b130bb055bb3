"""One attack against a union, on a dataset: the adversarial examples and how often they break
the model (``unionrobust attack``; for an honest robustness number use :func:`evaluate`).

Same checks as the engine: the clean pass refuses a model with non-finite logits on a whole
batch and counts isolated non-finite rows as not correct; every adversarial example is
re-checked (:func:`~unionrobust.evaluation.engine.recheck`) before it counts, and a claimed
success that fails the re-check is replaced by the clean input and counted as rejected.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from unionrobust._version import __version__
from unionrobust.atomic import atomic_path
from unionrobust.attacks.base import Attack
from unionrobust.attacks.registry import make_attack
from unionrobust.errors import check_int
from unionrobust.evaluation.checks import checked_attack, clean_batches, rejected
from unionrobust.evaluation.inputs import device_for, progress_bar, read_examples
from unionrobust.evaluation.metrics import proportion
from unionrobust.evaluation.verdicts import write_json
from unionrobust.outdir import clear_run, writing
from unionrobust.threats import ThreatModel, Union, parse

ADVERSARIAL_NAME = "adversarial.safetensors"
#: the files of an attack run in its folder
ATTACK_FILES = ("report.json", ADVERSARIAL_NAME)


@dataclass
class AttackReport:
    """Per example: ``clean_correct``, ``success`` (a re-checked adversarial example was found),
    ``x_adv`` (the clean input where none was), ``threat_index`` (the member of the union whose
    ball holds ``x_adv``, -1 where ``x_adv = x``). Robust = clean correct and not broken."""

    attack: str
    threats: list[str]
    seed: int
    x_adv: torch.Tensor
    labels: torch.Tensor
    clean_correct: torch.Tensor
    success: torch.Tensor
    threat_index: torch.Tensor
    rejected: int
    nonfinite: int
    seconds: float
    steps: int | None = None
    restarts: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def robust(self) -> torch.Tensor:
        return self.clean_correct & ~self.success

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary (report.json of ``unionrobust attack``)."""
        acc, acc_ci = proportion(self.robust)
        clean, clean_ci = proportion(self.clean_correct)
        ok = self.clean_correct
        rate = float(self.success[ok].double().mean()) if ok.any() else float("nan")
        return {
            "attack": self.attack,
            "threats": list(self.threats),
            "steps": self.steps,
            "restarts": self.restarts,
            "seed": self.seed,
            "n_examples": int(self.labels.numel()),
            "clean_accuracy": clean,
            "clean_accuracy_ci95": list(clean_ci),
            "robust_accuracy": acc,
            "robust_accuracy_ci95": list(acc_ci),
            "success_rate": rate,
            "successes_by_threat": {
                s: int(((self.threat_index == i) & ok).sum()) for i, s in enumerate(self.threats)
            },
            "rejected": self.rejected,
            "nonfinite_logits": self.nonfinite,
            "seconds": self.seconds,
            "meta": self.meta,
            "version": __version__,
            "library_version": __version__,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-example tensors saved in adversarial.safetensors."""
        return {
            "x_adv": self.x_adv,
            "y": self.labels,
            "success": self.success,
            "threat_index": self.threat_index,
        }


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` (B,) shaped to broadcast over the batch ``like``."""
    return mask.reshape(-1, *[1] * (like.dim() - 1))


def union_attack(
    name: str,
    threats: str | ThreatModel | Union,
    steps: int | None,
    restarts: int | None,
    seed: int,
) -> Attack:
    """Registry attack ``name`` over the union (MSD directly, any other once per member,
    combined per example by ``WorstOf``); ``steps``/``restarts`` None: the attack's default."""
    kw: dict[str, int] = {"seed": seed}
    if steps is not None:
        kw["steps"] = steps
    if restarts is not None:
        kw["restarts"] = restarts
    return make_attack(name, parse(threats), **kw)


def attack_report(
    model: nn.Module,
    x_or_dataset: Any,
    y: torch.Tensor | None = None,
    attack: str | Attack = "pgd",
    threats: str | ThreatModel | Union = "linf:0.3, l2:2, l1:10",
    *,
    steps: int | None = None,
    restarts: int | None = None,
    seed: int = 0,
    batch_size: int = 250,
    device: str | torch.device | None = None,
    progress: bool = True,
    n: int | None = None,
    meta: dict[str, Any] | None = None,
) -> AttackReport:
    """Run ``attack`` (a registry name, built over the union with ``steps``/``restarts``/
    ``seed`` — MSD searches all balls at once, any other attack runs per member, worst case
    kept — or an :class:`Attack`) on every example; data as for :func:`evaluate`."""
    union = parse(threats)
    batch_size = check_int("batch size", batch_size, 1)
    if isinstance(attack, str):
        name, atk = attack, union_attack(attack, union, steps, restarts, seed)
    else:
        name, atk = type(attack).__name__, attack
    dev = device_for(model, device)
    x, y = read_examples(x_or_dataset, y, n)
    count = x.shape[0]
    x_adv = x.clone()
    clean_ok = torch.zeros(count, dtype=torch.bool)
    success = torch.zeros(count, dtype=torch.bool)
    which = torch.full((count,), -1, dtype=torch.int64)
    n_rejected = nonfinite = 0
    t0 = time.perf_counter()
    with progress_bar(count, name, progress) as bar:
        for idx, xb, yb, correct, bad in clean_batches(model, x, y, batch_size, dev, bar):
            result, broken, _ = checked_attack(model, atk, union, xb, yb, idx.to(dev))
            refused = rejected(result, broken)
            xa = torch.where(_rows(refused, xb), xb, result.x_adv.clamp(0, 1))
            x_adv[idx] = xa.cpu()
            clean_ok[idx] = correct.cpu()
            success[idx] = broken.cpu()
            n_rejected += int(refused.sum())
            nonfinite += bad
            if result.threat_index is not None:
                which[idx] = torch.where(broken, result.threat_index, -1).cpu()
    return AttackReport(
        attack=name,
        threats=[m.spec for m in union],
        seed=int(seed),
        x_adv=x_adv,
        labels=y.cpu(),
        clean_correct=clean_ok,
        success=success,
        threat_index=which,
        rejected=n_rejected,
        nonfinite=nonfinite,
        seconds=time.perf_counter() - t0,
        steps=steps,
        restarts=restarts,
        meta=dict(meta or {}),
    )


def write_attack_outputs(
    report: AttackReport, out_dir: str | os.PathLike, overwrite: bool = False
) -> tuple[Path, Path]:
    """report.json and adversarial.safetensors in ``out_dir``, each written atomically; with
    ``overwrite`` an earlier run's files are removed first (never a mix of two runs)."""
    out = Path(out_dir)
    with writing(out):
        if overwrite:
            clear_run(out, ATTACK_FILES)
        path = out / ADVERSARIAL_NAME
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in report.tensors().items()}, tmp)
        return write_json(out / "report.json", report.to_dict()), path
