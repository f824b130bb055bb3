"""The "minmax-transforms" strategy: AT on min-max / EOT perturbations over transformations."""

from __future__ import annotations

import copy

import pytest
import torch

from _helpers import check_strategy_step, record_train_inputs
from unionrobust.errors import UnionRobustError
from unionrobust.losses import cross_entropy
from unionrobust.threats import parse
from unionrobust.training.config import config_from_dict
from unionrobust.training.strategies import make_strategy, strategy_names
from unionrobust.training.strategies.domains import MinMaxTransforms
from unionrobust.training.trainer import build_strategy

UNION = "linf:0.1, l2:0.5"
NAME = "minmax-transforms"


def build(**options):
    options.setdefault("steps", 2)
    options.setdefault("transforms", "ori, flh, bri")
    return make_strategy(NAME, UNION, **options)


def test_registered_and_bad_options_list_valid_ones():
    assert NAME in strategy_names()
    s = build()
    assert isinstance(s, MinMaxTransforms) and s.member.name == "linf"  # default: first member
    assert build(threat="l2").member.name == "l2"
    with pytest.raises(UnionRobustError) as err:
        build(bogus=1)
    msg = str(err.value)
    assert "\n" not in msg and "bogus" in msg
    for opt in ("threat", "transforms", "steps", "alpha", "gamma", "w_lr", "weights"):
        assert opt in msg
    with pytest.raises(UnionRobustError, match=r"loss_weights.*minmax, uniform"):
        build(loss_weights="max")
    with pytest.raises(UnionRobustError, match=r"weights.*minmax, uniform"):
        build(weights="max")
    with pytest.raises(UnionRobustError, match=r"zoom.*flh"):
        build(transforms="ori, zoom")
    with pytest.raises(UnionRobustError, match="3 transforms"):
        build(weights=[1.0, 2.0])
    with pytest.raises(UnionRobustError, match="linf, l2"):
        build(threat="l1")
    with pytest.raises(UnionRobustError, match="'ce'"):
        build(loss="trades")


def test_contract_model_state_batchnorm_loss_and_stats(tiny_cnn, toy_images):
    model = tiny_cnn().train()
    x, y = toy_images(n=8)
    s = build(w_lr=1.0, gamma=0.0)  # weights that visibly move
    out, seen = check_strategy_step(s, model, x, y)
    # BatchNorm: the updates of exactly one train forward over the 3·8 transformed inputs
    assert seen[0].shape[0] == 24
    # stats: mean domain weights on the simplex, one per transform, learned away from 1/K
    w = torch.tensor([out.stats[f"w_{t}"] for t in ("ori", "flh", "bri")])
    assert (w >= 0).all() and torch.isclose(w.sum(), torch.tensor(1.0), atol=1e-5)
    assert not torch.allclose(w, torch.full((3,), 1 / 3), atol=1e-3)
    assert 0.0 <= out.stats["attack_success"] <= 1.0


def _replayed_terms(model, options, x, y):
    """Loss of one strategy call, per-row-block CE (·, B) of a replay of its train forward, rows."""
    model.net[3].train(False)  # no dropout: the replay is exact
    ref = copy.deepcopy(model)
    seen, handle = record_train_inputs(model)
    out = build(**options)(model, x, y)
    handle.remove()
    with torch.no_grad():
        ce = cross_entropy(ref(seen[0]).float(), y.repeat(seen[0].shape[0] // x.shape[0]))
    return out.loss.detach(), ce.reshape(-1, x.shape[0]), seen[0]


@pytest.mark.parametrize(
    "options",
    [{"weights": "uniform"}, {"loss_weights": "uniform", "w_lr": 1.0, "gamma": 0.0}],
    ids=["eot", "uniform-loss"],
)
def test_uniform_weights_give_the_plain_mean(options, tiny_cnn, toy_images):
    x, y = toy_images(n=8)
    loss, ce, _ = _replayed_terms(tiny_cnn().train(), options, x, y)
    assert torch.allclose(loss, ce.mean(), atol=1e-6)


def test_loss_uses_the_domain_weights(tiny_cnn, toy_images):
    x, y = toy_images(n=8)
    opts = {"transforms": "ori, flh", "weights": [3.0, 1.0]}  # fixed weights: final w = (.75, .25)
    loss, ce, _ = _replayed_terms(tiny_cnn().train(), opts, x, y)
    assert torch.allclose(loss, (0.75 * ce[0] + 0.25 * ce[1]).mean(), atol=1e-6)
    assert not torch.allclose(loss, ce.mean(), atol=1e-6)  # the weighting matters here


def test_mix_adds_the_clean_term_on_untransformed_x(tiny_cnn, toy_images):
    x, y = toy_images(n=8)
    loss, ce, rows = _replayed_terms(tiny_cnn().train(), {"weights": "uniform", "mix": 0.5}, x, y)
    assert ce.shape[0] == 4 and torch.equal(rows[:8], x)  # x, then the 3 transformed batches
    assert torch.allclose(loss, 0.5 * ce[0].mean() + 0.5 * ce[1:].mean(), atol=1e-6)


def test_set_scale_keeps_delta_in_the_half_ball(tiny_cnn, toy_images):
    x, y = toy_images(n=8)
    threat = parse(UNION)[1]  # l2:0.5
    half = threat.with_size(threat.size / 2)
    outside = []
    for scale in (1.0, 0.5):
        model = tiny_cnn().train()
        s = build(threat="l2", transforms="ori, flh")
        s.set_scale(scale)
        seen, handle = record_train_inputs(model)
        s(model, x, y)
        handle.remove()
        ori, flh = seen[0].split(8)
        for delta in (ori - x, flh.flip(-1) - x):  # flips preserve the l2 norm
            assert threat.contains(delta, x).all()
            if scale == 0.5:
                assert half.contains(delta, x).all()
        outside.append(bool((~half.contains(ori - x, x)).any()))
    assert outside == [True, False]  # full radius leaves the half ball; scale 0.5 does not


def test_two_step_training_loop_and_resume(tiny_cnn, toy_images):
    model = tiny_cnn().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = make_strategy(NAME, UNION, threat="l2", transforms="ori, flh, gam", steps=2, random=True)
    before = [p.detach().clone() for p in model.parameters()]
    for i in range(2):
        x, y = toy_images(n=8, seed=i)
        s.on_epoch_start(0)
        out = s(model, x, y, torch.arange(8 * i, 8 * i + 8))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert torch.isfinite(out.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # the state dict reproduces the next batch
    x, y = toy_images(n=8, seed=5)
    other = make_strategy(
        NAME, UNION, threat="l2", transforms="ori, flh, gam", steps=2, random=True
    )
    other.load_state_dict(s.state_dict())
    outs = []
    for strat in (s, other):
        torch.manual_seed(0)
        outs.append(strat(copy.deepcopy(model), x, y))
    assert torch.equal(outs[0].loss, outs[1].loss) and outs[0].stats == outs[1].stats


def test_config_builds_the_strategy():
    cfg = config_from_dict(
        {
            "threats": UNION,
            "strategy": {
                "name": NAME,
                "threat": "l2",
                "transforms": "ori, flh",
                "steps": 3,
                "weights": "uniform",
                "loss_weights": "uniform",
            },
        }
    )
    s = build_strategy(cfg)
    assert isinstance(s, MinMaxTransforms) and s.member.name == "l2" and s.steps == 3
    assert s.labels == ["ori", "flh"] and s.seed == cfg.training.seed
    bad = config_from_dict({"threats": UNION, "strategy": {"name": NAME, "gama": 1}})
    with pytest.raises(UnionRobustError, match="gama"):
        build_strategy(bad)
