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

from unionrobust.attacks.base import frozen_model, misclassified
from unionrobust.errors import UnionRobustError, check_labels, check_logits
from unionrobust.evaluation.inputs import chunks
from unionrobust.threats import DEFAULT_TOL, ThreatModel, Union


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of the frozen ``model`` at ``x`` (no graph), shape-checked; any failure of the
    forward pass is a one-line :class:`UnionRobustError`."""
    try:
        with frozen_model(model), torch.no_grad():
            logits = model(x)
    except UnionRobustError:
        raise
    except Exception as err:  # the user's model: report its error in one line
        raise UnionRobustError(
            f"the model's forward failed on a batch of shape {tuple(x.shape)} "
            f"({_first_line(err)}); check its input channels/size and its code"
        ) from None
    check_logits(logits, x.shape[0])
    return logits


def finite_rows(logits: torch.Tensor) -> torch.Tensor:
    """Bool (B,): every logit of the row is finite."""
    return torch.isfinite(logits).all(dim=1)


def clean_verdicts(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct (B,), non-finite (B,)) of the clean pass on one batch, on ``x``'s device.

    Raises when every row is non-finite (a broken model); a non-finite row is never correct.
    """
    logits = model_logits(model, x)
    check_labels(y, x.shape[0], int(logits.shape[1]))
    finite = finite_rows(logits)
    if not bool(finite.any()):
        raise UnionRobustError(
            f"the model returned non-finite logits (NaN or inf) for all {x.shape[0]} examples of "
            "a batch; it is broken (check its weights, e.g. a diverged training), not robust"
        )
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
    broken = member & finite & predicts_wrong(model, xc, y)
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
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Run ``attack`` on one batch and re-check its output with :func:`recheck`: (result,
    broken (B,), norms (B,)). The attack's own ``success`` never counts; a claimed success that
    fails the re-check is ``result.success & ~broken``. ``inside(result, x)``: the membership
    test for attacks whose output is judged by its record (spatial parameters, affine parts)."""
    result = attack(model, x, y, example_ids=example_ids)
    mask = None if inside is None else inside(result, x)
    broken, norms = recheck(model, threat, x, y, result.x_adv, inside=mask)
    return result, broken, norms


def rejected(result: Any, broken: torch.Tensor) -> torch.Tensor:
    """Bool (B,): the attack claimed a success the re-check refused."""
    return result.success.to(broken.device).bool() & ~broken
