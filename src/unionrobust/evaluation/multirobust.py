"""MultiRobustBench-comparable numbers: its ε grids, accuracies in its layout, CR and stability.

MultiRobustBench (Dai et al. 2023) evaluates each attack family at 20 strengths
(``cifar10_eval_config.yml``: ``np.arange(start, end + step, step)[1:]``) and summarises a model
by the competitiveness ratio against per-attack adversarially trained references ("ATA",
``metrics.py``):

* ``CR_ind_avg``   = mean over {clean} ∪ {(attack, ε)} of acc(model) / acc(reference), × 100;
* ``CR_ind_worst`` = min over the same ratios, × 100.

We run the ℓp families we have (``AutoLinfAttack``, ``AutoL2Attack``, ``AutoL1Attack``) through
our engine: at grid index i one :func:`~unionrobust.evaluation.engine.evaluate` of the union of
the three balls (each family's accuracy is its threat's; their union is a bonus). The balls of a
family are nested, so a point broken at ε_i is counted broken at every ε_j > ε_i (a valid
adversarial example stays valid; MultiRobustBench's binary search assumes the same). Accuracies
are in percent, keyed by ``str(round(ε, 5))`` as MultiRobustBench's JSON.

Reference accuracies: MultiRobustBench's published ATA table for CIFAR-10 ships with us
(``multirobustbench_ata_cifar10.json``: the ``ATA`` of its ``metrics.py``, identical to the
leaderboard site's ``ata_accs.js``; the file names both sources), so ``--mrb-grid cifar10``
reports CR without a file of your own (:func:`published_reference`); ``--mrb-reference`` still
replaces it. A coarser grid (``every=k``) gives CR over fewer strengths than the leaderboard's
20 per family: the result says how many (``cr["strengths"]``, ``cr["note"]``).

Stability: we could not read the paper's definition here, and MultiRobustBench's code computes
none; we report, per family, the largest accuracy drop (percentage points) between consecutive
strengths, clean accuracy counting as strength 0 -- smaller is a smoother degradation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from unionrobust.errors import UnionRobustError, check_finite, check_int, unknown_name
from unionrobust.evaluation.engine import evaluate
from unionrobust.evaluation.metrics import wilson_interval
from unionrobust.evaluation.mode import UPPER_MARK, EvaluationMode
from unionrobust.safeyaml import YAMLTooLarge, safe_load

CLEAN = "NoAttack"
#: MultiRobustBench's grids (start, end, step) of the families we run, with our threat name
GRIDS: dict[str, dict[str, tuple[str, float, float, float]]] = {
    "cifar10": {
        "AutoLinfAttack": ("linf", 0.0, 0.1, 0.005),
        "AutoL2Attack": ("l2", 0.0, 2.5, 0.125),
        "AutoL1Attack": ("l1", 0.0, 30.0, 1.5),
    }
}
#: the non-ℓp families of MultiRobustBench's leaderboard set that we do not run
NOT_RUN = (
    "ElasticAttack",
    "JPEGL1Attack",
    "JPEGLinfAttack",
    "ReColorAdvAttack",
    "StAdvAttack",
    "LPIPSAttack",
)
_NORM = {fam: spec[0] for grid in GRIDS.values() for fam, spec in grid.items()}
#: MultiRobustBench's published reference accuracies per grid (files next to this module)
PUBLISHED = {"cifar10": "multirobustbench_ata_cifar10.json"}
#: the key under which a reference mapping names where its numbers come from
SOURCE = "source"


def published_reference(name: str = "cifar10") -> dict[str, Any]:
    """MultiRobustBench's published ATA accuracies (percent) for grid ``name``, in its layout,
    with ``"source"``: where they were published (see the module doc)."""
    if name not in PUBLISHED:
        raise unknown_name("grid with published MultiRobustBench references", name, PUBLISHED)
    data = json.loads(Path(__file__).with_name(PUBLISHED[name]).read_text(encoding="utf-8"))
    src = data[SOURCE]
    return {**data["accuracies"], SOURCE: f"{src['published_in']}; {src['identical_to']}"}


def eps_key(eps: float) -> str:
    """The JSON key of a strength, as MultiRobustBench writes it (``float(round(ε, 5))``)."""
    return str(float(round(float(eps), 5)))


def mrb_grid(name: str = "cifar10", every: int = 1) -> dict[str, list[float]]:
    """``{family: [ε_1, ..., ε_20]}`` of grid ``name``; ``every=k`` keeps every k-th strength
    (ending at the largest) for a quicker, coarser run."""
    if name not in GRIDS:
        raise unknown_name("MultiRobustBench grid", name, GRIDS)
    every = check_int("every", every, 1)
    out = {}
    for family, (_, start, end, step) in GRIDS[name].items():
        n = round((end - start) / step)
        values = [round(start + i * step, 5) for i in range(1, n + 1)]
        out[family] = values[every - 1 :: every]
    return out


def _check_grid(grid: Mapping[str, Sequence[float]]) -> int:
    if not grid:
        raise UnionRobustError("the grid is empty; give at least one family")
    for family, values in grid.items():
        if family not in _NORM:
            raise unknown_name("MultiRobustBench family", family, _NORM)
        vals = [float(v) for v in values]
        if not vals or any(not v > 0 for v in vals) or sorted(set(vals)) != vals:
            raise UnionRobustError(
                f"grid of {family} must be increasing positive strengths, got {list(values)}"
            )
    lengths = {len(v) for v in grid.values()}
    if len(lengths) != 1:
        raise UnionRobustError("every family of the grid needs the same number of strengths")
    return lengths.pop()


def evaluate_grid(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    grid: Mapping[str, Sequence[float]] | str = "cifar10",
    suite: str = "standard",
    batch_size: int = 250,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracies (percent) of ``model`` over the grid, in MultiRobustBench's layout.

    Returns ``{"accuracies": {"NoAttack": a, family: {eps_key: a}}, "ci95": the same layout with
    95% Wilson intervals [lo, hi], "union": [{"eps": {family: ε}, "accuracy": a, "ci95": [lo,
    hi]}], "grid": {...}, "suite", "n_examples"}``.
    """
    the_grid = mrb_grid(grid) if isinstance(grid, str) else {k: list(v) for k, v in grid.items()}
    steps = _check_grid(the_grid)
    families = list(the_grid)
    robust: dict[str, list[torch.Tensor]] = {f: [] for f in families}
    clean = None
    for i in range(steps):
        threats = ", ".join(f"{_NORM[f]}:{the_grid[f][i]!r}" for f in families)
        report = evaluate(
            model, x, y, threats=threats, suite=suite, batch_size=batch_size, seed=seed,
            device=device, progress=progress, diagnostics=False,
        )  # fmt: skip
        clean = report.clean_correct.cpu()
        per_threat = report.threat_robust().cpu()
        for t, f in enumerate(families):
            previous = robust[f][-1] if robust[f] else clean
            robust[f].append(per_threat[:, t] & previous)  # nested balls: broken stays broken
    assert clean is not None
    n = int(clean.numel())
    name = suite if isinstance(suite, str) else str(suite)

    def pct(mask: torch.Tensor) -> float:
        return 100.0 * int(mask.sum()) / n

    def ci(mask: torch.Tensor) -> list[float]:
        return [100.0 * b for b in wilson_interval(int(mask.sum()), n)]

    accs: dict[str, Any] = {CLEAN: pct(clean)}
    cis: dict[str, Any] = {CLEAN: ci(clean)}
    for f in families:
        accs[f] = {eps_key(e): pct(r) for e, r in zip(the_grid[f], robust[f], strict=True)}
        cis[f] = {eps_key(e): ci(r) for e, r in zip(the_grid[f], robust[f], strict=True)}
    union = []
    for i in range(steps):
        both = torch.stack([robust[f][i] for f in families]).all(dim=0)
        union.append(
            {
                "eps": {f: float(the_grid[f][i]) for f in families},
                "accuracy": pct(both),
                "ci95": ci(both),
            }
        )
    return {
        "accuracies": accs,
        "ci95": cis,
        "union": union,
        "grid": {f: [float(e) for e in v] for f, v in the_grid.items()},
        "suite": name,
        "n_examples": n,
        # evaluate's default per-threat mode: exact for a strict suite, else upper bounds
        "upper_bound": bool(EvaluationMode.PER_THREAT.upper_bounds(name)),
        "upper_bound_note": EvaluationMode.PER_THREAT.bound_note(name),
        "monotone": "a point broken at a strength counts broken at every larger strength",
    }


def multirobust_mark(result: dict[str, Any]) -> str:
    """ "≤ " when a MultiRobustBench grid result holds upper bounds (its suite is weaker than
    standard: :meth:`~unionrobust.evaluation.mode.EvaluationMode.upper_bounds`), else ""."""
    if "upper_bound" in result:
        return UPPER_MARK if result["upper_bound"] else ""
    return EvaluationMode.PER_THREAT.mark("union", str(result.get("suite", "")))


def load_reference(path: str | os.PathLike) -> dict[str, Any]:
    """Reference accuracies (percent) in MultiRobustBench's layout from a JSON or YAML file:
    ``{"NoAttack": a, "AutoLinfAttack": {"0.005": a, ...}, ...}`` (read with safe_load)."""
    p = Path(path)
    if not p.is_file():
        raise UnionRobustError(f"reference file {str(p)!r} not found")
    try:
        data = safe_load(p.read_text(encoding="utf-8"))
    except YAMLTooLarge as exc:
        raise UnionRobustError(f"reference file {str(p)!r}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnionRobustError(f"reference file {str(p)!r} is not JSON/YAML ({first})") from None
    if not isinstance(data, Mapping) or CLEAN not in data:
        raise UnionRobustError(
            f"reference file {str(p)!r} must map '{CLEAN}' and attack names to accuracies "
            "(MultiRobustBench's layout)"
        )
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out[str(key)] = {eps_key(e): _number(a, f"{key}/{e}", p) for e, a in value.items()}
        else:
            out[str(key)] = _number(value, str(key), p)
    return out


def _number(value: Any, where: str, path: Path | None = None) -> float:
    src = f" in {str(path)!r}" if path is not None else ""
    return check_finite(f"accuracy {where}{src}", value, 0.0)


def competitiveness_ratio(
    accuracies: Mapping[str, Any],
    reference: Mapping[str, Any],
    families: Sequence[str] | None = None,
) -> dict[str, Any]:
    """MultiRobustBench's ``CR_ind_avg`` and ``CR_ind_worst`` (``metrics.py``), in percent.

    Ratios acc/reference over the clean accuracy and every (family, ε) of ``accuracies``.
    Per family (``per_family``): the same over {clean} ∪ that family's strengths; note that
    MultiRobustBench's code divides the per-family sum by the running count of all ratios so
    far, which we take to be unintended: ours is the mean of the family's own ratios.
    ``strengths``: per family "k of m" (strengths used of the reference's); ``note`` says when
    k < m (a coarser grid than the leaderboard's), ``reference`` where the reference came from.
    """
    fams = [f for f in accuracies if f != CLEAN] if families is None else list(families)

    def ratio(ours: Any, ref: Any, where: str) -> float:
        if ref is None:
            raise UnionRobustError(f"the reference has no accuracy for {where}")
        r = _number(ref, where)
        if r == 0:
            raise UnionRobustError(f"the reference accuracy for {where} is 0: no ratio")
        return _number(ours, where) / r

    clean = ratio(accuracies[CLEAN], reference.get(CLEAN), CLEAN)
    everything = [clean]
    per_family = {}
    for f in fams:
        if f not in accuracies:
            raise UnionRobustError(f"no accuracies for {f}; have: {', '.join(accuracies)}")
        ref = reference.get(f)
        if not isinstance(ref, Mapping):
            raise UnionRobustError(f"the reference has no accuracies for {f}")
        ratios = [ratio(a, ref.get(e), f"{f} at {e}") for e, a in accuracies[f].items()]
        everything += ratios
        own = [clean, *ratios]
        per_family[f] = {"avg": 100 * sum(own) / len(own), "worst": 100 * min(own)}
    used = {f: (len(accuracies[f]), len(reference[f])) for f in fams}
    coarse = {f: k for f, (k, m) in used.items() if k < m}
    note = None
    if coarse:
        counts = sorted({f"{k} of {m}" for k, m in used.values()})
        note = (
            f"CR computed on {' / '.join(counts)} strengths per family (a coarser grid than "
            "MultiRobustBench's): not comparable with its leaderboard's CR"
        )
    return {
        "CR_ind_avg": 100 * sum(everything) / len(everything),
        "CR_ind_worst": 100 * min(everything),
        "per_family": per_family,
        "ratios": len(everything),
        "strengths": {f: f"{k} of {m}" for f, (k, m) in used.items()},
        "note": note,
        "reference": str(reference.get(SOURCE, "user-supplied")),
    }


def stability(accuracies: Mapping[str, Any]) -> dict[str, Any]:
    """Per family, the largest accuracy drop (percentage points) between consecutive strengths
    (clean accuracy first), and the largest over families (see the module doc)."""
    per_family = {}
    for f, accs in accuracies.items():
        if f == CLEAN:
            continue
        ordered = [accuracies[CLEAN]] + [
            a for _, a in sorted(accs.items(), key=lambda kv: float(kv[0]))
        ]
        per_family[f] = max(a - b for a, b in pairwise(ordered))
    return {"max_drop": max(per_family.values(), default=0.0), "per_family": per_family}


def multirobust_evaluation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    grid: Mapping[str, Sequence[float]] | str = "cifar10",
    reference: Mapping[str, Any] | str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`evaluate_grid`, then :func:`stability` and :func:`competitiveness_ratio` against
    ``reference`` (a mapping or a JSON/YAML file; None with a grid name that has published
    references: those, :func:`published_reference`). ``kwargs`` go to :func:`evaluate_grid`."""
    the_grid = mrb_grid(grid) if isinstance(grid, str) else {k: list(v) for k, v in grid.items()}
    _check_grid(the_grid)
    if reference is None and isinstance(grid, str) and grid in PUBLISHED:
        reference = published_reference(grid)
    ref = None
    if reference is not None:
        ref = reference if isinstance(reference, Mapping) else load_reference(reference)
        # a reference that misses a strength of the grid fails now, not after the run
        empty = {CLEAN: 0.0, **{f: {eps_key(e): 0.0 for e in v} for f, v in the_grid.items()}}
        competitiveness_ratio(empty, ref)
    result = evaluate_grid(model, x, y, the_grid, **kwargs)
    result["stability"] = stability(result["accuracies"])
    result["cr"] = None if ref is None else competitiveness_ratio(result["accuracies"], ref)
    result["not_run"] = list(NOT_RUN)
    return result
