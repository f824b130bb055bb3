"""Evaluation suites: which attacks run, in which order, for each threat model of a union.

(~410 lines: the named suites and the user-suite grammar build the same Suite; kept together.)

A :class:`Suite` is an ordered list of :class:`SuiteEntry` (threat member index, attack name,
keyword parameters, factory, seed offset), each named by one key, ``attack@threat`` or
``attack@threat#pass`` for a repeated pass (:func:`entry_key`), unique in the suite and used by
every file a run writes. The cascade engine runs the entries in order, each only on the
points still robust for its threat model.

Named suites (``suite_names()``):

- ``quick``: PGD per threat (20 steps, one random start) — a fast smoke test, not a claim.
- ``standard``: the AutoAttack-style white-box protocol of Croce & Hein (2022) §2 / E-AT, then a
  survivor round of ours. First, per threat, APGD-CE (100 steps) then targeted APGD-DLR (100 steps)
  with AutoAttack's standard budgets (ℓ∞/ℓ2: 1 restart, 9 target classes; ℓ1: 5 restarts, 5 target
  classes; every APGD pass of ``standard`` stops a point at its first misclassified iterate,
  ``early_stop``: the full runs' verdicts, in less time); for ℓ1 the APGD class is the box-aware
  ℓ1-APGD of "Mind the box" (it dispatches on the threat), run with that paper's large-ε schedule
  (3ε, 2ε, then ε; AutoAttack's ``use_largereps``). Then, on the points still robust
  (:data:`SURVIVOR_ROUND`), fresh random starts: ℓ∞/ℓ2 a second targeted pass on the 3 most likely
  targets started on the ball's surface (as AutoAttack starts, ``start="surface"``); ℓ1 a targeted
  pass (3 targets) from fresh starts and longer runs (300 steps with the CE and the margin loss),
  because ℓ1-APGD's sparse search misses points that sit within a few hundredths of the decision
  margin when it stops at 100 steps (issue 8, benchmarks/RESULTS.md), and a last pass of
  AutoAttack's ℓ1 APGD-CE budget (5 restarts) from new starts (on the benchmark's MSD LeNet,
  AutoAttack's own starts break ℓ1 points none of the longer runs finds; other starts find them). A
  1,000-step CE run (:data:`L1_LONG_RUN`) opens the ℓ1 masked tier below: it breaks
  reference-broken points the round misses only on ℓ∞-trained models. Every point the second
  targeted passes broke on the benchmark's six models fell to one of its 3 most likely targets. The
  round runs only on the survivors, so its cost grows with the robust accuracy; APGD stacks its
  restarts and targets side by side there
  (:meth:`~unionrobust.attacks.base.Attack.with_row_budget`). Then the escalation
  (:data:`ESCALATION`, issue 16), again only on the survivors: a short Square (1,000 queries); and
  on evidence of gradient masking — thresholding first-layer filters (for ℓ2 and ℓ1, the norms they
  mask, and for ℓ∞ its gradient-free part), or a gradient-free pass that broke a point of that
  threat — (for ℓ1 first the 1,000-step ℓ1-APGD-CE run) AutoAttack's FAB-T (9 targets, 100 steps)
  and Square (5,000 queries; an ℓ1 version for ℓ1; for ℓ∞ two more runs on the near misses of the
  first, :data:`SQUARE_NEAR_MISS`), for ℓ2 (on models with such filters) two more Square runs side
  by side with fresh draws and for ℓ1 the Pointwise attack with 10 restarts (ℓ∞-trained MNIST
  models mask the ℓ2/ℓ1 gradients: MSD §5.1, Tramèr & Boneh §4).
- ``msd-paper``: PGD as at test time in Maini et al. (2020) App. C.1/B.1 on MNIST: iterations
  (ℓ∞, ℓ2, ℓ1) = (100, 200, 100), 10 restarts (the first from δ = 0, the others random), step
  sizes scaled from App. C.1 relative to ε (α/ε = 0.01/0.3, 0.1/2, 0.8/10), ℓ1 steps on the top-k
  coordinates with k drawn from [5, 20] (App. A.1). ``msd-paper-cifar`` uses the CIFAR-10 values
  (100, 500, 100) iterations and α/ε = 0.003/0.03, 0.05/0.5, 1.0/12. The paper runs these
  attacks on every point and takes the worst case per example; the cascade gives the same
  verdicts. Its gradient-free attacks are not part of this suite.
- ``full``: the papers' broad protocol (MSD App. B; Tramèr & Boneh §4): ``standard``, then the
  ``msd-paper`` PGD, then per norm FGSM/MIM/SLIDE, the minimum-norm attacks (DeepFool, DDN, FAB),
  the gradient-free and decision-based ones (Gaussian noise, salt & pepper, Pointwise, the
  HopSkipJump-style boundary search; Square, FAB-T and ℓ1 Pointwise come with ``standard``'s
  escalation, ungated here) and, when the
  optional ``peers`` extra is installed, Foolbox's Boundary (ℓ2) and HopSkipJump (ℓ∞) attacks
  and torchattacks' EAD (ℓ1) (:data:`FULL_NATIVE`, :data:`FULL_PEERS`).

Instead of a name, a suite can be a list of attack names (the same for every threat, e.g.
``["pgd", "mim"]`` or the text ``"pgd, mim"``), a dict mapping a threat spec or member index to
such a list, or the text ``"linf:0.3=pgd+mim; l1:10=pgd"`` (threats left out get no attack);
the names are those of :func:`unionrobust.attacks.registry.attack_names`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from unionrobust.attacks.apgd import APGD
from unionrobust.attacks.pgd import PGD
from unionrobust.attacks.registry import ATTACKS, attack_names, default_attack, make_attack
from unionrobust.errors import UnionRobustError, check_int, unknown_name
from unionrobust.evaluation import suite_grammar as grammar
from unionrobust.threats import L1, AdditiveThreat, ThreatModel, Union, parse

#: (threat, seed) -> an Attack
AttackFactory = Callable[[ThreatModel, int], Any]


def entry_key(attack: str, threat_spec: str, seed_offset: int = 0) -> str:
    """The one name of a suite entry everywhere (progress, verdict log, verdicts.csv, reports):
    ``attack@threat``, and ``#p`` for pass p = seed_offset + 1 > 1 (a repeated pass with fresh
    random starts), e.g. ``apgd-t@l2:2#2``."""
    return f"{attack}@{threat_spec}" + (f"#{seed_offset + 1}" if seed_offset else "")


@dataclass(frozen=True)
class SuiteEntry:
    """One attack of a suite, aimed at member ``threat_index`` of the union.

    ``params``: keyword parameters (a dict or (name, value) pairs); ``seed_offset``: the pass,
    added to the run's seed so that a repeated attack draws fresh random starts (the keyed
    randomness of the same seed would replay the same ones). Its key (:meth:`key`) is unique
    within a suite."""

    threat_index: int
    attack: str
    params: tuple[tuple[str, Any], ...] = ()
    factory: AttackFactory | None = field(default=None, compare=False, repr=False)
    seed_offset: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.params, Mapping):
            object.__setattr__(self, "params", tuple(sorted(self.params.items())))
        off = self.seed_offset
        if isinstance(off, bool) or not isinstance(off, int) or off < 0:
            raise UnionRobustError(f"seed_offset must be an integer >= 0, got {off!r}")

    def build(self, threat: ThreatModel, seed: int):
        """The attack object for ``threat`` (this entry's member) and the run's ``seed``
        (shifted by ``seed_offset``)."""
        seed = seed + self.seed_offset
        if self.factory is not None:
            return self.factory(threat, seed)
        return make_attack(self.attack, threat, seed=seed, **dict(self.params))

    def key(self, threats: Union) -> str:
        """``attack@threat`` or ``attack@threat#pass`` (:func:`entry_key`)."""
        return entry_key(self.attack, threats[self.threat_index].spec, self.seed_offset)

    def label(self, threats: Union) -> str:
        """The progress label: the key."""
        return self.key(threats)

    def describe(self, threats: Union) -> dict[str, Any]:
        """JSON-able description (for reports and the run's config hash)."""
        return {
            "key": self.key(threats),
            "threat_index": self.threat_index,
            "threat": threats[self.threat_index].spec,
            "attack": self.attack,
            "seed_offset": self.seed_offset,
            "params": {k: _jsonable(v) for k, v in self.params},
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(e) for e in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return repr(v)


@dataclass(frozen=True)
class Suite:
    """An ordered list of attacks over the members of ``threats``; ``repeats`` = K: a point is
    broken by an attack if the model misclassifies its final point in any of K evaluations
    (randomised defences; :func:`unionrobust.evaluation.checks.recheck`)."""

    name: str
    threats: Union
    entries: tuple[SuiteEntry, ...]
    repeats: int = 1

    def __post_init__(self) -> None:
        check_int("suite repeats", self.repeats, 1)
        if not self.entries:
            raise UnionRobustError(f"suite {self.name!r} has no attacks")
        for e in self.entries:
            if not 0 <= e.threat_index < len(self.threats):
                raise UnionRobustError(
                    f"suite {self.name!r}: entry {e.attack!r} aims at threat {e.threat_index}, "
                    f"but the union has {len(self.threats)} members"
                )
        keys = self.keys()
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise UnionRobustError(
                f"suite {self.name!r} repeats {', '.join(repeated)} (same attack, threat and "
                "pass: the same seed would replay it); remove the repeat or give it its own "
                "seed_offset"
            )

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> list[str]:
        """Every entry's key (:meth:`SuiteEntry.key`), in order; they are distinct."""
        return [e.key(self.threats) for e in self.entries]

    def labels(self) -> list[str]:
        """The progress labels (the keys)."""
        return self.keys()

    def describe(self) -> list[dict[str, Any]]:
        return [e.describe(self.threats) for e in self.entries]

    def union_first(self) -> Suite:
        """The same entries in union-first order: every threat's first attack, then every
        threat's second, … (e.g. all APGD-CE before any APGD-T), keeping each threat's own
        order. A suite's cheap, high-yield attacks come first for its threat, so this runs them
        for every threat before the expensive ones; the verdicts do not depend on the order."""
        rank: dict[int, int] = {}
        keyed = []
        for pos, e in enumerate(self.entries):
            r = rank.get(e.threat_index, 0)
            rank[e.threat_index] = r + 1
            keyed.append(((r, e.threat_index, pos), e))
        return replace(self, entries=tuple(e for _, e in sorted(keyed)))


# --------------------------------------------------------------------------- named suites


def _pgd(threat: ThreatModel, seed: int, **kw):
    return PGD(threat, seed=seed, **kw)


def _apgd(threat: ThreatModel, seed: int, **kw):
    return APGD(threat, seed=seed, **kw)


def _entry(
    index: int, name: str, builder: Callable[..., Any], seed_offset: int = 0, **params: Any
) -> SuiteEntry:
    items = tuple(sorted(params.items()))

    def factory(threat: ThreatModel, seed: int) -> Any:
        return builder(threat, seed, **dict(items))

    return SuiteEntry(index, name, items, factory, seed_offset)


def _quick(threats: Union, steps: int = 20, restarts: int = 1) -> list[SuiteEntry]:
    return [
        _entry(i, "pgd", _pgd, steps=steps, restarts=restarts, start="random")
        for i in range(len(threats))
    ]


def _rand(threats: Union, steps: int = 100, eot: int = 20, restarts: int = 1) -> list[SuiteEntry]:
    """AutoAttack's ``version='rand'`` for randomised defences: APGD-CE then APGD-DLR per threat,
    each step's gradient averaged over ``eot`` draws of the model (EOT; ℓ1 with the large-ε
    schedule as in ``standard``). Its K-of-K re-check is :data:`SUITE_REPEATS`."""
    out = []
    for i, t in enumerate(threats):
        extra = {"large_eps": True} if isinstance(t, L1) else {}
        for name, loss in (("apgd-ce", "ce"), ("apgd-dlr", "dlr")):
            out.append(
                _entry(i, name, _apgd, steps=steps, restarts=restarts, loss=loss, eot=eot, **extra)
            )
    return out


#: ``standard``'s survivor round, run after AutoAttack's budget on the points still robust:
#: "l1" or "other" (ℓ∞, ℓ2, …) -> [(name, APGD parameters)], each pass with its own seed
#: offset (fresh random starts)
SURVIVOR_ROUND: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "other": [
        (
            "apgd-t",
            {
                "steps": 100,
                "restarts": 1,
                "loss": "dlr-targeted",
                "n_targets": 3,
                "start": "surface",
            },
        ),
    ],
    "l1": [
        ("apgd-t", {"steps": 100, "restarts": 1, "loss": "dlr-targeted", "n_targets": 3}),
        ("apgd-ce", {"steps": 300, "restarts": 2, "loss": "ce"}),
        ("apgd-cw", {"steps": 300, "restarts": 2, "loss": "cw"}),
        # pass #5, the 1,000-step run, is in the ℓ1 masked tier (L1_LONG_RUN)
        ("apgd-ce", {"steps": 100, "restarts": 5, "loss": "ce", "seed_offset": 5}),
    ],
}

#: the ℓ1 survivor round's longest pass (1,000 steps with CE, large-ε schedule; pass #5, its
#: own draws), run in the ℓ1 masked tier: on the ℓ∞-trained models (thresholding filters) it
#: breaks reference-broken points the other passes miss (P∞ LeNet 142), on the unmasked
#: LeNets every reference-broken point it broke fell to the round's other passes too (three
#: seeds each, benchmarks/RESULTS.md, session 9), and it costs 37 % of the round there
L1_LONG_RUN: dict[str, Any] = {
    "steps": 1000,
    "restarts": 1,
    "loss": "ce",
    "large_eps": True,
    "early_stop": True,
    "seed_offset": 4,
}


#: the masked tier's ℓ∞ Square: two more runs side by side on the first run's near misses
#: (unbroken, margin brought to ≤ 5 % of the clean margin). On the benchmark's ℓ∞-trained
#: LeNet one point stayed robust under our 5,000-query run at 0.5 % of its clean margin,
#: which 10 of 12 other draws (and AutoAttack's) break; it was the closest survivor, and the
#: masked CNNs have one or two survivors under 5 %, so the runs cost seconds. ℓ2 has its
#: "filters" runs, ℓ1 the Pointwise attack.
SQUARE_NEAR_MISS: dict[str, dict[str, Any]] = {
    "linf": {"restarts": 3, "near_miss": 0.05, "parallel": True}
}


#: ``standard``'s escalation, after the survivor round and only on the points still robust:
#: per norm, (tier, registry name, parameters). The "probe" tier (a short Square: cheap, and a
#: gradient-free pass for the masking check) runs unless thresholding filters open the masked
#: tier at once (its longer Square subsumes the probe); the "masked" tier — AutoAttack's FAB-T
#: and Square at its budgets (Square ℓ1 as in "Mind the box"); for ℓ2 two more Square runs
#: side by side with their own draws (on masked models every 5,000-query run breaks a different
#: few of the points near the boundary: points Boundary or AutoAttack found and one run
#: missed); for ℓ1 first the survivor round's 1,000-step APGD-CE run (:data:`L1_LONG_RUN`)
#: and last the Pointwise attack with 10 restarts (decision-based: it finds the sparse
#: perturbations gradients and FAB miss on ℓ∞-trained models, in seconds) — runs only on
#: evidence of gradient masking (:func:`escalation_open`, :func:`masking_filters`); the extra
#: ℓ2 runs ("filters") only on models with thresholding filters. The tier is kept in the
#: entry's parameters (``escalate``); each further Square pass has its own draws
#: (``seed_offset``).
_PROBE = ("probe", "square", {"steps": 1000})
_FAB_T = ("masked", "fab-t", {"steps": 100, "n_targets": 9, "early_stop": True})
_SQUARE = {"steps": 5000, "seed_offset": 1}
ESCALATION: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "linf": [_PROBE, _FAB_T, ("masked", "square", {**_SQUARE, **SQUARE_NEAR_MISS["linf"]})],
    "l2": [
        _PROBE,
        _FAB_T,
        ("masked", "square", _SQUARE),
        ("filters", "square", {"steps": 5000, "restarts": 2, "parallel": True, "seed_offset": 2}),
    ],
    "l1": [
        _PROBE,
        ("masked", "apgd-ce", L1_LONG_RUN),
        _FAB_T,
        ("masked", "square", _SQUARE),
        ("masked", "pointwise", {"restarts": 10}),
    ],
}

#: the norms whose gradients thresholding first-layer filters mask (MSD §5.1 and App. B,
#: Tramèr & Boneh §4: ℓ∞-trained MNIST models read robust in ℓ2/ℓ1 under PGD, not under
#: decision-based attacks)
FILTER_MASKED_NORMS = ("l2", "l1")


def masking_filters(
    threat: ThreatModel, tier: str | None, gradient_free: bool, filters: int
) -> int:
    """The thresholding filters that count as evidence of masking for an entry of ``threat``
    in gated ``tier`` (``gradient_free``: its attack uses no gradient): all of them for the
    norms of :data:`FILTER_MASKED_NORMS`. For ℓ∞ (and other norms) the filters are the defence
    the model was trained to have, not a mask over its ℓ∞ gradient: a gradient attack of the
    masked tier (FAB-T) waits for a gradient-free break as on any model, while for the rest
    they count — the 5,000-query Square runs at once and the second APGD pass and the probe
    give way (on the benchmark's ℓ∞-trained LeNet Square breaks the ℓ∞ points the second APGD
    pass breaks, and the ones AutoAttack's Square breaks that no gradient attack finds)."""
    if threat.name in FILTER_MASKED_NORMS or gradient_free or tier != "masked":
        return filters
    return 0


def _ungated(builder: Callable[..., Any]) -> Callable[..., Any]:
    """``builder`` (threat, seed, **params) with the ``escalate`` tier dropped (the engine's)."""

    def build(threat: ThreatModel, seed: int, escalate: str = "", **kw: Any) -> Any:
        return builder(threat, seed=seed, **kw)

    return build


#: the gated tiers of ``standard`` (:func:`escalation_open`)
GATED_TIERS = ("unmasked", "probe", "masked", "filters")


def escalation_tier(entry: SuiteEntry) -> str | None:
    """The entry's gated tier (:data:`GATED_TIERS`: the ℓ∞/ℓ2 survivor pass is "unmasked", the
    :data:`ESCALATION` tiers "probe", "masked" and "filters"), None for an entry that always
    runs."""
    return dict(entry.params).get("escalate")


def escalation_open(
    entry: SuiteEntry,
    earlier: Sequence[tuple[SuiteEntry, bool]],
    filters: int,
    gradient_free: Callable[[str], bool],
) -> bool:
    """Whether ``entry`` runs. Untiered entries always. With ``filters`` > 0 thresholding
    first-layer filters that mask this threat (:func:`masking_filters`: evidence known before
    any attack), the "masked" tier runs and the "unmasked" and "probe" tiers do not: a second
    gradient pass from new starts adds little where gradients are masked, and the masked
    tier's 5,000-query Square subsumes the 1,000-query probe, so a masked threat costs about
    what AutoAttack's four attacks cost. Without such filters the "unmasked" and "probe" tiers
    run, and the "masked" tier only when an ``earlier`` gradient-free entry of the same threat
    broke a point (``earlier``: (entry, broke anything) pairs). The "filters" tier (the ℓ2
    Square runs beyond AutoAttack's one, for models whose gradients the filters mask) runs
    only with such filters: where only a probe's break opened the masked tier, AutoAttack's
    FAB-T and Square are the masked tier."""
    tier = escalation_tier(entry)
    if tier in ("unmasked", "probe"):
        return filters == 0
    if tier == "filters":
        return filters > 0
    if tier != "masked" or filters > 0:
        return True
    return any(
        broke and e.threat_index == entry.threat_index and gradient_free(e.attack)
        for e, broke in earlier
    )


def _standard(threats: Union, _masked: str = "masked") -> list[SuiteEntry]:
    """AutoAttack 'standard' budgets for its APGD attacks: ℓ∞/ℓ2 one restart of APGD-CE and
    9 target classes for APGD-T; ℓ1 five restarts and 5 target classes, each pass with the
    large-ε schedule of "Mind the box" (``large_eps``: 30 % of the steps at 3ε, 30 % at 2ε,
    the rest at ε; AutoAttack's ``use_largereps``). Then :data:`SURVIVOR_ROUND` and
    :data:`ESCALATION` per threat (``_masked``: the tier name its masked tier gets; ``full``
    passes "always", which the engine never gates)."""
    out: list[SuiteEntry] = []
    for i, t in enumerate(threats):
        l1 = isinstance(t, L1)
        restarts, targets = (5, 5) if l1 else (1, 9)
        # every APGD pass stops a point at its first misclassified iterate (same verdicts)
        extra = {"large_eps": True, "early_stop": True} if l1 else {"early_stop": True}
        out.append(_entry(i, "apgd-ce", _apgd, steps=100, restarts=restarts, loss="ce", **extra))
        out.append(
            _entry(
                i,
                "apgd-t",
                _apgd,
                steps=100,
                restarts=1,
                loss="dlr-targeted",
                n_targets=targets,
                **extra,
            )
        )
        gate = {} if l1 or _masked == "always" else {"escalate": "unmasked"}
        for offset, (name, params) in enumerate(SURVIVOR_ROUND["l1" if l1 else "other"], start=1):
            params = {"seed_offset": offset, **params, **extra, **gate}
            out.append(_entry(i, name, _ungated(_apgd), **params))
        for tier, name, params in ESCALATION.get(t.name, []):
            if _masked == "always":
                tier = "always"
            build = _ungated(partial(make_attack, name))
            out.append(_entry(i, name, build, escalate=tier, **params))
    return out


#: MSD App. C.1: (test-time iterations, α/ε) per norm, for MNIST and CIFAR-10
MSD_PAPER = {
    "mnist": {"linf": (100, 0.01 / 0.3), "l2": (200, 0.1 / 2.0), "l1": (100, 0.8 / 10.0)},
    "cifar": {"linf": (100, 0.003 / 0.03), "l2": (500, 0.05 / 0.5), "l1": (100, 1.0 / 12.0)},
}
MSD_PAPER_RESTARTS = 10


def _msd_pgd(threat: ThreatModel, seed: int, **kw):
    """PGD with the App. A.1 ℓ1 step (top-k, k ∈ [5, 20]) whatever the member's step rule."""
    if isinstance(threat, L1):
        threat = L1(threat.eps, step_rule="random_k", k_range=(5, 20))
    return _pgd(threat, seed, **kw)


def _msd_paper(dataset: str) -> Callable[[Union], list[SuiteEntry]]:
    table = MSD_PAPER[dataset]

    def build(threats: Union) -> list[SuiteEntry]:
        out = []
        for i, t in enumerate(threats):
            steps, ratio = table.get(t.name, (100, None))
            alpha = ratio * t.size if ratio is not None else t.default_alpha(steps)
            out.append(
                _entry(
                    i,
                    "pgd",
                    _msd_pgd,
                    steps=steps,
                    alpha=alpha,
                    restarts=MSD_PAPER_RESTARTS,
                    start="zero_then_random",
                )
            )
        return out

    return build


def _named(name: str) -> Callable[..., Any]:
    """A builder running registry attack ``name``."""

    def build(threat: ThreatModel, seed: int, **kw: Any) -> Any:
        return make_attack(name, threat, seed=seed, **kw)

    return build


#: the ``full`` suite's attacks per norm after ``standard`` and ``msd-paper`` (MSD App. B
#: Tables 3-4; Tramèr & Boneh 2019 §4): (registry name, parameters); budgets follow the papers
#: (10 restarts / draws; Square 5000 queries as in AutoAttack)
FULL_NATIVE: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "linf": [
        ("fgsm", {}),
        ("mim", {"steps": 20}),
        ("deepfool", {}),
        ("fab", {"steps": 100}),
    ],
    "l2": [
        ("fgsm", {}),
        ("mim", {"steps": 20}),
        ("deepfool", {}),
        ("ddn", {"steps": 300}),
        ("fab", {"steps": 100}),
        ("gaussian-noise", {"repeats": 10}),
        ("pointwise", {}),
        ("boundary-search", {"steps": 20}),
    ],
    "l1": [
        ("slide", {"steps": 100, "restarts": 10}),
        ("fab", {"steps": 100}),
        ("salt-pepper", {"repeats": 10}),
        ("boundary-search", {"steps": 20}),
    ],
    "l0": [("salt-pepper", {"repeats": 10}), ("pointwise", {})],
}
#: peers (optional extra) added when their package is installed: (name, package, parameters).
#: ta-cw is left out (torchattacks 3.5's C&W loss is wrong for negative logits), ta-square too
#: (the native Square covers ℓ∞ and ℓ2 and was at least as strong in our tests).
FULL_PEERS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "linf": [("fb-hsj", "foolbox", {})],
    "l2": [("fb-boundary", "foolbox", {})],
    "l1": [("ta-ead", "torchattacks", {})],
    "l0": [],
}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _full(threats: Union) -> list[SuiteEntry]:
    """``standard`` + the ``msd-paper`` PGD + per norm the attacks of :data:`FULL_NATIVE` and
    the installed ones of :data:`FULL_PEERS` (minimum-norm and decision-based attacks count only
    inside the ball: their threat-bound result is re-checked by the engine). ``standard``'s
    escalation runs whole here, ungated (its Square passes are the suite's Square)."""
    out = _standard(threats, _masked="always") + _msd_paper("mnist")(threats)
    for i, t in enumerate(threats):
        for name, params in FULL_NATIVE.get(t.name, []):
            out.append(_entry(i, name, _named(name), **params))
        for name, package, params in FULL_PEERS.get(t.name, []):
            if _installed(package):
                out.append(_entry(i, name, _named(name), **params))
    return sorted(out, key=lambda e: e.threat_index)


SUITES: dict[str, Callable[..., list[SuiteEntry]]] = {
    "quick": _quick,
    "standard": _standard,
    "rand": _rand,
    "msd-paper": _msd_paper("mnist"),
    "msd-paper-cifar": _msd_paper("cifar"),
    "full": _full,
}
#: default K of the K-of-K re-check per named suite (``repeats=K`` in a suite text overrides)
SUITE_REPEATS = {"rand": 20}


def _default(threat: ThreatModel, seed: int) -> Any:
    return default_attack(threat, "eval", seed=seed)


def _spatial_aware(build: Callable[[Union], list[SuiteEntry]], union: Union) -> list[SuiteEntry]:
    """A named suite's entries for the additive members, and for each searched member
    (rotation-translation) its :func:`default_attack`, the exhaustive grid attack (exact within
    its lattice; issue 4)."""
    searched = [i for i, t in enumerate(union) if not isinstance(t, AdditiveThreat)]
    if not searched:
        return build(union)
    lp = [i for i in range(len(union)) if i not in searched]
    out = [] if not lp else build(Union([union[i] for i in lp]))
    out = [replace(e, threat_index=lp[e.threat_index]) for e in out]
    out += [_entry(i, default_attack(union[i]).name, _default) for i in searched]
    return sorted(out, key=lambda e: e.threat_index)


def suite_names() -> list[str]:
    """Names accepted by :func:`get_suite` (besides lists of attack names)."""
    return list(SUITES)


def _user_entries(
    threats: Union, calls: Sequence[grammar.Call], index: int, kind: str = "attack"
) -> list[SuiteEntry]:
    """Entries for member ``index`` from attack calls ``(name, params)``; parameters are checked
    against the attack's own (a bad name or value is a one-line error, before any attack runs)."""
    out = []
    for name, raw in calls:
        if name not in ATTACKS:
            valid = attack_names() if kind == "attack" else suite_names() + attack_names()
            raise unknown_name(kind, name, valid)
        valid = [*grammar.accepted(ATTACKS[name]), "seed_offset"]  # the entry's pass
        params = grammar.check_params("attack", name, raw, valid)
        offset = params.pop("seed_offset", 0)
        out.append(SuiteEntry(index, name, tuple(sorted(params.items())), seed_offset=offset))
    return _built_once(out, threats)


def _built_once(entries: list[SuiteEntry], threats: Union) -> list[SuiteEntry]:
    """``entries`` after building each one whose parameters came from the user once: a value
    the attack refuses fails now, in one line naming the attack, not mid-run."""
    for e in entries:
        if e.params or e.seed_offset:
            try:
                e.build(threats[e.threat_index], 0)
            except UnionRobustError as exc:
                raise UnionRobustError(f"{e.label(threats)}: {exc}") from None
    return entries


def _calls(names: str | Sequence[str | grammar.Call]) -> list[grammar.Call]:
    """Attack calls from a text (``"pgd(steps=50), mim"``) or a list of names/texts/calls."""
    items = grammar.split_top(names, ",;+") if isinstance(names, str) else list(names)
    if not items or any(isinstance(n, str) and not n.strip() for n in items):
        raise UnionRobustError(f"empty attack name in {names!r}")
    return [n if isinstance(n, tuple) else grammar.parse_call(n) for n in items]


def _label(entries: Sequence[SuiteEntry]) -> str:
    """The attacks of one threat with their parameters, e.g. ``apgd-ce(steps=200),square``."""
    return ",".join(
        grammar.call_label(
            e.attack, dict(e.params) | ({"seed_offset": e.seed_offset} if e.seed_offset else {})
        )
        for e in entries
    )


def _named_suite(parsed: grammar.ParsedSuite, union: Union) -> Suite:
    """A named suite, its builder's parameters set from the text (``quick(steps=50)``)."""
    name = str(parsed.named)
    builder = SUITES[name]
    params = grammar.check_params("suite", name, parsed.params, grammar.accepted(builder))
    repeats = parsed.repeats if parsed.repeats is not None else SUITE_REPEATS.get(name, 1)
    entries = _spatial_aware(partial(builder, **params), union)
    if params:
        _built_once(entries, union)
    # the name shows the budget parameters; K is the suite's own field (report.json "repeats"),
    # so "standard(repeats=5)" is still the strict suite "standard"
    return Suite(grammar.call_label(name, params), union, tuple(entries), repeats)


def get_suite(
    suite: str | Sequence[str] | Mapping[str | int, Sequence[str] | str] | Suite,
    threats: str | ThreatModel | Union,
) -> Suite:
    """Build a suite for ``threats``.

    ``suite`` is a suite text (:mod:`unionrobust.evaluation.suite_grammar`: a name from
    :func:`suite_names` with optional parameters, attack calls for every threat, or per threat),
    a list of attack names or calls (run for every threat), a dict ``{threat spec or member
    index: attack names}``, or a ready :class:`Suite` (returned unchanged when its threats match).
    """
    union = parse(threats)
    if isinstance(suite, Suite):
        if suite.threats != union:
            raise UnionRobustError(
                f"suite {suite.name!r} was built for {suite.threats.spec!r}, not {union.spec!r}"
            )
        return suite
    repeats = 1
    if isinstance(suite, str):
        parsed = grammar.parse_suite_text(suite, SUITES)
        if parsed.named is not None:
            return _named_suite(parsed, union)
        repeats = parsed.repeats or 1
        if None not in parsed.calls:
            suite = parsed.calls  # type: ignore[assignment]
        else:
            calls = parsed.calls[None]
            kind = "suite or attack" if len(calls) == 1 and not calls[0][1] else "attack"
            entries = [e for i in range(len(union)) for e in _user_entries(union, calls, i, kind)]
            return Suite(_label(entries[: len(calls)]), union, tuple(entries), repeats)
    if isinstance(suite, Mapping):
        entries = []
        specs = [m.spec for m in union]
        for key, names in suite.items():
            entries.extend(_user_entries(union, _calls(names), _member_index(key, union, specs)))
        entries.sort(key=lambda e: e.threat_index)  # stable: the user's order within a threat
        label = "; ".join(
            f"{specs[i]}: {_label([e for e in entries if e.threat_index == i])}"
            for i in sorted({e.threat_index for e in entries})
        )
        return Suite(label, union, tuple(entries), repeats)
    if isinstance(suite, Sequence):
        if not list(suite):
            raise UnionRobustError("a suite needs at least one attack name")
        calls = _calls(suite)
        entries = [e for i in range(len(union)) for e in _user_entries(union, calls, i)]
        return Suite(_label(entries[: len(calls)]), union, tuple(entries), repeats)
    raise UnionRobustError(
        f"a suite must be a name or a list of attacks, got {type(suite).__name__}"
    )


def _member_index(key: str | int, union: Union, specs: list[str]) -> int:
    if isinstance(key, int):
        if not 0 <= key < len(union):
            raise UnionRobustError(f"threat index {key} out of range for {union.spec!r}")
        return key
    spec = parse(key)
    if len(spec) != 1 or spec[0].spec not in specs:
        raise unknown_name("threat in suite", str(key), specs)
    return specs.index(spec[0].spec)
