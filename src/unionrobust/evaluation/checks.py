"""Checks on what a model returns, shared by every evaluation pass (engine, attack report).

A model whose forward raises, returns something other than a (B, classes) tensor, or returns
non-finite logits is broken, not robust: ``argmax`` of a NaN row is 0, so without these checks a
NaN model would be "correct" and "robust" on every digit of class 0. Policy: a batch in which
every row of the clean logits is non-finite is an error; an isolated non-finite row counts as
not correct (and is counted); a non-finite row at an adversarial point counts as broken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from unionrobust.attacks.base import (
    check_some_finite,
    frozen_checked,
    misclassified,
    model_output,
)
from unionrobust.errors import UnionRobustError, check_labels
from unionrobust.evaluation.inputs import chunks
from unionrobust.threats import DEFAULT_TOL, ThreatModel, Union


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Float logits of the frozen ``model`` at ``x`` (no graph), shape-checked; a failing
    forward pass or a model that changes its input in place is a one-line
    :class:`UnionRobustError` (:func:`unionrobust.attacks.base.model_output`)."""
    with frozen_checked([model], x):
        return model_output(model, x)


def known_classes(data: object) -> int | None:
    """The number of classes ``data`` names (a dataset's ``classes`` list, as torchvision's and
    ours have), or None when it does not say."""
    classes = getattr(data, "classes", None)
    return len(classes) if isinstance(classes, list | tuple) and len(classes) >= 2 else None


def check_model_classes(
    model: nn.Module, x: torch.Tensor, num_classes: int | None, source: str = "the data"
) -> None:
    """Raise unless ``model`` returns ``num_classes`` logits per example (one forward on the
    first example of ``x``; nothing to check when ``num_classes`` is None). Without it a
    7-output model on 10-class data passes as long as the labels seen so far are below 7."""
    if num_classes is None or x.shape[0] == 0:
        return
    outputs = int(model_logits(model, x[:1]).shape[1])
    if outputs != num_classes:
        raise UnionRobustError(
            f"the model returns {outputs} logits per example but {source} has {num_classes} "
            "classes; use a model built for this dataset (num_classes)"
        )


def clean_verdicts(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct (B,), non-finite (B,)) of the clean pass on one batch, on ``x``'s device.

    Raises when every row is non-finite (a broken model); a non-finite row is never correct.
    """
    logits = model_logits(model, x)
    check_labels(y, x.shape[0], int(logits.shape[1]))
    finite = check_some_finite(logits)
    return (logits.argmax(dim=1) == y) & finite, ~finite


def predicts_wrong(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bool (B,): ``model`` misclassifies ``x`` or returns non-finite logits for it."""
    return misclassified(model_logits(model, x), y)


def recheck(
    model: nn.Module,
    threat: ThreatModel | Union | None,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    tol: float = DEFAULT_TOL,
    inside: torch.Tensor | None = None,
    repeats: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independently verify an attack's output: (broken (B,), norm (B,) float64).

    Broken iff ``x_adv`` is finite, ``x_adv − x`` lies in the ball of ``threat`` and
    ``x_adv`` in [0, 1] (both up to the threat's float tolerance), and the model misclassifies
    ``x_adv`` clamped to [0, 1] (so the point judged is a valid image) or returns non-finite
    logits there (a broken output is never robust). For a :class:`Union` "inside" means inside
    some member's ball, and the norm is NaN (no single norm applies). ``inside``: the
    membership mask, computed by the caller where it needs the attack's record (a
    transformation's parameters, an affine decomposition); ``threat`` is then unused and the
    norm NaN.

    ``repeats`` = K: the prediction is taken K times, and the point is broken if the model
    misclassifies it in any of them -- robust only if correct in K of K. For a randomised
    model one evaluation overstates robustness (AutoAttack's pull request 105); for a
    deterministic one K = 1 says the same.
    """
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        shape = getattr(x_adv, "shape", None)
        raise UnionRobustError(f"attack returned x_adv of shape {shape}, expected {tuple(x.shape)}")
    xa = x_adv.detach().to(device=x.device, dtype=x.dtype)
    finite_el = torch.isfinite(xa)
    finite = finite_el.reshape(xa.shape[0], -1).all(dim=1)
    xa = torch.where(finite_el, xa, x)
    given = inside is not None
    member = inside.to(finite.device).bool() if given else threat.contains(xa - x, x, tol)
    xc = xa.clamp(0.0, 1.0)
    wrong = predicts_wrong(model, xc, y)
    for _ in range(repeats - 1):
        wrong |= predicts_wrong(model, xc, y)
    broken = member & finite & wrong
    if given or isinstance(threat, Union):
        return broken, torch.full(broken.shape, float("nan"), dtype=torch.float64)
    return broken, threat.norm(xc - x).double()


def clean_batches(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device,
    bar: Any = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]]:
    """``(idx, xb, yb, correct, nonfinite)`` over consecutive batches of ``x`` (host), each
    moved to ``device`` and judged by :func:`clean_verdicts` (a batch of only non-finite logits
    is an error); ``idx`` are the examples' positions, which key the attacks' randomness.
    ``bar`` (a progress bar or None) advances after each batch is used."""
    for idx in chunks(torch.arange(x.shape[0]), batch_size):
        xb = x[idx].to(device, non_blocking=True)
        yb = y[idx].to(device, non_blocking=True)
        correct, bad = clean_verdicts(model, xb, yb)
        yield idx, xb, yb, correct, int(bad.sum())
        if bar is not None:
            bar.update(idx.numel())


def checked_attack(
    model: nn.Module,
    attack: Callable[..., Any],
    threat: ThreatModel | Union | None,
    x: torch.Tensor,
    y: torch.Tensor,
    example_ids: torch.Tensor,
    inside: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    repeats: int = 1,
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Run ``attack`` on one batch and re-check its output with :func:`recheck`: (result,
    broken (B,), norms (B,)). The attack's own ``success`` never counts; a claimed success that
    fails the re-check is ``result.success & ~broken``. ``inside(result, x)``: the membership
    test for attacks whose output is judged by its record (spatial parameters, affine parts);
    ``repeats``: K of K evaluations (:func:`recheck`)."""
    result = attack(model, x, y, example_ids=example_ids)
    mask = None if inside is None else inside(result, x)
    broken, norms = recheck(model, threat, x, y, result.x_adv, inside=mask, repeats=repeats)
    return result, broken, norms


def rejected(result: Any, broken: torch.Tensor) -> torch.Tensor:
    """Bool (B,): the attack claimed a success the re-check refused."""
    return result.success.to(broken.device).bool() & ~broken
