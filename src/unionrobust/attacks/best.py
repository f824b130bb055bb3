"""Keep each example's best adversarial input across iterations and restarts."""

from __future__ import annotations

import torch


class BestTracker:
    """Per-example best so far: a success beats a failure; among equals, the higher loss wins.

    ``update`` is fully vectorised (no ``.item()``), so it adds no host sync to attack loops.
    """

    def __init__(self, x: torch.Tensor, loss: torch.Tensor, success: torch.Tensor) -> None:
        self.x_adv = x.detach().clone()
        self.loss = loss.detach().clone()
        self.success = success.detach().clone()
        self.threat_index: torch.Tensor | None = None

    def update(
        self,
        x_adv: torch.Tensor,
        loss: torch.Tensor,
        success: torch.Tensor,
        index: torch.Tensor | None = None,
        threat_index: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Fold in candidates for rows ``index`` (all rows if None); return the improved mask."""
        idx = slice(None) if index is None else index
        old_loss, old_succ = self.loss[idx], self.success[idx]
        better = (success & ~old_succ) | ((success == old_succ) & (loss > old_loss))
        shape = (-1,) + (1,) * (x_adv.dim() - 1)
        self.x_adv[idx] = torch.where(better.reshape(shape), x_adv.detach(), self.x_adv[idx])
        self.loss[idx] = torch.where(better, loss.detach(), old_loss)
        self.success[idx] = old_succ | success
        if threat_index is not None:
            if self.threat_index is None:
                self.threat_index = torch.full_like(self.loss, -1, dtype=torch.int64)
            ti = torch.as_tensor(threat_index, device=self.loss.device).expand_as(better)
            self.threat_index[idx] = torch.where(better, ti, self.threat_index[idx])
        return better
