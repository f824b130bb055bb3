"""PGD, MIM, FGSM, SLIDE, MSD, WorstOf: the attack contract.

Outputs in [0,1] and inside the threat model, the model and inputs left exactly as found, the
success mask, determinism, batch independence, best iterates and input errors.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn

from _helpers import CountingModel
from unionrobust.attacks import FGSM, MIM, MSD, PGD, SLIDE, Attack, WorstOf
from unionrobust.errors import UnionRobustError
from unionrobust.losses import cross_entropy
from unionrobust.threats import L0, L1, L2, Linf, Union

# no shrinking phase: a failing example is reported as drawn (shrinking attacks is slow)
FIXTURE_OK = settings(
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# threat name -> (constructor from a unit size in [0, 1], size range)
THREATS = {
    "linf": lambda s: Linf(0.01 + 0.3 * s),
    "l2": lambda s: L2(0.05 + 2.0 * s),
    "l1": lambda s: L1(0.2 + 6.0 * s),
    "l1-slide": lambda s: L1(0.2 + 6.0 * s, step_rule="slide", q=0.9),
    "l1-single": lambda s: L1(0.2 + 6.0 * s, step_rule="single"),
    "l0": lambda s: L0(1 + int(10 * s)),
}


def single_attacks(threat) -> dict[str, Attack]:
    """Every single-threat attack × start for ``threat`` (few steps: contract tests)."""
    out: dict[str, Attack] = {
        f"pgd-{start}": PGD(threat, steps=3, restarts=2, start=start, seed=1)
        for start in ("zero", "random", "zero_then_random")
    }
    out["pgd-cw-momentum"] = PGD(threat, steps=3, loss="cw", momentum=0.5, start="random")
    out["mim"] = MIM(threat, steps=3)
    out["fgsm"] = FGSM(threat)
    if isinstance(threat, L1):
        out["slide"] = SLIDE(threat, steps=3, restarts=2)
    return out


def union_attacks(union: Union) -> dict[str, Attack]:
    out: dict[str, Attack] = {
        f"msd-{start}": MSD(union, steps=3, restarts=2, start=start, seed=2)
        for start in ("zero", "random", "zero_then_random")
    }
    out |= {
        f"msd-1g-{start}": MSD(union, steps=3, restarts=2, start=start, seed=2, select="gradient")
        for start in ("zero", "random")
    }
    out["worst-of"] = WorstOf([PGD(m, steps=2, start="random") for m in union])
    out["worst-of-all"] = WorstOf([PGD(m, steps=2) for m in union], shrink=False)
    return out


def check_output(attack: Attack, res, model, x, y) -> None:
    b = x.shape[0]
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.success.shape == (b,) and res.success.dtype == torch.bool
    assert res.loss.shape == (b,) and torch.isfinite(res.loss).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    delta = res.x_adv - x
    assert attack.threat.contains(delta, x).all()
    with torch.no_grad():
        pred = model.eval()(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred != y)
    if res.threat_index is not None:
        members = list(attack.threat)
        ti = res.threat_index
        assert ti.dtype == torch.int64 and ti.shape == (b,)
        assert ((ti >= -1) & (ti < len(members))).all()
        for i in range(b):
            k = int(ti[i])
            if k == -1:
                assert torch.equal(res.x_adv[i], x[i])
            else:
                assert members[k].contains(delta[i : i + 1], x[i : i + 1]).all()


@pytest.mark.parametrize("name", sorted(THREATS))
@FIXTURE_OK
@given(size=st.floats(0.0, 1.0), data_seed=st.integers(0, 2**16))
def test_single_attacks_stay_in_box_and_ball(name, size, data_seed, tiny_cnn, toy_images):
    model = tiny_cnn(seed=data_seed % 7).eval()
    x, y = toy_images(n=5, seed=data_seed)
    threat = THREATS[name](size)
    for attack in single_attacks(threat).values():
        res = attack(model, x, y)
        check_output(attack, res, model, x, y)
        assert res.threat_index is None


@FIXTURE_OK
@given(sizes=st.tuples(*[st.floats(0.0, 1.0)] * 3), data_seed=st.integers(0, 2**16))
def test_union_attacks_stay_in_the_union_and_name_the_member(
    sizes, data_seed, tiny_cnn, toy_images
):
    model = tiny_cnn(seed=data_seed % 5).eval()
    x, y = toy_images(n=5, seed=data_seed)
    union = THREATS["linf"](sizes[0]) | THREATS["l2"](sizes[1]) | THREATS["l1"](sizes[2])
    for attack in union_attacks(union).values():
        res = attack(model, x, y)
        check_output(attack, res, model, x, y)
        assert res.threat_index is not None


def test_attacks_break_an_easy_model_and_report_a_member(tiny_cnn, toy_images):
    model = tiny_cnn().eval()
    x, y = toy_images(n=8)
    union = Linf(0.3) | L2(3.0) | L1(8.0)
    res = MSD(union, steps=10)(model, x, y)
    assert res.success.all()
    assert (res.threat_index >= 0).all()
    for attack in single_attacks(Linf(0.3)).values():
        assert attack(model, x, y).success.float().mean() >= 0.75


# -- the model and the inputs are left exactly as found -----------------------------------------


def _model_state(model: nn.Module):
    flags = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    req = [p.requires_grad for p in model.parameters()]
    grads = [None if p.grad is None else (p.grad, p.grad.clone()) for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    return flags, buffers, req, grads, params


def _assert_same_state(model: nn.Module, before) -> None:
    flags, buffers, req, grads, params = before
    assert [m.training for m in model.modules()] == flags
    now = dict(model.named_buffers())
    assert now.keys() == buffers.keys()
    for k, v in buffers.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), k
    assert [p.requires_grad for p in model.parameters()] == req
    for p, g in zip(model.parameters(), grads, strict=True):
        if g is None:
            assert p.grad is None
        else:
            assert p.grad is g[0] and torch.equal(p.grad, g[1])
    for p, v in zip(model.parameters(), params, strict=True):
        assert torch.equal(p.detach(), v)


def _all_attacks() -> dict[str, Attack]:
    out: dict[str, Attack] = {}
    for name in ("linf", "l2", "l1", "l0"):
        for k, a in single_attacks(THREATS[name](0.5)).items():
            out[f"{name}-{k}"] = a
    out.update(union_attacks(THREATS["linf"](0.5) | THREATS["l2"](0.5) | THREATS["l1"](0.5)))
    return out


@pytest.mark.parametrize("mixed", [True, False])
def test_model_and_inputs_untouched(mixed, tiny_cnn, toy_images):
    model = tiny_cnn()
    model.train()
    if mixed:
        model.net[1].eval()  # the BatchNorm in eval, the rest in train
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[1].grad = torch.full_like(params[1], 0.25)
    x, y = toy_images(n=4)
    x_copy, y_copy = x.clone(), y.clone()
    before = _model_state(model)
    for attack in _all_attacks().values():
        attack(model, x, y)
        _assert_same_state(model, before)
        assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
        assert not x.requires_grad and x.grad is None


def test_errors_inside_the_attack_restore_the_model(tiny_cnn, toy_images):
    model = tiny_cnn().train()
    x, y = toy_images(n=4)
    before = _model_state(model)
    with pytest.raises(UnionRobustError):
        PGD(Linf(0.1), steps=2, loss="dlr")(model, x, torch.full_like(y, 12))
    _assert_same_state(model, before)


# -- determinism and batch independence --------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda s: PGD(Linf(0.1), steps=4, restarts=2, seed=s),
        lambda s: PGD(L2(1.0), steps=4, restarts=2, seed=s),
        lambda s: PGD(L1(3.0), steps=4, restarts=2, start="zero_then_random", seed=s),
        lambda s: PGD(L0(4), steps=4, seed=s),
        lambda s: SLIDE(3.0, steps=4, restarts=2, start="random", seed=s),
        lambda s: MSD(Linf(0.1) | L2(1.0) | L1(3.0), steps=4, start="random", seed=s),
        lambda s: MSD(
            Linf(0.1) | L2(1.0) | L1(3.0), steps=4, start="random", seed=s, select="gradient"
        ),
    ],
)
def test_same_seed_same_result_other_seed_differs(make, tiny_cnn, toy_images):
    model = tiny_cnn().eval()
    x, y = toy_images(n=6)
    a = make(3)(model, x, y)
    b = make(3)(model, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.loss, b.loss)
    assert torch.equal(a.success, b.success)
    c = make(4)(model, x, y)
    assert not torch.equal(a.x_adv, c.x_adv)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PGD(Linf(0.05), steps=5, restarts=3),
        lambda: PGD(L2(0.3), steps=5, restarts=3, loss="cw"),
        lambda: PGD(L1(1.0), steps=5, restarts=3, start="zero_then_random"),
        lambda: MIM(L2(0.3), steps=5),
        lambda: SLIDE(1.0, steps=5, restarts=3, start="random"),
        lambda: MSD(Linf(0.05) | L2(0.3) | L1(1.0), steps=5, restarts=3, start="random"),
        lambda: MSD(
            Linf(0.05) | L2(0.3) | L1(1.0), steps=5, restarts=3, start="random", select="gradient"
        ),
        lambda: WorstOf([PGD(Linf(0.05), steps=3), PGD(L1(1.0), steps=3)]),
    ],
)
def test_an_example_gets_the_same_result_alone_or_in_a_batch(make, linear_model):
    # float64: batched and single-row matmuls round differently; the draws must not differ
    model = linear_model(dim=48, classes=4, seed=1).double()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(8, 3, 4, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # correctly classified: restarts have work to do
    ids = torch.arange(100, 108)
    batch = make()(model, x, y, example_ids=ids)
    for i in (0, 3, 7):
        alone = make()(model, x[i : i + 1], y[i : i + 1], example_ids=ids[i : i + 1])
        assert torch.allclose(alone.x_adv[0], batch.x_adv[i], rtol=0, atol=1e-9)
        assert bool(alone.success[0]) == bool(batch.success[i])
        if batch.threat_index is not None:
            assert int(alone.threat_index[0]) == int(batch.threat_index[i])


def test_restarts_only_attack_unbroken_examples(tiny_cnn, toy_images):
    model = tiny_cnn().eval()
    x, y = toy_images(n=6)
    one = PGD(Linf(0.3), steps=3, restarts=1)(model, x, y)
    assert one.success.all()
    counting = CountingModel(model)
    PGD(Linf(0.3), steps=3, restarts=5)(counting, x, y)
    # clean forward + 3 steps + last iterate, and no restart (everything broken)
    assert counting.sizes == [6, 6, 6, 6, 6]


def test_msd_scores_all_candidates_in_one_forward(tiny_cnn, toy_images):
    model = tiny_cnn().eval()
    x, y = toy_images(n=5)
    counting = CountingModel(model)
    MSD(Linf(0.01) | L2(0.05) | L1(0.1), steps=3)(counting, x, y)
    # clean, start, then per step: 3·B candidates (+ B for the next gradient, not after the last)
    assert counting.sizes == [5, 5, 15, 5, 15, 5, 15]


def test_one_gradient_msd_costs_one_forward_per_step(tiny_cnn, toy_images):
    model = tiny_cnn().eval()
    x, y = toy_images(n=5)
    counting = CountingModel(model)
    MSD(Linf(0.01) | L2(0.05) | L1(0.1), steps=3, select="gradient")(counting, x, y)
    # clean, start, then per step one forward over B (with the backward, except the last)
    assert counting.sizes == [5, 5, 5, 5, 5]


@pytest.mark.parametrize("start", ["zero", "random"])
@pytest.mark.parametrize(
    ("radii", "winner"), [((0.02, 0.3, 1.5), 2), ((0.05, 0.3, 1.0), 1), ((0.1, 0.5, 1.0), 0)]
)
def test_one_gradient_msd_equals_msd_when_the_loss_is_linear(start, radii, winner, linear_model):
    # two classes and the CW margin: the loss is exactly linear in x, so the first-order gain
    # g·(x_p − x) ranks the candidates as the forward does, and both runs take the same path
    model = linear_model(dim=48, classes=2, seed=3).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 4, 4, generator=g, dtype=torch.float64) * 0.5 + 0.25
    with torch.no_grad():
        y = model(x).argmax(1)
    union = Linf(radii[0]) | L2(radii[1]) | L1(radii[2])
    runs = [
        MSD(union, steps=6, loss="cw", start=start, select=sel, seed=4)(model, x, y)
        for sel in ("forward", "gradient")
    ]
    assert torch.allclose(runs[0].x_adv, runs[1].x_adv, rtol=0, atol=1e-12)
    assert torch.equal(runs[0].threat_index, runs[1].threat_index)
    assert (runs[1].threat_index == winner).all()  # each member wins in one setting
    assert torch.allclose(runs[0].loss, runs[1].loss, rtol=0, atol=1e-12)


# -- best iterate ------------------------------------------------------------------------------


class Bump(nn.Module):
    """Two logits [0, s(x)] with s = -100·(x0 - c)²: the loss for label 0 peaks at x0 = c."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x):
        s = -100.0 * (x[:, :1] - self.c) ** 2
        return torch.cat([torch.zeros_like(s), s], dim=1)


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize(
    "make",
    [
        lambda n: PGD(Linf(0.4), steps=n, alpha=0.1, start="zero"),
        lambda n: MIM(Linf(0.4), steps=n, alpha=0.1, decay=0.0),
        lambda n: MSD(Linf(0.4) | L2(0.4), steps=n, alphas=[0.1, 0.1]),
        lambda n: MSD(Linf(0.4) | L2(0.4), steps=n, alphas=[0.1, 0.1], select="gradient"),
    ],
)
def test_the_best_iterate_is_returned_not_the_last(make, steps):
    # iterates 0.5 → 0.6 → 0.7 → 0.6 → 0.7: the last is worse than the second
    x = torch.full((2, 1), 0.5, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    model = Bump(0.62)
    res = make(steps)(model, x, y)
    assert torch.allclose(res.x_adv, torch.full_like(x, 0.6))
    expected = cross_entropy(model(torch.full_like(x, 0.6)), y)
    assert torch.allclose(res.loss, expected)


@pytest.mark.parametrize("loss", ["ce", "cw", "dlr"])
def test_returned_loss_is_at_least_the_clean_loss(loss, tiny_cnn, toy_images):
    from unionrobust.losses import get_loss

    model = tiny_cnn().eval()
    x, y = toy_images(n=8)
    with torch.no_grad():
        clean = get_loss(loss)(model(x), y)
    for attack in (
        PGD(L2(0.2), steps=3, loss=loss, start="random"),
        PGD(L1(1.0), steps=3, loss=loss),
        MSD(Linf(0.02) | L2(0.2), steps=3, loss=loss, start="random"),
        MSD(Linf(0.02) | L2(0.2), steps=3, loss=loss, start="random", select="gradient"),
    ):
        res = attack(model, x, y)
        assert (res.loss >= clean - 1e-6).all()
        with torch.no_grad():
            at_adv = get_loss(loss)(model(res.x_adv), y)
        assert torch.allclose(res.loss, at_adv, atol=1e-5)


# -- errors ------------------------------------------------------------------------------------


class WrongShape(nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], -1)[:, :1]


@pytest.mark.parametrize(
    "make",
    [
        lambda: PGD(Linf(0.1), steps=2),
        lambda: MSD(Linf(0.1) | L2(0.5), steps=2),
        lambda: WorstOf([FGSM(Linf(0.1))]),
    ],
)
def test_bad_inputs_raise(make, tiny_cnn, toy_images):
    attack = make()
    model = tiny_cnn().eval()
    x, y = toy_images(n=4)
    with pytest.raises(UnionRobustError, match=r"\[0, 1\]"):
        attack(model, x + 1.5, y)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(UnionRobustError, match="NaN"):
        attack(model, bad, y)
    with pytest.raises(UnionRobustError, match="shape"):
        attack(model, x, y[:3])
    with pytest.raises(UnionRobustError, match="shape"):
        attack(model, x, y.reshape(2, 2))
    with pytest.raises(UnionRobustError, match="labels must be integers"):
        attack(model, x, y.float())
    with pytest.raises(UnionRobustError, match="labels must lie"):
        attack(model, x, torch.full_like(y, 10))
    with pytest.raises(UnionRobustError, match="logits"):
        attack(WrongShape(), x, y)
    with pytest.raises(UnionRobustError, match="example_ids"):
        attack(model, x, y, example_ids=torch.arange(3))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: PGD(Linf(0.1), steps=0), "steps"),
        (lambda: PGD(Linf(0.1), restarts=0), "restarts"),
        (lambda: PGD(Linf(0.1), steps=2.5), "steps"),
        (lambda: PGD(Linf(0.1), alpha=-1.0), "alpha"),
        (lambda: PGD(Linf(0.1), start="middle"), "valid: random, zero, zero_then_random"),
        (lambda: PGD(Linf(0.1), loss="hinge"), "valid: ce, cw, dlr"),
        (lambda: PGD(Linf(0.1), momentum=-0.1), "momentum"),
        (lambda: PGD(Linf(0.1) | L2(1.0)), "MSD or WorstOf"),
        (lambda: PGD(0.1), "ThreatModel"),
        (lambda: PGD("linf:0.1, l1:2"), "MSD or WorstOf"),
        (lambda: SLIDE(Linf(0.1)), "l1"),
        (lambda: SLIDE("12"), "radius"),
        (lambda: MSD(Linf(0.1) | L2(1.0), alphas=[0.1]), "one step size per threat"),
        (lambda: MSD("linf:0.1, l7:2"), "valid: l0, l1, l2, linf"),
        (lambda: MSD(3.0), "union"),
        (lambda: MSD("linf:0.1, l2:1", select="grad"), "valid: forward, gradient"),
        (lambda: WorstOf([]), "at least one"),
        (lambda: WorstOf([Linf(0.1)]), "combines attacks"),
    ],
)
def test_bad_parameters_raise(build, match):
    with pytest.raises(UnionRobustError, match=match):
        build()


def test_single_threat_attacks_accept_a_one_member_union():
    assert PGD(Union([L2(0.5)])).threat == L2(0.5)
    assert PGD("linf:8/255").threat == Linf(8 / 255)
    slide = SLIDE(L1(5.0, k=3), q=0.95)
    assert slide.threat.step_rule == "slide" and slide.threat.q == 0.95
    assert SLIDE(5).threat == L1(5.0, step_rule="slide", q=0.99)
    assert FGSM(L2(0.7)).alpha == pytest.approx(0.7) and FGSM(L2(0.7)).steps == 1
    assert MSD("linf:0.1, l2:1").threat == Linf(0.1) | L2(1.0)


def test_an_empty_batch_gives_an_empty_result():
    model = WrongShape()  # never called
    x = torch.rand(0, 1, 4, 4)
    y = torch.zeros(0, dtype=torch.long)
    for attack in (PGD(L1(1.0), steps=2), MSD(Linf(0.1) | L2(1.0)), WorstOf([FGSM(L2(1.0))])):
        res = attack(model, x, y)
        assert res.x_adv.shape == x.shape and res.success.shape == (0,) and res.loss.shape == (0,)
        assert (res.threat_index is None) == isinstance(attack, PGD)


def test_cw_kappa_caps_the_margin_loss(tiny_cnn, toy_images):
    model = tiny_cnn().eval()
    x, y = toy_images(n=6)
    capped = PGD(Linf(0.3), steps=4, loss="cw", kappa=0.5)(model, x, y)
    free = PGD(Linf(0.3), steps=4, loss="cw")(model, x, y)
    assert (capped.loss <= 0.5 + 1e-6).all() and (free.loss > 0.5).any()
    assert capped.success.all()
