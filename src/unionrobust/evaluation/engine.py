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

import functools
import inspect
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from unionrobust.errors import UnionRobustError
from unionrobust.evaluation.checks import clean_verdicts, predicts_wrong
from unionrobust.evaluation.diagnostics import flags_of, gradient_masking, run_diagnostics
from unionrobust.evaluation.inputs import as_tensors, device_for, progress_bar, resolve_device
from unionrobust.evaluation.inputs import chunks as _chunks
from unionrobust.evaluation.report import EvaluationReport
from unionrobust.evaluation.suites import Suite, get_suite
from unionrobust.evaluation.verdicts import (
    LOG_NAME,
    VerdictLog,
    config_hash,
    model_fingerprint,
    norms_from_json,
    records_by_key,
    tensor_hash,
    write_outputs,
)
from unionrobust.outdir import locked_folder, refuse_existing
from unionrobust.threats import DEFAULT_TOL, ThreatModel, Union, parse

__all__ = ["as_tensors", "check_out_dir", "evaluate", "recheck", "resolve_device"]


# --------------------------------------------------------------------------- helpers
def recheck(
    model: nn.Module,
    threat: ThreatModel | Union,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    tol: float = DEFAULT_TOL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independently verify an attack's output: (broken (B,), norm (B,) float64).

    Broken iff ``x_adv`` is finite, ``x_adv − x`` lies in the ball of ``threat`` and
    ``x_adv`` in [0, 1] (both up to the threat's float tolerance), and the model misclassifies
    ``x_adv`` clamped to [0, 1] (so the point judged is a valid image) or returns non-finite
    logits there (a broken output is never robust). For a :class:`Union` "inside" means inside
    some member's ball, and the norm is NaN (no single norm applies).
    """
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        shape = getattr(x_adv, "shape", None)
        raise UnionRobustError(f"attack returned x_adv of shape {shape}, expected {tuple(x.shape)}")
    xa = x_adv.detach().to(device=x.device, dtype=x.dtype)
    finite_el = torch.isfinite(xa)
    finite = finite_el.reshape(xa.shape[0], -1).all(dim=1)
    xa = torch.where(finite_el, xa, x)
    inside = threat.contains(xa - x, x, tol) & finite
    xc = xa.clamp(0.0, 1.0)
    broken = inside & predicts_wrong(model, xc, y)
    if isinstance(threat, Union):
        return broken, torch.full(broken.shape, float("nan"), dtype=torch.float64)
    return broken, threat.norm(xc - x).double()


def check_out_dir(out_dir: str | os.PathLike | None, resume: bool, overwrite: bool) -> None:
    """Refuse to replace an earlier run in ``out_dir`` unless ``resume`` or ``overwrite``."""
    if resume and overwrite:
        raise UnionRobustError(
            "give resume=True (--resume) or overwrite=True (--overwrite), not both"
        )
    if not resume and not overwrite:
        refuse_existing(
            out_dir,
            (LOG_NAME, "report.json"),
            "continue it with --resume (resume=True), replace it with --overwrite "
            "(overwrite=True), or choose another output folder",
        )


def _owning_out_dir(run: Callable[..., EvaluationReport]) -> Callable[..., EvaluationReport]:
    """Run ``run`` holding its ``out_dir``'s lock, after refusing a folder that already holds
    a run unless ``resume`` or ``overwrite`` is given (both checked before any work)."""
    signature = inspect.signature(run)

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> EvaluationReport:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out_dir, resume = bound.arguments["out_dir"], bound.arguments["resume"]
        with locked_folder(out_dir):
            check_out_dir(out_dir, resume, bound.arguments["overwrite"])
            return run(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- engine
@_owning_out_dir
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
    cascade: bool = True,
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
    ``cascade=False`` runs every attack on every point (same verdicts, slower; for checks and
    benchmarks). ``example_ids``: global ids of the examples (default 0..n−1), which key the
    attacks' randomness. ``meta``: JSON-able facts about the run (model name, data spec) kept
    in the report and checked on resume. ``diagnostics``: run the model checks and the
    gradient-masking flag of :mod:`unionrobust.evaluation.diagnostics` (``report.diagnostics``).
    The model is left exactly as found.
    """
    t_start = time.perf_counter()
    union = parse(threats)
    the_suite: Suite = get_suite(suite, union)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise UnionRobustError(f"batch size must be a positive integer, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UnionRobustError(f"seed must be an integer, got {seed!r}")
    dev = device_for(model, device)
    x, y = as_tensors(x_or_dataset, y, n)
    count = x.shape[0]
    ids = torch.arange(count) if example_ids is None else torch.as_tensor(example_ids).long()
    if ids.shape != (count,) or torch.unique(ids).numel() != count:
        raise UnionRobustError(f"example_ids must be {count} distinct integers")
    ids = ids.cpu()

    entries = the_suite.entries
    config = {
        "threats": union.spec,
        "suite": the_suite.name,
        "entries": the_suite.describe(),
        "seed": int(seed),
        "batch_size": batch_size,
        "n": count,
        "cascade": bool(cascade),
        "meta": dict(meta or {}),
    }
    if out_dir is not None:  # fingerprints guard --resume; not worth their cost otherwise
        config["ids_hash"] = tensor_hash([ids])
        config["data_hash"] = tensor_hash([x, y])
        config["model_hash"] = model_fingerprint(model)

    log: VerdictLog | None = None
    done: dict = {}
    if out_dir is not None:
        log, records = VerdictLog.open(out_dir, config, resume)
        done = records_by_key(records)

    def x_on(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            x[idx].to(dev, non_blocking=True),
            y[idx].to(dev, non_blocking=True),
        )

    def replay(key: tuple, chunk_ids: torch.Tensor) -> dict | None:
        rec = done.get(key)
        if rec is not None and rec["ids"] != chunk_ids.tolist():
            raise UnionRobustError(
                f"cannot resume: logged chunk {key} holds other examples; use a new output folder"
            )
        return rec

    diag: dict[str, Any] = {}
    try:
        # ---- clean pass (non-finite logits: not correct, and an error for a whole batch)
        t0 = time.perf_counter()
        clean_correct = torch.zeros(count, dtype=torch.bool)
        nonfinite = 0
        with progress_bar(count, "clean", progress) as bar:
            for k, idx in enumerate(_chunks(torch.arange(count), batch_size)):
                rec = replay(("clean", -1, k), ids[idx])
                if rec is not None:
                    correct = torch.tensor(rec["correct"], dtype=torch.bool)
                    bad = int(rec.get("nonfinite", 0))
                else:
                    xb, yb = x_on(idx)
                    correct_dev, bad_dev = clean_verdicts(model, xb, yb)
                    correct, bad = correct_dev.cpu(), int(bad_dev.sum())
                    if log is not None:
                        log.write_clean(k, ids[idx], correct, bad)
                clean_correct[idx] = correct
                nonfinite += bad
                if bar is not None:
                    bar.update(idx.numel())
        t_clean = time.perf_counter() - t0
        if diagnostics:  # after the clean pass, which reports a broken model in one line
            diag = run_diagnostics(model, x, y, union)

        # ---- attacks, as a cascade
        n_entries = len(entries)
        broken = torch.zeros(count, n_entries, dtype=torch.bool)
        norms = torch.full((count, n_entries), float("nan"), dtype=torch.float64)
        robust = clean_correct.reshape(-1, 1).repeat(1, len(union))
        entry_seconds: list[float] = []
        rejected: list[int] = []
        attacked: list[int] = []
        for e, entry in enumerate(entries):
            t = entry.threat_index
            threat = union[t]
            todo = torch.nonzero(robust[:, t]).reshape(-1) if cascade else torch.arange(count)
            attacked.append(int(todo.numel()))
            attack = None
            seconds = 0.0
            n_rejected = 0
            with progress_bar(int(todo.numel()), entry.label(union), progress) as bar:
                for k, idx in enumerate(_chunks(todo, batch_size)):
                    rec = replay(("attack", e, k), ids[idx])
                    if rec is not None:
                        b = torch.tensor(rec["broken"], dtype=torch.bool)
                        nrm = norms_from_json(rec["norms"])
                        n_rejected += int(rec["rejected"])
                        seconds += float(rec["seconds"])
                    else:
                        if attack is None:
                            attack = entry.build(threat, int(seed))
                        tc = time.perf_counter()
                        xb, yb = x_on(idx)
                        result = attack(model, xb, yb, example_ids=ids[idx].to(dev))
                        b_dev, nrm_dev = recheck(model, threat, xb, yb, result.x_adv)
                        claimed = result.success.to(b_dev.device).bool()
                        r = int((claimed & ~b_dev).sum())
                        b, nrm = b_dev.cpu(), nrm_dev.cpu()
                        dt = time.perf_counter() - tc
                        n_rejected += r
                        seconds += dt
                        if log is not None:
                            log.write_attack(e, k, ids[idx], b, nrm, r, dt)
                    broken[idx, e] = b
                    norms[idx, e] = nrm
                    robust[idx, t] &= ~b
                    if bar is not None:
                        bar.update(idx.numel())
                        bar.set_postfix(acc=f"{float(robust[:, t].double().mean()):.3f}")
            entry_seconds.append(seconds)
            rejected.append(n_rejected)
    finally:
        if log is not None:
            log.close()

    report = EvaluationReport(
        threats=[m.spec for m in union],
        suite=the_suite.name,
        entries=the_suite.describe(),
        seed=int(seed),
        example_ids=ids,
        labels=y.cpu(),
        clean_correct=clean_correct,
        broken=broken,
        norms=norms,
        entry_threat=[en.threat_index for en in entries],
        rejected=rejected,
        attacked=attacked,
        timings={
            "clean": t_clean,
            "entries": entry_seconds,
            "total": time.perf_counter() - t_start,
        },
        config=config,
        config_hash=config_hash(config),
        cascade=bool(cascade),
        nonfinite=nonfinite,
    )
    if diagnostics:
        diag["gradient_masking"] = gradient_masking(report)
        diag["flags"] = flags_of(diag)
        report.diagnostics = diag
    if out_dir is not None:
        write_outputs(report, out_dir)
    return report
