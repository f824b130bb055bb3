"""Keep each example's best adversarial input across iterations and restarts."""

from __future__ import annotations

import torch


class BestTracker:
    """Per-example best so far: a success beats a failure; among equals, the higher loss wins.

    ``update`` is fully vectorised (no ``.item()``), so it adds no host sync to attack loops.
    ``threat_index`` stays ``None`` until an update passes one; rows never improved keep -1.
    """

    def __init__(self, x: torch.Tensor, loss: torch.Tensor, success: torch.Tensor) -> None:
        self.x_adv = x.detach().clone()
        self.loss = loss.detach().clone()
        self.success = success.detach().clone()
        self.threat_index: torch.Tensor | None = None

    def _ensure_index(self) -> torch.Tensor:
        if self.threat_index is None:
            self.threat_index = torch.full_like(self.loss, -1, dtype=torch.int64)
        return self.threat_index

    def update(
        self,
        x_adv: torch.Tensor,
        loss: torch.Tensor,
        success: torch.Tensor,
        index: torch.Tensor | None = None,
        threat_index: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Fold in candidates for rows ``index`` (all rows if None); return the improved mask."""
        if index is None:
            old_loss, old_succ = self.loss, self.success
        else:
            old_loss, old_succ = self.loss[index], self.success[index]
        better = (success & ~old_succ) | ((success == old_succ) & (loss > old_loss))
        shape = (-1,) + (1,) * (x_adv.dim() - 1)
        if index is None:
            # rebinding (no in-place copy): the cheapest form inside attack loops
            self.x_adv = torch.where(better.reshape(shape), x_adv.detach(), self.x_adv)
            self.loss = torch.where(better, loss.detach(), old_loss)
            self.success = old_succ | success
        else:
            self.x_adv[index] = torch.where(
                better.reshape(shape), x_adv.detach(), self.x_adv[index]
            )
            self.loss[index] = torch.where(better, loss.detach(), old_loss)
            self.success[index] = old_succ | success
        if threat_index is not None:
            current = self._ensure_index()
            ti = torch.as_tensor(threat_index, device=self.loss.device, dtype=torch.int64)
            ti = ti.expand_as(better)
            if index is None:
                self.threat_index = torch.where(better, ti, current)
            else:
                current[index] = torch.where(better, ti, current[index])
        return better

    def subset(self, index: torch.Tensor) -> BestTracker:
        """A tracker holding copies of rows ``index`` (for a restart on the remaining rows)."""
        sub = BestTracker(self.x_adv[index], self.loss[index], self.success[index])
        if self.threat_index is not None:
            sub.threat_index = self.threat_index[index].clone()
        return sub

    def merge(self, other: BestTracker, index: torch.Tensor) -> None:
        """Write back a tracker made by ``subset(index)`` (its rows only ever improved)."""
        self.x_adv[index] = other.x_adv
        self.loss[index] = other.loss
        self.success[index] = other.success
        if other.threat_index is not None:
            self._ensure_index()[index] = other.threat_index


class PayloadTracker(BestTracker):
    """A :class:`BestTracker` whose rows carry ``payload`` tensors taken from the same iterate
    (per-domain losses, transformation parameters, decompositions), and whose ``success`` may
    be a count: more is better (the number of domains fooled; a bool success is the count 0/1,
    so the rule is the base rule: a success beats a failure, then the higher loss).
    """

    def __init__(self, x, loss, success, payload: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(x, loss, success)
        self.payload = {k: v.detach().clone() for k, v in (payload or {}).items()}

    def update(self, x_adv, loss, success, index=None, threat_index=None, payload=None):
        """As :meth:`BestTracker.update` (``threat_index`` too), plus ``payload`` rows."""
        if success.dtype == torch.bool and self.success.dtype == torch.bool:
            better = super().update(x_adv, loss, success, index, threat_index)
        else:
            rows = slice(None) if index is None else index
            old_s, old_l = self.success[rows], self.loss[rows]
            better = (success > old_s) | ((success == old_s) & (loss > old_l))
            shape = (-1,) + (1,) * (x_adv.dim() - 1)
            self.x_adv[rows] = torch.where(better.reshape(shape), x_adv.detach(), self.x_adv[rows])
            self.loss[rows] = torch.where(better, loss.detach(), old_l)
            self.success[rows] = torch.maximum(success, old_s)
        for key, value in (payload or {}).items():
            rows = slice(None) if index is None else index
            old = self.payload[key][rows]
            mask = better.reshape((-1,) + (1,) * (value.dim() - 1))
            self.payload[key][rows] = torch.where(mask, value.detach().to(old.dtype), old)
        return better

    def subset(self, index: torch.Tensor) -> PayloadTracker:
        sub = PayloadTracker(self.x_adv[index], self.loss[index], self.success[index])
        sub.payload = {k: v[index].clone() for k, v in self.payload.items()}
        if self.threat_index is not None:
            sub.threat_index = self.threat_index[index].clone()
        return sub

    def merge(self, other: BestTracker, index: torch.Tensor) -> None:
        super().merge(other, index)
        for k, v in getattr(other, "payload", {}).items():
            self.payload[k][index] = v
