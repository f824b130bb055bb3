"""Shared fixtures: tiny models and data made on the fly (tests never download anything)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings
from torch import nn

# CI draws the same hypothesis examples on every run (a red CI must mean a change broke
# something, not a new random draw); local runs keep exploring new examples.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Small models run fastest on one thread, and a loaded 2-core CI machine is slowed ~8x by
# oversubscription; tests never depend on the thread count.
torch.set_num_threads(1)

# the shared helpers assert too: rewrite their asserts for informative failures
pytest.register_assert_rewrite("_helpers")


class LinearClassifier(nn.Module):
    """Logits W·flatten(x) + b: the analytic oracle model (closed-form worst cases)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ self.weight.T + self.bias


class TinyCNN(nn.Module):
    """A small conv net with BatchNorm and Dropout, for model-state tests."""

    def __init__(self, channels: int = 1, classes: int = 10, side: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Flatten(),
            nn.Linear(4 * side * side, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def linear_model():
    """Factory: linear_model(dim, classes, seed) -> LinearClassifier with random weights."""

    def make(dim: int = 16, classes: int = 3, seed: int = 0) -> LinearClassifier:
        g = torch.Generator().manual_seed(seed)
        return LinearClassifier(
            torch.randn(classes, dim, generator=g), torch.randn(classes, generator=g)
        )

    return make


@pytest.fixture
def tiny_cnn():
    """Factory: tiny_cnn(channels, classes, side, seed) -> TinyCNN, train mode, warm BN stats."""

    def make(channels: int = 1, classes: int = 10, side: int = 8, seed: int = 0) -> TinyCNN:
        torch.manual_seed(seed)
        model = TinyCNN(channels, classes, side)
        with torch.no_grad():
            model(torch.rand(16, channels, side, side))  # non-trivial running statistics
        return model

    return make


@pytest.fixture
def toy_images():
    """Factory: toy_images(n, channels, side, classes, seed) -> (x in [0,1], y)."""

    def make(n: int = 8, channels: int = 1, side: int = 8, classes: int = 10, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, channels, side, side, generator=g)
        y = torch.randint(0, classes, (n,), generator=g)
        return x, y

    return make
