"""Small builders shared by several test files (import as ``from _helpers import ...``)."""

from __future__ import annotations

import copy

import torch
from torch import nn

#: `--set` pairs that make any training config tiny (40 points, 2 steps/epoch, 1 attack step)
TINY_TRAINING = [
    "--set", "data.train_n=40", "--set", "data.batch_size=20",
    "--set", "training.max_steps_per_epoch=2", "--set", "strategy.steps=1",
]  # fmt: skip


def tiny_mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    """64 -> 16 -> 10 MLP on 1x8x8 inputs, initialised from ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 10)
    )


def tiny_data(n: int = 40, seed: int = 0, channels: int = 1):
    """``n`` random 8x8 images in [0, 1] and random labels in 0..9."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


#: a model file for ``--model-module FILE:build``: a seeded conv net on 1x28x28 images
CONV_MODULE = (
    "import torch\n"
    "def build():\n"
    "    torch.manual_seed(1)\n"
    "    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 5), torch.nn.ReLU(),\n"
    "        torch.nn.Flatten(), torch.nn.Linear(2 * 24 * 24, 10))\n"
)


def record_train_inputs(model: nn.Module):
    """``(seen, handle)``: ``seen`` collects the input of every forward ``model`` runs in train
    mode until ``handle.remove()``."""
    seen: list[torch.Tensor] = []

    def hook(module, args):
        if module.training:
            seen.append(args[0].detach().clone())

    return seen, model.register_forward_pre_hook(hook)


def bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the BatchNorm running statistics and batch counters of ``model``."""
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}


class Scaled(nn.Module):
    """``inner``'s logits times ``factor`` (NaN or inf: a broken model)."""

    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):
        return self.inner(x) * self.factor


class CountingModel(nn.Module):
    """Records the batch size of every forward pass."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.inner(x)


def check_strategy_step(strategy, model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes=10):
    """Run ``strategy`` on a train-mode ``model`` and assert the strategy contract: the model comes
    back as it went in (modes, requires_grad, no .grad), ``x`` untouched, BatchNorm updated by
    exactly ONE train forward, a finite differentiable scalar loss, logits of the batch, finite
    gradients. Returns ``(output, inputs of the train forward)``."""
    ref = copy.deepcopy(model)
    x0 = x.clone()
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    seen, handle = record_train_inputs(model)
    try:
        out = strategy(model, x, y)
    finally:
        handle.remove()
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, x0)
    assert len(seen) == 1
    with torch.no_grad():
        ref(seen[0])
    got, want = bn_buffers(model), bn_buffers(ref)
    assert got and got.keys() == want.keys()
    for k in got:
        assert torch.equal(got[k], want[k]), k
    assert out.loss.dim() == 0 and out.loss.requires_grad and torch.isfinite(out.loss)
    assert out.logits.shape == (x.shape[0], classes)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    return out, seen
