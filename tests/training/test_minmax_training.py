"""Universal adversarial training (uSGD, Shafahi et al.; Wang et al. App. E.2) as a strategy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unionrobust.errors import UnionRobustError
from unionrobust.training.strategies import make_strategy


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 36, 3),
    ).train()


def batches(n: int = 4, size: int = 8):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.rand(size, 1, 6, 6, generator=g), torch.randint(0, 3, (size,), generator=g))
        for _ in range(n)
    ]


def test_delta_is_universal_inside_the_ball_and_raises_the_loss():
    model = net()
    strat = make_strategy("universal", "linf:0.1", steps=2, alpha=0.02)
    data = batches()
    for x, y in data:
        out = strat(model, x, y)
        assert out.loss.requires_grad and torch.isfinite(out.loss)
        assert model.training and all(p.grad is None for p in model.parameters())
    d = strat.delta
    assert d.shape == (1, 1, 6, 6)
    assert 0 < d.abs().max() <= 0.1 + 1e-6
    model.eval()
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        assert ce(model((x + d).clamp(0, 1)), y) > ce(model(x), y) + 1e-3


def test_state_dict_resumes_exactly():
    data = batches(3)
    a_model, b_model = net(), net()
    a = make_strategy("universal", "l2:1.0", steps=1)
    b = make_strategy("universal", "l2:1.0", steps=1)
    a(a_model, *data[0])
    b.load_state_dict(a.state_dict())
    b_model.load_state_dict(a_model.state_dict())
    la, lb = a(a_model, *data[1]), b(b_model, *data[1])
    assert torch.equal(a.delta, b.delta)
    assert torch.equal(la.loss, lb.loss)


def test_scale_shrinks_delta_and_options_are_checked():
    model = net()
    strat = make_strategy("universal", "linf:0.2", steps=3, alpha=0.1)
    strat(model, *batches(1)[0])
    strat.set_scale(0.25)
    strat(model, *batches(1)[0])
    assert strat.delta.abs().max() <= 0.05 + 1e-6
    with pytest.raises(UnionRobustError, match="threat="):
        make_strategy("universal", "linf:0.2, l2:1")
    assert make_strategy("universal", "linf:0.2, l2:1", threat="l2").member.name == "l2"
    with pytest.raises(UnionRobustError, match="additive"):
        make_strategy("universal", "rt:30:3")
    with pytest.raises(UnionRobustError, match="loss 'ce'"):
        make_strategy("universal", "linf:0.2", loss="trades")
