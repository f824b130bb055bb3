"""Row-wise batch helpers shared by the geometry and the attacks: every tensor is a batch whose
first dimension is the example."""

from __future__ import annotations

import torch

#: a radius: one float for the batch or a (B,) tensor, one per example
Eps = float | torch.Tensor


def flat(t: torch.Tensor) -> torch.Tensor:
    """``t`` as (B, d) rows."""
    return t.reshape(t.shape[0], -1)


def col(eps: Eps, ref: torch.Tensor) -> torch.Tensor:
    """``eps`` as a (B, 1) column in ref's dtype/device."""
    e = torch.as_tensor(eps, dtype=ref.dtype, device=ref.device)
    if e.dim() == 0:
        return e.reshape(1, 1).expand(ref.shape[0], 1)
    return e.reshape(-1, 1)


def rows(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A per-example (B,) tensor shaped (B, 1, ..., 1) to broadcast against the batch ``ref``."""
    return t.reshape(-1, *([1] * (ref.dim() - 1)))


def groups_clear(done: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per row, whether no row of its group is ``done`` (bool (R,); ``group`` the rows' group
    ids, all < ``n_groups``): the rows of an example run side by side (targets, restarts) stop
    together once one of them broke it."""
    hits = torch.zeros(n_groups, dtype=torch.long, device=group.device)
    return hits.index_add_(0, group, done.long())[group] == 0


def work_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for the breakpoint sums: as cheap as float32 next to the sort, and it keeps the
    float32 results exact to a few ulps even for tiny ε (no cancellation in |a| − λ)."""
    return torch.float64
