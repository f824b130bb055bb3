"""The CPU fast paths of the ℓ1/ℓ2 ∩ box projections (row compaction, float-mask solvers) and
the sync-free masked paths give the same points as the slow references, on every solver."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from test_geometry_projections import _as_torch_eps, _eps_rows, batches, ref_l1_box, ref_l2_box

from unionrobust.geometry import ball_box as P
from unionrobust.geometry import steps as S

CASES = [
    (P.project_l2_box, P._project_l2_box_masked, ref_l2_box, ("active-set", "sort")),
    (P.project_l1_box, P._project_l1_box_masked, ref_l1_box, ("newton", "sort")),
]


@pytest.mark.parametrize("proj, masked, ref, methods", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=25, deadline=None)
@given(data=batches(max_b=6, max_d=30))
def test_every_path_matches_reference(proj, masked, ref, methods, dtype, data):
    a, x, eps = data
    at, xt = torch.from_numpy(a).to(dtype), torch.from_numpy(x).to(dtype)
    e = _eps_rows(eps, a.shape[0])
    tol = 2e-5 if dtype == torch.float32 else 1e-8
    outs = [proj(at, xt, _as_torch_eps(eps), m) for m in ("auto", *methods)]
    outs += [masked(at, xt, _as_torch_eps(eps), m) for m in ("auto", *methods)]
    for z in outs:
        assert z.dtype == dtype
        zn = z.double().numpy()
        for i in range(a.shape[0]):
            zr = ref(a[i].astype(np.float64), x[i].astype(np.float64), float(e[i]))
            assert np.allclose(zn[i], zr, atol=tol), (i, zn[i], zr)


@pytest.mark.parametrize("proj, p", [(P.project_l2_box, 2), (P.project_l1_box, 1)])
def test_mixed_batch_keeps_inside_rows_bit_exact_and_is_row_independent(proj, p):
    """Rows inside ball ∩ box come back bit-exact; the others equal their one-row projection."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(8, 1, 12, 12, generator=g)
    x[:, :, :4] = 0.0
    d = torch.randn(8, 1, 12, 12, generator=g) * 0.3
    d[::2] *= 1e-3  # inside
    d = torch.clamp(d, -x, 1 - x)
    eps = torch.full((8,), 0.8)
    z = proj(d, x, eps)
    for i in range(8):
        zi = proj(d[i : i + 1], x[i : i + 1], eps[i : i + 1])
        assert torch.equal(z[i : i + 1], zi)
    assert torch.equal(z[::2], d[::2])
    norms = z.flatten(1).norm(p=p, dim=1)
    assert torch.all(norms[1::2] <= 0.8 * (1 + 1e-6)) and torch.all(norms[1::2] >= 0.8 * 0.999)
    assert torch.all(z >= -x) and torch.all(z <= 1 - x)


@pytest.mark.parametrize("proj", [P.project_l2_box, P.project_l1_box])
def test_unknown_method_raises(proj):
    a, x = torch.ones(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError):
        proj(a, x, 0.5, "bisect")


# ------------------------------------------------------------ steps: chunked top-k, fast paths


def _ref_topk_direction(flat, k_t, score):
    """The tie-breaking rule spelled out: the k largest scores, ties towards low indices."""
    out = torch.zeros_like(flat)
    for i in range(flat.shape[0]):
        order = sorted(range(flat.shape[1]), key=lambda j: (-float(score[i, j]), j))
        pick = [j for j in order[: int(k_t[i])] if score[i, j] > 0]
        for j in pick:
            out[i, j] = torch.sign(flat[i, j]) / max(len(pick), 1)
    return out


@pytest.mark.parametrize("d", [5, 64, 300, 784])
def test_chunked_top_values_equal_topk(d):
    g = torch.Generator().manual_seed(d)
    s = torch.randint(0, 6, (7, d), generator=g).float()  # many ties and zeros
    for k in sorted({1, min(3, d), min(d // 64 + 1, d), min(2 * (d // 64), d), min(20, d), d}):
        assert torch.equal(S._top_values(s, k), s.topk(k, dim=1).values)  # numpy sort
        h = s.to(torch.bfloat16)  # not a numpy dtype: torch's (chunked) topk
        assert torch.equal(S._top_values(h, k), h.topk(k, dim=1).values)


@pytest.mark.parametrize("ties", [False, True])
def test_l1_topk_direction_fast_path_matches_rule(ties):
    g = torch.Generator().manual_seed(int(ties))
    grad = torch.randn(6, 300, generator=g)
    if ties:
        grad = torch.round(grad * 2) / 2  # ties at the k-th value overflow the k slots
    grad[0] = 0.0
    x_adv = torch.rand(6, 300, generator=g).round()
    mov = S.box_movable(grad, x_adv)
    k = torch.tensor([1, 3, 7, 13, 20, 5])
    out = S.l1_topk_direction(grad, k, mov, k_max=20)
    ref = _ref_topk_direction(grad, k, grad.abs() * mov)
    assert torch.allclose(out, ref, atol=1e-7, rtol=0)


@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 0.99])
def test_slide_direction_threshold_matches_kthvalue(q):
    g = torch.Generator().manual_seed(7)
    grad = torch.round(torch.randn(5, 784, generator=g) * 4) / 4
    rank = S.percentile_index(q, 784)
    thr = grad.abs().kthvalue(rank + 1, dim=1, keepdim=True).values
    e = torch.sign(grad) * ((grad.abs() >= thr) & (grad != 0))
    ref = e / e.abs().sum(dim=1, keepdim=True).clamp_min(1)
    assert torch.equal(S.slide_direction(grad, q), ref)
    mov = S.box_movable(grad, torch.rand(5, 784, generator=g).round())
    for m in (mov, mov.float()):  # a bool or a float mask
        out = S.slide_direction(grad, q, m)
        score = grad.abs() * mov
        thr_m = score.kthvalue(rank + 1, dim=1, keepdim=True).values
        e = torch.sign(grad) * ((score >= thr_m) & (score > 0))
        assert torch.equal(out, e / e.abs().sum(dim=1, keepdim=True).clamp_min(1))


def test_box_movable_matches_its_definition_on_edge_values():
    vals = [-2, -1, -1e-30, -0.0, 0.0, 1e-45, 1e-30, 0.3, 1 - 1e-7, 1, 1 + 1e-7, 2]
    vals += [float("nan"), float("inf"), -float("inf")]
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor(vals, dtype=dtype)
        g, x = torch.meshgrid(t, t, indexing="ij")
        ref = ~(((x >= 1) & (g > 0)) | ((x <= 0) & (g < 0)))
        assert torch.equal(S.box_movable(g, x), ref)
        assert torch.equal(S.box_movable(g, x, dtype), ref.to(dtype))


@pytest.mark.parametrize("method", ["auto", "active-set", "sort"])
def test_l2_box_scale_keeps_small_free_coordinates_next_to_huge_clipped_ones(method):
    """Σ of the free a² summed directly: as total − Σ_clipped it cancelled to 0 when the clipped
    coordinates were 10⁹ times larger (the free coordinate then jumped to its face)."""
    x = torch.ones(1, 12, dtype=torch.float64)
    a = torch.full((1, 12), 1e9, dtype=torch.float64)
    a[0, 0] = -1.0  # the only coordinate with room: 1 towards 0
    e = torch.tensor([[0.5]], dtype=torch.float64)
    t = P.l2_box_scale(a, -x, 1.0 - x, e, method=method)
    z = torch.minimum(torch.maximum(t * a, -x), 1.0 - x)
    want = torch.zeros_like(a)
    want[0, 0] = -0.5
    assert torch.allclose(z, want, atol=1e-12)
    ref = ref_l2_box(a[0].numpy(), x[0].numpy(), 0.5)
    assert np.allclose(z[0].numpy(), ref, atol=1e-9)
    assert torch.allclose(P.project_l2_box(a, x, e[:, 0], method), want, atol=1e-12)
