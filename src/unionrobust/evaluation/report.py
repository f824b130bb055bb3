"""The result of a union evaluation: a per-example verdict matrix and the metrics derived from it.

Definitions (Maini et al. 2020 §2; Croce & Hein 2022 §2): an example is robust for threat t
when it is classified correctly and no attack of t found a (re-checked) adversarial example;
robust for the union when robust for every threat. Union accuracy is 1 − R_max (the fraction
robust for the union), average accuracy is 1 − R_avg (the mean over threats of the per-threat
accuracies). Misclassified clean points count as broken for every threat.

The engine's mode (:attr:`EvaluationReport.mode`, an
:class:`~unionrobust.evaluation.mode.EvaluationMode`) and the suite say which figures are upper
bounds (:attr:`EvaluationReport.upper_bounds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from unionrobust._version import __version__
from unionrobust.evaluation.metrics import mean_score, proportion
from unionrobust.evaluation.mode import FIGURES, EvaluationMode


@dataclass
class EvaluationReport:
    """Verdicts of ``n`` examples × ``E`` suite entries over ``T`` threats.

    ``broken[i, e]``: entry e found a re-checked adversarial example for example i (False where
    it did not run); ``norms[i, e]``: norm of the perturbation entry e returned for example i, in
    its threat's norm (NaN where it did not run); ``entry_threat[e]``: member index of entry e.
    """

    threats: list[str]
    suite: str
    entries: list[dict[str, Any]]
    seed: int
    example_ids: torch.Tensor
    labels: torch.Tensor
    clean_correct: torch.Tensor
    broken: torch.Tensor
    norms: torch.Tensor
    entry_threat: list[int]
    rejected: list[int] = field(default_factory=list)
    attacked: list[int] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str | None = None
    #: which points each entry attacked
    mode: EvaluationMode = EvaluationMode.PER_THREAT
    version: str = __version__
    #: :func:`unionrobust.evaluation.diagnostics.run_diagnostics` output (empty if not run)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    #: examples whose clean logits were non-finite (counted as not correct)
    nonfinite: int = 0

    # ------------------------------------------------------------------ per-example verdicts
    @property
    def n_examples(self) -> int:
        return int(self.labels.numel())

    def threat_robust(self, upto: int | None = None) -> torch.Tensor:
        """Bool (n, T): robust for each threat after entries ``[0, upto)`` (all by default)."""
        n, t = self.n_examples, len(self.threats)
        out = self.clean_correct.reshape(-1, 1).expand(n, t).clone()
        stop = len(self.entry_threat) if upto is None else upto
        for e in range(stop):
            out[:, self.entry_threat[e]] &= ~self.broken[:, e]
        return out

    @property
    def repeats(self) -> int:
        """K: each attack's final point counted as robust only if classified correctly in K of
        K evaluations (the suite's ``repeats``; 1 for deterministic models)."""
        return int(self.config.get("repeats", 1)) if self.config else 1

    @property
    def upper_bounds(self) -> frozenset[str]:
        """The figures ("per-threat", "union", "average") that are upper bounds, for this
        report's mode and suite (:meth:`EvaluationMode.upper_bounds`)."""
        return self.mode.upper_bounds(self.suite)

    def ran(self, e: int) -> torch.Tensor:
        """Bool (n,): the examples entry ``e`` attacked (it ran in the report's order; none
        for an entry that attacked no point, e.g. ``standard``'s masked tier without evidence)."""
        out = self.mode.attacked(self.threat_robust(e), self.entry_threat[e])
        if self.attacked and self.attacked[e] == 0:
            return torch.zeros_like(out)
        return out

    @property
    def entry_keys(self) -> list[str]:
        """Each entry's key (``attack@threat`` or ``attack@threat#pass``), as in progress, the
        verdict log, verdicts.csv and the tables."""
        return [d["key"] for d in self.entries]

    @property
    def union_robust(self) -> torch.Tensor:
        """Bool (n,): robust for every threat of the union."""
        return self.threat_robust().all(dim=1)

    # ------------------------------------------------------------------ metrics
    @property
    def clean_accuracy(self) -> float:
        return proportion(self.clean_correct)[0]

    @property
    def per_threat_accuracy(self) -> dict[str, float]:
        r = self.threat_robust()
        return {s: proportion(r[:, i])[0] for i, s in enumerate(self.threats)}

    @property
    def union_accuracy(self) -> float:
        """1 − R_max."""
        return proportion(self.union_robust)[0]

    @property
    def average_accuracy(self) -> float:
        """1 − R_avg: the mean over threats of the per-threat accuracy."""
        return mean_score(self.threat_robust().double().mean(dim=1))[0]

    def intervals(self) -> dict[str, Any]:
        """95% intervals: Wilson for proportions, CLT on per-example scores for the average."""
        r = self.threat_robust()
        return {
            "clean": proportion(self.clean_correct)[1],
            "union": proportion(r.all(dim=1))[1],
            "average": mean_score(r.double().mean(dim=1))[1],
            "per_threat": {s: proportion(r[:, i])[1] for i, s in enumerate(self.threats)},
        }

    def breakdown(self) -> list[dict[str, Any]]:
        """Per entry, in run order: points attacked, newly broken, rejected, and the threat's
        (an upper bound in union-only mode) and the union's accuracy after it (MSD Tables 3–4,
        as a cascade)."""
        rows = []
        n = max(self.n_examples, 1)
        for e, desc in enumerate(self.entries):
            t = self.entry_threat[e]
            r = self.threat_robust(e + 1)
            rows.append(
                {
                    "entry": e,
                    "key": desc["key"],
                    "threat": self.threats[t],
                    "attack": desc["attack"],
                    "params": desc.get("params", {}),
                    "attacked": self.attacked[e] if e < len(self.attacked) else None,
                    "broken": int(self.broken[:, e].sum()),
                    "rejected": self.rejected[e] if e < len(self.rejected) else 0,
                    "threat_accuracy_after": int(r[:, t].sum()) / n,
                    "union_accuracy_after": int(r.all(dim=1).sum()) / n,
                    "seconds": self.timings.get("entries", [None] * (e + 1))[e],
                }
            )
        return rows

    # ------------------------------------------------------------------ export
    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no per-example data; see :meth:`verdict_rows`)."""
        ci = self.intervals()
        acc = self.per_threat_accuracy
        bounds = self.upper_bounds
        return {
            "clean_accuracy": self.clean_accuracy,
            "clean_accuracy_ci95": list(ci["clean"]),
            "union_accuracy": self.union_accuracy,
            "union_accuracy_ci95": list(ci["union"]),
            "average_accuracy": self.average_accuracy,
            "average_accuracy_ci95": list(ci["average"]),
            "per_threat": {
                s: {
                    "accuracy": acc[s],
                    "ci95": list(ci["per_threat"][s]),
                    "attacks": sum(1 for t in self.entry_threat if t == i),
                }
                for i, s in enumerate(self.threats)
            },
            "per_attack": self.breakdown(),
            "interval_method": (
                "Wilson score 95% for clean/per-threat/union; normal approximation over "
                "per-example mean scores for the average (Wilson when every score is 0 or 1)"
            ),
            "n_examples": self.n_examples,
            "suite": self.suite,
            "attacks": self.entries,
            "repeats": self.repeats,
            "threats": list(self.threats),
            "seed": self.seed,
            "mode": self.mode.value,
            "upper_bounds": [f for f in FIGURES if f in bounds],
            "upper_bound_note": self.mode.bound_note(self.suite),
            "per_threat_upper_bound": "per-threat" in bounds,
            **({"per_threat_note": self.mode.bound_note(self.suite)} if bounds else {}),
            "version": self.version,
            "library_version": self.version,
            "timings": self.timings,
            "config_hash": self.config_hash,
            "meta": self.config.get("meta", {}),
            "diagnostics": self.diagnostics,
            "nonfinite_logits": self.nonfinite,
        }

    def verdict_rows(self) -> list[dict[str, Any]]:
        """One row per example: id, label, clean correct, per entry (by key) broken/norm, per threat
        robust (``robust_upper_bound[...]`` when the mode leaves them incomplete: union-only),
        union robust (the columns of verdicts.csv: the verdicts of the suite's attacks)."""
        per_threat_bound = "per-threat" in self.mode.upper_bounds()
        robust_col = "robust_upper_bound" if per_threat_bound else "robust"
        labels = self.entry_keys
        r = self.threat_robust()
        u = r.all(dim=1)
        rows = []
        ids = self.example_ids.tolist()
        ys = self.labels.tolist()
        cc = self.clean_correct.tolist()
        br = self.broken.tolist()
        nm = self.norms.tolist()
        rr = r.tolist()
        uu = u.tolist()
        for i in range(self.n_examples):
            row: dict[str, Any] = {"id": ids[i], "label": ys[i], "clean_correct": int(cc[i])}
            for e, lab in enumerate(labels):
                row[f"broken[{lab}]"] = int(br[i][e])
                v = nm[i][e]
                row[f"norm[{lab}]"] = "" if math.isnan(v) else f"{v:.6g}"
            for t, s in enumerate(self.threats):
                row[f"{robust_col}[{s}]"] = int(rr[i][t])
            row["robust[union]"] = int(uu[i])
            rows.append(row)
        return rows
