"""Counter-based keyed RNG: range, purity (batch independence), decorrelation, integer ranges.

All statistical checks use fixed seeds, so they are deterministic; the tolerances are many
standard errors wide and would still catch a broken hash (constant, repeated or shifted
streams).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unionrobust.errors import UnionRobustError
from unionrobust.rng import (
    KeyedRandom,
    default_ids,
    keyed_bits,
    keyed_normal,
    keyed_randint,
    keyed_randint_window,
    keyed_uniform,
    keyed_uniform_steps,
)

IDS = torch.arange(120)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_uniform_range_and_moments(dtype):
    u = keyed_uniform(0, IDS, 0, (300,), dtype)
    assert u.dtype == dtype and u.shape == (120, 300)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    u64 = u.double()
    assert abs(float(u64.mean()) - 0.5) < 0.01  # standard error ~ 0.0015
    assert abs(float(u64.var()) - 1 / 12) < 0.005
    hist = torch.histc(u64, bins=10, min=0, max=1)
    assert float(hist.min()) > 0.9 * u.numel() / 10 and float(hist.max()) < 1.1 * u.numel() / 10


def test_uniform_depends_only_on_seed_id_counter():
    ids = torch.tensor([7, 3, 1000, 2**40 + 5, -2])
    full = keyed_uniform(11, ids, 4, (3, 4))
    assert full.shape == (5, 3, 4)
    assert torch.equal(full, keyed_uniform(11, ids, 4, (3, 4)))
    perm = torch.tensor([3, 0, 4])
    assert torch.equal(keyed_uniform(11, ids[perm], 4, (3, 4)), full[perm])
    # the same example id in another batch, at another position
    other = torch.tensor([99, 1000])
    assert torch.equal(keyed_uniform(11, other, 4, (3, 4))[1], full[2])
    # KeyedRandom.subset keeps the keys (index tensor or bool mask)
    rand = KeyedRandom(11, ids)
    mask = torch.tensor([True, False, True, False, False])
    assert torch.equal(rand.subset(mask).uniform(4, (3, 4)), full[mask])
    assert torch.equal(rand.subset(perm).normal(4, (6,)), rand.normal(4, (6,))[perm])
    assert torch.equal(rand.subset(perm).randint(4, 0, 9), rand.randint(4, 0, 9)[perm])


def test_streams_are_decorrelated():
    base = keyed_uniform(0, IDS, 0, (300,))
    others = {
        "next counter": keyed_uniform(0, IDS, 1, (300,)),
        "next seed": keyed_uniform(1, IDS, 0, (300,)),
        "shifted ids": keyed_uniform(0, IDS + 1, 0, (300,)),
        "seed/id shift": keyed_uniform(0x9E37, IDS - 1, 0, (300,)),
        "big seed": keyed_uniform(2**32, IDS, 0, (300,)),
        "normal, same counter": keyed_normal(0, IDS, 0, (300,)),
    }
    for name, other in others.items():
        assert abs(_corr(base, other)) < 0.03, name  # standard error ~ 0.0053
        assert not torch.equal(base, other), name
    # neighbouring coordinates and neighbouring examples of one draw
    assert abs(_corr(base[:, :-1], base[:, 1:])) < 0.03
    assert abs(_corr(base[:-1], base[1:])) < 0.03
    # no repeated values across examples beyond what 24-bit collisions allow
    assert torch.unique(base).numel() > 0.99 * base.numel()


def test_bits_cover_32_bits_and_streams_differ():
    bits = keyed_bits(5, IDS, 0, 128)
    assert int(bits.min()) >= 0 and int(bits.max()) < 2**32
    assert int(bits.max()) > 2**31  # the top bit is used
    for bit in (0, 15, 31):
        frac = float(((bits >> bit) & 1).double().mean())
        assert abs(frac - 0.5) < 0.02
    assert not torch.equal(bits, keyed_bits(5, IDS, 0, 128, stream=1))


def test_normal_moments_and_finiteness():
    z = keyed_normal(3, IDS, 2, (300,), torch.float64)
    assert torch.isfinite(z).all()
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    assert abs(float((z**4).mean()) - 3) < 0.15  # Gaussian kurtosis
    assert keyed_normal(3, IDS, 2, (4, 5)).shape == (IDS.numel(), 4, 5)


@pytest.mark.parametrize("low, high", [(5, 20), (0, 0), (-3, 3), (1, 1000)])
def test_randint_inclusive_range_covered(low, high):
    ids = torch.arange(6000)
    k = keyed_randint(9, ids, 0, low, high)
    assert k.shape == (6000,) and k.dtype == torch.int64
    assert int(k.min()) == low and int(k.max()) == high
    if high - low < 50:
        counts = torch.bincount(k - low, minlength=high - low + 1).double()
        expected = 6000 / (high - low + 1)
        assert float(counts.min()) > 0.75 * expected and float(counts.max()) < 1.25 * expected
    assert abs(_corr(k, keyed_randint(9, ids, 1, low, high))) < 0.05 or low == high


def test_randint_rejects_empty_range():
    with pytest.raises(UnionRobustError):
        keyed_randint(0, IDS, 0, 5, 4)


def test_default_ids_and_for_batch():
    assert torch.equal(default_ids(4, "cpu"), torch.arange(4))
    r = KeyedRandom.for_batch(2, 4, "cpu")
    assert torch.equal(r.ids, torch.arange(4))
    r2 = KeyedRandom.for_batch(2, 2, "cpu", ids=torch.tensor([2, 3], dtype=torch.int32))
    assert r2.ids.dtype == torch.int64
    assert torch.equal(r2.uniform(0, (3,)), r.uniform(0, (3,))[2:])


# -- the counter table (rng.COUNTER_RANGES) ---------------------------------------------------


def test_counter_ranges_are_disjoint_and_named_counters_lie_in_them():
    from unionrobust import rng

    spans = sorted(rng.COUNTER_RANGES.values())
    assert all(start < stop for start, stop in spans)
    for (_, stop), (start, _) in itertools.pairwise(spans):
        assert stop <= start, spans  # half-open ranges never overlap
    assert spans[-1][1] <= 1 << 32  # counters are absorbed as one 32-bit word
    named = {
        "step": rng.STEP_COUNTER,
        "beta": rng.BETA_COUNTER,
        "transform": rng.TRANSFORM_COUNTER,
        "member": rng.MEMBER_COUNTER,
        "spatial-draw": rng.SPATIAL_DRAW_COUNTER,
        "decision": rng.DECISION_COUNTER,
        "init": rng.INIT_COUNTER,
    }
    assert {k: v[0] for k, v in rng.COUNTER_RANGES.items()} == named


def test_attack_modules_use_the_table():
    """pgd and msd take their counters from the table (imported, no own copy)."""
    from unionrobust import rng
    from unionrobust.attacks import msd, pgd

    assert pgd.INIT_COUNTER == rng.INIT_COUNTER
    assert msd.MEMBER_COUNTER == rng.MEMBER_COUNTER


def test_member_and_spatial_draws_no_longer_collide():
    """MSD's member choice (randint at MEMBER_COUNTER + restart) and the worst-of-k spatial draw
    (randint at the draw counter + j) use the same stream. With both at 2**29 (the old table)
    the member predicts the half of the lattice drawn for every example: a real collision. The
    new spatial range gives unrelated draws."""
    from unionrobust.rng import MEMBER_COUNTER, SPATIAL_DRAW_COUNTER
    from unionrobust.threats.spatial import RotationTranslation

    rt = RotationTranslation(30, 3)
    grid = rt.grid("cpu")
    n_grid = grid.shape[0]
    ids = torch.arange(4000)
    rand = KeyedRandom(7, ids)
    member = rand.randint(MEMBER_COUNTER, 0, 1)  # MSD over two members, restart 0

    def lattice_half(counter):
        theta = rt.random_params(rand, counter)
        idx = (grid[None] == theta[:, None]).all(-1).float().argmax(1)
        return (idx >= (n_grid + 1) // 2).long()

    old = lattice_half(MEMBER_COUNTER)  # the old DRAW_COUNTER value
    assert bool((old == member).float().mean() > 0.99)  # the collision
    new = lattice_half(SPATIAL_DRAW_COUNTER)
    agree = float((new == member).float().mean())
    assert 0.45 < agree < 0.55  # independent draws agree half the time


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**62),
    start=st.integers(0, 2**32 - 64),
    count=st.integers(1, 40),
    low=st.integers(-50, 50),
    span=st.integers(1, 2**31),
)
def test_randint_window_is_bit_identical_to_one_draw_per_counter(seed, start, count, low, span):
    ids = torch.tensor([0, 1, 7, 2**40 + 3], dtype=torch.int64)
    high = low + span - 1
    table = keyed_randint_window(seed, ids, start, count, low, high)
    ref = torch.stack([keyed_randint(seed, ids, start + j, low, high) for j in range(count)], 1)
    assert torch.equal(table, ref)
    windowed = KeyedRandom(seed, ids).with_window(start, count)
    for j in (0, count - 1):
        assert torch.equal(windowed.randint(start + j, low, high), ref[:, j])
    # outside the window and after subset, the plain draw
    assert torch.equal(
        windowed.randint(start + count, low, high),
        keyed_randint(seed, ids, start + count, low, high),
    )
    sub = windowed.subset(torch.tensor([2, 0]))
    assert torch.equal(sub.randint(start, low, high), ref[[2, 0], 0])


def test_pgd_l1_random_k_results_do_not_depend_on_the_batched_draws(monkeypatch):
    """PGD/MSD draw a restart's random k all at once (``with_window``); turning that off (one
    keyed_randint per step, as before) gives bit-identical adversarial examples."""
    from unionrobust.attacks import MSD, PGD
    from unionrobust.threats import L1

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 4)).eval()
    x = torch.rand(6, 1, 6, 6)
    y = model(x).argmax(1)
    attacks = [
        PGD(L1(0.6), steps=7, restarts=2, seed=5),
        MSD("linf:0.02, l1:0.5", steps=5, restarts=2, start="random"),
    ]
    batched = [a(model, x, y).x_adv for a in attacks]
    monkeypatch.setattr(KeyedRandom, "with_window", lambda self, start, count: self)
    plain = [a(model, x, y).x_adv for a in attacks]
    for b, p in zip(batched, plain, strict=True):
        assert torch.equal(b, p)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**62),
    counter=st.integers(0, 2**31),
    offsets=st.lists(st.integers(0, 2**31), min_size=4, max_size=4),
)
def test_shifted_rows_draw_what_their_counter_plus_offset_draws(seed, counter, offsets):
    """Row i of a shifted batch draws, for counter c, exactly the draw of c + offsets[i] of its
    example (stacked passes: each pass's rows shifted by its counter step)."""
    ids = torch.tensor([0, 5, 5, 2**40 + 1], dtype=torch.int64)
    off = torch.tensor(offsets, dtype=torch.int64)
    keys = KeyedRandom(seed, ids).shifted(off)
    for i in range(4):
        one = KeyedRandom(seed, ids[i : i + 1])
        c = counter + offsets[i]
        assert torch.equal(keys.uniform(counter, (3, 2))[i], one.uniform(c, (3, 2))[0])
        assert torch.equal(keys.normal(counter, (5,))[i], one.normal(c, (5,))[0])
        assert torch.equal(keys.randint(counter, -3, 9)[i], one.randint(c, -3, 9)[0])
    # offsets follow subset and add up; the window's integer table is shifted too
    sub = keys.subset(torch.tensor([3, 1]))
    assert torch.equal(sub.uniform(counter, (2,)), keys.uniform(counter, (2,))[[3, 1]])
    twice = keys.shifted(torch.full((4,), 7))
    assert torch.equal(twice.uniform(counter, (2,)), keys.uniform(counter + 7, (2,)))
    window = keys.with_window(counter, 3)
    assert torch.equal(window.randint(counter + 2, 0, 99), keys.randint(counter + 2, 0, 99))
    with pytest.raises(UnionRobustError, match="one counter offset per row"):
        keys.shifted(torch.zeros(3, dtype=torch.int64))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**62), start=st.integers(0, 2**31), numel=st.integers(1, 9))
def test_uniform_steps_is_bit_identical_to_one_draw_per_counter(seed, start, numel):
    ids = torch.tensor([0, 1, 7, 2**40 + 3], dtype=torch.int64)
    counters = start + 8 * torch.arange(6)
    table = keyed_uniform_steps(seed, ids, counters, numel, torch.float64)
    for t, c in enumerate(counters.tolist()):
        assert torch.equal(table[:, t], keyed_uniform(seed, ids, c, (numel,), torch.float64))
    off = torch.tensor([0, 3, 1, 2])
    shifted = KeyedRandom(seed, ids).shifted(off).uniform_steps(counters, numel)
    for i in range(4):
        ref = KeyedRandom(seed, ids[i : i + 1]).uniform_steps(counters + off[i], numel)
        assert torch.equal(shifted[i], ref[0])
