"""The examples of one training run: held-out split, extra set, batch geometry, order, sharding.

Global batch ``i`` of epoch ``e`` is slice ``i`` of the epoch's permutation (a function of seed
and epoch) plus ``extra_fraction`` of the batch from the extra set (Croce & Hein App. A: one
half), shuffled by a fixed per-batch permutation (it mixes the two sets and decides which
examples get the adversarial loss), with seeded crop/flip augmentation drawn for the whole global
batch. Under DDP each rank keeps its contiguous slice, so every rank (and a resumed run) sees
exactly the batches of one uninterrupted single-process run.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from unionrobust.errors import UnionRobustError
from unionrobust.training.build import load_split
from unionrobust.training.config import Config
from unionrobust.training.data import (
    Source,
    augment,
    augment_params,
    epoch_order,
    generator,
    load_extra,
)
from unionrobust.training.distributed import DistContext, shard
from unionrobust.training.holdout import holdout_split


class TrainingData:
    """Training, held-out and extra examples of a run, and its batches (module docstring)."""

    def __init__(
        self, cfg: Config, train_data: Any = None, eval_data: Any = None, extra_data: Any = None
    ) -> None:
        self.cfg = cfg
        train = Source(train_data if train_data is not None else load_split(cfg.data, "train"))
        train, self.eval = holdout_split(cfg, train, eval_data)
        if cfg.data.train_n is not None:
            train = train.subset(torch.arange(min(cfg.data.train_n, len(train))))
        self.train = train
        self.extra: Source | None = None
        if extra_data is not None:
            self.extra = Source(extra_data)
        elif cfg.data.extra:
            self.extra = load_extra(cfg.data.extra)
        aug = cfg.data.augment
        if aug == "auto":
            aug = "crop-flip" if train.sample_shape()[0] == 3 else "none"
        self.augment = aug
        bsz = cfg.data.batch_size
        self.extra_bs = round(bsz * cfg.data.extra_fraction) if self.extra else 0
        self.main_bs = bsz - self.extra_bs
        if self.main_bs < 1:
            raise UnionRobustError("data.batch_size too small for data.extra_fraction")
        steps = math.ceil(len(train) / self.main_bs)
        if cfg.training.max_steps_per_epoch:
            steps = min(steps, cfg.training.max_steps_per_epoch)
        self.steps_per_epoch = steps
        self._order: tuple[int, torch.Tensor] | None = None

    # ------------------------------------------------------------------ unlabelled extra set

    @property
    def needs_labels(self) -> bool:
        return self.extra is not None and not self.extra.labelled

    def predict_extra(self, model: nn.Module, device: torch.device) -> torch.Tensor:
        """Labels of the extra set predicted by ``model`` (its mode is restored)."""
        ys = []
        was = model.training
        model.eval()
        with torch.no_grad():
            for chunk in torch.arange(len(self.extra)).split(500):
                x, _ = self.extra.batch(chunk)
                ys.append(model(x.to(device)).argmax(1).cpu())
        model.train(was)
        return torch.cat(ys)

    def label_extra(self, y: torch.Tensor) -> None:
        self.extra = self.extra.with_labels(y)

    # ------------------------------------------------------------------ batches

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of the training examples for ``epoch`` (cached for the epoch)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.cfg.training.seed, epoch, len(self.train)))
        return self._order[1]

    def _global_ids(self, epoch: int, i: int) -> torch.Tensor:
        """Global batch ``i``'s example ids (the extra set numbered after the training set)."""
        seed = self.cfg.training.seed
        parts = [self.order(epoch)[i * self.main_bs : (i + 1) * self.main_bs]]
        if self.extra_bs:
            n_extra = len(self.extra)
            eorder = epoch_order(seed, epoch, n_extra, "extra")
            pos = (torch.arange(self.extra_bs) + i * self.extra_bs) % n_extra
            parts.append(eorder[pos] + len(self.train))
        gidx = torch.cat(parts)
        # a fixed shuffle mixes standard/extra and picks the adversarial ones
        return gidx[torch.randperm(gidx.numel(), generator=generator(seed, "mix", epoch, i))]

    def _gather(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of global example ``ids``, in their order."""
        n_train = len(self.train)
        main = ids < n_train
        xs, ys = [], []
        if bool(main.any()):
            x, y = self.train.batch(ids[main])
            xs.append(x)
            ys.append(y)
        if bool((~main).any()):
            x, y = self.extra.batch(ids[~main] - n_train)
            xs.append(x)
            ys.append(y)
        order_back = torch.cat([torch.nonzero(main).flatten(), torch.nonzero(~main).flatten()])
        inv = torch.empty_like(order_back)
        inv[order_back] = torch.arange(order_back.numel())
        return torch.cat(xs)[inv], torch.cat(ys)[inv]

    def batch(
        self, epoch: int, i: int, ctx: DistContext
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """This rank's ``(x, y, example_ids)`` of global batch ``i`` and the global batch size.

        The ids (global example indices) key the strategies' per-example randomness.
        """
        gidx = self._global_ids(epoch, i)
        n_global = int(gidx.numel())
        local = shard(torch.arange(n_global), ctx)
        lidx = gidx[local]
        x, y = self._gather(lidx)
        if self.augment != "none":
            pad = self.cfg.data.crop_padding
            gen = generator(self.cfg.training.seed, "augment", epoch, i)
            params = augment_params(n_global, gen, pad)
            lp = tuple(p[local] for p in params)
            crop, flip = "crop" in self.augment, "flip" in self.augment
            x = augment(x, lp, pad, crop=crop, flip=flip)
        return x, y, lidx, n_global
