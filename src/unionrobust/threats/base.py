"""The threat-model contract every attack is written against.

A threat model is a set of allowed perturbations of an input ``x`` ∈ [0,1], of one of two kinds:

* :class:`AdditiveThreat` — a ball ``x + δ`` (ℓ∞, ℓ2, ℓ1, ℓ0) that gradient attacks step in and
  project on: ``project``, ``step``, ``random_init``, ``default_alpha``, always together with the
  pixel box; attacks never branch on the norm.
* :class:`SearchedThreat` — a set of transformations ``T_θ(x)`` (rotation-translation) with a
  lattice ``grid`` and a sampler ``random_params`` that search attacks enumerate or draw from.

Every attack declares the kind it accepts (``Attack.threat_kind``); given the other kind it raises
a one-line error naming the attacks that do accept it, and
:func:`unionrobust.attacks.registry.default_attack` picks an attack for a threat of either kind.
Threats combine with ``|`` into a :class:`Union`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from fractions import Fraction

import torch

from unionrobust.errors import UnionRobustError
from unionrobust.rng import KeyedRandom

#: relative slack of ``contains`` for float round-off (absolute slack is 1e-6 on top)
DEFAULT_TOL = 1e-5


def format_size(value: float) -> str:
    """Shortest text for a radius that parses back to exactly ``value``: ``0.5``, ``8/255``
    (pixel-level fractions), or the full repr as a last resort."""
    short = f"{value:g}"
    if float(short) == value:
        return short
    for den in (255,):
        num = round(value * den)
        if num and float(Fraction(num, den)) == value:
            return f"{num}/{den}"
    return repr(float(value))


class ThreatModel(ABC):
    """One perturbation set, of either kind. Subclasses define ``name`` (e.g. ``"l2"``), the
    size, a norm (a diagnostic for searched sets) and ``contains``."""

    name: str = "threat"

    @property
    @abstractmethod
    def size(self) -> float:
        """The radius (ε, or k for ℓ0) shown in specs and reports."""

    @abstractmethod
    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-example size of ``delta`` in this threat's norm, shape (B,)."""

    @abstractmethod
    def with_size(self, size: float) -> ThreatModel:
        """The same threat with another radius (used by ε warm-up and robustness curves)."""

    def contains(
        self, delta: torch.Tensor, x: torch.Tensor, tol: float = DEFAULT_TOL
    ) -> torch.Tensor:
        """Bool (B,): ``delta`` is inside the ball (up to ``tol``) and ``x + delta`` in [0,1]."""
        xa = (x + delta).flatten(1)
        in_box = (xa >= -1e-6).all(dim=1) & (xa <= 1 + 1e-6).all(dim=1)
        return in_box & (self.norm(delta) <= self.size * (1 + tol) + 1e-6)

    @property
    def spec(self) -> str:
        """Text form accepted by :func:`unionrobust.threats.parse`, e.g. ``"l2:0.5"`` or
        ``"linf:8/255"``; ``parse(spec)`` gives back the same radius exactly."""
        return f"{self.name}:{format_size(self.size)}"

    def __str__(self) -> str:
        return self.spec

    def __or__(self, other: ThreatModel | Union) -> Union:
        return Union([self, other])

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.spec))


class AdditiveThreat(ThreatModel):
    """A ball of additive perturbations ``x + δ``: gradient attacks (PGD, APGD, MSD, ...) step
    and project in it. The ℓp classes of :mod:`unionrobust.threats.lp` subclass
    :class:`ThreatModel` directly; every threat model that is not a :class:`SearchedThreat`
    counts as additive (``isinstance(Linf(0.3), AdditiveThreat)`` is true)."""

    @classmethod
    def __subclasshook__(cls, sub: type) -> bool:
        if cls is AdditiveThreat and ThreatModel in sub.__mro__:  # (issubclass would recurse)
            return SearchedThreat not in sub.__mro__
        return NotImplemented

    @abstractmethod
    def project(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Euclidean projection of ``delta`` onto {δ in the ball, x + δ ∈ [0,1]}."""

    @abstractmethod
    def step(
        self,
        grad: torch.Tensor,
        alpha: float | torch.Tensor,
        delta: torch.Tensor,
        x: torch.Tensor,
        rand: KeyedRandom | None = None,
        counter: int = 0,
    ) -> torch.Tensor:
        """The steepest-ascent step (already scaled by ``alpha``) for gradient ``grad`` at
        ``x + delta``; not yet projected. ``rand``/``counter`` feed randomised steps."""

    @abstractmethod
    def random_init(self, x: torch.Tensor, rand: KeyedRandom, counter: int = 0) -> torch.Tensor:
        """A random perturbation inside ball ∩ box."""

    @abstractmethod
    def default_alpha(self, steps: int) -> float:
        """A step size that suits ``steps`` iterations when the user gives none."""


class SearchedThreat(ThreatModel):
    """A set of transformations ``T_θ(x)``, θ in bounds: search attacks enumerate its lattice
    (:meth:`grid`) or draw from it (:meth:`random_params`); there is no ball to step in, so the
    additive methods raise a one-line error naming the search attacks."""

    #: registry names of the attacks that search this kind (named in the errors)
    search_attacks: tuple[str, ...] = ("spatial-grid", "spatial-worst-of-k")

    @abstractmethod
    def grid(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """All lattice points θ, shape (N, P)."""

    @abstractmethod
    def random_params(self, rand: KeyedRandom, counter: int) -> torch.Tensor:
        """One random lattice point per example, keyed by (seed, example id, counter)."""

    @abstractmethod
    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """``T_θ(x)`` per example."""

    def not_additive(self, what: str) -> UnionRobustError:
        """The error for asking this searched set for an additive-threat method."""
        return UnionRobustError(
            f"{self.spec} is searched, not additive: it has no {what}; attack it with "
            f"{' or '.join(self.search_attacks)}"
        )

    def project(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise self.not_additive("projection")

    def step(self, grad, alpha, delta, x, rand=None, counter=0) -> torch.Tensor:
        raise self.not_additive("gradient step")

    def default_alpha(self, steps: int) -> float:
        raise self.not_additive("step size")


class Union:
    """A union of threat models: a perturbation is allowed if any member allows it."""

    def __init__(self, members: Iterable[ThreatModel | Union]) -> None:
        flat: list[ThreatModel] = []
        for m in members:
            if isinstance(m, Union):
                flat.extend(m.members)
            elif isinstance(m, ThreatModel):
                flat.append(m)
            else:
                raise UnionRobustError(f"a union holds threat models, got {type(m).__name__}")
        if not flat:
            raise UnionRobustError("a union needs at least one threat model")
        specs = [m.spec for m in flat]
        dup = next((s for i, s in enumerate(specs) if s in specs[:i]), None)
        if dup is not None:  # report keys are specs: a repeat would silently collapse
            raise UnionRobustError(
                f"duplicate threat {dup!r} in the union {', '.join(specs)!r}; list each once"
            )
        self.members: tuple[ThreatModel, ...] = tuple(flat)

    def __or__(self, other: ThreatModel | Union) -> Union:
        return Union([self, other])

    def __iter__(self) -> Iterator[ThreatModel]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> ThreatModel:
        return self.members[i]

    def contains(
        self, delta: torch.Tensor, x: torch.Tensor, tol: float = DEFAULT_TOL
    ) -> torch.Tensor:
        """Bool (B,): inside at least one member."""
        out = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for m in self.members:
            out |= m.contains(delta, x, tol)
        return out

    @property
    def spec(self) -> str:
        return ", ".join(m.spec for m in self.members)

    def __str__(self) -> str:
        return self.spec

    def __repr__(self) -> str:
        return f"Union({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Union) and self.members == other.members

    def __hash__(self) -> int:
        return hash(self.members)


def as_union(threat: ThreatModel | Union) -> Union:
    """Wrap a single threat model as a one-member union."""
    return threat if isinstance(threat, Union) else Union([threat])
