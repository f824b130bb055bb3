"""Error types and input checks shared by every layer.

Every user-facing failure is a :class:`UnionRobustError` (a ``ValueError``) whose message is one
line naming the problem, so the CLI can print it without a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class UnionRobustError(ValueError):
    """A problem with the caller's input: the message is one line that names it."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UnionRobustError:
    """Error for an unknown registry name that lists the valid ones."""
    choices = ", ".join(sorted(valid))
    return UnionRobustError(f"unknown {kind} {name!r}; valid: {choices}")


def check_images(x: torch.Tensor, name: str = "x") -> None:
    """Raise if ``x`` is not a finite floating batch with values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise UnionRobustError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise UnionRobustError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 2:
        raise UnionRobustError(
            f"{name} must be a batch (first dim = examples), got shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        return
    finite = torch.isfinite(x).all()
    lo, hi = x.min(), x.max()
    if not bool(finite):
        raise UnionRobustError(f"{name} contains NaN or infinite values")
    if bool(lo < 0) or bool(hi > 1):
        raise UnionRobustError(
            f"{name} must lie in [0, 1] (normalisation belongs inside the model); "
            f"got min {float(lo):.4g}, max {float(hi):.4g}"
        )


def check_example_ids(example_ids: object, batch: int) -> None:
    """Raise unless ``example_ids`` is None or an integer tensor of shape (batch,): the ids that
    key an example's random draws (:mod:`unionrobust.rng`)."""
    if example_ids is not None and (
        not isinstance(example_ids, torch.Tensor)
        or example_ids.dim() != 1
        or example_ids.shape[0] != batch
        or example_ids.is_floating_point()
    ):
        shape = getattr(example_ids, "shape", type(example_ids).__name__)
        raise UnionRobustError(
            f"example_ids must be an integer tensor of shape ({batch},), got {shape}"
        )


def check_labels(y: torch.Tensor, batch: int, num_classes: int | None = None) -> None:
    """Raise if ``y`` is not a vector of ``batch`` integer labels in ``[0, num_classes)``."""
    if not isinstance(y, torch.Tensor):
        raise UnionRobustError(f"labels must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise UnionRobustError(f"labels must be integers, got {y.dtype}")
    if y.dim() != 1 or y.shape[0] != batch:
        raise UnionRobustError(f"labels must have shape ({batch},), got {tuple(y.shape)}")
    if num_classes is not None and y.numel() > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise UnionRobustError(
                f"labels must lie in [0, {num_classes - 1}] for a model with {num_classes} "
                f"outputs; got range [{lo}, {hi}]"
            )


def check_logits(logits: torch.Tensor, batch: int) -> int:
    """Raise unless ``logits`` has shape (batch, classes) with classes >= 2; return classes."""
    if not isinstance(logits, torch.Tensor):
        raise UnionRobustError(
            f"the model must return a tensor of logits, got {type(logits).__name__}"
        )
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise UnionRobustError(
            f"the model must return logits of shape ({batch}, classes), got {tuple(logits.shape)}"
        )
    if logits.shape[1] < 2:
        raise UnionRobustError(
            f"the model must return >= 2 logits per example, got {logits.shape[1]}"
        )
    return int(logits.shape[1])


# -- argument validators (the one set: every option of every layer is checked here) -----------


def _as_float(name: str, value: object, what: str) -> float:
    """``value`` as a float; bools, strings that are not numbers and other types raise."""
    if isinstance(value, bool):
        raise UnionRobustError(f"{name} must be {what}, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise UnionRobustError(f"{name} must be {what}, got {value!r}") from None


def check_int(name: str, value: object, low: int | None = None) -> int:
    """``value`` as an int >= ``low``: whole numbers (3 or 3.0) pass; bool, NaN, ±inf,
    fractions, strings and other types raise a one-line :class:`UnionRobustError`."""
    what = "an integer" if low is None else f"an integer >= {low}"
    if isinstance(value, str):
        raise UnionRobustError(f"{name} must be {what}, got {value!r}")
    v = _as_float(name, value, what)
    if not math.isfinite(v) or v != math.floor(v):
        raise UnionRobustError(f"{name} must be {what}, got {value!r}")
    out = int(value) if isinstance(value, int) else int(v)  # ints beyond 2**53 stay exact
    if low is not None and out < low:
        raise UnionRobustError(f"{name} must be {what}, got {value!r}")
    return out


def check_number(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    high_open: bool = False,
) -> float:
    """``value`` as a float in [``low``, ``high``] (``[low, high)`` with ``high_open``; NaN never
    passes; ±inf only if a bound is infinite and included); bool and non-numbers raise."""
    v = _as_float(name, value, "a number")
    if math.isnan(v):
        raise UnionRobustError(f"{name} must be a number, got {value!r}")
    if not (low <= v < high if high_open else low <= v <= high):
        right = ")" if high_open else "]"
        raise UnionRobustError(f"{name} must lie in [{low:g}, {high:g}{right}, got {value!r}")
    return v


def check_finite(name: str, value: object, low: float = -math.inf) -> float:
    """``value`` as a finite float >= ``low``."""
    v = _as_float(name, value, "a number")
    if not (math.isfinite(v) and v >= low):
        raise UnionRobustError(f"{name} must be a finite number >= {low:g}, got {value!r}")
    return v


def check_positive(name: str, value: object) -> float:
    """``value`` as a finite float > 0."""
    v = _as_float(name, value, "a number")
    if not (v > 0 and math.isfinite(v)):
        raise UnionRobustError(f"{name} must be a positive finite number, got {value!r}")
    return v


def check_fraction(name: str, value: object, one: bool = True) -> float:
    """``value`` as a float in (0, 1] (in (0, 1) if not ``one``): a rate, share or weight."""
    v = _as_float(name, value, "a number")
    if not (0.0 < v < 1.0 or (one and v == 1.0)):
        raise UnionRobustError(f"{name} must lie in (0, 1{']' if one else ')'}, got {value!r}")
    return v


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; otherwise an error listing them."""
    valid = tuple(choices)
    if not isinstance(value, str) or value not in valid:
        raise unknown_name(name, value, valid)  # type: ignore[arg-type]
    return value
