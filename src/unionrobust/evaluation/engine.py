"""The cascade evaluation engine: per-example worst case over a suite, for a union of threats.

1. Clean pass: misclassified points are broken for every threat.
2. For each suite entry (attack for threat t), in order: attack, in batches, ONLY the points
   still robust for t (the cascade). Every returned adversarial input is re-checked — inside
   the ball of t (``threat.contains`` with its float tolerance) and inside [0, 1] — and the
   model's prediction is recomputed on it; only then does it count as broken.
3. Verdicts: robust for t iff clean-correct and no entry of t broke it; union robust iff robust
   for every t (Maini et al. 2020 §2, R_max; Croce & Hein 2022 §2).

Attacks receive the examples' global dataset indices as ``example_ids`` and draw their
randomness from them (:mod:`unionrobust.rng`), so each example's outcome does not depend on the
batch it lands in: the cascade gives exactly the verdicts of running every attack on every
point, and a resumed run gives exactly those of an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unionrobust.errors import UnionRobustError, check_int, check_seed
from unionrobust.evaluation.checks import (
    check_model_classes,
    checked_attack,
    clean_verdicts,
    known_classes,
    recheck,
    rejected,
)
from unionrobust.evaluation.diagnostics import (
    flags_of,
    gradient_masking,
    is_gradient_free,
    run_diagnostics,
)
from unionrobust.evaluation.filters import thresholding_filters
from unionrobust.evaluation.inputs import as_tensors as as_tensors  # deprecated re-export
from unionrobust.evaluation.inputs import chunks as _chunks
from unionrobust.evaluation.inputs import (
    device_for,
    progress_bar,
    read_examples,
    resolve_device,
)
from unionrobust.evaluation.mode import EvaluationMode
from unionrobust.evaluation.report import EvaluationReport
from unionrobust.evaluation.suites import (
    GATED_TIERS,
    Suite,
    escalation_open,
    escalation_tier,
    get_suite,
    masking_filters,
)
from unionrobust.evaluation.verdicts import (
    VerdictLog,
    check_out_dir,
    config_hash,
    model_fingerprint,
    norms_from_json,
    owning_out_dir,
    records_by_key,
    tensor_hash,
    write_outputs,
)
from unionrobust.threats import ThreatModel, Union, parse

__all__ = ["check_out_dir", "evaluate", "recheck", "resolve_device"]


# --------------------------------------------------------------------------- helpers
# --------------------------------------------------------------------------- engine
@dataclass
class _Run:
    """What every pass of one evaluation shares: the model, the data (host), the device, the
    verdict log and the records a resumed run replays."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor
    dev: torch.device
    batch_size: int
    progress: bool
    log: VerdictLog | None = None
    done: dict = field(default_factory=dict)
    repeats: int = 1  # K of K evaluations of each attack's final point (the suite's)

    def x_on(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            self.x[idx].to(self.dev, non_blocking=True),
            self.y[idx].to(self.dev, non_blocking=True),
        )

    def replay(self, key: tuple, chunk_ids: torch.Tensor) -> dict | None:
        rec = self.done.get(key)
        if rec is not None and rec["ids"] != chunk_ids.tolist():
            raise UnionRobustError(
                f"cannot resume: logged chunk {key} holds other examples; use a new output folder"
            )
        return rec


@dataclass
class _Verdicts:
    """The attack passes' results so far: per example and entry, per example and threat."""

    broken: torch.Tensor  # bool (n, E)
    norms: torch.Tensor  # float64 (n, E)
    robust: torch.Tensor  # bool (n, T)
    seconds: list[float] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    attacked: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, clean_correct: torch.Tensor, n_entries: int, n_threats: int) -> _Verdicts:
        count = clean_correct.numel()
        return cls(
            torch.zeros(count, n_entries, dtype=torch.bool),
            torch.full((count, n_entries), float("nan"), dtype=torch.float64),
            clean_correct.reshape(-1, 1).repeat(1, n_threats),
        )

    def todo(self, t: int, mode: EvaluationMode) -> torch.Tensor:
        """Indices the next entry (of threat ``t``) attacks (:meth:`EvaluationMode.attacked`)."""
        return torch.nonzero(mode.attacked(self.robust, t)).reshape(-1)


def _attack_chunk(
    run: _Run, attack: Any, threat: ThreatModel, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Attack examples ``idx`` and re-check the result: (broken, norms, rejected claims)."""
    xb, yb = run.x_on(idx)
    ids = run.ids[idx].to(run.dev)
    result, b_dev, nrm_dev = checked_attack(
        run.model, attack, threat, xb, yb, ids, repeats=run.repeats
    )
    return b_dev.cpu(), nrm_dev.cpu(), int(rejected(result, b_dev).sum())


def _run_entry(
    run: _Run,
    e: int,
    entry: Any,
    union: Union,
    seed: int,
    todo: torch.Tensor,
    v: _Verdicts,
    union_bar: bool = False,
) -> None:
    """Suite entry ``e`` on the examples ``todo``, in batches (replayed from the log when
    resuming); its verdicts go into ``v``. The progress bar shows the threat's accuracy so
    far, or the union's with ``union_bar``."""
    t = entry.threat_index
    threat = union[t]
    key = entry.key(union)
    v.attacked.append(int(todo.numel()))
    attack = None
    seconds = 0.0
    n_rejected = 0
    with progress_bar(int(todo.numel()), key, run.progress) as bar:
        for k, idx in enumerate(_chunks(todo, run.batch_size)):
            rec = run.replay(("attack", key, k), run.ids[idx])
            if rec is not None:
                b = torch.tensor(rec["broken"], dtype=torch.bool)
                nrm = norms_from_json(rec["norms"])
                r, dt = int(rec["rejected"]), float(rec["seconds"])
            else:
                if attack is None:
                    attack = entry.build(threat, int(seed))
                    if hasattr(attack, "with_row_budget"):  # stacked passes: batch-size rows
                        attack.with_row_budget(run.batch_size)
                tc = time.perf_counter()
                b, nrm, r = _attack_chunk(run, attack, threat, idx)
                dt = time.perf_counter() - tc
                if run.log is not None:
                    run.log.write_attack(key, k, run.ids[idx], b, nrm, r, dt)
            n_rejected += r
            seconds += dt
            v.broken[idx, e] = b
            v.norms[idx, e] = nrm
            v.robust[idx, t] &= ~b
            if bar is not None:
                bar.update(idx.numel())
                acc = v.robust.all(dim=1) if union_bar else v.robust[:, t]
                bar.set_postfix(acc=f"{float(acc.double().mean()):.3f}")
    v.seconds.append(seconds)
    v.rejected.append(n_rejected)


def _attack_passes(
    run: _Run,
    suite: Suite,
    union: Union,
    seed: int,
    mode: EvaluationMode,
    clean_correct: torch.Tensor,
) -> _Verdicts:
    """Every suite entry in order: per-threat cascade, union-only, or everything on everything."""
    v = _Verdicts.start(clean_correct, len(suite.entries), len(union))
    filters: int | None = None
    for e, entry in enumerate(suite.entries):
        todo = v.todo(entry.threat_index, mode)
        tier = escalation_tier(entry)
        if tier in GATED_TIERS:  # standard's gated passes (escalation_open)
            if filters is None:
                filters = int(thresholding_filters(run.model).get("count", 0))
            earlier = [(suite.entries[k], bool(v.broken[:, k].any())) for k in range(e)]
            free = is_gradient_free(entry.attack)
            masks = masking_filters(union[entry.threat_index], tier, free, filters)
            if not escalation_open(entry, earlier, masks, is_gradient_free):
                todo = todo[:0]
        _run_entry(run, e, entry, union, seed, todo, v, union_bar=mode is EvaluationMode.UNION_ONLY)
    return v


def _report(
    union: Union,
    suite: Suite,
    config: dict[str, Any],
    run: _Run,
    clean_correct: torch.Tensor,
    v: _Verdicts,
    timings: dict[str, Any],
    nonfinite: int,
) -> EvaluationReport:
    """The report of a finished run (diagnostics are added by the caller)."""
    return EvaluationReport(
        threats=[m.spec for m in union],
        suite=suite.name,
        entries=suite.describe(),
        seed=int(config["seed"]),
        example_ids=run.ids,
        labels=run.y.cpu(),
        clean_correct=clean_correct,
        broken=v.broken,
        norms=v.norms,
        entry_threat=[en.threat_index for en in suite.entries],
        rejected=v.rejected,
        attacked=v.attacked,
        timings=timings,
        config=config,
        config_hash=config_hash(config),
        mode=EvaluationMode.of(config["mode"]),
        nonfinite=nonfinite,
    )


def _check_options(batch_size: Any, seed: Any) -> None:
    """Validate the run options."""
    check_int("batch size", batch_size, 1)
    check_seed(seed)


def _example_ids(example_ids: torch.Tensor | None, count: int) -> torch.Tensor:
    """The examples' global ids (default 0..count−1), checked distinct, on the host."""
    ids = torch.arange(count) if example_ids is None else torch.as_tensor(example_ids).long()
    if ids.shape != (count,) or torch.unique(ids).numel() != count:
        raise UnionRobustError(f"example_ids must be {count} distinct integers")
    return ids.cpu()


def _run_config(
    union: Union,
    suite: Suite,
    seed: int,
    batch_size: int,
    count: int,
    mode: EvaluationMode,
    meta: dict[str, Any] | None,
) -> dict[str, Any]:
    """The run's configuration, as kept in the report and checked on resume."""
    repeats = {} if suite.repeats == 1 else {"repeats": suite.repeats}
    return {
        "threats": union.spec,
        "suite": suite.name,
        "entries": suite.describe(),
        **repeats,
        "seed": int(seed),
        "batch_size": batch_size,
        "n": count,
        "mode": mode.value,
        "meta": dict(meta or {}),
    }


def _fingerprints(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor
) -> dict[str, str]:
    """Hashes of the ids, data and model that a resumed run must match."""
    return {
        "ids_hash": tensor_hash([ids]),
        "data_hash": tensor_hash([x, y]),
        "model_hash": model_fingerprint(model),
    }


def _clean_pass(run: _Run) -> tuple[torch.Tensor, int]:
    """Clean verdicts of every example (replayed from the log when resuming) and the count of
    non-finite logit rows (not correct; a whole non-finite batch is an error)."""
    count = run.x.shape[0]
    clean_correct = torch.zeros(count, dtype=torch.bool)
    nonfinite = 0
    with progress_bar(count, "clean", run.progress) as bar:
        for k, idx in enumerate(_chunks(torch.arange(count), run.batch_size)):
            rec = run.replay(("clean", None, k), run.ids[idx])
            if rec is not None:
                correct = torch.tensor(rec["correct"], dtype=torch.bool)
                bad = int(rec.get("nonfinite", 0))
            else:
                xb, yb = run.x_on(idx)
                correct_dev, bad_dev = clean_verdicts(run.model, xb, yb)
                correct, bad = correct_dev.cpu(), int(bad_dev.sum())
                if run.log is not None:
                    run.log.write_clean(k, run.ids[idx], correct, bad)
            clean_correct[idx] = correct
            nonfinite += bad
            if bar is not None:
                bar.update(idx.numel())
    return clean_correct, nonfinite


@owning_out_dir
def evaluate(
    model: nn.Module,
    x_or_dataset: Any,
    y: torch.Tensor | None = None,
    threats: str | ThreatModel | Union = "linf:0.3, l2:2, l1:10",
    suite: Any = "standard",
    batch_size: int = 250,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    n: int | None = None,
    *,
    mode: EvaluationMode | str | None = None,
    cascade: bool = True,
    union_only: bool = False,
    example_ids: torch.Tensor | None = None,
    meta: dict[str, Any] | None = None,
    diagnostics: bool = True,
    overwrite: bool = False,
) -> EvaluationReport:
    """Evaluate ``model`` against the union ``threats`` with ``suite``; see the module doc.

    ``x_or_dataset``: images in [0, 1] with labels ``y``, a dataset of (image, label), or an
    iterable of (x, y) batches (a ``DataLoader``); ``n``: evaluate the first n examples.
    ``suite``: a name, a list of attack names or a :class:`Suite`. ``out_dir``: log verdicts
    as they come and write report.json + verdicts.csv at the end, holding the folder's lock
    (:mod:`unionrobust.outdir`); ``resume``: continue the log in ``out_dir`` (same
    configuration required, else an error); a folder that already holds a run needs
    ``resume`` or ``overwrite``. Non-finite logits: see :mod:`unionrobust.evaluation.checks`
    (``report.nonfinite`` counts them). ``device``: None = the model's, "auto" = CUDA if available.
    ``mode`` (:class:`~unionrobust.evaluation.mode.EvaluationMode` or its name, default
    ``per-threat``): ``everything`` runs every attack on every point (same verdicts, slower; for
    checks and benchmarks); ``union-only``: a point broken for any threat is not attacked again,
    and the suite runs in union-first order (:meth:`Suite.union_first`); same union verdicts,
    faster, per-threat figures are upper bounds (``report.upper_bounds``). The older flags
    ``union_only=True`` / ``cascade=False`` still select those modes. ``example_ids``: global
    ids of the examples (default 0..n−1), which key the attacks' randomness. ``meta``:
    JSON-able facts about the run (model name, data spec) kept in the report and checked on
    resume. ``diagnostics``: run the model checks and the gradient-masking flag of
    :mod:`unionrobust.evaluation.diagnostics` (``report.diagnostics``). The model is left
    exactly as found.
    """
    t_start = time.perf_counter()
    union = parse(threats)
    the_suite: Suite = get_suite(suite, union)
    _check_options(batch_size, seed)
    the_mode = EvaluationMode.resolve(mode, cascade, union_only)
    if the_mode is EvaluationMode.UNION_ONLY:
        the_suite = the_suite.union_first()
    dev = device_for(model, device)
    x, y = read_examples(x_or_dataset, y, n)
    check_model_classes(model, x[:1].to(dev), known_classes(x_or_dataset))
    ids = _example_ids(example_ids, x.shape[0])
    config = _run_config(union, the_suite, seed, batch_size, x.shape[0], the_mode, meta)
    if out_dir is not None:  # fingerprints guard --resume; not worth their cost otherwise
        config |= _fingerprints(model, x, y, ids)

    run = _Run(model, x, y, ids, dev, batch_size, progress, repeats=the_suite.repeats)
    if out_dir is not None:
        run.log, records = VerdictLog.open(out_dir, config, resume)
        run.done = records_by_key(records)

    diag: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        clean_correct, nonfinite = _clean_pass(run)
        t_clean = time.perf_counter() - t0
        if diagnostics:  # after the clean pass, which reports a broken model in one line
            diag = run_diagnostics(model, x, y, union)

        v = _attack_passes(run, the_suite, union, seed, the_mode, clean_correct)
    finally:
        if run.log is not None:
            run.log.close()

    timings = {"clean": t_clean, "entries": v.seconds, "total": time.perf_counter() - t_start}
    report = _report(union, the_suite, config, run, clean_correct, v, timings, nonfinite)
    if diagnostics:
        diag["gradient_masking"] = gradient_masking(report, first_layer=diag.get("first_layer"))
        diag["flags"] = flags_of(diag)
        report.diagnostics = diag
    if out_dir is not None:
        write_outputs(report, out_dir)
    return report
