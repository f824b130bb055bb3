"""Small MNIST / CIFAR-10 architectures from the papers (and a tiny demo net).

All take images in [0, 1] of shape ``(B, in_channels, H, W)`` and return ``(B, num_classes)``
logits. Layer sizes that depend on the input resolution are computed from ``input_size``.
"""

from __future__ import annotations

import torch
from torch import nn


def _flat_dim(features: nn.Module, in_channels: int, size: tuple[int, int]) -> int:
    """Number of features ``features`` produces for one image (dry run, no parameters touched)."""
    with torch.no_grad():
        out = features(torch.zeros(1, in_channels, *size))
    return int(out[0].numel())


def _conv_pool_conv_pool(
    in_channels: int, c1: int, c2: int, kernel: int, padding: int = 0
) -> nn.Sequential:
    """conv(c1) -> ReLU -> maxpool 2 -> conv(c2) -> ReLU -> maxpool 2, the small nets' features."""
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, kernel, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, kernel, padding=padding),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class _FeaturesClassifier(nn.Module):
    """``classifier(flatten(features(x)))`` — the common shape of the small nets."""

    features: nn.Module
    classifier: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class SmallCNN(_FeaturesClassifier):
    """A tiny CNN for fast CPU demos and tests (not from the papers).

    conv(16, 3x3) -> ReLU -> maxpool 2 -> conv(32, 3x3) -> ReLU -> maxpool 2 -> FC(64) -> FC.
    About 100k parameters on MNIST; reaches > 95 % clean accuracy on the embedded MNIST subset
    within a few CPU epochs. ``kernel``, ``padding`` and ``hidden`` change the convolutions and
    the hidden layer (``kernel=5, padding=0, hidden=256``: the robust recipes' net, ≈ 146k
    parameters, conv 16@5×5, conv 32@5×5, FC 256). ``channels_last``: keep the convolution
    weights and activations in channels-last memory format — the same function (the flatten
    before the classifier reads the logical C×H×W order), but on the CPU of torch 2.13 max-pool
    is about 10× and the whole forward pass about 2× faster that way, forward + backward about
    1.3× (``benchmarks/RESULTS.md``, issue 17); the weights file does not record it.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        size: tuple[int, int],
        kernel: int = 3,
        padding: int = 1,
        hidden: int = 64,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.features = _conv_pool_conv_pool(in_channels, 16, 32, kernel, padding=padding)
        flat = _flat_dim(self.features, in_channels, size)
        self.classifier = nn.Sequential(
            nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.features.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class SmallCNN5(SmallCNN):
    """:class:`SmallCNN` with 5×5 convolutions without padding and FC 256 (≈ 147k parameters):
    conv 16@5×5 -> pool -> conv 32@5×5 -> pool -> FC 256 -> FC, channels-last by default. The
    net of the main job's robust recipes (``mnist-small-<strategy>`` configs, issue 17; not
    from the papers)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        size: tuple[int, int],
        kernel: int = 5,
        padding: int = 0,
        hidden: int = 256,
        channels_last: bool = True,
    ) -> None:
        super().__init__(num_classes, in_channels, size, kernel, padding, hidden, channels_last)


class MadryMNISTCNN(_FeaturesClassifier):
    """The MNIST CNN of Madry et al. (2018), used by Maini et al. (2020, MSD §5.1, App. E).

    conv(32, 5x5, same) -> ReLU -> maxpool 2 -> conv(64, 5x5, same) -> ReLU -> maxpool 2
    -> FC(1024) -> ReLU -> FC(num_classes). About 3.3M parameters on 28x28 inputs.
    """

    def __init__(self, num_classes: int, in_channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.features = _conv_pool_conv_pool(in_channels, 32, 64, 5, padding=2)
        flat = _flat_dim(self.features, in_channels, size)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 1024), nn.ReLU(), nn.Linear(1024, num_classes)
        )


class MLP(_FeaturesClassifier):
    """Model A of Wang et al. (2021, App. C.1, Table A1): FC(128)-FC(128)-FC(64)-FC(classes).

    ReLU after each hidden layer; the table's final softmax is left to the loss (logits out).
    """

    def __init__(self, num_classes: int, in_channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.features = nn.Identity()
        d = in_channels * size[0] * size[1]
        self.classifier = nn.Sequential(
            nn.Linear(d, 128),
            nn.ReLU(),
            nn.Linear(128, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )


class LeNet(_FeaturesClassifier):
    """Model C of Wang et al. (2021, Table A1), LeNet-5 (LeCun et al., 1998) with ReLU.

    conv(6, 5x5) -> ReLU -> maxpool 2 -> conv(16, 5x5) -> ReLU -> maxpool 2 -> FC(120) -> ReLU
    -> FC(84) -> ReLU -> FC(classes). Unpadded convolutions, as in the original LeNet.
    """

    def __init__(self, num_classes: int, in_channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.features = _conv_pool_conv_pool(in_channels, 6, 16, 5)
        flat = _flat_dim(self.features, in_channels, size)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )


class LeNetV2(_FeaturesClassifier):
    """Model D of Wang et al. (2021, Table A1), an enlarged LeNet.

    conv(32, 3x3) -> ReLU -> maxpool 2 -> conv(64, 3x3) -> ReLU -> maxpool 2 -> FC(128) -> ReLU
    -> Dropout(0.25) -> FC(classes). Unpadded convolutions (the table gives no padding).
    """

    def __init__(self, num_classes: int, in_channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.features = _conv_pool_conv_pool(in_channels, 32, 64, 3)
        flat = _flat_dim(self.features, in_channels, size)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, num_classes)
        )


class AllCNN(nn.Module):
    """Model B of Wang et al. (2021, Table A1), after All-CNN-C (Springenberg et al., 2015).

    conv(w, 3x3) -> ReLU -> conv(128, 3x3, stride 2) -> ReLU -> Dropout(0.5) -> conv(128, 3x3)
    -> ReLU -> conv(128, 3x3, stride 2) -> ReLU -> Dropout(0.5) -> conv(128, 3x3) -> ReLU
    -> conv(128, 1x1) -> ReLU -> conv(classes, 1x1) -> global average pool.
    The table gives the first width as [32, 64] (MNIST, CIFAR-10): ``width`` defaults to 32 for
    one input channel and 64 otherwise. Reading: the two "+ Dropout" convolutions are All-CNN's
    stride-2 convolutions that replace pooling (Springenberg et al.), with ReLU before dropout.
    """

    def __init__(
        self, num_classes: int, in_channels: int, size: tuple[int, int], width: int | None = None
    ) -> None:
        super().__init__()
        w = width if width is not None else (32 if in_channels == 1 else 64)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 128, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(128, 128, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, 128, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(128, 128, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, 128, 1),
            nn.ReLU(),
            nn.Conv2d(128, num_classes, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
