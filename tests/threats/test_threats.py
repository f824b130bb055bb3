"""Threat models: containment of random starts and projections, membership tests, steps,
spec parsing and errors, unions, equality."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from unionrobust.errors import UnionRobustError
from unionrobust.rng import KeyedRandom
from unionrobust.threats import L0, L1, L2, Linf, ThreatModel, Union, as_union, parse

SETTINGS = settings(max_examples=40, deadline=None)


def _threat(norm: str, eps: float) -> ThreatModel:
    return {"linf": Linf, "l2": L2, "l1": L1, "l0": lambda e: L0(max(1, round(e * 4)))}[norm](eps)


def _data(seed: int, b: int = 4, shape=(1, 5, 5), extreme: bool = True):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, *shape, generator=g)
    if extreme:  # pixels at 0 and 1: no room in one direction
        x[:, :, 0] = 0.0
        x[:, :, 1] = 1.0
    return x, g


NORMS = ["linf", "l2", "l1", "l0"]


@SETTINGS
@given(norm=st.sampled_from(NORMS), eps=st.floats(0.01, 30.0), seed=st.integers(0, 10_000))
def test_random_init_and_project_are_contained(norm, eps, seed):
    t = _threat(norm, eps)
    x, g = _data(seed)
    rand = KeyedRandom.for_batch(seed, x.shape[0], "cpu")
    d0 = t.random_init(x, rand, counter=3)
    assert d0.shape == x.shape and d0.dtype == x.dtype
    assert t.contains(d0, x).all()
    assert torch.all(x + d0 >= 0) and torch.all(x + d0 <= 1)
    # same keys -> same start; a sub-batch gets identical rows
    assert torch.equal(t.random_init(x, rand, counter=3), d0)
    sub = rand.subset(torch.tensor([2, 0]))
    assert torch.equal(t.random_init(x[[2, 0]], sub, counter=3), d0[[2, 0]])
    # projection of anything lands inside, and the random start is a fixed point
    wild = torch.randn(x.shape, generator=g) * 3
    p = t.project(wild, x)
    assert t.contains(p, x).all()
    assert torch.allclose(t.project(d0, x), d0, atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_random_init_is_not_trivial(norm):
    t = _threat(norm, 2.0 if norm != "linf" else 0.3)
    x, _ = _data(0, b=8, extreme=False)
    rand = KeyedRandom.for_batch(1, 8, "cpu")
    d0 = t.random_init(x, rand)
    assert (d0.flatten(1).abs().sum(1) > 0).all()
    assert not torch.equal(d0, t.random_init(x, rand, counter=1))  # new counter, new start


@SETTINGS
@given(
    norm=st.sampled_from(["linf", "l2", "l1"]), scale=st.floats(0.01, 1.0), seed=st.integers(0, 999)
)
def test_contains_rejects_out_of_ball_and_out_of_box(norm, scale, seed):
    x, g = _data(seed, extreme=False)
    x = x * 0.5 + 0.25  # room >= 0.25 on both sides
    v = (torch.rand(x.shape, generator=g) - 0.5) * 0.5 * scale  # inside the box
    base = _threat(norm, 1.0)
    for i in range(x.shape[0]):
        vi, xi = v[i : i + 1], x[i : i + 1]
        r = float(base.norm(vi))
        on_sphere = base.with_size(r)
        assert on_sphere.contains(vi, xi).all()
        assert base.with_size(r * 1.001).contains(vi, xi).all()
        assert not base.with_size(r / 1.001).contains(vi, xi).any()  # out of the ball
        w = vi.clone()
        w[0, 0, 2, 2] = -xi[0, 0, 2, 2] - 1e-3  # out of the box (and the ball is huge)
        assert not base.with_size(100.0).contains(w, xi).any()


def test_contains_l0_counts_coordinates():
    t = L0(2)
    x = torch.full((1, 1, 2, 2), 0.5)
    ok = torch.tensor([[[[0.1, -0.2], [0.0, 0.0]]]])
    bad = torch.tensor([[[[0.1, -0.2], [0.1, 0.0]]]])
    assert t.contains(ok, x).all() and not t.contains(bad, x).any()
    assert not t.contains(torch.tensor([[[[0.6, 0.0], [0.0, 0.0]]]]), x).any()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_steps_have_the_right_size(norm):
    t = _threat(norm, 1.0)
    x, g = _data(0, b=3, extreme=False)
    grad = torch.randn(x.shape, generator=g)
    rand = KeyedRandom.for_batch(0, 3, "cpu")
    alpha = torch.tensor([0.1, 0.2, 0.3])
    s = t.step(grad, alpha, torch.zeros_like(x), x, rand, 0)
    size = {"linf": lambda v: v.abs().amax(1), "l2": lambda v: v.norm(dim=1),
            "l1": lambda v: v.abs().sum(1)}[norm](s.flatten(1))  # fmt: skip
    assert torch.allclose(size, alpha, rtol=1e-5)
    assert torch.all(s.flatten(1) * grad.flatten(1) >= 0)


@SETTINGS
@given(k1=st.integers(1, 5), extra=st.integers(0, 5), seed=st.integers(0, 999))
def test_l1_random_k_step_sparsity_and_pinned_pixels(k1, extra, seed):
    t = L1(3.0, step_rule="random_k", k_range=(k1, k1 + extra))
    x, g = _data(seed, b=6, extreme=True)
    grad = torch.randn(x.shape, generator=g) * 5
    grad[:, :, 1] = grad[:, :, 1].abs() + 100  # huge gradients pointing out of the box at x = 1
    grad[:, :, 0] = -grad[:, :, 0].abs() - 100  # ... and at x = 0
    rand = KeyedRandom.for_batch(seed, 6, "cpu")
    s = t.step(grad, 0.5, torch.zeros_like(x), x, rand, counter=7)
    nnz = (s.flatten(1) != 0).sum(1)
    assert torch.all((nnz >= k1) & (nnz <= k1 + extra))
    assert torch.equal(s[:, :, :2], torch.zeros_like(s[:, :, :2]))
    assert torch.allclose(s.flatten(1).abs().sum(1), torch.full((6,), 0.5))
    # the sparsity is keyed by example: a sub-batch reproduces its rows
    s_sub = t.step(grad[[4, 1]], 0.5, torch.zeros_like(x[[4, 1]]), x[[4, 1]],
                   rand.subset(torch.tensor([4, 1])), counter=7)  # fmt: skip
    assert torch.equal(s_sub, s[[4, 1]])


def test_l1_step_rules():
    x, g = _data(0, b=2, shape=(1, 10, 10), extreme=False)
    grad = torch.randn(x.shape, generator=g)
    zero = torch.zeros_like(x)
    single = L1(1.0, step_rule="single").step(grad, 1.0, zero, x)
    assert torch.all((single.flatten(1) != 0).sum(1) == 1)
    topk = L1(1.0, step_rule="topk", k=7).step(grad, 1.0, zero, x)
    assert torch.all((topk.flatten(1) != 0).sum(1) == 7)
    slide = L1(1.0, step_rule="slide", q=0.9).step(grad, 1.0, zero, x)
    assert torch.all((slide.flatten(1) != 0).sum(1) == 100 - 90)  # ceil(0.9 * 99) = 90
    with pytest.raises(UnionRobustError, match="KeyedRandom"):
        L1(1.0).step(grad, 1.0, zero, x)
    for bad in [dict(step_rule="nope"), dict(k_range=(3, 2)), dict(k=0), dict(q=1.0)]:
        with pytest.raises(UnionRobustError):
            L1(1.0, **bad)


def test_with_size_keeps_settings():
    t = L1(10.0, step_rule="slide", k_range=(2, 9), k=4, q=0.95)
    u = t.with_size(5.0)
    assert isinstance(u, L1) and u.eps == 5.0 and t.eps == 10.0
    assert (u.step_rule, u.k_range, u.k, u.q) == ("slide", (2, 9), 4, 0.95)
    assert Linf(0.1).with_size(0.2) == Linf(0.2)
    assert L0(3).with_size(5) == L0(5)
    with pytest.raises(UnionRobustError):
        L0(3).with_size(2.5)
    with pytest.raises(UnionRobustError):
        L2(1.0).with_size(-1.0)


# ----------------------------------------------------------------------------- parse / union


def test_parse_accepts_specs_and_aliases():
    u = parse("linf:8/255, l2:0.5, l1:12")
    assert isinstance(u, Union) and len(u) == 3
    assert u.members == (Linf(8 / 255), L2(0.5), L1(12.0))
    assert parse(" L_INF : 0.3 ;l_2:2 , L1:1e1, l0:5") == Union(
        [Linf(0.3), L2(2.0), L1(10.0), L0(5)]
    )
    assert parse("inf:0.1")[0] == Linf(0.1) and parse("l∞:0.1")[0] == Linf(0.1)
    assert parse(L2(1.0)) == Union([L2(1.0)])
    assert parse(u) is u


@SETTINGS
@given(norm=st.sampled_from(["linf", "l2", "l1"]), eps=st.floats(1e-4, 100.0))
def test_spec_round_trips_exactly(norm, eps):
    t = _threat(norm, eps)
    assert parse(t.spec)[0] == t
    assume(t != L2(1.5))  # a union lists each ball once (duplicates are refused)
    assert parse(str(as_union(t | _threat("l2", 1.5)))) == t | L2(1.5)


def test_spec_is_readable():
    assert Linf(8 / 255).spec == "linf:8/255"
    assert L2(0.5).spec == "l2:0.5" and L0(7).spec == "l0:7"
    assert parse("linf:0.3, l1:10").spec == "linf:0.3, l1:10"


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("lfoo:1", "'lfoo'"),
        ("l2:1, lx:2", "'lx'"),
        ("l2:-1", "'l2:-1'"),
        ("l2:0", "'l2:0'"),
        ("l2:abc", "'abc'"),
        ("l1:1/0", "'1/0'"),
        ("l2:nan", "'l2:nan'"),
        ("l2:inf", "'l2:inf'"),
        ("l0:2.5", "'l0:2.5'"),
        ("l2", "'l2'"),
        ("l2:", "'l2:'"),
        ("", "empty"),
        ("   ", "empty"),
        ("l2:1,", "trailing comma"),
        ("l2:1,,l1:2", "empty"),
        (", l2:1", "empty"),
    ],
)
def test_parse_errors_are_one_line_and_name_the_token(spec, fragment):
    with pytest.raises(UnionRobustError) as info:
        parse(spec)
    msg = str(info.value)
    assert "\n" not in msg
    assert fragment in msg


def test_unknown_norm_lists_valid_ones():
    with pytest.raises(UnionRobustError, match="valid: l0, l1, l2, linf"):
        parse("l3:1")


def test_parse_rejects_non_text():
    with pytest.raises(UnionRobustError):
        parse(3.0)  # type: ignore[arg-type]


def test_union_flattens_and_compares():
    a, b, c = Linf(0.3), L2(2.0), L1(10.0)
    u = a | b | c
    assert isinstance(u, Union) and u.members == (a, b, c)
    assert (a | (b | c)).members == (a, b, c)
    assert Union([a | b, c]).members == (a, b, c)
    assert u == parse("linf:0.3, l2:2, l1:10") and hash(u) == hash(parse("linf:0.3,l2:2,l1:10"))
    assert list(u) == [a, b, c] and u[1] == b and len(u) == 3
    assert as_union(a) == Union([a]) and as_union(u) is u
    with pytest.raises(UnionRobustError):
        Union([])
    with pytest.raises(UnionRobustError):
        Union([a, "l2:1"])  # type: ignore[list-item]


def test_threat_equality_and_hash():
    assert Linf(0.3) == Linf(0.3) and hash(Linf(0.3)) == hash(Linf(0.3))
    assert Linf(0.3) != L2(0.3) and L2(0.3) != L2(0.4)
    assert L1(10.0) != L1(10.0, step_rule="slide")
    assert len({Linf(0.3), Linf(0.3), L2(1.0), L1(1.0)}) == 3


def test_union_contains_is_any_member():
    u = parse("linf:0.1, l1:1")
    x = torch.full((3, 1, 2, 2), 0.5)
    d = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.4, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]])
    assert u.contains(d.reshape(3, 1, 2, 2), x).tolist() == [True, True, False]


@pytest.mark.parametrize("eps", [0, -1, float("nan"), float("inf"), "x", None])
def test_constructor_rejects_bad_radius(eps):
    for cls in (Linf, L2, L1, L0):
        with pytest.raises(UnionRobustError):
            cls(eps)  # type: ignore[arg-type]
