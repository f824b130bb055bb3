"""What a training config names, built: the dataset split, model (with initial weights),
strategy and optimiser. Shared by the trainer and ``compare``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unionrobust.data import get_dataset
from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.models import NormalizedModel, build_model, load_weights
from unionrobust.threats import parse
from unionrobust.training import checkpoint as ckpt
from unionrobust.training.checks import OPTIMIZERS
from unionrobust.training.config import Config
from unionrobust.training.strategies import make_strategy, strategy_names, strategy_options


def load_split(data_cfg: Any, split: str) -> Any:
    """The ``split`` of the configured dataset (tensors or a dataset object)."""
    return get_dataset(data_cfg.dataset, split=split, root=data_cfg.root)


def build_optimizer(cfg: Config, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    raise unknown_name("optimizer", o.name, OPTIMIZERS)


def build_strategy(cfg: Config):
    """``make_strategy(name, threats, **options)`` with option errors made one-line."""
    threats = parse(cfg.threats)
    options = cfg.strategy_options
    name = cfg.strategy_name
    if name in strategy_names() and "seed" in strategy_options(name):
        options.setdefault("seed", cfg.training.seed)
    try:
        return make_strategy(name, threats, **options)
    except TypeError as exc:
        raise UnionRobustError(
            f"strategy {cfg.strategy_name!r}: {str(exc).splitlines()[0]}"
        ) from None


def resolve_weights_path(path: str) -> str:
    """A weights file from a file path, a run folder or a checkpoint folder (best, then last)."""
    p = Path(path)
    if p.is_file():
        return str(p)
    if p.is_dir():
        for cand in ("best.safetensors", "last.safetensors", "model.safetensors"):
            if (p / cand).is_file():
                return str(p / cand)
        for folder in (p, p / "checkpoints"):
            for tag in ("best", "last"):
                if ckpt.has_checkpoint(folder, tag):
                    return str(folder / ckpt.read_pointer(folder, tag)["weights"])
    raise UnionRobustError(f"weights {path!r} not found (a file, run folder or checkpoint folder)")


def build_model_from(cfg: Config) -> nn.Module:
    """The configured architecture, seeded by ``training.seed``, with ``model.weights`` loaded."""
    torch.manual_seed(cfg.training.seed)
    model = build_model(cfg.model.name, cfg.model.num_classes, **cfg.model.options)
    if cfg.model.weights:
        target = model.model if isinstance(model, NormalizedModel) else model
        load_weights(target, resolve_weights_path(cfg.model.weights), strict=True)
    return model
