"""Robustness curves: accuracy as a function of the radius ε, per norm and for the union.

A point counts as broken at ε when an attack found an input that the re-check of the engine
(:func:`unionrobust.evaluation.engine.recheck`: inside the ε-ball ∩ [0, 1] box, misclassified)
accepts. Curves are monotone (non-increasing) by construction:

- **one run** with a minimum-norm attack — its result carries a per-example ``norms`` tensor
  and the smallest breaking input ``x_min`` (:class:`unionrobust.attacks.minnorm.MinNormResult`):
  ``x_min`` is re-checked at every ε of the grid; the ε-balls are nested, so once inside it
  stays inside;
- otherwise **one run per ε** (a fixed-radius attack such as PGD), ascending, each only on the
  points still robust at the previous radius, and the cumulative union of the broken sets: a
  point broken at ε is broken at every larger ε (an ε-ball adversarial example lies in every
  larger ball). The largest ε is attacked on every point, so the last value equals a plain
  evaluation at that radius.

The union curve scales every member's radius by the same factor s (s = 1 is the union as
given): robust at s iff robust for every member at its radius s·ε_t (Maini et al. 2020 §2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unionrobust.attacks.registry import make_attack
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation.checks import clean_verdicts, recheck
from unionrobust.evaluation.inputs import read_examples, resolve_device
from unionrobust.evaluation.metrics import wilson_interval
from unionrobust.threats import ThreatModel, Union, parse

AttackSpec = str | Callable[[ThreatModel, int], Any]


@dataclass
class RobustnessCurve:
    """Accuracy at each radius of ``eps``; ``robust[i, k]``: example i robust at ``eps[k]``."""

    label: str
    eps: list[float]
    accuracy: list[float]
    robust: torch.Tensor = field(repr=False)
    method: str = "per-eps"
    attack: str = "pgd"
    x_label: str = "epsilon"

    def intervals(self) -> list[tuple[float, float]]:
        """95% Wilson interval of the accuracy at each radius."""
        n = int(self.robust.shape[0])
        return [wilson_interval(int(k), n) for k in self.robust.sum(dim=0).tolist()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "eps": list(self.eps),
            "accuracy": list(self.accuracy),
            "ci95": [list(ci) for ci in self.intervals()],
            "method": self.method,
            "attack": self.attack,
            "x_label": self.x_label,
            "n_examples": int(self.robust.shape[0]),
        }


def _grid(eps_grid: Sequence[float]) -> list[float]:
    try:
        grid = [float(e) for e in eps_grid]
    except (TypeError, ValueError):
        raise UnionRobustError(f"eps grid must be numbers, got {eps_grid!r}") from None
    if not grid or any(not math.isfinite(e) or e < 0 for e in grid):
        raise UnionRobustError(f"eps grid must be finite radii >= 0, got {grid}")
    if sorted(set(grid)) != grid:
        raise UnionRobustError(f"eps grid must be strictly increasing, got {grid}")
    return grid


def _threat_kind(norm: str | ThreatModel) -> Callable[[float], ThreatModel]:
    if isinstance(norm, ThreatModel):
        return norm.with_size
    if isinstance(norm, Union):
        if len(norm) != 1:
            raise UnionRobustError("a robustness curve is per norm; use union_curve for unions")
        return norm[0].with_size
    text = str(norm).strip()
    base = parse(text if ":" in text else f"{text}:1")
    if len(base) != 1:
        raise UnionRobustError(f"a robustness curve is per norm, got {norm!r}")
    return base[0].with_size


def _build(attack: AttackSpec, threat: ThreatModel, seed: int, kwargs: dict[str, Any]):
    if callable(attack):
        return attack(threat, seed)
    return make_attack(str(attack), threat, seed=seed, **kwargs)


def _clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> torch.Tensor:
    """Clean verdicts with the engine's checks (a batch of only non-finite logits is an error;
    a non-finite row is not correct)."""
    out = [
        clean_verdicts(model, x[s : s + bs], y[s : s + bs])[0].cpu()
        for s in range(0, x.shape[0], bs)
    ]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def check_union_curve(
    threats: str | Union,
    scales: Sequence[float],
    attack: AttackSpec = "pgd",
    seed: int = 0,
    **attack_kwargs: Any,
) -> None:
    """Build ``attack`` for every member at its largest radius, so a curve that cannot run
    (e.g. DDN, an ℓ2 attack, on an ℓ∞ member) fails in one line before any work."""
    grid = _grid(scales)
    for member in parse(threats):
        if grid[-1] > 0:
            _build(attack, member.with_size(grid[-1] * member.size), seed, attack_kwargs)


def _attack_points(
    model, attack, threat, x, y, ids, idx, bs
) -> tuple[torch.Tensor, list[torch.Tensor], bool]:
    """Run ``attack`` on examples ``idx``: (broken (len(idx),) at ``threat``, the x_min chunks
    of a minimum-norm result or [], whether the result was minimum-norm)."""
    broken, mins, minnorm = [], [], False
    for s in range(0, idx.numel(), bs):
        j = idx[s : s + bs]
        xb, yb = x[j], y[j]
        res = attack(model, xb, yb, example_ids=ids[j].to(xb.device))
        b, _ = recheck(model, threat, xb, yb, res.x_adv)
        broken.append(b.cpu())
        x_min = getattr(res, "x_min", None)
        if getattr(res, "norms", None) is not None and x_min is not None:
            minnorm = True
            mins.append(x_min.detach())
    cat = torch.cat(broken) if broken else torch.zeros(0, dtype=torch.bool)
    return cat, mins, minnorm


def robustness_curve(
    model: nn.Module,
    x: Any,
    y: torch.Tensor | None,
    norm: str | ThreatModel,
    eps_grid: Sequence[float],
    attack: AttackSpec = "pgd",
    *,
    seed: int = 0,
    batch_size: int = 250,
    example_ids: torch.Tensor | None = None,
    label: str | None = None,
    **attack_kwargs: Any,
) -> RobustnessCurve:
    """Accuracy vs ε for one norm (see the module doc for the two methods).

    ``norm``: "linf", "l2", "l1", "l0" (or a threat model, whose radius is replaced);
    ``attack``: a registry name (built with ``attack_kwargs``) or a factory
    ``(threat, seed) -> Attack``. ``eps_grid``: strictly increasing radii >= 0 (ε = 0 gives the
    clean accuracy). The model is left exactly as found.
    """
    grid = _grid(eps_grid)
    make = _threat_kind(norm)
    x, y = read_examples(x, y)
    dev = resolve_device(None, model)
    x, y = x.to(dev), y.to(dev)
    n = x.shape[0]
    ids = torch.arange(n) if example_ids is None else torch.as_tensor(example_ids).long().cpu()
    if ids.shape != (n,):
        raise UnionRobustError(f"example_ids must have shape ({n},)")
    positive = [k for k, e in enumerate(grid) if e > 0]
    clean = _clean_correct(model, x, y, batch_size)
    broken = torch.zeros(n, len(grid), dtype=torch.bool)
    method = "per-eps"
    name = attack if isinstance(attack, str) else getattr(attack, "__name__", "custom")
    if positive:
        top = positive[-1]
        threat_top = make(grid[top])
        todo = torch.nonzero(clean).reshape(-1)
        atk = _build(attack, threat_top, seed, attack_kwargs)
        b_top, mins, minnorm = _attack_points(
            model, atk, threat_top, x, y, ids, todo.to(dev), batch_size
        )
        if minnorm and todo.numel():
            method = "min-norm"
            x_min = torch.cat(mins).to(dev)
            xs, ys = x[todo.to(dev)], y[todo.to(dev)]
            for k in positive:
                b, _ = recheck(model, make(grid[k]), xs, ys, x_min)
                b = b.cpu()
                broken[todo, k] = (b | b_top) if k == top else b
        else:
            broken[todo, top] = b_top
            seen = torch.zeros(n, dtype=torch.bool)
            for k in positive[:-1]:
                todo_k = torch.nonzero(clean & ~seen).reshape(-1)
                threat_k = make(grid[k])
                atk = _build(attack, threat_k, seed, attack_kwargs)
                b, _, _ = _attack_points(
                    model, atk, threat_k, x, y, ids, todo_k.to(dev), batch_size
                )
                broken[todo_k, k] = b
                seen |= broken[:, k]
    # cumulative: broken at eps_j => broken at every eps_k >= eps_j
    cum = torch.cummax(broken.to(torch.uint8), dim=1).values.bool()
    robust = clean.reshape(-1, 1) & ~cum
    acc = robust.double().mean(dim=0).tolist()
    return RobustnessCurve(
        label=label or str(make(1.0).name),
        eps=grid,
        accuracy=acc,
        robust=robust,
        method=method,
        attack=name,
    )


def _attack_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The attack parameters among :func:`robustness_curve`'s keyword arguments."""
    own = ("seed", "batch_size", "example_ids", "label")
    return {k: v for k, v in kwargs.items() if k not in own}


def union_curve(
    model: nn.Module,
    x: Any,
    y: torch.Tensor | None,
    threats: str | Union,
    scales: Sequence[float] = (0.25, 0.5, 0.75, 1.0, 1.25),
    attack: AttackSpec = "pgd",
    **kwargs: Any,
) -> list[RobustnessCurve]:
    """A curve per member at radii s·ε_t for s in ``scales``, plus the union curve (last,
    label "union"): robust at s iff robust for every member at s·ε_t. ``kwargs`` go to
    :func:`robustness_curve` (seed, batch_size, attack parameters)."""
    union = parse(threats)
    grid = _grid(scales)
    check_union_curve(union, grid, attack, kwargs.get("seed", 0), **_attack_kwargs(kwargs))
    curves = []
    for member in union:
        c = robustness_curve(
            model,
            x,
            y,
            member,
            [s * member.size for s in grid],
            attack,
            label=member.name,
            **kwargs,
        )
        curves.append(c)
    robust = torch.stack([c.robust for c in curves]).all(dim=0)
    curves.append(
        RobustnessCurve(
            label="union",
            eps=grid,
            accuracy=robust.double().mean(dim=0).tolist(),
            robust=robust,
            method="+".join(sorted({c.method for c in curves})),
            attack=curves[0].attack,
            x_label=f"scale s of ({union.spec})",
        )
    )
    return curves
