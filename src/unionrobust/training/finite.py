"""The non-finite policy of training: a NaN/infinite loss or gradient stops the run or drops the
batch, and a model with non-finite weights is never evaluated, saved or selected as best.

``training.nonfinite: error`` (default) raises a one-line error naming the epoch, step and
learning rate; ``skip`` drops the batch without an optimiser step, as AMP's gradient scaler does
for overflowing gradients, until more than ``training.max_skipped`` batches were dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.errors import UnionRobustError
from unionrobust.training.config import TrainingConfig
from unionrobust.training.distributed import DistContext, all_sum


def _all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor: every element of every tensor is finite (no host sync)."""
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def step_is_finite(
    total: torch.Tensor, model: nn.Module, ctx: DistContext, check_grads: bool
) -> bool:
    """The summed batch loss (and, unless the GradScaler handles them, the gradients) is finite.

    Called after ``backward`` so that under DDP every rank sees the same averaged gradients, and
    the verdict is summed over ranks: all ranks skip or stop together.
    """
    ok = torch.isfinite(total.detach()).cpu()
    if check_grads:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        ok = ok & _all_finite(grads).cpu()
    if ctx.distributed:
        return bool(all_sum((~ok).double().reshape(1), ctx)[0] == 0)
    return bool(ok)


def on_nonfinite(t: TrainingConfig, skipped: int, epoch: int, step: int, lr: float) -> int:
    """Apply the policy to a non-finite batch: raise, or return the new count of skipped ones."""
    if t.nonfinite == "error" and lr == 0:  # nothing has moved the weights: not a divergence
        raise UnionRobustError(
            f"the loss or its gradient is not finite in epoch {epoch} at step {step} although "
            "the learning rate is 0 (the weights have not moved): check the strategy's options "
            "(e.g. beta), the data and the model's output"
        )
    if t.nonfinite == "error":
        raise UnionRobustError(
            f"training diverged in epoch {epoch} at step {step}: the loss or its gradient is "
            f"not finite (lr {lr:g}); lower optimizer.lr, or set training.nonfinite=skip to "
            "drop such batches"
        )
    skipped += 1
    if skipped > t.max_skipped:
        raise UnionRobustError(
            f"training diverged: {skipped} batches with a non-finite loss skipped (more than "
            f"training.max_skipped = {t.max_skipped}); lower optimizer.lr"
        )
    return skipped


def finite_weights(model: nn.Module) -> bool:
    """Every floating-point weight and buffer of ``model`` is finite (one host sync)."""
    values = [v for v in model.state_dict().values() if v.is_floating_point()]
    return bool(_all_finite(values))


def check_finite_weights(model: nn.Module, epoch: int) -> None:
    """Raise if a floating-point weight or buffer of ``model`` is not finite."""
    if not finite_weights(model):
        raise UnionRobustError(
            f"training diverged in epoch {epoch}: the weights are not finite (the last finite "
            "checkpoint is kept); lower optimizer.lr"
        )


def check_initial_weights(model: nn.Module) -> None:
    """Raise if ``model`` starts with non-finite weights (a NaN in model.weights or in the model
    passed in): training could only report a divergence that is not one."""
    if not finite_weights(model):
        raise UnionRobustError(
            "the model's initial weights are not finite (NaN or inf): check model.weights (or "
            "the model passed in); nothing was trained"
        )
