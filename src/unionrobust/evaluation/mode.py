"""The evaluation mode: which points each attack of a suite runs on, and which of the figures it
gives are exact and which are upper bounds.

- ``per-threat`` (the cascade): an entry of threat t attacks the points still robust for t;
  per-threat, union and average figures are exact for the suite.
- ``union-only``: an entry attacks the points still robust for every threat; the union figure
  is exact (the same verdict on every point: keyed randomness), per-threat and average figures
  are upper bounds (a point broken for one threat is not attacked for the others).
- ``everything``: every entry attacks every point (same verdicts, slower; for checks).

Independently of the mode, a suite weaker than AutoAttack's standard run gives upper bounds for
every robust figure: only :data:`STRICT_SUITES` give strict figures. :meth:`EvaluationMode.
upper_bounds` answers both at once; every table, plot, CLI note and held-out figure asks it.
"""

from __future__ import annotations

from enum import Enum

import torch

from unionrobust.errors import UnionRobustError, unknown_name

#: the figures of an evaluation that can be upper bounds (clean accuracy is always exact)
FIGURES = ("per-threat", "union", "average")
#: named suites at least as strong as AutoAttack's standard run per norm (the others — quick,
#: msd-paper, a user's list of attacks — give upper bounds)
STRICT_SUITES = frozenset({"standard", "full"})


class EvaluationMode(str, Enum):
    """Which points an attack runs on (see the module doc)."""

    PER_THREAT = "per-threat"
    UNION_ONLY = "union-only"
    EVERYTHING = "everything"

    @classmethod
    def of(cls, value: EvaluationMode | str) -> EvaluationMode:
        """The mode named ``value`` (a mode or its text)."""
        try:
            return cls(value)
        except ValueError:
            raise unknown_name("evaluation mode", str(value), [m.value for m in cls]) from None

    @classmethod
    def resolve(
        cls, mode: EvaluationMode | str | None, cascade: bool = True, union_only: bool = False
    ) -> EvaluationMode:
        """The mode of ``mode``, or of the older flags ``cascade`` / ``union_only`` when it is
        None (``union_only`` without the cascade is refused: it cannot skip nothing)."""
        if mode is not None:
            if not cascade or union_only:
                raise UnionRobustError("give mode=... or the cascade/union_only flags, not both")
            return cls.of(mode)
        if union_only and not cascade:
            raise UnionRobustError(
                "union_only=True skips points broken for any threat; it cannot be combined with "
                "cascade=False (every attack on every point)"
            )
        return cls.UNION_ONLY if union_only else cls.PER_THREAT if cascade else cls.EVERYTHING

    @property
    def cascade(self) -> bool:
        """True when an attack skips points already broken (all modes but ``everything``)."""
        return self is not EvaluationMode.EVERYTHING

    def attacked(self, robust: torch.Tensor, t: int) -> torch.Tensor:
        """Bool (n,): the points the next entry of threat ``t`` attacks, given ``robust``
        (bool (n, T): robust for each threat after the entries before it)."""
        if self is EvaluationMode.EVERYTHING:
            return torch.ones(robust.shape[0], dtype=torch.bool, device=robust.device)
        return robust.all(dim=1) if self is EvaluationMode.UNION_ONLY else robust[:, t]

    def upper_bounds(self, suite: str | None = None) -> frozenset[str]:
        """The figures (of :data:`FIGURES`) that are upper bounds: per-threat and average in
        union-only mode; every one for a ``suite`` not in :data:`STRICT_SUITES`. With ``suite``
        None, only the mode's answer (figures relative to the suite's own attacks, as the
        per-example columns of verdicts.csv)."""
        out = set(FIGURES) if suite is not None and suite not in STRICT_SUITES else set()
        if self is EvaluationMode.UNION_ONLY:
            out |= {"per-threat", "average"}
        return frozenset(out)

    def bound_note(self, suite: str | None = None) -> str:
        """Why :meth:`upper_bounds` holds what it holds ("" when every figure is exact)."""
        reasons = []
        if suite is not None and suite not in STRICT_SUITES:
            reasons.append(
                f"suite {suite!r} is weaker than AutoAttack's standard run, so every robust "
                f"accuracy is an upper bound (use the {' or '.join(sorted(STRICT_SUITES))} suite "
                "for strict figures)"
            )
        if self is EvaluationMode.UNION_ONLY:
            reasons.append(
                "union-only mode: a point broken for one threat was not attacked for the "
                "others, so the per-threat and average accuracies are upper bounds; the union "
                "accuracy is exact for the suite (per-threat mode, --no-union-only, for exact "
                "per-threat figures)"
            )
        return "; ".join(reasons)

    def mark(self, figure: str, suite: str | None = None) -> str:
        """``"≤ "`` when ``figure`` is an upper bound, else ``""`` (for tables and plots)."""
        return "≤ " if figure in self.upper_bounds(suite) else ""
