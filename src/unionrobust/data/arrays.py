"""In-memory image datasets and the helpers every dataset shares (tensors, subsets, loaders)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from unionrobust.errors import UnionRobustError


class ImageArrayDataset(Dataset):
    """Images held as one ``(N, C, H, W)`` tensor; items are ``(x float32 in [0, 1], int y)``.

    ``images`` may be ``uint8`` (0..255, scaled on access, 4x less memory) or floating point
    already in [0, 1]. Numpy arrays are accepted (memory-mapped ones are read lazily).
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int],
        classes: Sequence[str] | None = None,
        name: str = "arrays",
    ) -> None:
        self.images = images
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if images.ndim != 4:
            raise UnionRobustError(
                f"{name}: images must be (N, C, H, W), got {tuple(images.shape)}"
            )
        if images.shape[0] != self.labels.shape[0] or self.labels.dim() != 1:
            raise UnionRobustError(
                f"{name}: {images.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )
        self.name = name
        n_classes = int(self.labels.max()) + 1 if self.labels.numel() else 0
        self.classes = list(classes) if classes is not None else [str(i) for i in range(n_classes)]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _to_float(self, raw: torch.Tensor | np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.ascontiguousarray(raw)) if isinstance(raw, np.ndarray) else raw
        if t.dtype == torch.uint8:
            return t.to(torch.float32).div_(255.0)
        return t.to(torch.float32)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._to_float(self.images[index]), int(self.labels[index])

    def batch(
        self, indices: torch.Tensor | np.ndarray | slice
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Many items at once (vectorised): ``(x (n, C, H, W), y (n,))``."""
        if isinstance(indices, torch.Tensor):
            indices = indices.numpy()
        raw = self.images[indices]
        return self._to_float(raw), self.labels[indices].clone()


def as_tensors(dataset: Dataset, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (default all) items of ``dataset`` stacked: ``(x float32, y int64)``."""
    total = len(dataset)  # type: ignore[arg-type]
    if n is not None and (not isinstance(n, int) or n < 0):
        raise UnionRobustError(f"n must be a non-negative integer, got {n!r}")
    count = total if n is None else min(n, total)
    base, idx = dataset, np.arange(count)
    while isinstance(base, Subset):  # resolve nested subsets to indices into the base dataset
        idx = np.asarray(base.indices)[idx]
        base = base.dataset
    if isinstance(base, ImageArrayDataset):
        return base.batch(idx)
    xs, ys = [], []
    for i in range(count):
        x, y = dataset[i]
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(int(y))
    if not xs:
        raise UnionRobustError("as_tensors: the dataset is empty")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """``n`` items drawn without replacement with ``seed`` (kept in dataset order); n=None: all."""
    total = len(dataset)  # type: ignore[arg-type]
    if n is None or n == total:
        return dataset
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise UnionRobustError(f"subset size must be a non-negative integer, got {n!r}")
    if n > total:
        raise UnionRobustError(f"cannot take {n} examples from a dataset of {total}")
    g = torch.Generator().manual_seed(int(seed))
    picked = torch.randperm(total, generator=g)[:n].sort().values
    return Subset(dataset, picked.tolist())


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` (pinned memory when CUDA is present)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UnionRobustError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise UnionRobustError(f"num_workers must be >= 0, got {num_workers!r}")
    g = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=num_workers,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
    )
