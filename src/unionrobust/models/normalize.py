"""Input normalisation as a model layer, so every model takes images in [0, 1].

Attacks, threat models and datasets all work in the [0, 1] pixel box; a model that expects
standardised inputs carries its own ``(x - mean) / std`` as its first layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unionrobust.errors import UnionRobustError


def _as_channel_tensor(values: float | Sequence[float] | torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise UnionRobustError(f"normalisation {what} must be finite numbers, got {values!r}")
    return t


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``mean``/``std`` are scalars or one value per channel.

    The statistics are non-persistent buffers: they move with ``.to(device)`` but are not part of
    the state dict, so a wrapped model saves exactly the same weights as the bare one.
    """

    def __init__(
        self,
        mean: float | Sequence[float] | torch.Tensor,
        std: float | Sequence[float] | torch.Tensor,
    ) -> None:
        super().__init__()
        m = _as_channel_tensor(mean, "mean")
        s = _as_channel_tensor(std, "std")
        if bool((s <= 0).any()):
            raise UnionRobustError(f"normalisation std must be > 0, got {std!r}")
        if m.numel() != s.numel() and 1 not in (m.numel(), s.numel()):
            raise UnionRobustError(
                f"normalisation mean and std must have the same length, got {m.numel()} and "
                f"{s.numel()}"
            )
        self.register_buffer("mean", m.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", s.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.mean.shape[1] if self.mean.shape[1] > 1 else self.std.shape[1]
        if x.dim() != 4 or (channels > 1 and x.shape[1] != channels):
            raise UnionRobustError(
                f"Normalize expects (batch, {channels}, H, W) images, got {tuple(x.shape)}"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class NormalizedModel(nn.Module):
    """``model(normalize(x))``; state-dict keys are the inner model's keys under ``model.``."""

    def __init__(self, model: nn.Module, normalize: Normalize) -> None:
        super().__init__()
        self.normalize = normalize
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def with_normalization(
    model: nn.Module,
    mean: float | Sequence[float] | torch.Tensor,
    std: float | Sequence[float] | torch.Tensor,
) -> NormalizedModel:
    """Wrap ``model`` so it takes [0, 1] images and standardises them itself."""
    if not isinstance(model, nn.Module):
        raise UnionRobustError(f"with_normalization needs an nn.Module, got {type(model).__name__}")
    return NormalizedModel(model, Normalize(mean, std))


#: commonly used dataset statistics (channel means / standard deviations of the training sets)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
