"""Search attacks for the rotation-translation threat (Engstrom et al. 2019, used by Tramèr &
Boneh 2019 §4): the exhaustive grid attack and the worst-of-k random attack.

Both evaluate candidate transforms ``T_θ(x)`` of the threat's lattice
(:meth:`RotationTranslation.grid`) and keep per example a success first, then the highest loss.
With ``shrink=True`` (default) each further candidate is evaluated only on the examples not yet
misclassified, so a batch costs about (#lattice points tried until broken) forwards per example;
``shrink=False`` evaluates every candidate on every example and returns the loss-maximising one
(the worst grid point). No gradients: forwards only, batched as ``max_batch`` images at a time.

The grid attack is exact within the lattice: an example is reported robust iff no lattice point
breaks it. The result carries ``params`` (B, 3): the θ of each returned input (zeros = clean), which
:meth:`RotationTranslation.contains` re-checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unionrobust.attacks.base import Attack, AttackResult, forward, misclassified
from unionrobust.attacks.best import PayloadTracker
from unionrobust.errors import UnionRobustError, check_int
from unionrobust.losses import get_loss
from unionrobust.rng import SPATIAL_DRAW_COUNTER, KeyedRandom
from unionrobust.threats import SearchedThreat, ThreatModel, Union
from unionrobust.threats.spatial import RotationTranslation, rotate_translate


@dataclass
class SpatialResult(AttackResult):
    """An :class:`AttackResult` plus ``params`` (B, 3): (degrees, tx, ty) of each ``x_adv``."""

    params: torch.Tensor | None = None


def spatial_threat(threat: ThreatModel | Union, who: str) -> RotationTranslation:
    if isinstance(threat, Union) and len(threat) == 1:
        threat = threat[0]
    if not isinstance(threat, RotationTranslation):
        spec = getattr(threat, "spec", type(threat).__name__)
        raise UnionRobustError(
            f"{who} attacks a rotation-translation threat ('rt:30:3'), got {spec}"
        )
    return threat


class _Search(Attack):
    threat_kind = SearchedThreat

    def __init__(
        self,
        threat: RotationTranslation,
        loss: str = "ce",
        kappa: float | None = None,
        shrink: bool = True,
        max_batch: int = 2048,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(spatial_threat(threat, type(self).__name__), seed=seed, amp=amp)
        self.loss_name = loss
        self.loss_fn = get_loss(loss, kappa)
        self.shrink = bool(shrink)
        self.max_batch = check_int("max_batch", max_batch, 1)

    def candidates(self, rand: KeyedRandom, b: int, device) -> list[torch.Tensor] | torch.Tensor:
        """The θ tried, in order: a list of per-example (B, 3) tensors, or an (N, 3) tensor of
        points tried on every example (sliced in chunks; no list of N row tensors)."""
        raise NotImplementedError

    def _run(self, model, x, y, rand, clean_logits) -> SpatialResult:
        b = x.shape[0]
        params = torch.zeros(b, 3, device=x.device, dtype=torch.float64)
        tracker = PayloadTracker(
            x, self.loss_fn(clean_logits, y), misclassified(clean_logits, y), {"params": params}
        )
        cands = self.candidates(rand, b, x.device)
        per_chunk = max(1, self.max_batch // max(b, 1))
        for s in range(0, len(cands), per_chunk):
            rows = (~tracker.success).nonzero().squeeze(1) if self.shrink else None
            if rows is not None and rows.numel() == 0:
                break
            idx = torch.arange(b, device=x.device) if rows is None else rows
            n = idx.numel()
            chunk = cands[s : s + per_chunk]
            pts = torch.cat([(c if c.dim() == 2 else c.expand(b, 3))[idx] for c in chunk])
            xs = x[idx].repeat(len(chunk), *([1] * (x.dim() - 1)))
            xt = rotate_translate(xs, pts).clamp_(0.0, 1.0)
            logits = forward(model, xt, self.amp)
            ys = y[idx].repeat(len(chunk))
            loss, succ = self.loss_fn(logits, ys), misclassified(logits, ys)
            for j in range(len(chunk)):  # in order: ties keep the earlier point
                part = slice(j * n, (j + 1) * n)
                payload = {"params": pts[part].double()}
                tracker.update(xt[part], loss[part], succ[part], index=idx, payload=payload)
        return SpatialResult(
            tracker.x_adv, tracker.success, tracker.loss, None, tracker.payload["params"]
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threat!r}, shrink={self.shrink})"


class GridAttack(_Search):
    """Exhaustive search over the threat's lattice (Engstrom et al.: 31 angles × 5 × 5 shifts);
    ``shrink=False`` returns each example's worst (highest-loss) lattice point."""

    name = "spatial-grid"

    def candidates(self, rand, b, device):
        return self.threat.grid(device)  # (N, 3): sliced in chunks, rows iterated


class WorstOfK(_Search):
    """Worst of ``k`` random lattice points per example (Engstrom et al.'s worst-of-10, their
    spatial adversarial training); draws keyed by (seed, example id, draw index)."""

    name = "spatial-worst-of-k"

    def __init__(self, threat: RotationTranslation, k: int = 10, **kwargs) -> None:
        super().__init__(threat, **kwargs)
        self.k = check_int("k", k, 1)

    def candidates(self, rand, b, device):
        return [self.threat.random_params(rand, SPATIAL_DRAW_COUNTER + j) for j in range(self.k)]

    def __repr__(self) -> str:
        return f"WorstOfK({self.threat!r}, k={self.k}, shrink={self.shrink})"
