"""Adversarial training on one threat model (Madry et al. 2018): P∞, P2, P1 of MSD Table 1."""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.errors import UnionRobustError
from unionrobust.threats import ThreatModel, Union, parse
from unionrobust.training.strategies.adversarial import AdversarialStrategy
from unionrobust.training.strategies.base import StrategyOutput, member_labels


def pick_member(
    union: Union, threat: int | str | None, who: str, kind: type[ThreatModel] = ThreatModel
) -> ThreatModel:
    """The member named by index, norm name or label; the only member when ``threat`` is None.
    A member not of ``kind`` (e.g. :class:`AdditiveThreat`) is a one-line error."""
    member = _pick(union, threat, who)
    if not isinstance(member, kind):
        need = kind.__name__.removesuffix("Threat").lower()
        raise UnionRobustError(f"{who} needs an {need} (lp) threat, not {member.spec}")
    return member


def _pick(union: Union, threat: int | str | None, who: str) -> ThreatModel:
    labels = member_labels(union)
    if threat is None:
        if len(union) == 1:
            return union[0]
        raise UnionRobustError(
            f"{who} needs threat=... to pick one of {', '.join(labels)} in {union.spec!r}"
        )
    if isinstance(threat, int) and not isinstance(threat, bool):
        if not 0 <= threat < len(union):
            raise UnionRobustError(f"{who}: threat index {threat} out of range 0..{len(union) - 1}")
        return union[threat]
    hits = [m for m, lab in zip(union, labels, strict=True) if threat in (m.name, lab)]
    if len(hits) != 1:
        raise UnionRobustError(
            f"{who}: threat {threat!r} must name exactly one member of {union.spec!r} "
            f"({', '.join(labels)})"
        )
    return hits[0]


class SingleThreat(AdversarialStrategy):
    """Train on the adversarial examples of one member ``threat`` of the union (index or norm
    name); ``threats`` becomes that one-member union. Registered as "single" and, for the
    norms, "pinf", "p2", "p1"."""

    name = "single"

    def __init__(
        self, threats: Union | ThreatModel | str, threat: int | str | None = None, **options
    ) -> None:
        member = pick_member(parse(threats), threat, self.name)
        super().__init__(Union([member]), **options)

    def _step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> StrategyOutput:
        return self.one_attack_step(model, x, y, example_ids, seed)[1]
