"""Residual networks for CIFAR-sized inputs: PreAct ResNet-18 and WideResNet-depth-k.

Parameter names follow the widely shared CIFAR implementations (the ones RobustBench uses), so
state dicts saved by those codes load directly (``unionrobust.models.io.load_weights``).
"""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.errors import UnionRobustError, unknown_name

_ACTIVATIONS = ("relu", "softplus")


def make_activation(name: str, softplus_beta: float = 1.0) -> nn.Module:
    """``"relu"`` or ``"softplus"`` (Croce & Hein 2022, App. A: softplus PreAct ResNet-18)."""
    if name == "relu":
        return nn.ReLU()
    if name == "softplus":
        if not softplus_beta > 0:
            raise UnionRobustError(f"softplus_beta must be > 0, got {softplus_beta}")
        return nn.Softplus(beta=softplus_beta)
    raise unknown_name("activation", name, _ACTIVATIONS)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al., 2016, "Identity mappings", Fig. 4e).

    The projection shortcut (when shape changes) is applied to the activated input, as in He et
    al.'s pre-activation design; the identity shortcut carries the raw input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, act: nn.Module) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.act = act
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.act(self.bn2(out)))
        return out + short


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 (He et al., 2016) for 32x32 inputs; Croce & Hein (2022, App. A/B.3).

    ``activation="softplus"`` reproduces Croce & Hein's softplus variant. The final BN +
    activation before pooling (``bn_before_fc``) is part of the pre-activation design.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        activation: str = "relu",
        softplus_beta: float = 1.0,
        bn_before_fc: bool = True,
    ) -> None:
        super().__init__()
        act = make_activation(activation, softplus_beta)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        layers = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks = [
                PreActBlock(in_planes, planes, stride, act),
                PreActBlock(planes, planes, 1, act),
            ]
            layers.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(512) if bn_before_fc else None
        self.act = act
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn is not None:
            out = self.act(self.bn(out))
        return self.linear(torch.flatten(self.pool(out), 1))


class WideBasicBlock(nn.Module):
    """WideResNet basic block (Zagoruyko & Komodakis, 2016), pre-activation form.

    When the width changes, the activated input feeds both the residual branch and the 1x1
    projection shortcut; otherwise the identity shortcut carries the raw input.
    """

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, act: nn.Module, drop_rate: float
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.act = act
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.bn1(x))
        out = self.conv2(self.drop(self.act(self.bn2(self.conv1(a)))))
        short = x if self.convShortcut is None else self.convShortcut(a)
        return out + short


class _NetworkBlock(nn.Module):
    def __init__(self, layer: nn.Sequential) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WideResNet-``depth``-``widen_factor`` (Zagoruyko & Komodakis, 2016).

    Used by Tramèr & Boneh (2019) and Maini et al. (2020, App. C: WRN with widening factor 10)
    and Croce & Hein (2022: WRN-28-10). ``depth = 6n + 4`` with n blocks per stage; widths
    16, 16k, 32k, 64k.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        depth: int = 28,
        widen_factor: int = 10,
        drop_rate: float = 0.0,
        activation: str = "relu",
        softplus_beta: float = 1.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise UnionRobustError(f"wide-resnet depth must be 6n + 4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise UnionRobustError(f"wide-resnet widen_factor must be >= 1, got {widen_factor}")
        if not 0 <= drop_rate < 1:
            raise UnionRobustError(f"drop_rate must be in [0, 1), got {drop_rate}")
        n = (depth - 4) // 6
        act = make_activation(activation, softplus_beta)
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            blocks = [
                WideBasicBlock(
                    widths[i] if j == 0 else widths[i + 1],
                    widths[i + 1],
                    stride if j == 0 else 1,
                    act,
                    drop_rate,
                )
                for j in range(n)
            ]
            stages.append(_NetworkBlock(nn.Sequential(*blocks)))
        self.block1, self.block2, self.block3 = stages
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.act = act
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.act(self.bn1(out))
        return self.fc(torch.flatten(self.pool(out), 1))
