"""The optional measurements of an evaluation beyond the union table (``unionrobust eval``'s
--curves, --cifar10c, --mrb-grid): robustness curves (:mod:`~unionrobust.evaluation.curves`),
CIFAR-10-C clean accuracy (:mod:`~unionrobust.evaluation.corruptions`) and MultiRobustBench's
strength grid (:mod:`~unionrobust.evaluation.multirobust`).

:class:`Extras` holds the requested measurements; :meth:`Extras.check` validates all of them
(every curve attack built at its largest radius, the grid and reference read) before any model
is run, and :func:`run_extras` computes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unionrobust.attacks.registry import attack_names
from unionrobust.errors import UnionRobustError, check_choice
from unionrobust.evaluation import multirobust
from unionrobust.evaluation.corruptions import corruption_accuracy, present_corruptions
from unionrobust.evaluation.curves import check_union_curve, union_curve
from unionrobust.threats import Union

#: the three measurements, as keys of :func:`run_extras`' result (and of ``write_reports``)
NAMES = ("curves", "corruptions", "multirobust")


@dataclass
class Extras:
    """What to measure beyond the union table: ``scales`` (robustness curves at these factors
    of every radius, with ``curve_attack``), ``cifar10c`` (a CIFAR-10-C folder), ``mrb_grid``
    (a MultiRobustBench grid name, every ``mrb_every``-th strength, run with ``suite``) and
    ``mrb_reference`` (a file of reference accuracies)."""

    scales: Sequence[float] | None = None
    curve_attack: str = "pgd"
    cifar10c: str | os.PathLike | None = None
    mrb_grid: str | None = None
    mrb_every: int = 1
    mrb_reference: str | os.PathLike | None = None

    def check(self, threats: Union, seed: int = 0) -> tuple[Any, Any]:
        """Validate every measurement before any work; return the (grid, reference) to run."""
        if self.scales is not None:
            check_choice("attack", self.curve_attack, attack_names())
            check_union_curve(threats, self.scales, self.curve_attack, seed)
        if self.cifar10c:
            present_corruptions(self.cifar10c)
        if self.mrb_grid is None:
            if self.mrb_reference:
                raise UnionRobustError("--mrb-reference needs --mrb-grid NAME (e.g. cifar10)")
            return None, None
        grid = multirobust.mrb_grid(self.mrb_grid, self.mrb_every)
        ref = multirobust.load_reference(self.mrb_reference) if self.mrb_reference else None
        return grid, ref


def run_extras(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: Union,
    extras: Extras,
    *,
    suite: Any = "standard",
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 250,
    device: str | torch.device | None = None,
    progress: bool = True,
    show: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
    """The requested measurements, by name (None where not requested); ``show(name, value)``
    is called as each one finishes (the CLI prints it)."""
    grid, reference = extras.check(threats, seed)
    out: dict[str, Any] = dict.fromkeys(NAMES)

    def done(name: str, value: Any) -> None:
        out[name] = value
        if show is not None:
            show(name, value)

    if extras.scales is not None:
        done("curves", union_curve(
            model, x, y, threats, extras.scales, extras.curve_attack, seed=seed,
            batch_size=batch_size,
        ))  # fmt: skip
    if extras.cifar10c:
        done("corruptions", corruption_accuracy(model, extras.cifar10c, n=n, batch_size=batch_size))
    if grid is not None:
        done("multirobust", multirobust.multirobust_evaluation(
            model, x, y, grid, reference, suite=suite, batch_size=batch_size, seed=seed,
            device=device, progress=progress,
        ))  # fmt: skip
    return out
