"""AMP and channels-last paths, on CPU with bfloat16 autocast (issue 9, item 4).

GPU users run the attacks with ``amp=True`` (the model under autocast inside the attack) and
train with the trainer's AMP (the whole strategy call under autocast). On CPU the attacks'
autocast is a no-op, so these tests route it to bfloat16 CPU autocast, check that the model
really ran in bfloat16, and that the contract still holds: outputs in [0, 1] and inside the
threat model, finite losses, the model left exactly as found. The same for a channels-last
model and input.
"""

from __future__ import annotations

import sys

import pytest
import torch
from test_attacks_core import _assert_same_state, _model_state, check_output
from test_strategies import spy_all

from unionrobust.attacks import APGD, MSD, PGD, SLIDE, WorstOf
from unionrobust.attacks import base as attack_base
from unionrobust.threats import L1, L2, Linf
from unionrobust.training.strategies import make_strategy

BF16 = torch.bfloat16
UNION = Linf(0.1) | L2(1.0) | L1(3.0)

pytestmark = pytest.mark.skipif(
    not torch.amp.is_autocast_available("cpu"), reason="no CPU autocast in this torch"
)


def attacks(amp: bool) -> dict[str, object]:
    return {
        "pgd-linf": PGD(Linf(0.1), steps=3, start="random", amp=amp),
        "pgd-l2": PGD(L2(1.0), steps=3, start="random", amp=amp),
        "pgd-l1": PGD(L1(3.0), steps=3, amp=amp),
        "slide": SLIDE(L1(3.0), steps=3, amp=amp),
        "apgd-l2": APGD(L2(1.0), steps=4, amp=amp),
        "apgd-l1": APGD(L1(3.0), steps=4, amp=amp),
        "msd": MSD(UNION, steps=3, start="random", amp=amp),
        "msd-1g": MSD(UNION, steps=3, start="random", amp=amp, select="gradient"),
        "worst-of": WorstOf([PGD(m, steps=2, amp=amp) for m in UNION]),
    }


@pytest.fixture
def cpu_amp(monkeypatch):
    """``amp=True`` runs the model under bfloat16 CPU autocast (it is CUDA-only otherwise)."""
    original = attack_base.autocast_for

    def autocast_for(x, enabled):
        if enabled and x.device.type == "cpu":
            return torch.autocast("cpu", dtype=BF16)
        return original(x, enabled)

    for name, module in list(sys.modules.items()):
        if name.startswith("unionrobust.") and getattr(module, "autocast_for", None) is original:
            monkeypatch.setattr(module, "autocast_for", autocast_for)


def output_dtypes(model):
    """Record the dtype of every model output (to prove autocast really ran)."""
    seen: list[torch.dtype] = []
    handle = model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen, handle


@pytest.mark.parametrize("name", sorted(attacks(False)))
def test_attacks_amp_path_in_bfloat16(name, cpu_amp, tiny_cnn, toy_images):
    model = tiny_cnn().eval()
    x, y = toy_images(n=6)
    before = _model_state(model)
    attack = attacks(True)[name]
    seen, handle = output_dtypes(model)
    res = attack(model, x, y)
    handle.remove()
    assert BF16 in seen  # the attack's forwards ran under autocast
    assert res.loss.dtype == torch.float32
    _assert_same_state(model, before)
    check_output_bf16(attack, res, model, x, y)


def check_output_bf16(attack, res, model, x, y) -> None:
    """:func:`check_output` except the success mask, which the attack measured in bfloat16."""
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert torch.isfinite(res.loss).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert attack.threat.contains(res.x_adv - x, x).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred != y)


@pytest.mark.parametrize("name", sorted(attacks(False)))
def test_attacks_under_an_outer_autocast(name, tiny_cnn, toy_images):
    # the trainer's AMP path: the whole strategy call (so the attacks) runs under autocast
    model = tiny_cnn().eval()
    x, y = toy_images(n=6)
    before = _model_state(model)
    attack = attacks(False)[name]
    with torch.autocast("cpu", dtype=BF16):
        res = attack(model, x, y)
    _assert_same_state(model, before)
    check_output_bf16(attack, res, model, x, y)


@pytest.mark.parametrize(
    ("name", "options"),
    [(n, {}) for n in ("pinf", "p2", "p1", "msd", "max", "avg", "eat", "sat")]
    + [("msd", {"select": "gradient"})],
)
def test_strategies_under_autocast_train_finite(name, options, tiny_cnn, toy_images):
    model = tiny_cnn().train()
    x, y = toy_images(n=8)
    s = make_strategy(name, "linf:0.1, l2:1, l1:3", steps=3, **options)
    spies = [sp for sp in spy_all(s) if sp is not None]
    with torch.autocast("cpu", dtype=BF16):
        out = s(model, x, y)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.training
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for sp in spies:
        for xs, res in sp.calls:
            assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
            assert sp.threat.contains(res.x_adv - xs, xs).all()


@pytest.mark.parametrize("name", sorted(attacks(False)))
@pytest.mark.parametrize("amp", [False, True])
def test_channels_last_model_and_input(name, amp, cpu_amp, tiny_cnn, toy_images):
    model = tiny_cnn(channels=3).eval().to(memory_format=torch.channels_last)
    x, y = toy_images(n=6, channels=3)
    x = x.contiguous(memory_format=torch.channels_last)
    x_copy = x.clone()
    before = _model_state(model)
    attack = attacks(amp)[name]
    res = attack(model, x, y)
    _assert_same_state(model, before)
    assert torch.equal(x, x_copy)
    if amp:
        check_output_bf16(attack, res, model, x, y)
    else:
        check_output(attack, res, model, x, y)


def test_channels_last_msd_training_step(tiny_cnn, toy_images):
    model = tiny_cnn(channels=3).train().to(memory_format=torch.channels_last)
    x, y = toy_images(n=8, channels=3)
    x = x.contiguous(memory_format=torch.channels_last)
    for select in ("forward", "gradient"):
        s = make_strategy("msd", "linf:0.1, l2:1, l1:3", steps=3, select=select)
        (sp,) = spy_all(s)
        out = s(model, x, y)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        (xs, res), *_ = sp.calls
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        assert s.threats.contains(res.x_adv - xs, xs).all()
