"""CIFAR-10-C accuracy per corruption and severity, from a local copy (Hendrycks & Dietterich
2019 layout: ``<corruption>.npy`` uint8 (5·N, 32, 32, 3), severities 1..5 in blocks of N rows,
and ``labels.npy``; read by ``data.get_dataset("cifar10c:<corruption>:<severity>")``).

The summary is the mean accuracy over the corruptions and severities evaluated (the "mean
corruption accuracy"; the corruption *error* of the paper is 1 minus it, without the AlexNet
normalisation, which needs AlexNet's errors).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unionrobust.attacks.base import frozen_model
from unionrobust.data import get_dataset
from unionrobust.data.arrays import as_tensors
from unionrobust.data.datasets import CIFAR10C_CORRUPTIONS, DATA_ENV
from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.evaluation.checks import clean_verdicts
from unionrobust.evaluation.inputs import resolve_device


def _folder(root: str | os.PathLike | None) -> Path:
    if root is None:
        root = os.environ.get(DATA_ENV)
        if not root:
            raise UnionRobustError(f"CIFAR-10-C needs root=FOLDER or ${DATA_ENV}")
    folder = Path(root).expanduser()
    if not (folder / "labels.npy").is_file() and (folder / "CIFAR-10-C").is_dir():
        folder = folder / "CIFAR-10-C"
    if not folder.is_dir():
        raise UnionRobustError(f"CIFAR-10-C folder {str(folder)!r} does not exist")
    return folder


def available_corruptions(root: str | os.PathLike | None = None) -> list[str]:
    """The known corruptions whose ``.npy`` file is in the CIFAR-10-C folder."""
    folder = _folder(root)
    return [c for c in CIFAR10C_CORRUPTIONS if (folder / f"{c}.npy").is_file()]


def present_corruptions(root: str | os.PathLike | None = None) -> list[str]:
    """:func:`available_corruptions`, refusing a folder that holds none (one line)."""
    names = available_corruptions(root)
    if not names:
        raise UnionRobustError(f"no CIFAR-10-C <corruption>.npy files in {str(_folder(root))!r}")
    return names


def corruption_accuracy(
    model: nn.Module,
    root: str | os.PathLike | None = None,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    n: int | None = None,
    batch_size: int = 500,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Clean-model accuracy on CIFAR-10-C for each (corruption, severity).

    ``corruptions``: names (default: every corruption file present under ``root``);
    ``severities``: subset of 1..5; ``n``: the first n images of each severity block.
    Returns ``{"accuracy": {corruption: {severity: acc}}, "per_corruption": {c: mean over
    severities}, "per_severity": {s: mean over corruptions}, "mean": overall mean, "n": images
    per cell}``. The model is left exactly as found.
    """
    folder = _folder(root)
    if corruptions is None:
        names = present_corruptions(folder)
    else:
        names = [str(c) for c in corruptions]
        for c in names:
            if c not in CIFAR10C_CORRUPTIONS:
                raise unknown_name("CIFAR-10-C corruption", c, CIFAR10C_CORRUPTIONS)
    sev = [int(s) for s in severities]
    if not sev or any(s not in (1, 2, 3, 4, 5) for s in sev):
        raise UnionRobustError(f"severities must be in 1..5, got {list(severities)}")
    if n is not None and int(n) <= 0:
        raise UnionRobustError(f"n must be positive, got {n}")
    dev = resolve_device(device, model)
    table: dict[str, dict[int, float]] = {}
    count = 0
    with frozen_model(model):
        for c in names:
            table[c] = {}
            for s in sev:
                data = get_dataset(f"cifar10c:{c}:{s}", root=folder)
                x, y = as_tensors(data, None if n is None else int(n))
                correct = 0
                for i in range(0, x.shape[0], batch_size):
                    xb = x[i : i + batch_size].to(dev, non_blocking=True)
                    yb = y[i : i + batch_size].to(dev, non_blocking=True)
                    correct += int(clean_verdicts(model, xb, yb)[0].sum())
                table[c][s] = correct / max(x.shape[0], 1)
                count = x.shape[0]
    per_c = {c: sum(v.values()) / len(v) for c, v in table.items()}
    per_s = {s: sum(table[c][s] for c in names) / len(names) for s in sev}
    return {
        "accuracy": table,
        "per_corruption": per_c,
        "per_severity": per_s,
        "mean": sum(per_c.values()) / len(per_c),
        "n": count,
        "corruptions": names,
        "severities": sev,
    }
