"""Projections vs independent slow references (numpy float64 bisection / brute force).

Checked for random batches (hypothesis): feasibility (ball and box), optimality (distance equal
to the reference's, and the variational inequality <a - z, y - z> <= 0 against random feasible
points y), idempotence, rows already inside returned bit-exact, and batch independence.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unionrobust.geometry import (
    ball_box,
    project_box,
    project_l0_box,
    project_l1,
    project_l1_box,
    project_l2,
    project_l2_box,
    project_linf,
    project_linf_box,
    project_simplex,
)
from unionrobust.geometry.ball_box import l1_box_threshold, l2_box_scale

SETTINGS = settings(max_examples=40, deadline=None)

# ----------------------------------------------------------------------------- references


def _bisect_decreasing(f, lo: float, hi: float, target: float, iters: int = 200) -> float:
    """Root of a nonincreasing f on [lo, hi] (f(lo) >= target >= f(hi))."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def ref_l1(a: np.ndarray, eps: float) -> np.ndarray:
    if np.abs(a).sum() <= eps:
        return a.copy()
    lam = _bisect_decreasing(
        lambda t: np.maximum(np.abs(a) - t, 0).sum(), 0.0, np.abs(a).max(), eps
    )
    return np.sign(a) * np.maximum(np.abs(a) - lam, 0)


def ref_l1_box(a: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    room = np.where(a >= 0, 1 - x, x)
    clip = np.sign(a) * np.minimum(np.abs(a), room)
    if np.abs(clip).sum() <= eps:
        return clip

    def mass(t: float) -> float:
        return np.minimum(np.maximum(np.abs(a) - t, 0), room).sum()

    lam = _bisect_decreasing(mass, 0.0, np.abs(a).max(), eps)
    return np.sign(a) * np.minimum(np.maximum(np.abs(a) - lam, 0), room)


def ref_l2_box(a: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    clip = np.clip(a, -x, 1 - x)
    if np.linalg.norm(clip) <= eps:
        return clip
    # ‖clip(t a)‖ is nondecreasing in t: bisection on -‖·‖
    t = _bisect_decreasing(lambda s: -np.linalg.norm(np.clip(s * a, -x, 1 - x)), 0.0, 1.0, -eps)
    return np.clip(t * a, -x, 1 - x)


def ref_l0_box_distance(a: np.ndarray, x: np.ndarray, k: int) -> float:
    """Brute force over all supports of size <= k."""
    clip = np.clip(a, -x, 1 - x)
    best = np.inf
    for size in range(0, min(k, a.size) + 1):
        for support in itertools.combinations(range(a.size), size):
            z = np.zeros_like(a)
            z[list(support)] = clip[list(support)]
            best = min(best, float(np.sum((a - z) ** 2)))
    return best


def ref_simplex(v: np.ndarray) -> np.ndarray:
    mu = _bisect_decreasing(
        lambda m: np.maximum(v - m, 0).sum(), v.min() - 1.0, v.max(), 1.0, iters=300
    )
    return np.maximum(v - mu, 0)


def random_feasible(rng, x: np.ndarray, eps: float, p: int, n: int) -> np.ndarray:
    """n points of ball ∩ box: random box points, sparse corners and ball-surface points,
    scaled into the ball (the box contains 0, so scaling down keeps them in the box)."""
    d = x.size
    pts = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            y = rng.uniform(-x, 1 - x)
        elif kind == 1:  # a few coordinates pushed to the box
            y = np.zeros(d)
            idx = rng.choice(d, size=rng.integers(1, d + 1), replace=False)
            y[idx] = np.where(rng.random(idx.size) < 0.5, -x[idx], 1 - x[idx])
        else:
            y = rng.normal(size=d)
            y = np.clip(y, -x, 1 - x)
        norm = np.abs(y).sum() if p == 1 else np.linalg.norm(y)
        if norm > eps:
            y = y * (eps / norm)
        pts.append(y)
    return np.stack(pts)


# ----------------------------------------------------------------------------- strategies


@st.composite
def batches(draw, max_b: int = 4, max_d: int = 10, zeros_ok: bool = True):
    b = draw(st.integers(1, max_b))
    d = draw(st.integers(1, max_d))
    elem = st.floats(-2.0, 2.0, width=32, allow_subnormal=False)
    a = draw(hnp.arrays(np.float32, (b, d), elements=elem))
    xs = st.one_of(
        st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0, width=32, allow_subnormal=False)
    )
    x = draw(hnp.arrays(np.float32, (b, d), elements=xs))
    eps = draw(
        st.one_of(
            st.floats(0.0009765625, 4.0, width=32),
            hnp.arrays(np.float32, (b,), elements=st.floats(0.0009765625, 4.0, width=32)),
        )
    )
    return a, x, eps


def _eps_rows(eps, b: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(eps, dtype=np.float64), (b,)).copy()


def _as_torch_eps(eps):
    return torch.tensor(eps) if isinstance(eps, np.ndarray) else float(eps)


BOX_CASES = [
    (project_l1_box, ref_l1_box, 1),
    (project_l2_box, ref_l2_box, 2),
]


def _norm(z: np.ndarray, p: int) -> np.ndarray:
    return np.abs(z).sum(axis=-1) if p == 1 else np.linalg.norm(z, axis=-1)


# ----------------------------------------------------------------------------- ball ∩ box


@pytest.mark.parametrize("proj, ref, p", BOX_CASES, ids=["l1_box", "l2_box"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@SETTINGS
@given(data=batches())
def test_ball_box_projection_matches_reference(proj, ref, p, dtype, data):
    a, x, eps = data
    b = a.shape[0]
    z = proj(torch.from_numpy(a).to(dtype), torch.from_numpy(x).to(dtype), _as_torch_eps(eps))
    assert z.dtype == dtype and z.shape == a.shape
    zn = z.double().numpy()
    e = _eps_rows(eps, b)
    a64, x64 = a.astype(np.float64), x.astype(np.float64)
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    # feasibility: ball and box
    assert np.all(_norm(zn, p) <= e * (1 + tol) + tol)
    assert np.all(zn >= -x64 - tol) and np.all(zn <= 1 - x64 + tol)
    rng = np.random.default_rng(0)
    for i in range(b):
        zr = ref(a64[i], x64[i], e[i])
        dist, dist_ref = np.linalg.norm(a64[i] - zn[i]), np.linalg.norm(a64[i] - zr)
        # optimality: same distance as the reference, hence (strict convexity) same point
        assert abs(dist - dist_ref) <= 1e-5 * (1 + dist_ref)
        assert np.allclose(zn[i], zr, atol=2e-5 if dtype == torch.float32 else 1e-8)
        # variational inequality of the projection onto a convex set, and no closer point
        ys = random_feasible(rng, x64[i], e[i], p, 30)
        assert np.all((ys - zn[i]) @ (a64[i] - zn[i]) <= 1e-5 * (1 + dist))
        assert np.all(np.linalg.norm(a64[i] - ys, axis=1) >= dist - 1e-5)


@pytest.mark.parametrize("proj, ref, p", BOX_CASES, ids=["l1_box", "l2_box"])
@SETTINGS
@given(data=batches())
def test_ball_box_projection_idempotent_and_batch_independent(proj, ref, p, data):
    a, x, eps = data
    at, xt, et = torch.from_numpy(a), torch.from_numpy(x), _as_torch_eps(eps)
    z = proj(at, xt, et)
    zz = proj(z, xt, et)
    assert torch.allclose(zz, z, atol=1e-6, rtol=0)
    # each row alone gives the same answer as inside the batch
    for i in range(a.shape[0]):
        ei = et[i : i + 1] if isinstance(et, torch.Tensor) else et
        zi = proj(at[i : i + 1], xt[i : i + 1], ei)
        assert torch.equal(zi[0], z[i])


@pytest.mark.parametrize("proj", [project_l1_box, project_l2_box], ids=["l1_box", "l2_box"])
@SETTINGS
@given(data=batches(), frac=st.floats(0.0, 1.0))
def test_rows_inside_are_returned_bit_exact(proj, data, frac):
    a, x, eps = data
    b = a.shape[0]
    e = _eps_rows(eps, b)
    # make row 0 feasible by construction: clip to the box, shrink into the ℓ1 ball (which is
    # inside the ℓ2 ball), keep float32 exactly representable
    inside = np.clip(a[0], -x[0], 1 - x[0]).astype(np.float64)
    l1 = np.abs(inside).sum()
    if l1 > 0:
        inside = inside * (frac * (1 - 1e-5) * e[0] / l1 if l1 > e[0] else frac)
    inside = inside.astype(np.float32)
    inside = np.clip(inside, -x[0], (1 - x[0].astype(np.float32)))
    a = a.copy()
    a[0] = inside
    at = torch.from_numpy(a)
    z = proj(at, torch.from_numpy(x), _as_torch_eps(eps))
    assert torch.equal(z[0], at[0])


def test_ball_box_accepts_image_shapes_and_tensor_eps():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 4, 4, generator=g)
    a = torch.randn(5, 1, 4, 4, generator=g)
    eps = torch.tensor([0.1, 0.5, 1.0, 2.0, 50.0])
    for proj, p in [(project_l1_box, 1), (project_l2_box, 2)]:
        z = proj(a, x, eps)
        assert z.shape == a.shape
        norms = z.flatten(1).norm(p=p, dim=1)
        assert torch.all(norms <= eps * (1 + 1e-6))
        assert torch.all(x + z >= -1e-7) and torch.all(x + z <= 1 + 1e-7)
        # the huge-ε row is just the box clip
        assert torch.equal(z[4], project_box(a[4], x[4]))
        # the binding rows sit on the sphere
        assert torch.allclose(norms[:3], eps[:3], rtol=1e-5)


def test_ball_box_edge_cases():
    # x at 0 and 1 (no room in one direction), zero rows, d = 1, tiny eps, ties
    x = torch.tensor([[0.0, 1.0, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3], [1.0, 1.0, 0.0, 0.0]])
    a = torch.tensor([[-1.0, 1.0, 0.7, -0.7], [0.0, 0.0, 0.0, 0.0], [0.5, -0.5, -0.5, 0.5]])
    for proj in (project_l1_box, project_l2_box):
        z = proj(a, x, 1e-6)
        assert torch.isfinite(z).all()
        assert z[0, 0] == 0 and z[0, 1] == 0  # pinned coordinates never move
        assert torch.equal(z[1], a[1])
        assert torch.all(x + z >= 0) and torch.all(x + z <= 1)
        d1 = proj(torch.tensor([[3.0]]), torch.tensor([[0.2]]), 0.5)
        assert torch.allclose(d1, torch.tensor([[0.5]]))
    z = project_l1_box(a, x, 0.2)
    assert torch.allclose(z[0, 2:], torch.tensor([0.1, -0.1]))  # ties share the budget


@SETTINGS
@given(data=batches())
def test_linf_box_is_clip(data):
    a, x, eps = data
    e = _eps_rows(eps, a.shape[0])[:, None]
    z = project_linf_box(torch.from_numpy(a), torch.from_numpy(x), _as_torch_eps(eps)).numpy()
    expected = np.clip(np.clip(a, -e, e), -x, 1 - x)
    assert np.allclose(z, expected, atol=1e-7)


# ----------------------------------------------------------------------------- plain balls


@SETTINGS
@given(data=batches(max_d=12))
def test_l1_ball_matches_reference(data):
    a, _, eps = data
    b = a.shape[0]
    e = _eps_rows(eps, b)
    at = torch.from_numpy(a)
    z = project_l1(at, _as_torch_eps(eps)).double().numpy()
    assert np.all(np.abs(z).sum(1) <= e * (1 + 2e-6) + 1e-7)
    for i in range(b):
        zr = ref_l1(a[i].astype(np.float64), e[i])
        assert np.allclose(z[i], zr, atol=2e-5)
        if np.abs(a[i]).sum() <= np.float32(e[i]):
            assert torch.equal(torch.from_numpy(a[i]), torch.from_numpy(z[i]).float())
    zz = project_l1(torch.from_numpy(z).float(), _as_torch_eps(eps))
    assert np.allclose(zz.numpy(), z, atol=1e-6)


def test_l1_ball_edge_cases():
    z = project_l1(torch.zeros(2, 5), 1.0)
    assert torch.equal(z, torch.zeros(2, 5))
    tiny = project_l1(torch.tensor([[2.0, -2.0, 1.0]]), 1e-6)
    assert torch.allclose(tiny, torch.tensor([[5e-7, -5e-7, 0.0]]), rtol=1e-5, atol=0)
    assert torch.allclose(project_l1(torch.tensor([[-3.0]]), 0.5), torch.tensor([[-0.5]]))
    ties = project_l1(torch.ones(1, 4), 2.0)
    assert torch.allclose(ties, torch.full((1, 4), 0.5))


@SETTINGS
@given(data=batches(max_d=12))
def test_l2_and_linf_balls(data):
    a, _, eps = data
    e = _eps_rows(eps, a.shape[0])
    at = torch.from_numpy(a).double()
    z2 = project_l2(at, _as_torch_eps(eps)).numpy()
    a = a.astype(np.float64)
    expected = a * np.minimum(
        1, e[:, None] / np.maximum(np.linalg.norm(a, axis=1), 1e-300)[:, None]
    )
    assert np.allclose(z2, expected, atol=1e-6)
    zi = project_linf(at, _as_torch_eps(eps)).numpy()
    assert np.allclose(zi, np.clip(a, -e[:, None], e[:, None]))


# ----------------------------------------------------------------------------- ℓ0 ∩ box


@settings(max_examples=40, deadline=None)
@given(data=batches(max_b=3, max_d=6), k=st.integers(0, 6))
def test_l0_box_matches_brute_force(data, k):
    a, x, _ = data
    z = project_l0_box(torch.from_numpy(a).double(), torch.from_numpy(x).double(), k).numpy()
    a64, x64 = a.astype(np.float64), x.astype(np.float64)
    for i in range(a.shape[0]):
        assert np.count_nonzero(z[i]) <= k
        assert np.all(z[i] >= -x64[i] - 1e-12) and np.all(z[i] <= 1 - x64[i] + 1e-12)
        dist = float(np.sum((a64[i] - z[i]) ** 2))
        assert dist <= ref_l0_box_distance(a64[i], x64[i], k) + 1e-9


# ----------------------------------------------------------------------------- simplex


@SETTINGS
@given(
    v=hnp.arrays(
        np.float64, st.tuples(st.integers(1, 4), st.integers(1, 8)), elements=st.floats(-1e3, 1e3)
    )
)
def test_simplex_matches_reference(v):
    w = project_simplex(torch.from_numpy(v)).numpy()
    assert np.all(w >= 0)
    assert np.allclose(w.sum(1), 1.0, atol=1e-9)
    for i in range(v.shape[0]):
        assert np.allclose(w[i], ref_simplex(v[i]), atol=1e-7)
    assert np.allclose(project_simplex(torch.from_numpy(w)).numpy(), w, atol=1e-12)


def test_simplex_edge_cases():
    assert torch.equal(project_simplex(torch.tensor([[5.0]])), torch.tensor([[1.0]]))
    assert torch.allclose(project_simplex(torch.zeros(1, 4)), torch.full((1, 4), 0.25))
    w = project_simplex(torch.tensor([[1e6, 1e6, -1e6]], dtype=torch.float32))
    assert torch.allclose(w, torch.tensor([[0.5, 0.5, 0.0]]))


@pytest.mark.parametrize("eps", [1e-4, 0.05, 3.0, 40.0])
def test_mnist_sized_rows_keep_float32_accuracy(eps):
    """d = 784 in float32: the constraint is met to ~1e-6 relative and the point matches the
    float64 reference, also for tiny ε (no cancellation in |a| − λ)."""
    rng = np.random.default_rng(1)
    x = rng.random((3, 784)).astype(np.float32)
    x[:, :300] = 0.0  # MNIST-like: many black pixels
    a = (rng.standard_normal((3, 784)) * 0.3).astype(np.float32)
    at, xt = torch.from_numpy(a), torch.from_numpy(x)
    a, x = a.astype(np.float64), x.astype(np.float64)
    cases = [
        (project_l1_box(at, xt, eps), lambda i: ref_l1_box(a[i], x[i], eps), 1),
        (project_l2_box(at, xt, eps), lambda i: ref_l2_box(a[i], x[i], eps), 2),
        (project_l1(at, eps), lambda i: ref_l1(a[i], eps), 1),
    ]
    for z, ref, p in cases:
        zn = z.double().numpy()
        for i in range(3):
            zr = ref(i)
            norm_ref = _norm(zr, p)
            assert _norm(zn[i], p) <= eps * (1 + 1e-6)
            assert abs(_norm(zn[i], p) - norm_ref) <= 1e-5 * norm_ref
            assert np.abs(zn[i] - zr).max() <= 1e-6 * max(eps, 1.0)


@settings(max_examples=30, deadline=None)
@given(data=batches(max_d=40))
def test_l2_box_solvers_agree(data):
    """The active-set and sorted-breakpoint solvers of the ℓ2 ∩ box scale give the same t."""
    a, x, eps = data
    at, xt = torch.from_numpy(a).double(), torch.from_numpy(x).double()
    e = torch.as_tensor(_eps_rows(eps, a.shape[0])).reshape(-1, 1)
    t_sort = l2_box_scale(at, -xt, 1 - xt, e, method="sort")
    t_act = l2_box_scale(at, -xt, 1 - xt, e, method="active-set")
    inside = np.linalg.norm(np.clip(a, -x, 1 - x).astype(np.float64), axis=1) <= e[:, 0].numpy()
    assert np.all(t_act.numpy()[inside] == 1.0)
    assert torch.allclose(t_act, t_sort, rtol=1e-9, atol=1e-12)


def test_l2_box_falls_back_to_sort_when_active_set_is_cut_short(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 50, generator=g)
    a = torch.randn(6, 50, generator=g)
    full = project_l2_box(a, x, 1.5)
    monkeypatch.setattr(ball_box, "L2_BOX_ACTIVE_SET_ITERS", 0)
    cut = project_l2_box(a, x, 1.5)
    assert torch.allclose(cut, full, atol=1e-6)
    for i in range(6):
        ref = ref_l2_box(a[i].double().numpy(), x[i].double().numpy(), 1.5)
        assert np.allclose(cut[i].double().numpy(), ref, atol=2e-6)
    with pytest.raises(ValueError):
        l2_box_scale(a, -x, 1 - x, torch.ones(6, 1), method="bisect")


@settings(max_examples=30, deadline=None)
@given(data=batches(max_d=40))
def test_l1_box_solvers_agree(data):
    """Newton and sorted-breakpoint solvers of the ℓ1 ∩ box threshold give the same λ."""
    a, x, eps = data
    at, xt = torch.from_numpy(a).double(), torch.from_numpy(x).double()
    e = torch.as_tensor(_eps_rows(eps, a.shape[0])).reshape(-1, 1)
    room = torch.where(at >= 0, 1 - xt, xt)
    lam_sort = l1_box_threshold(at.abs(), room, e, method="sort")
    lam_newton = l1_box_threshold(at.abs(), room, e, method="newton")
    assert torch.allclose(lam_newton, lam_sort, rtol=1e-9, atol=1e-12)


def test_l1_box_falls_back_to_sort_when_newton_is_cut_short(monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, 50, generator=g)
    a = torch.randn(6, 50, generator=g)
    full = project_l1_box(a, x, 2.0)
    monkeypatch.setattr(ball_box, "L1_BOX_NEWTON_ITERS", 0)
    cut = project_l1_box(a, x, 2.0)
    assert torch.allclose(cut, full, atol=1e-6)
    for i in range(6):
        ref = ref_l1_box(a[i].double().numpy(), x[i].double().numpy(), 2.0)
        assert np.allclose(cut[i].double().numpy(), ref, atol=2e-6)
    with pytest.raises(ValueError):
        l1_box_threshold(a.abs(), x, torch.ones(6, 1), method="bisect")
