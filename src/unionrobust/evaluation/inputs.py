"""What an evaluation runs on: the examples as tensors (from tensors, a dataset or a
``DataLoader``), the device, and batching with an optional progress bar."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from unionrobust.data.arrays import as_tensors as dataset_as_tensors
from unionrobust.errors import UnionRobustError, check_images, check_labels


# --------------------------------------------------------------------------- helpers
def resolve_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    """``None``: the model's device; ``"auto"``: CUDA when available, else CPU."""
    model_dev = next(
        (t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu")
    )
    if device is None:
        return model_dev
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UnionRobustError(
            f"unknown device {device!r}; use cpu, cuda, cuda:N or auto"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnionRobustError(f"device {device!r} requested but CUDA is not available")
    return dev


def device_for(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """:func:`resolve_device`, refusing a device the model is not on."""
    dev = resolve_device(device, model)
    model_dev = resolve_device(None, model)
    if (model_dev.type, model_dev.index or 0) != (dev.type, dev.index or 0):
        raise UnionRobustError(
            f"the model is on {model_dev} but device={dev}; move it with model.to('{dev}')"
        )
    return dev


def _is_batch(item: Any) -> bool:
    return (
        isinstance(item, (tuple, list))
        and len(item) == 2
        and isinstance(item[1], torch.Tensor)
        and item[1].dim() == 1
    )


def _is_pair(item: Any) -> bool:
    """An (image, label) item of a map-style dataset (the label a scalar)."""
    return (
        isinstance(item, (tuple, list))
        and len(item) == 2
        and not (isinstance(item[1], torch.Tensor) and item[1].dim() > 0)
    )


def _from_batches(batches: Iterable, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate an iterable of ``(x (B, ...), y (B,))`` batches (a DataLoader), stopping
    once ``n`` examples are in."""
    xs, ys, total = [], [], 0
    for item in batches:
        if not _is_batch(item) or not isinstance(item[0], torch.Tensor):
            raise UnionRobustError(
                "an iterable of data must yield batches of (x (B, C, H, W), y (B,)) tensors, "
                f"got {type(item).__name__}"
                + (f" of length {len(item)}" if hasattr(item, "__len__") else "")
            )
        xb, yb = item
        if xb.dim() < 2 or xb.shape[0] != yb.shape[0] or (xs and xb.shape[1:] != xs[0].shape[1:]):
            raise UnionRobustError(
                f"a batch of x {tuple(xb.shape)} and y {tuple(yb.shape)} does not match the "
                "others; yield batches of (x (B, C, H, W), y (B,)) with one image size"
            )
        xs.append(xb.detach().cpu())
        ys.append(yb.detach().cpu())
        total += int(xb.shape[0])
        if n is not None and total >= int(n):
            break
    if not xs:
        raise UnionRobustError("no examples to evaluate: the data yielded no batch")
    return torch.cat(xs), torch.cat(ys)


def read_examples(
    data: Any, y: torch.Tensor | None = None, n: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from tensors, a map-style dataset of (image, label) pairs, or any iterable of
    ``(x, y)`` batches (a ``DataLoader``); the first ``n``, which must exist; checked (images
    in [0, 1], integer labels). What every evaluation function accepts as its data; to stack a
    dataset use :func:`unionrobust.data.as_tensors`."""
    if n is not None and int(n) <= 0:
        raise UnionRobustError(f"n must be a positive number of examples, got {n}")
    if isinstance(data, torch.Tensor):
        if y is None:
            raise UnionRobustError("labels y are required when x is a tensor")
        x = data
    elif (
        isinstance(data, tuple)
        and len(data) == 2
        and isinstance(data[0], torch.Tensor)
        and data[0].dim() >= 2
        and y is None
    ):
        x, y = data
    elif isinstance(data, Iterable) and (
        not hasattr(data, "__getitem__") or len(data) == 0 or not _is_pair(data[0])
    ):
        if y is not None:
            raise UnionRobustError("pass labels inside the batches, not as y")
        x, y = _from_batches(data, n)
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        if y is not None:
            raise UnionRobustError("pass labels inside the dataset, not as y")
        x, y = dataset_as_tensors(data, n)
    else:
        raise UnionRobustError(
            f"data must be a tensor (with y), a dataset of (image, label) or an iterable of "
            f"(x, y) batches such as a DataLoader, got {type(data).__name__}"
        )
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    if n is not None:
        if x.shape[0] < int(n):
            raise UnionRobustError(
                f"n={int(n)} but only {x.shape[0]} examples are available; ask for at most "
                f"{x.shape[0]} (or all, with n=None)"
            )
        x, y = x[: int(n)], y[: int(n)]
    check_images(x)
    check_labels(y, x.shape[0])
    if x.shape[0] == 0:
        raise UnionRobustError("no examples to evaluate")
    return x, y.to(torch.int64)


def as_tensors(
    data: Any, y: torch.Tensor | None = None, n: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deprecated name of :func:`read_examples` (``unionrobust.data.as_tensors(dataset, n)``
    is the public one, with another signature)."""
    warnings.warn(
        "unionrobust.evaluation.engine.as_tensors / evaluation.inputs.as_tensors are deprecated: "
        "use unionrobust.evaluation.inputs.read_examples (or unionrobust.data.as_tensors to "
        "stack a dataset)",
        DeprecationWarning,
        stacklevel=2,
    )
    return read_examples(data, y, n)


def chunks(index: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, index.numel(), size):
        yield index[start : start + size]


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool) -> Iterator[tqdm | None]:
    """A tqdm bar on stderr over ``total`` examples (``None`` when disabled or empty)."""
    if not enabled or total == 0:
        yield None
        return
    bar = tqdm(total=total, desc=desc, unit="ex", leave=False, file=sys.stderr, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
