"""Peers behind our Attack contract (optional extra ``peers``: torchattacks, Foolbox).

On the linear 2-class oracle (exact minimum |margin| / ‖w‖_q, box not binding) the peers'
results must be genuine (never below the exact minimum, misclassified, inside ball ∩ box when
threat-bound) and our native attacks at least as strong as theirs.
"""

from __future__ import annotations

import math

import pytest
import torch

from unionrobust.attacks import adapters
from unionrobust.attacks.ddn import DDN
from unionrobust.attacks.linearised import FAB
from unionrobust.attacks.registry import make_attack
from unionrobust.errors import UnionRobustError
from unionrobust.threats import L1, L2, Linf

D, B = 16, 6
DUAL = {"l2": 2.0, "linf": 1.0, "l1": math.inf}


def linear_setup(linear_model, seed: int, spread: float = 0.02, dim: int = D):
    model = linear_model(dim=dim, classes=2, seed=seed)
    with torch.no_grad():
        w = model.weight[1] - model.weight[0]
        model.bias[1] = model.bias[0] - 0.5 * w.sum()
    g = torch.Generator().manual_seed(seed + 7)
    x = 0.5 + spread * (2 * torch.rand(B, dim, generator=g) - 1)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    opt = (logits[:, 0] - logits[:, 1]).abs()
    return model, w.detach(), x, y, opt


def _state(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.detach().clone() for p in model.parameters()],
    )


def check_genuine(attack, model, x, y, opt):
    """Peer result: reported norms ≥ the exact minimum, x_min misclassified, x_adv in the
    ball ∩ box, the model and torch's global RNG untouched."""
    before = _state(model)
    rng = torch.get_rng_state()
    res = attack(model, x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    flags, req, params = before
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == req
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p.detach(), v) for p, v in zip(model.parameters(), params, strict=True))
    found = torch.isfinite(res.norms)
    assert bool((res.norms[found] >= opt[found] * (1 - 1e-4)).all())
    with torch.no_grad():
        assert bool((model(res.x_min[found]).argmax(1) != y[found]).all())
    assert bool(attack.threat.contains(res.x_adv - x, x).all())
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    return res


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_ta_fab_matches_our_fab(norm, linear_model):
    pytest.importorskip("torchattacks")
    model, w, x, y, margin = linear_setup(linear_model, 1)
    opt = margin / w.norm(p=DUAL[norm])
    threat = {"l2": L2, "linf": Linf}[norm](1.0)
    peer = check_genuine(adapters.TAFAB(threat, steps=5), model, x, y, opt)
    ours = FAB(threat)(model, x, y)
    assert bool(peer.success.all())
    assert bool((peer.norms <= opt * 1.03).all())  # the peer is a correct FAB, too
    assert bool((ours.norms <= peer.norms * (1 + 1e-3)).all())


def test_ta_ead_is_genuine_and_our_l1_fab_is_at_least_as_strong(linear_model):
    pytest.importorskip("torchattacks")
    model, w, x, y, margin = linear_setup(linear_model, 2)
    opt = margin / w.abs().max()
    peer = check_genuine(adapters.TAEAD(L1(10.0), steps=50), model, x, y, opt)
    assert bool(peer.success.all())
    ours = FAB(L1(10.0))(model, x, y)
    assert bool((ours.norms <= peer.norms * (1 + 1e-3)).all())


def test_fb_boundary_is_genuine_and_ddn_at_least_as_strong(linear_model):
    pytest.importorskip("foolbox")
    model, w, x, y, margin = linear_setup(linear_model, 3)
    opt = margin / w.norm()
    eps = float(opt.max()) * 3
    peer = check_genuine(adapters.FBBoundary(L2(eps), steps=100), model, x, y, opt)
    assert bool(peer.success.any())
    ours = DDN(L2(eps))(model, x, y)
    assert bool((ours.norms <= peer.norms * (1 + 1e-3)).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fb_hsj_is_genuine_and_fab_at_least_as_strong(norm, linear_model):
    pytest.importorskip("foolbox")
    model, w, x, y, margin = linear_setup(linear_model, 8)
    opt = margin / w.norm(p=DUAL[norm])
    threat = {"l2": L2, "linf": Linf}[norm](float(opt.max()) * 2)
    peer = check_genuine(
        adapters.FBHopSkipJump(threat, steps=5, max_gradient_evals=50), model, x, y, opt
    )
    assert bool(peer.success.all())
    ours = FAB(threat)(model, x, y)
    assert bool((ours.norms <= peer.norms * (1 + 1e-3)).all())


def test_fb_pointwise_is_genuine(linear_model):
    pytest.importorskip("foolbox")
    model, w, x, y, margin = linear_setup(linear_model, 4)
    opt = margin / w.abs().max()
    peer = check_genuine(adapters.FBPointwise(L1(10.0)), model, x, y, opt)
    assert bool(peer.success.all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_ta_square_stays_in_the_ball_and_ours_is_as_strong(norm, linear_model):
    pytest.importorskip("torchattacks")
    # 6 × 6 images: torchattacks' ℓ2 Square divides by h // 5
    model, w, x, y, margin = linear_setup(linear_model, 5, dim=36)
    opt = margin / w.norm(p=DUAL[norm])
    threat = {"l2": L2, "linf": Linf}[norm](float(opt.max()) * 1.5)
    xi = x.reshape(B, 1, 6, 6)
    peer = check_genuine(adapters.TASquare(threat, steps=100), model, xi, y, opt)
    assert bool(peer.success.any())
    ours = make_attack("square", threat, steps=200)(model, xi, y)
    assert bool(ours.success[peer.success].all())


def test_ta_cw_runs_behind_the_contract(linear_model):
    pytest.importorskip("torchattacks")
    model, w, x, y, margin = linear_setup(linear_model, 6)
    check_genuine(adapters.TACW(L2(1.0), steps=20), model, x, y, margin / w.norm())


def test_same_seed_same_result(linear_model):
    pytest.importorskip("foolbox")
    model, _, x, y, _ = linear_setup(linear_model, 7)
    a = adapters.FBBoundary(L2(1.0), steps=30, seed=3)(model, x, y)
    b = adapters.FBBoundary(L2(1.0), steps=30, seed=3)(model, x, y)
    assert torch.equal(a.x_min, b.x_min)


def test_registry_names_build_the_adapters():
    pytest.importorskip("torchattacks")
    pytest.importorskip("foolbox")
    assert isinstance(make_attack("ta-ead", "l1:5"), adapters.TAEAD)
    assert isinstance(make_attack("fb-boundary", "l2:1", steps=10), adapters.FBBoundary)
    with pytest.raises(UnionRobustError, match="supports linf, l2"):
        make_attack("ta-fab", "l1:5")


def test_a_missing_package_names_the_extra(monkeypatch):
    def fail(name):
        raise ImportError(name)

    monkeypatch.setattr(adapters.importlib, "import_module", fail)
    with pytest.raises(UnionRobustError, match=r"unionrobust\[peers\]") as err:
        adapters.TAEAD(L1(1.0))
    assert "pip install --no-deps 'torchattacks>=3.5'" in str(err.value)
    with pytest.raises(UnionRobustError, match="foolbox"):
        adapters.FBBoundary(L2(1.0))
