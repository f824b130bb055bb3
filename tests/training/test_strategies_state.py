"""Contract tests every strategy must pass: model state, BatchNorm, gradients, scale, resume."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from _helpers import check_strategy_step, record_train_inputs
from unionrobust.errors import UnionRobustError
from unionrobust.threats import Union, parse
from unionrobust.training.strategies import make_strategy

UNION = "linf:0.1, l2:0.5, l1:2"

#: (name, options) covering every strategy, the three losses and DPAR
CASES = [
    ("natural", {}),
    ("single", {"threat": "l2"}),
    ("pinf", {"loss": "trades"}),
    ("p1", {"attack": "slide", "mix": 0.5}),
    ("max", {}),
    ("max", {"loss": "trades-xent"}),
    ("avg", {"loss": "trades"}),
    ("msd", {}),
    ("msd", {"loss": "trades"}),
    ("sat", {}),
    ("eat", {"attack": {"linf": "apgd"}}),
    ("eat-uniform", {"loss": "trades-xent"}),
    ("minmax", {}),
    ("minmax", {"dpar": 0.1, "loss": "trades-xent"}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o in CASES]
#: one case per strategy name, for the costlier tests
FIRST = [i for i, (n, _) in enumerate(CASES) if [c[0] for c in CASES].index(n) == i]
ONE_EACH, ONE_IDS = [CASES[i] for i in FIRST], [IDS[i] for i in FIRST]


def build(name, options, **extra):
    opts = dict(options)
    if name != "natural":
        opts.setdefault("steps", 2)
    opts.update(extra)
    return make_strategy(name, UNION, **opts)


@pytest.mark.parametrize(("name", "options"), CASES, ids=IDS)
def test_model_state_batchnorm_and_gradients(name, options, tiny_cnn, toy_images):
    model = tiny_cnn().train()
    model.net[3].train(False)  # a module in eval mode inside a training model stays so
    x, y = toy_images(n=8)
    # model as found, input untouched, ONE train forward for BatchNorm, finite loss and grads
    out, _ = check_strategy_step(build(name, options), model, x, y)
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())
    for v in out.stats.values():
        assert isinstance(v, float | list)


def _adversarial_rows(strategy, seen, x):
    rows = seen[0]
    if strategy.objective.needs_clean:
        assert torch.equal(rows[: x.shape[0]], x)
        rows = rows[x.shape[0] :]
    return rows, x.repeat(rows.shape[0] // x.shape[0], 1, 1, 1)


@pytest.mark.parametrize(("name", "options"), ONE_EACH[1:], ids=ONE_IDS[1:])
def test_set_scale_shrinks_every_radius(name, options, tiny_cnn, toy_images):
    x, y = toy_images(n=8)
    half = Union([m.with_size(m.size / 2) for m in parse(UNION)])
    outside = []
    for scale in (1.0, 0.5):
        model = tiny_cnn().train()
        s = build(name, options)
        s.set_scale(scale)
        seen, handle = record_train_inputs(model)
        s(model, x, y)
        handle.remove()
        rows, xs = _adversarial_rows(s, seen, x)
        full = s.threats if scale == 1.0 else half
        assert full.contains(rows - xs, xs).all()
        outside.append(bool((~half.contains(rows - xs, xs)).any()))
    assert outside == [True, False]  # full radius leaves the half ball; scale 0.5 does not
    with pytest.raises(UnionRobustError, match="scale"):
        s.set_scale(0.0)
    with pytest.raises(UnionRobustError, match="scale"):
        s.set_scale(1.5)


@pytest.mark.parametrize(("name", "options"), ONE_EACH, ids=ONE_IDS)
def test_state_dict_round_trip_reproduces_the_next_batch(name, options, tiny_cnn, toy_images):
    xa, ya = toy_images(n=8, seed=1)
    xb, yb = toy_images(n=8, seed=2)
    model = tiny_cnn()
    first = build(name, options)
    first.on_epoch_start(0)
    first(copy.deepcopy(model), xa, ya)
    first.set_scale(0.8)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    second = build(name, options)
    second.load_state_dict(state)
    outs = []
    for s in (first, second):
        torch.manual_seed(5)  # dropout
        outs.append(s(copy.deepcopy(model), xb, yb, torch.arange(8, 16)))
    assert torch.equal(outs[0].loss, outs[1].loss)
    assert outs[0].stats == outs[1].stats
    if name in ("pinf", "sat", "eat"):  # the counter matters: a fresh strategy draws otherwise
        fresh = build(name, options)
        fresh.set_scale(0.8)
        torch.manual_seed(5)
        other = fresh(copy.deepcopy(model), xb, yb, torch.arange(8, 16))
        assert not torch.equal(other.loss, outs[0].loss) or other.stats != outs[0].stats


def test_bad_inputs_are_named(tiny_cnn, toy_images):
    x, y = toy_images(n=4)
    s = build("pinf", {})
    with pytest.raises(UnionRobustError, match="example_ids"):
        s(tiny_cnn(), x, y, torch.arange(3))
    with pytest.raises(UnionRobustError, match=r"\[0, 1\]"):
        s(tiny_cnn(), x * 3, y)
    with pytest.raises(UnionRobustError, match="model"):
        s("not a model", x, y)
    with pytest.raises(UnionRobustError, match="lacks"):
        s.load_state_dict({})
