"""The held-out points of a training run: which they are, and their quick robust evaluation
after each epoch (the papers early-stop on it: the best checkpoint by union accuracy)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import evaluate
from unionrobust.evaluation.mode import EvaluationMode
from unionrobust.threats import Union
from unionrobust.training.build import load_split
from unionrobust.training.config import Config, EvalConfig
from unionrobust.training.data import Source, generator
from unionrobust.training.distributed import DistContext, merge_metrics, shard


def holdout_split(cfg: Config, train: Source, eval_data: Any) -> tuple[Source, Source | None]:
    """``(train, eval)``: ``eval.n`` points from ``eval_data``, the test split or held out of
    ``train`` (a seeded random subset, never trained on)."""
    n_eval = max(0, int(cfg.eval.n))
    if eval_data is not None:
        evaluation: Source | None = Source(eval_data)
    elif n_eval and cfg.eval.source == "test":
        evaluation = Source(load_split(cfg.data, "test"))
    else:
        evaluation = None
    if evaluation is None and n_eval:
        if n_eval >= len(train):
            raise UnionRobustError(f"eval.n = {n_eval} leaves no training examples")
        perm = torch.randperm(len(train), generator=generator("holdout", cfg.eval.seed))
        evaluation = train.subset(perm[:n_eval].sort().values)
        train = train.subset(perm[n_eval:].sort().values)
    if evaluation is not None and n_eval:
        evaluation = evaluation.subset(torch.arange(min(n_eval, len(evaluation))))
    return train, evaluation


def holdout_union_only(e: EvalConfig) -> bool:
    """Whether the held-out evaluation runs in union-only mode: when it selects the checkpoint
    by union accuracy with a suite other than ``quick`` (whose one PGD per threat gains little).
    Union-only gives the same union verdicts with fewer attacks; the logged per-threat and
    average figures are then upper bounds (``evaluate(..., union_only=True)``)."""
    return e.select == "union" and str(e.suite).strip() != "quick"


def holdout_mode(e: EvalConfig) -> EvaluationMode:
    """The held-out evaluation's mode (:func:`holdout_union_only`), which says which of its
    figures are upper bounds (:meth:`EvaluationMode.upper_bounds`)."""
    return EvaluationMode.resolve(None, union_only=holdout_union_only(e))


def holdout_metrics(
    model: nn.Module, src: Source | None, threats: Union, e: EvalConfig, ctx: DistContext
) -> dict[str, float]:
    """Clean, per-threat (``threat:SPEC``), union and average accuracy on ``src`` with the
    ``eval.suite`` (union-only when :func:`holdout_union_only`); sharded by example under DDP
    and merged exactly."""
    if src is None or len(src) == 0:
        return {}
    local = shard(torch.arange(len(src)), ctx)
    x, y = src.batch(local)
    report = evaluate(
        model, x, y, threats=threats, suite=e.suite, batch_size=e.batch_size,
        seed=e.seed, device=ctx.device, progress=False, example_ids=local,
        union_only=holdout_union_only(e),
    )  # fmt: skip
    d = report.to_dict()
    flat = {
        "clean": float(d["clean_accuracy"]),
        "union": float(d["union_accuracy"]),
        "average": float(d["average_accuracy"]),
    }
    for spec, v in d["per_threat"].items():
        flat[f"threat:{spec}"] = float(v["accuracy"] if isinstance(v, dict) else v)
    return merge_metrics(flat, int(local.numel()), ctx)
