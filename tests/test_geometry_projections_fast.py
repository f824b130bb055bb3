"""The CPU fast paths of the ℓ1/ℓ2 ∩ box projections (row compaction, float-mask solvers) and
the sync-free masked paths give the same points as the slow references, on every solver."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from test_geometry_projections import _as_torch_eps, _eps_rows, batches, ref_l1_box, ref_l2_box

from unionrobust.geometry import projections as P

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
