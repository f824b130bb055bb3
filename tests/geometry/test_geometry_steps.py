"""Steepest-ascent directions: norms, sparsity, box awareness, and the dual-norm optimality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unionrobust.geometry import (
    box_movable,
    l1_topk_direction,
    l2_direction,
    linf_direction,
    slide_direction,
)
from unionrobust.geometry.steps import percentile_index

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def grads(draw, max_b: int = 4, max_d: int = 16):
    b = draw(st.integers(1, max_b))
    d = draw(st.integers(1, max_d))
    elem = st.one_of(st.just(0.0), st.floats(-10.0, 10.0, width=32, allow_subnormal=False))
    return torch.from_numpy(draw(hnp.arrays(np.float32, (b, d), elements=elem)))


def _nonzero_rows(g: torch.Tensor) -> torch.Tensor:
    return (g != 0).any(dim=1)


DIRECTIONS = {
    "linf": linf_direction,
    "l2": l2_direction,
    "l1_single": lambda g: l1_topk_direction(g, 1),
    "l1_topk": lambda g: l1_topk_direction(g, 3),
    "slide": lambda g: slide_direction(g, 0.8),
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_zero_gradient_gives_zero_step(name):
    g = torch.zeros(3, 1, 4, 4)
    g[1, 0, 0, 0] = 1.0  # one nonzero row between zero rows
    s = DIRECTIONS[name](g)
    assert s.shape == g.shape
    assert torch.isfinite(s).all()
    assert torch.equal(s[0], torch.zeros_like(s[0])) and torch.equal(s[2], torch.zeros_like(s[2]))
    assert s[1].abs().sum() > 0


@SETTINGS
@given(g=grads(), alpha=st.floats(1e-3, 5.0))
def test_step_norms(g, alpha):
    nz = _nonzero_rows(g)
    s_inf = alpha * linf_direction(g)
    assert torch.allclose(s_inf.abs().amax(1)[nz], torch.tensor(alpha), rtol=1e-6)
    s2 = alpha * l2_direction(g)
    assert torch.allclose(s2.norm(dim=1)[nz], torch.tensor(alpha, dtype=s2.dtype), rtol=1e-5)
    assert torch.all(s2[~nz] == 0)


def test_l2_direction_survives_underflow_and_overflow():
    g = torch.tensor([[1e-30, -1e-30, 0.0], [3e30, 4e30, 0.0]])
    s = l2_direction(g)
    assert torch.allclose(s.norm(dim=1), torch.ones(2), rtol=1e-6)
    assert torch.allclose(s[1], torch.tensor([0.6, 0.8, 0.0]))


@SETTINGS
@given(g=grads(), k1=st.integers(1, 6), extra=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_l1_random_k_norm_and_sparsity(g, k1, extra, seed):
    k2 = k1 + extra
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(k1, k2 + 1, (g.shape[0],), generator=gen)
    s = l1_topk_direction(g, k, k_max=k2)
    assert torch.equal(s, l1_topk_direction(g, k))  # k_max is only a hint
    l1 = s.abs().sum(1)
    nnz = (s != 0).sum(1)
    assert torch.all(l1 <= 1 + 1e-6)
    assert torch.all(nnz <= k)
    nz = _nonzero_rows(g)
    assert torch.allclose(l1[nz], torch.ones(int(nz.sum())), rtol=1e-6)
    # chosen coordinates carry the gradient's sign and are among the largest |g_i|
    assert torch.all(s * g >= 0)
    for i in range(g.shape[0]):
        chosen = s[i] != 0
        if chosen.any():
            rest = g[i].abs()[~chosen]
            assert rest.numel() == 0 or g[i].abs()[chosen].min() >= rest.max()
            # per-coordinate step α/k' with k' = the number of coordinates used
            assert torch.allclose(s[i][chosen].abs(), torch.tensor(1.0 / int(chosen.sum())))
            assert int(chosen.sum()) == min(int(k[i]), int((g[i] != 0).sum()))


def test_l1_topk_ties_and_batch_independence():
    g = torch.tensor([[1.0, -3.0, 3.0, 3.0, 0.5], [5.0, 5.0, 5.0, 5.0, 5.0]])
    s = l1_topk_direction(g, torch.tensor([2, 3]))
    assert s[0].tolist() == [0.0, -0.5, 0.5, 0.0, 0.0]  # ties -> lowest indices
    assert torch.allclose(s[1], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]) / 3)
    for i in range(2):  # a row alone, with another k_max, gives the same direction
        alone = l1_topk_direction(g[i : i + 1], torch.tensor([2, 3])[i : i + 1], k_max=5)
        assert torch.equal(alone[0], s[i])


@SETTINGS
@given(g=grads(max_d=40), q=st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99]))
def test_slide_selects_the_percentile(g, q):
    s = slide_direction(g, q)
    for i in range(g.shape[0]):
        score = g[i].abs().double().numpy()
        chosen = (s[i] != 0).numpy()
        if not score.any():
            assert not chosen.any()
            continue
        rank = percentile_index(q, score.size)
        thresh = np.sort(score)[rank]
        expected = (score >= thresh) & (score > 0)
        assert np.array_equal(chosen, expected)
        # the rule is "≥ the linearly interpolated percentile" (numpy's default) up to the
        # float rounding of q(d - 1) at exact integers
        pct = np.percentile(score, 100 * q)
        looser = (score >= pct - 1e-12) & (score > 0)
        assert chosen.sum() <= looser.sum() and np.all(looser[chosen])
        assert abs(float(s[i].abs().sum()) - 1.0) < 1e-6
        assert torch.all(torch.sign(s[i][s[i] != 0]) == torch.sign(g[i][s[i] != 0]))


def test_slide_count_on_distinct_values():
    d = 100
    g = torch.arange(1, d + 1, dtype=torch.float32).reshape(1, d) * (-1) ** torch.arange(d)
    for q in (0.5, 0.9, 0.95, 0.99):
        s = slide_direction(g, q)
        assert int((s != 0).sum()) == d - math.ceil(q * (d - 1))


def test_box_movable_and_pinned_coordinates_never_chosen():
    # MSD App. A.2: coordinates at the box edge whose gradient points outside cannot move
    x_adv = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.5, 0.5]])
    g = torch.tensor([[9.0, -8.0, -1.0, 1.0, 0.5, -0.4]])
    mov = box_movable(g, x_adv)
    assert mov.tolist() == [[False, False, True, True, True, True]]
    for s in (
        l1_topk_direction(g, 1, mov),
        l1_topk_direction(g, 3, mov),
        l1_topk_direction(g, torch.tensor([4]), mov),
        slide_direction(g, 0.5, mov),
    ):
        assert s[0, 0] == 0 and s[0, 1] == 0
        assert abs(float(s.abs().sum()) - 1) < 1e-6
    assert l1_topk_direction(g, 1, mov)[0, 2] == -1.0  # the largest movable |g_i|
    # a fully pinned row gives a zero step
    assert torch.equal(l1_topk_direction(g[:, :2], 2, mov[:, :2]), torch.zeros(1, 2))


@SETTINGS
@given(g=grads(max_d=12), seed=st.integers(0, 2**16))
def test_steepest_ascent_attains_the_dual_norm(g, seed):
    """s maximises <g, s> over the unit ball of the norm: <g, s> = ‖g‖_dual, and no random
    unit vector does better (ℓ∞ -> ‖g‖1, ℓ2 -> ‖g‖2, ℓ1 single coordinate -> ‖g‖∞)."""
    gd = g.double()
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(64, g.shape[1], generator=gen, dtype=torch.float64)
    cases = [
        (linf_direction(g), gd.abs().sum(1), v / v.abs().amax(1, keepdim=True)),
        (l2_direction(g), gd.norm(dim=1), v / v.norm(dim=1, keepdim=True)),
        (l1_topk_direction(g, 1), gd.abs().amax(1), v / v.abs().sum(1, keepdim=True)),
    ]
    for s, dual, unit in cases:
        gain = (gd * s.double()).sum(1)
        assert torch.allclose(gain, dual, rtol=1e-5, atol=1e-6)
        assert torch.all(gd @ unit.T <= gain[:, None] + 1e-5 * (1 + dual[:, None]))
