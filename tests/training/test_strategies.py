"""Each training strategy's defining behaviour (issue 3, item 1)."""

from __future__ import annotations

import itertools

import pytest
import torch

from _helpers import record_train_inputs
from unionrobust.attacks.base import Attack, AttackResult
from unionrobust.errors import UnionRobustError
from unionrobust.losses import cross_entropy, trades_kl
from unionrobust.threats import parse
from unionrobust.training.strategies import make_strategy, strategy_names
from unionrobust.training.strategies.base import batch_seed


class Spy:
    """Wraps an attack, records (x, result) of every call; attribute writes reach the attack."""

    def __init__(self, inner) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "calls", [])

    def __call__(self, model, x, y, example_ids=None):
        res = self.inner(model, x, y, example_ids)
        self.calls.append((x.clone(), res))
        return res

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)


class FakeAttack:
    """Returns x + ``shift`` with a given per-example loss and success mask (no model calls)."""

    def __init__(self, shift: float, loss: torch.Tensor, success: torch.Tensor) -> None:
        self.shift, self.loss, self.success = shift, loss, success
        self.seed = 0
        self.loss_fn = None
        self.calls = 0

    def __call__(self, model, x, y, example_ids=None):
        self.calls += 1
        return AttackResult((x + self.shift).clamp(0, 1), self.success.clone(), self.loss.clone())


def spy_all(strategy):
    strategy.attacks = [None if a is None else Spy(a) for a in strategy.attacks]
    return strategy.attacks


# -- registry ---------------------------------------------------------------------------------


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UnionRobustError, match=r"unknown strategy 'maxx'.*avg, eat") as e:
        make_strategy("maxx", "linf:0.3")
    assert "\n" not in str(e.value)
    for name in ("natural", "single", "max", "avg", "msd", "sat", "eat", "eat-uniform", "minmax"):
        assert name in strategy_names()


def test_bad_option_is_named_in_one_line():
    with pytest.raises(UnionRobustError, match=r"unknown option.*stepz.*valid: alpha") as e:
        make_strategy("max", "linf:0.3, l2:2", stepz=3)
    assert "\n" not in str(e.value)
    with pytest.raises(UnionRobustError, match="attack"):
        make_strategy("msd", "linf:0.3, l2:2", attack="apgd")
    with pytest.raises(UnionRobustError, match="unknown training loss"):
        make_strategy("avg", "linf:0.3", loss="kl")
    with pytest.raises(UnionRobustError, match="one value per threat model"):
        make_strategy("avg", "linf:0.3, l2:2", steps=[1, 2, 3])
    with pytest.raises(UnionRobustError, match="unknown member"):
        make_strategy("avg", "linf:0.3, l2:2", alpha={"l1": 0.1})
    for bad in ({"alpha": "x"}, {"steps": 0}, {"restarts": 1.5}, {"gamma": -1}, {"mix": 2}):
        with pytest.raises(UnionRobustError, match=next(iter(bad))):
            make_strategy("minmax" if "gamma" in bad else "max", "linf:0.3", **bad)


def test_aliases_pick_the_norm():
    s = make_strategy("p2", "linf:0.3, l2:2, l1:10", steps=2)
    assert s.threats.spec == "l2:2" and s.name == "p2"
    with pytest.raises(UnionRobustError, match="lacks"):
        make_strategy("p1", "linf:0.3, l2:2")
    with pytest.raises(UnionRobustError, match="threat="):
        make_strategy("single", "linf:0.3, l2:2")
    assert make_strategy("single", "linf:0.3, l2:2", threat=1).threats.spec == "l2:2"


def test_per_member_options_and_defaults():
    s = make_strategy(
        "avg", "linf:0.3, l2:2, l1:10", steps=100, attack={"l1": "slide"}, alpha={"l2": 0.2}
    )
    # MSD App. C.2 (MNIST): α∞ = 0.01 and α1 = 0.8 at 100 steps; l2 given explicitly
    assert s.attacks[0].alpha == pytest.approx(0.01)
    assert s.attacks[1].alpha == pytest.approx(0.2)
    assert s.attacks[2].alpha == pytest.approx(0.8) and s.attacks[2].name == "slide"
    with pytest.raises(UnionRobustError, match="slide"):
        make_strategy("avg", "linf:0.3", attack="slide")


# -- MAX / AVG --------------------------------------------------------------------------------


def test_max_trains_on_the_per_example_argmax_member(linear_model):
    model = linear_model(dim=16, classes=3).train()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    s = make_strategy("max", "linf:0.1, l2:0.5, l1:1", steps=2)
    # constructed case: member k has the highest loss on examples k and k+3
    losses = torch.full((3, 6), 0.1)
    for k in range(3):
        losses[k, [k, k + 3]] = 5.0
    shifts = (0.01, 0.02, 0.03)
    s.attacks = [
        FakeAttack(shifts[k], losses[k], torch.zeros(6, dtype=torch.bool)) for k in range(3)
    ]
    seen, handle = record_train_inputs(model)
    out = s(model, x, y)
    handle.remove()
    assert len(seen) == 1 and seen[0].shape == x.shape
    expected = torch.stack([(x[i] + shifts[i % 3]).clamp(0, 1) for i in range(6)])
    torch.testing.assert_close(seen[0], expected)
    assert (
        out.stats["won_linf"] == out.stats["won_l2"] == out.stats["won_l1"] == pytest.approx(1 / 3)
    )
    torch.testing.assert_close(out.loss, cross_entropy(model(expected), y).mean())


def test_max_with_real_attacks_uses_the_worst_result(linear_model):
    model = linear_model(dim=64, classes=4, seed=3).train()
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    s = make_strategy("max", "linf:0.04, l2:0.3, l1:1.2", steps=3)
    spies = spy_all(s)
    seen, handle = record_train_inputs(model)
    out = s(model, x, y)
    handle.remove()
    results = [sp.calls[0][1] for sp in spies]
    won = torch.stack([r.loss for r in results]).argmax(0)
    expected = torch.stack([r.x_adv for r in results])[won, torch.arange(32)]
    torch.testing.assert_close(seen[0], expected)
    assert sum(out.stats[f"won_{n}"] for n in ("linf", "l2", "l1")) == pytest.approx(1.0)
    assert len(set(won.tolist())) >= 2  # the case exercises more than one winner


@pytest.mark.parametrize("loss", ["ce", "trades-xent", "trades"])
def test_avg_loss_is_the_mean_of_the_member_losses(linear_model, loss):
    model = linear_model(dim=16, classes=3).train()
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    s = make_strategy("avg", "linf:0.1, l2:0.5, l1:1", steps=2, loss=loss, beta=2.0)
    spies = spy_all(s)
    out = s(model, x, y)
    advs = [sp.calls[0][1].x_adv for sp in spies]
    with torch.no_grad():
        clean = model(x)
        if loss == "ce":
            want = torch.stack([cross_entropy(model(a), y).mean() for a in advs]).mean()
        else:
            kl = torch.stack([trades_kl(model(a), clean).mean() for a in advs]).mean()
            want = cross_entropy(clean, y).mean() + 2.0 * kl
    torch.testing.assert_close(out.loss.detach(), want)
    for sp in spies:  # every member attacked the whole batch once
        assert len(sp.calls) == 1 and sp.calls[0][0].shape == x.shape
    if loss == "trades":  # the attacks maximised the KL to the clean prediction
        r = spies[0].calls[0][1]
        torch.testing.assert_close(r.loss, trades_kl(model(r.x_adv), clean).detach())
        assert spies[0].inner.loss_fn is cross_entropy  # restored after the batch


def test_mix_ratio(linear_model):
    model = linear_model(dim=16, classes=3).train()
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    s = make_strategy("pinf", "linf:0.1", steps=2, mix=0.25)
    (spy,) = spy_all(s)
    out = s(model, x, y)
    adv = spy.calls[0][1].x_adv
    with torch.no_grad():
        want = 0.75 * cross_entropy(model(x), y).mean() + 0.25 * cross_entropy(model(adv), y).mean()
    torch.testing.assert_close(out.loss.detach(), want)
    with pytest.raises(UnionRobustError, match="mix"):
        make_strategy("pinf", "linf:0.1", loss="trades", mix=0.5)


# -- MSD ----------------------------------------------------------------------------------------


def test_msd_trains_on_the_msd_point_and_reports_winners(linear_model):
    model = linear_model(dim=16, classes=3).train()
    g = torch.Generator().manual_seed(6)
    x, y = torch.rand(16, 1, 4, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    s = make_strategy("msd", "linf:0.1, l2:0.5, l1:1", steps=3)
    (spy,) = spy_all(s)
    seen, handle = record_train_inputs(model)
    out = s(model, x, y)
    handle.remove()
    res = spy.calls[0][1]
    torch.testing.assert_close(seen[0], res.x_adv)
    idx = res.threat_index
    for k, lab in enumerate(("linf", "l2", "l1")):
        assert out.stats[f"won_{lab}"] == pytest.approx(float((idx == k).float().mean()))


def test_msd_select_reaches_the_attack_and_the_config(linear_model):
    s = make_strategy("msd", "linf:0.1, l2:0.5, l1:1", steps=3, select="gradient")
    assert s.attacks[0].select == "gradient"
    s.set_scale(0.5)  # the rebuilt attack keeps the option
    assert s.attacks[0].select == "gradient"
    assert make_strategy("msd", "linf:0.1, l2:0.5", steps=2).attacks[0].select == "forward"
    model = linear_model(dim=16, classes=3).train()
    g = torch.Generator().manual_seed(6)
    x, y = torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    out = s(model, x, y)
    assert torch.isfinite(out.loss) and model.training
    with pytest.raises(UnionRobustError, match="valid: forward, gradient"):
        make_strategy("msd", "linf:0.1, l2:0.5", select="fast")


# -- SAT ------------------------------------------------------------------------------------------


def test_sat_draws_one_member_per_batch(linear_model):
    model = linear_model(dim=16, classes=3).train()
    g = torch.Generator().manual_seed(7)
    x, y = torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    s = make_strategy("sat", "linf:0.1, l2:0.5, l1:1", steps=1, seed=3)
    spies = spy_all(s)
    chosen = []
    for _ in range(24):
        before = [len(sp.calls) for sp in spies]
        out = s(model, x, y)
        called = [i for i, sp in enumerate(spies) if len(sp.calls) > before[i]]
        assert len(called) == 1  # one member for the whole batch
        assert spies[called[0]].calls[-1][0].shape == x.shape
        assert out.stats[f"chose_{('linf', 'l2', 'l1')[called[0]]}"] == 1.0
        chosen.append(called[0])
    assert set(chosen) == {0, 1, 2}
    # the draw is a function of (seed, batch counter): a second strategy repeats it
    t = make_strategy("sat", "linf:0.1, l2:0.5, l1:1", steps=1, seed=3)
    assert [(t.choose(), setattr(t, "batches", t.batches + 1))[0] for _ in range(24)] == chosen


# -- E-AT ---------------------------------------------------------------------------------------


def test_eat_never_runs_an_l2_attack(linear_model, monkeypatch):
    names: list[str] = []
    original = Attack.__call__

    def spy(self, model, x, y, example_ids=None):
        names.append(self.threat.name)
        return original(self, model, x, y, example_ids)

    monkeypatch.setattr(Attack, "__call__", spy)
    model = linear_model(dim=16, classes=3).train()
    g = torch.Generator().manual_seed(8)
    x, y = torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    for name in ("eat", "eat-uniform"):
        s = make_strategy(name, "linf:0.1, l2:0.5, l1:1", steps=1)
        assert s.attacks[1] is None  # no l2 attack is even built
        for _ in range(12):
            s(model, x, y).loss.backward()
    assert "l2" not in names and {"l1", "linf"} <= set(names)
    with pytest.raises(UnionRobustError, match="one l1 and one linf"):
        make_strategy("eat", "linf:0.1, l2:0.5")


def _eat_frequencies(name, model, x, y, batches=300):
    s = make_strategy(name, "l1:1, l2:0.5, linf:0.1", steps=1, seed=11)
    b = x.shape[0]
    # robust training error: l1 attack breaks every example, linf a quarter of them
    s.attacks[0] = FakeAttack(0.01, torch.ones(b), torch.ones(b, dtype=torch.bool))
    s.attacks[2] = FakeAttack(0.02, torch.ones(b), torch.arange(b) < b // 4)
    chose = []
    for _ in range(batches):
        out = s(model, x, y)
        p1 = out.stats["p_l1"]
        if s.sampling == "adaptive" and s.rerr_count[0] > 0 and s.rerr_count[1] > 0:
            r1, rinf = out.stats["rerr_l1"], out.stats["rerr_linf"]
            assert r1 == pytest.approx(1.0) and rinf == pytest.approx(0.25)
        chose.append(out.stats["chose_l1"])
    return s, sum(chose[20:]) / len(chose[20:]), p1


def test_eat_sampling_follows_eq5(linear_model):
    model = linear_model(dim=16, classes=3).train()
    g = torch.Generator().manual_seed(9)
    x, y = torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    s, freq, p1 = _eat_frequencies("eat", model, x, y)
    assert p1 == pytest.approx(1.0 / 1.25)  # eq. 5: rerr_1 / (rerr_1 + rerr_inf)
    assert abs(freq - 0.8) < 0.07, freq  # uniform sampling (0.5) fails this
    _, freq_u, p1_u = _eat_frequencies("eat-uniform", model, x, y)
    assert p1_u == 0.5 and abs(freq_u - 0.5) < 0.08, freq_u
    # the running averages reset at every epoch (Croce & Hein §3.2) unless told otherwise
    s.on_epoch_start(1)
    assert s.probabilities() == (0.5, 0.5)
    keep = make_strategy("eat", "l1:1, linf:0.1", reset_each_epoch=False)
    keep.rerr_sum, keep.rerr_count = [1.0, 3.0], [2, 3]
    keep.on_epoch_start(1)
    assert keep.probabilities() == pytest.approx((1 / 3, 2 / 3))


# -- min-max --------------------------------------------------------------------------------------


def _minmax_weights(model, x, y, gamma, steps=8, **kw):
    s = make_strategy(
        "minmax", "linf:0.2, l2:0.5, l1:2", steps=steps, gamma=gamma, w_lr=min(0.5, 1 / gamma), **kw
    )
    _, w = s.ampgd(model, x, y, None, seed=1)
    return s, w


def test_minmax_weights_on_simplex_and_uniform_as_gamma_grows(linear_model):
    model = linear_model(dim=16, classes=3, seed=2).train()
    g = torch.Generator().manual_seed(10)
    x, y = torch.rand(16, 1, 4, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    gaps = []
    for gamma in (0.05, 0.5, 5.0, 50.0, 500.0):
        _, w = _minmax_weights(model, x, y, gamma)
        assert w.shape == (16, 3)
        assert (w >= 0).all() and torch.allclose(w.sum(1), torch.ones(16), atol=1e-5)
        gaps.append(float((w - 1 / 3).abs().max()))
    assert gaps[0] > 0.1  # small γ: far from uniform (the weights follow the losses)
    assert all(a >= b - 1e-6 for a, b in itertools.pairwise(gaps)), gaps
    assert gaps[-1] < 0.01, gaps


def test_minmax_weights_favour_the_stronger_member(linear_model):
    model = linear_model(dim=16, classes=3, seed=2).train()
    g = torch.Generator().manual_seed(10)
    x, y = torch.rand(16, 1, 4, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    # the l2 ball is tiny: its adversarial loss is lowest, so its weight shrinks below 1/3
    s = make_strategy("minmax", "linf:0.3, l2:0.01", steps=10, gamma=1.0, w_lr=0.5)
    _, w = s.ampgd(model, x, y, None, seed=1)
    assert float(w[:, 1].mean()) < 0.5 - 0.05
    out = s(model, x, y)
    assert out.stats["w_l2"] < 0.45 and out.stats["w_linf"] + out.stats["w_l2"] == pytest.approx(1)


def test_minmax_loss_is_the_weighted_sum_and_dpar_is_finite(linear_model):
    model = linear_model(dim=16, classes=3).train()
    g = torch.Generator().manual_seed(12)
    x, y = torch.rand(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    s = make_strategy("minmax", "linf:0.1, l2:0.5, l1:1", steps=3, gamma=0.5, w_lr=0.5)
    advs, w = s.ampgd(model, x, y, None, batch_seed(0, 0))  # what batch 0 will draw
    seen, handle = record_train_inputs(model)
    out = s(model, x, y)
    handle.remove()
    torch.testing.assert_close(seen[0], torch.cat(advs))
    with torch.no_grad():
        terms = torch.stack([cross_entropy(model(a), y) for a in advs])  # (K, B)
    torch.testing.assert_close(out.loss.detach(), (w.T * terms).sum(0).mean())
    assert float((w - 1 / 3).abs().max()) > 0.01  # non-trivial weights in this case
    for a, t in zip(advs, parse("linf:0.1, l2:0.5, l1:1"), strict=True):
        assert t.contains(a - x, x).all()
    d = make_strategy("minmax", "linf:0.1, l2:0.5, l1:1", steps=2, dpar=0.1)
    out = d(model, x, y)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
