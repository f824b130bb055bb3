"""A dataset split as tensors: what ``--data``, ``--root``, ``--split`` and ``--n`` resolve to."""

from __future__ import annotations

import os

import torch

from unionrobust.data.arrays import as_tensors
from unionrobust.data.datasets import get_dataset
from unionrobust.errors import UnionRobustError


def load_data(
    spec: str = "mnist-embedded",
    split: str = "test",
    root: str | os.PathLike | None = None,
    n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(x, y, num_classes)``: the first ``n`` examples (default all) of ``split`` of dataset
    ``spec`` (see :func:`get_dataset`). Asking for more examples than the split holds is an
    error, not a silent clamp."""
    dataset = get_dataset(spec, split=split, root=root)
    total = len(dataset)
    if total == 0:
        raise UnionRobustError(f"dataset {spec!r} ({split}) is empty")
    if n is not None and n > total:
        raise UnionRobustError(
            f"n={n} but dataset {spec!r} ({split}) holds only {total} examples; "
            f"use --n {total} or less (or leave it out for all)"
        )
    x, y = as_tensors(dataset, n)
    classes = getattr(dataset, "classes", None)
    num_classes = len(classes) if classes else int(y.max()) + 1
    return x, y, max(num_classes, 2)
