"""The cascade engine: metric relations, cascade == everything-on-everything, re-checks."""

from __future__ import annotations

import math

import pytest
import torch
from test_eval_support import (
    THREATS,
    dummy_suite,
    linear_problem,
)

from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import evaluate, recheck
from unionrobust.threats import parse


def run(model, x, y, suite=None, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("batch_size", 10)
    return evaluate(model, x, y, threats=THREATS, suite=suite or dummy_suite(THREATS), **kw)


@pytest.fixture(scope="module")
def problem():
    return linear_problem()


@pytest.fixture(scope="module")
def full_and_cascade(problem):
    model, x, y = problem
    return run(model, x, y, cascade=False), run(model, x, y)


def test_metric_relations(full_and_cascade, problem):
    _, rep = full_and_cascade
    _, _, y = problem
    acc = rep.per_threat_accuracy
    assert rep.clean_accuracy == pytest.approx((y.numel() - 5) / y.numel())
    for a in acc.values():
        assert rep.union_accuracy <= a <= rep.clean_accuracy
    assert rep.average_accuracy == pytest.approx(sum(acc.values()) / len(acc))
    # the union verdict is the conjunction of the per-threat verdicts
    assert torch.equal(rep.union_robust, rep.threat_robust().all(dim=1))
    assert rep.union_accuracy == pytest.approx(float(rep.union_robust.double().mean()))
    # a non-trivial problem: the threats break different points, so the union is strictly
    # harder than each of them (a union computed as the min of per-threat accuracies would fail)
    assert 0 < rep.union_accuracy < min(acc.values()) < rep.clean_accuracy


def test_intervals_contain_estimates(full_and_cascade):
    _, rep = full_and_cascade
    ci = rep.intervals()
    for value, (lo, hi) in [
        (rep.clean_accuracy, ci["clean"]),
        (rep.union_accuracy, ci["union"]),
        (rep.average_accuracy, ci["average"]),
        *[(rep.per_threat_accuracy[s], ci["per_threat"][s]) for s in rep.threats],
    ]:
        assert 0 <= lo <= value <= hi <= 1
        assert hi - lo > 0


def test_cascade_equals_everything_on_everything(full_and_cascade):
    full, casc = full_and_cascade
    assert torch.equal(full.threat_robust(), casc.threat_robust())
    assert torch.equal(full.union_robust, casc.union_robust)
    # every attack ran on every point in the full run; the cascade ran a subset, with the
    # same per-example outcome (batch independence), and skipped only settled points
    assert not torch.isnan(full.norms).any()
    ran = ~torch.isnan(casc.norms)
    assert torch.equal(casc.broken[ran], full.broken[ran])
    assert torch.allclose(casc.norms[ran], full.norms[ran])
    assert casc.broken[~ran].sum() == 0
    assert sum(casc.attacked) < sum(full.attacked)
    # points the cascade skipped were already settled for that threat when the entry ran
    for e, t in enumerate(casc.entry_threat):
        settled = ~casc.threat_robust(e)[:, t]
        assert torch.equal(~ran[:, e], settled)


def test_verdicts_do_not_depend_on_batch_size(problem, full_and_cascade):
    model, x, y = problem
    _, ref = full_and_cascade
    other = run(model, x, y, batch_size=7)
    assert torch.equal(other.broken, ref.broken)
    assert torch.equal(other.threat_robust(), ref.threat_robust())


def test_example_ids_key_the_randomness(problem):
    model, x, y = problem
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    ref = run(model, x, y, suite=dummy_suite(THREATS, kinds=("noise",)))
    shuffled = run(
        model, x[perm], y[perm], suite=dummy_suite(THREATS, kinds=("noise",)), example_ids=perm
    )
    assert torch.equal(shuffled.broken, ref.broken[perm])
    assert torch.allclose(
        shuffled.norms[~shuffled.norms.isnan()], ref.norms[perm][~shuffled.norms.isnan()]
    )


@pytest.mark.parametrize("mode", ["ball", "box", "nan"])
def test_recheck_rejects_cheating_attacks(problem, mode):
    """Only points that are finite, inside the ball and inside [0, 1] (checked here
    independently) and misclassified count; the others are refused although they fool the
    model once clipped/repaired."""
    from test_eval_support import Cheater

    model, x, y = problem
    kind = {"ball": "cheater", "box": "cheater-box", "nan": "cheater-nan"}[mode]
    rep = run(model, x, y, suite=dummy_suite(THREATS, kinds=(kind,)))
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
    cheats_that_fool = 0
    for e, threat in enumerate(parse(THREATS)):
        raw = Cheater(threat, mode=mode).repaired(model, x, y)
        if mode == "nan":
            raw = raw.clone()
            raw.reshape(x.shape[0], -1)[:, 0] = float("nan")
        flat = raw.reshape(x.shape[0], -1)
        finite = torch.isfinite(flat).all(1)
        in_box = ((flat >= -1e-6) & (flat <= 1 + 1e-6)).all(1)
        in_ball = threat.norm(raw - x) <= threat.size * (1 + 1e-5) + 1e-6
        legit = finite & in_box & in_ball
        with torch.no_grad():
            fools = model(torch.where(torch.isfinite(raw), raw, x).clamp(0, 1)).argmax(1) != y
        assert torch.equal(rep.broken[:, e], clean_ok & legit & fools)
        assert rep.rejected[e] == int((clean_ok & ~(legit & fools)).sum())
        cheats_that_fool += int((clean_ok & ~legit & fools).sum())
    assert cheats_that_fool >= 10  # a lax check would have counted these
    if mode != "box":
        assert rep.broken.sum() == 0 and rep.union_accuracy == rep.clean_accuracy


def test_recheck_accepts_honest_points_and_measures_norms(problem):
    model, x, y = problem
    threat = parse("l2:0.4")[0]
    delta = torch.randn_like(x)
    delta = threat.project(delta, x)
    broken, norms = recheck(model, threat, x, y, x + delta)
    with torch.no_grad():
        wrong = model((x + delta).clamp(0, 1)).argmax(1) != y
    assert torch.equal(broken, wrong)
    assert torch.allclose(norms, threat.norm(delta).double(), atol=1e-5)
    # a point just outside the ball is refused even if it fools the model
    out = x + 1.01 * delta * (threat.size / threat.norm(delta).clamp_min(1e-12)).reshape(
        -1, 1, 1, 1
    )
    inside = threat.contains(out - x, x)
    broken_out, _ = recheck(model, threat, x, y, out)
    assert not (broken_out & ~inside).any()


def test_model_state_is_left_as_found(tiny_cnn, toy_images):
    model = tiny_cnn()
    model.train()
    model.net[0].weight.requires_grad_(False)
    x, y = toy_images(12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(
        model,
        x,
        y,
        threats="linf:0.1, l1:2",
        suite=dummy_suite("linf:0.1, l1:2"),
        batch_size=5,
        progress=False,
    )
    assert model.training and all(m.training for m in model.modules())
    assert not model.net[0].weight.requires_grad and model.net[0].bias.requires_grad
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(x, toy_images(12)[0])


def test_dataset_input_and_n(problem):
    model, x, y = problem
    data = list(zip(x, y.tolist(), strict=True))
    rep = evaluate(
        model,
        data[:],
        threats=THREATS,
        suite=dummy_suite(THREATS),
        n=20,
        progress=False,
        batch_size=8,
    )
    ref = run(model, x[:20], y[:20])
    assert rep.n_examples == 20
    assert torch.equal(rep.broken, ref.broken)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be a positive"),
        ({"n": -3}, "n must be a positive"),
        ({"batch_size": 0}, "batch size"),
        ({"threats": "linf:0.3, l5:2"}, "unknown norm"),
        ({"threats": "linf:-1"}, "radius must be"),
        ({"suite": "strongest"}, "unknown suite"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_input_is_one_line_error(problem, kwargs, match):
    model, x, y = problem
    kw = {"threats": THREATS, "suite": "quick", "progress": False, **kwargs}
    with pytest.raises(UnionRobustError, match=match) as info:
        evaluate(model, x, y, **kw)
    assert "\n" not in str(info.value)


def test_bad_data_is_refused(problem):
    model, x, y = problem
    with pytest.raises(UnionRobustError, match=r"\[0, 1\]"):
        evaluate(model, x * 3, y, threats=THREATS, suite="quick", progress=False)
    with pytest.raises(UnionRobustError, match="labels"):
        evaluate(model, x, y + 10, threats=THREATS, suite="quick", progress=False)
    with pytest.raises(UnionRobustError, match="labels y are required"):
        evaluate(model, x, threats=THREATS, suite="quick", progress=False)


def test_all_wrong_model_gives_zero_everywhere(problem):
    model, x, _ = problem
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 4
    rep = run(model, x, wrong)
    assert rep.clean_accuracy == 0 and rep.union_accuracy == 0 and rep.average_accuracy == 0
    assert rep.attacked == [0] * len(rep.entries)
    assert all(math.isnan(v) for v in rep.norms.reshape(-1).tolist())


def test_real_attacks_cascade_equals_everything(problem):
    """The library's PGD and APGD (keyed randomness) inside the engine: same verdicts either
    way, and across batch sizes."""
    from test_eval_support import real_suite

    model, x, y = problem
    union = parse(THREATS)
    suite = real_suite(THREATS)
    casc = evaluate(model, x, y, threats=THREATS, suite=suite, batch_size=16, progress=False)
    full = evaluate(
        model, x, y, threats=THREATS, suite=suite, batch_size=23, progress=False, cascade=False
    )
    assert torch.equal(casc.threat_robust(), full.threat_robust())
    ran = ~torch.isnan(casc.norms)
    assert torch.equal(casc.broken[ran], full.broken[ran])
    assert casc.union_accuracy < casc.clean_accuracy
    for e, t in enumerate(casc.entry_threat):  # every reported norm is inside the ball
        finite = ran[:, e]
        assert (casc.norms[finite, e] <= union[t].size * (1 + 1e-5) + 1e-6).all()


def test_attacks_may_stack_passes_up_to_the_batch_size(problem):
    """The engine gives every attack it builds its batch size as the row budget (stacked
    passes never hold more rows than the caller's batches)."""
    from unionrobust.attacks.apgd import APGD
    from unionrobust.evaluation.suites import Suite, SuiteEntry

    model, x, y = problem
    built = []

    def build(threat, seed):
        built.append(APGD(threat, steps=2, seed=seed))
        return built[-1]

    union = parse(THREATS)
    suite = Suite("budget", union, tuple(SuiteEntry(i, "apgd-ce", (), build) for i in range(2)))
    run(model, x[:12], y[:12], suite=suite, batch_size=7)
    assert [a.row_budget for a in built] == [7, 7]
