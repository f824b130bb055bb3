"""Training data plumbing: index-addressable sources, deterministic order, seeded augmentation.

Everything random here is a pure function of ``(seed, purpose, epoch, step)`` so that a resumed
run (even one killed mid-epoch) and a sharded DDP run see exactly the batches of one
uninterrupted single-process run.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unionrobust.data.arrays import as_tensors
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation.checks import known_classes


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (stable across runs, platforms and processes)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def epoch_order(seed: int, epoch: int, n: int, tag: str = "order") -> torch.Tensor:
    """The permutation of ``n`` training examples for ``epoch`` (a function of seed and epoch)."""
    return torch.randperm(n, generator=generator(seed, tag, epoch))


class Source:
    """``n`` examples addressable by index: ``batch(idx) -> (x float in [0,1], y)``.

    Wraps tensors or a dataset with a vectorised ``batch`` method (kept as uint8 if it is), with
    an optional index map selecting a subset.
    """

    def __init__(self, data: Any, index: torch.Tensor | None = None) -> None:
        if isinstance(data, tuple) and len(data) == 2:
            x, y = data
            self._x = torch.as_tensor(x)
            self._y = None if y is None else torch.as_tensor(y).long()
            self._ds = None
            total = self._x.shape[0]
        elif hasattr(data, "batch") and hasattr(data, "__len__"):
            self._ds, self._x, self._y = data, None, None
            total = len(data)
        else:
            self._x, self._y = as_tensors(data)
            self._ds = None
            total = self._x.shape[0]
        self.index = torch.arange(total) if index is None else index.long()
        #: the number of classes the data names (a dataset's ``classes``), else None
        self.num_classes = known_classes(data)

    def __len__(self) -> int:
        return int(self.index.numel())

    @property
    def labelled(self) -> bool:
        return self._ds is not None or self._y is not None

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = self.index[idx]
        if self._ds is not None:
            x, y = self._ds.batch(rows)
            return x.float(), y.long()
        x = self._x[rows]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x, (None if self._y is None else self._y[rows])

    def subset(self, idx: torch.Tensor) -> Source:
        out = Source.__new__(Source)
        out._x, out._y, out._ds = self._x, self._y, self._ds
        out.num_classes = self.num_classes
        out.index = self.index[idx]
        return out

    def with_labels(self, y: torch.Tensor) -> Source:
        """A copy whose labels are ``y`` (pseudo-labels for an unlabelled set)."""
        x, _ = self.batch(torch.arange(len(self)))
        return Source((x, y))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch(torch.arange(len(self)))
        if y is None:
            raise UnionRobustError("this data set has no labels")
        return x, y

    def sample_shape(self) -> tuple[int, ...]:
        x, _ = self.batch(torch.arange(min(1, len(self))))
        return tuple(x.shape[1:])


def load_extra(path: str) -> Source:
    """An extra training set from ``.npz`` (arrays ``x`` [and ``y``]) or ``.pt`` (weights_only)."""
    p = Path(path)
    if not p.is_file():
        raise UnionRobustError(f"extra data file {path!r} not found")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as f:
                x = torch.from_numpy(np.array(f["x"]))
                y = torch.from_numpy(np.array(f["y"])) if "y" in f.files else None
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict) or "x" not in obj:
                raise ValueError("expected a dict with 'x' (and optionally 'y')")
            x, y = torch.as_tensor(obj["x"]), obj.get("y")
            y = None if y is None else torch.as_tensor(y)
    except pickle.UnpicklingError:  # weights_only refused it: it would run code when loaded
        raise UnionRobustError(
            f"cannot read extra data {path!r}: not a plain tensor file (pickled objects are "
            "never loaded); save a dict of tensors with torch.save or an .npz with x and y"
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnionRobustError(f"cannot read extra data {path!r}: {first}") from None
    if x.dim() != 4:
        raise UnionRobustError(f"extra data {path!r}: x must be (N, C, H, W), got {tuple(x.shape)}")
    if y is not None and y.shape != (x.shape[0],):
        raise UnionRobustError(f"extra data {path!r}: y must have shape ({x.shape[0]},)")
    return Source((x, y))


def augment_params(
    b: int, gen: torch.Generator, padding: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example crop offsets and flip flags for a whole (global) batch of ``b`` examples.

    Drawn for the global batch so a DDP shard gets the augmentation of a single-process run.
    """
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
    flips = torch.rand(b, generator=gen) < 0.5
    return dy, dx, flips


def augment(
    x: torch.Tensor,
    params: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    padding: int = 4,
    crop: bool = True,
    flip: bool = True,
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip (vectorised, no Python loop)."""
    dy, dx, flips = params
    b, _, h, w = x.shape
    out = x
    if crop and padding > 0:
        xp = F.pad(x, (padding, padding, padding, padding))
        rows = (dy.to(x.device)[:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (dx.to(x.device)[:, None] + torch.arange(w, device=x.device))[:, None, :]
        bi = torch.arange(b, device=x.device)[:, None, None]
        out = xp.permute(0, 2, 3, 1)[bi, rows, cols].permute(0, 3, 1, 2).contiguous()
    if flip:
        out = torch.where(flips.to(x.device).view(b, 1, 1, 1), out.flip(-1), out)
    return out
