"""Union evaluation vs AutoAttack and the decision-based attacks: robust accuracy, points some
reference breaks that we miss, and process CPU time, on the same models and points (issues 8
and 16).

Models, trained with the package's trainer on the 4,000 embedded MNIST training digits and
cached under ``--cache`` (reruns skip training):

- four LeNets (``lenet-natural``, ``lenet-pinf``, ``lenet-max``, ``lenet-msd``): configs
  ``mnist-small``, ``mnist-small-pinf``, ``mnist-small-max``, ``mnist-small-msd`` with
  ``model.name=lenet`` (5 epochs, ε warm-up over 2), seed 0;
- two gradient-masking models (``small-cnn-pinf-strong-s0`` / ``-s1``): config
  ``mnist-small-pinf-strong`` (small-cnn, 40 epochs of 10-step ℓ∞ PGD at ε = 0.3, ε warm-up
  over 10, Adam 1e-3 ÷ 10 for the last 10 epochs), seeds 0 and 1. ℓ∞-trained MNIST models of
  this strength mask the gradients of the other norms (MSD §5.1 and App. B; Tramèr & Boneh §4).

References, on the first N test digits (class-balanced), each output re-checked by the engine's
own check (:func:`unionrobust.evaluation.checks.recheck`: inside the ball and [0, 1] up to the
float tolerance, prediction recomputed), so every side is judged alike:

- AutoAttack ``version='standard'`` (imported from ``--autoattack``, never copied into the
  repo), once per norm with the union's radii (ℓ∞ 0.3, ℓ2 2, ℓ1 10): APGD-CE, APGD-T, FAB-T
  and Square on the points still robust (ℓ∞/ℓ2: 1 APGD-CE restart, 9 APGD-T targets; ℓ1: 5
  restarts, 5 targets, ``use_largereps``). The CPU time of its APGD pair (APGD-CE + APGD-T at
  these budgets) is measured inside the same run: AutoAttack runs its attacks one after the
  other on the points still robust, so the pair alone does exactly this work.
- Foolbox's Boundary attack (ℓ2; ``--boundary-steps``, Foolbox's default 25,000, on the masked
  models, ``--boundary-steps-unmasked``, 5,000, on the LeNets, where it is far weaker than
  AutoAttack) and Pointwise attack (ℓ1), through the ``peers`` adapters (``fb-boundary``,
  ``fb-pointwise``: started from salt-and-pepper points, the result projected onto ball ∩ box if
  it still breaks there).
- "all references": per point, broken if any reference broke it (for the union: for any norm).

Ours: ``evaluate(..., suite="standard")`` per threat and with ``union_only=True``.

Caches: each reference is cached in ``--ref-cache`` (one JSON file per model and reference)
keyed by the model's weights, the points and the reference settings (:func:`reference_key`);
ours in ``--ours-cache`` keyed by the weights, the points, its settings and a digest of the
package's sources. Rerunning after a change to the suites thus reruns ours only, never
AutoAttack or Foolbox. ``--stage refs`` / ``--stage ours`` run one side only (the references
named by ``--references``), so the parts can run in parallel processes; ``--stage all`` (the
default) runs what is missing and prints the table.

Targets (issue 16), per model and cell (ℓ∞, ℓ2, ℓ1, union): ours ≤ the minimum over the
references; points some reference breaks that we call robust ≤ 0.5 %; CPU per threat ≤ 1.0 ×
AutoAttack standard (sum over the norms), union-only ≤ 0.5 ×; on the unmasked LeNets, union-only
≤ 1.0 × AutoAttack's APGD pair alone. A model counts as masked when it was trained to be
(the small CNNs) or has thresholding first-layer filters (``thresholding_filters``, the
evidence ``standard`` itself escalates on: the P∞ LeNet has four), where ``standard`` runs its
gradient-free passes and the APGD-pair target does not apply. CPU time is the process's user +
system time (``time.process_time``), every side with the same torch threads.

    python benchmarks/bench_vs_autoattack.py [--autoattack /work/aa] [--n 200] [--quick]
        [--models lenet-natural,...] [--threads 1] [--stage all|refs|ours] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from _common import frozen, machine_note, markdown_table, set_threads

from unionrobust.atomic import atomic_write_text
from unionrobust.attacks import make_attack
from unionrobust.data import load_embedded_mnist
from unionrobust.evaluation import evaluate
from unionrobust.evaluation.checks import recheck
from unionrobust.evaluation.filters import thresholding_filters
from unionrobust.models import load_weights, save_weights
from unionrobust.threats import parse
from unionrobust.training import load_config, train
from unionrobust.training.config import dump_config
from unionrobust.training.trainer import build_model_from

THREATS = "linf:0.3, l2:2, l1:10"
#: model kind -> built-in training config (the architecture is overridden per model)
CONFIGS = {
    "natural": "mnist-small",
    "pinf": "mnist-small-pinf",
    "max": "mnist-small-max",
    "msd": "mnist-small-msd",
    "pinf-strong": "mnist-small-pinf-strong",
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    arch: str
    kind: str
    seed: int = 0
    #: trained to mask gradients (with the models that have thresholding filters, the ones
    #: the APGD-pair CPU target does not apply to)
    masked: bool = False


#: benchmark model name -> how it is trained
MODELS = {
    "lenet-natural": ModelSpec("lenet", "natural"),
    "lenet-pinf": ModelSpec("lenet", "pinf"),
    "lenet-max": ModelSpec("lenet", "max"),
    "lenet-msd": ModelSpec("lenet", "msd"),
    "small-cnn-pinf-strong-s0": ModelSpec("small-cnn", "pinf-strong", 0, masked=True),
    "small-cnn-pinf-strong-s1": ModelSpec("small-cnn", "pinf-strong", 1, masked=True),
}
#: our threat names -> AutoAttack's norm names
AA_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}
#: the references and the norms each covers (None: every norm of the union)
REFERENCES: dict[str, tuple[str, ...] | None] = {
    "autoattack": None,
    "boundary": ("l2",),
    "pointwise": ("l1",),
}
#: issue 16's targets
MAX_MISSED = 0.005
MAX_CPU_UNION_ONLY = 0.5
MAX_CPU_PER_THREAT = 1.0
MAX_CPU_UNION_ONLY_APGD = 1.0


# ------------------------------------------------------------------------ pure helpers


def missed(reference_broken: torch.Tensor, ours_robust: torch.Tensor) -> int:
    """Points the reference broke that we call robust (both bool (n,))."""
    return int((reference_broken & ours_robust).sum())


def robust_from_broken(
    broken: dict[str, dict[str, list[int]]], clean: torch.Tensor
) -> dict[str, dict[str, torch.Tensor]]:
    """Per reference and threat spec: robust bool (n,) from the cached indices of the points the
    reference broke; clean-misclassified points are not robust."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for ref, per_spec in broken.items():
        out[ref] = {}
        for spec, idx in per_spec.items():
            r = clean.clone()
            r[torch.as_tensor(idx, dtype=torch.long)] = False
            out[ref][spec] = r
    return out


def compare_verdicts(
    refs_robust: dict[str, dict[str, torch.Tensor]],
    ours_robust: dict[str, torch.Tensor],
    union_only_robust: torch.Tensor | None,
) -> dict[str, dict[str, Any]]:
    """Per threat spec and for the union ("union"): robust accuracy of every reference, of all
    references together ("all_refs": broken if any reference broke it), their minimum
    ("min_ref") and ours; the points all references break and we call robust ("missed") and
    those we break and no reference does ("extra").

    ``refs_robust``: reference -> spec -> bool (n,) for the specs the reference attacks;
    ``ours_robust``: spec -> bool (n,) for every spec; clean-misclassified points already False.
    A point is robust for the union iff robust for every spec. A reference's union accuracy is
    given only when it covers every spec (a single-norm attack says nothing about the union).
    ``union_only_robust``: the union verdict of the union-only mode (None when not run).
    """
    specs = list(ours_robust)
    ours = dict(ours_robust)
    ours["union"] = torch.stack([ours_robust[s] for s in specs]).all(dim=0)
    n = int(ours["union"].numel())
    every = torch.ones(n, dtype=torch.bool)
    all_refs = {s: every.clone() for s in specs}
    per_ref: dict[str, dict[str, torch.Tensor]] = {}
    for ref, per_spec in refs_robust.items():
        per_ref[ref] = dict(per_spec)
        for s, r in per_spec.items():
            all_refs[s] &= r
        if set(per_spec) >= set(specs):
            per_ref[ref]["union"] = torch.stack([per_spec[s] for s in specs]).all(dim=0)
    all_refs["union"] = torch.stack([all_refs[s] for s in specs]).all(dim=0)
    out: dict[str, dict[str, Any]] = {}
    for key in [*specs, "union"]:
        accs = {ref: int(r[key].sum()) / n for ref, r in per_ref.items() if key in r}
        row: dict[str, Any] = {
            "refs": accs,
            "all_refs": int(all_refs[key].sum()) / n,
            "min_ref": min(accs.values()) if accs else None,
            "ours": int(ours[key].sum()) / n,
            "missed": missed(~all_refs[key], ours[key]),
            "extra": missed(~ours[key], all_refs[key]),
            "n": n,
        }
        if key == "union" and union_only_robust is not None:
            row["ours_union_only"] = int(union_only_robust.sum()) / n
            row["missed_union_only"] = missed(~all_refs[key], union_only_robust)
        out[key] = row
    return out


def cpu_summary(
    ref_cpu: dict[str, dict[str, float]],
    aa_apgd: float,
    per_threat: float | None,
    union_only: float | None,
) -> dict[str, Any]:
    """CPU seconds and the target ratios: ours per threat and union-only ÷ AutoAttack standard
    (summed over the norms), union-only ÷ AutoAttack's APGD pair (``aa_apgd``)."""
    aa_total = sum(ref_cpu["autoattack"].values())

    def ratio(a: float | None, b: float) -> float | None:
        return None if a is None or b <= 0 else a / b

    return {
        "refs": {ref: {**c, "total": sum(c.values())} for ref, c in ref_cpu.items()},
        "aa_total": aa_total,
        "aa_apgd": aa_apgd,
        "per_threat": per_threat,
        "per_threat_ratio": ratio(per_threat, aa_total),
        "union_only": union_only,
        "union_only_ratio": ratio(union_only, aa_total),
        "union_only_ratio_apgd": ratio(union_only, aa_apgd),
    }


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def targets(
    verdicts: dict[str, dict[str, Any]], cpu: dict[str, Any], masked: bool
) -> dict[str, bool | None]:
    """Issue 16's targets for one model (None: not measured, e.g. no union-only run; the
    APGD-pair target applies to unmasked models only)."""
    rows = verdicts.values()
    union = verdicts["union"]
    uo = union.get("ours_union_only")
    return {
        "accuracy_le_min_ref": all(r["min_ref"] is None or r["ours"] <= r["min_ref"] for r in rows)
        and (uo is None or union["min_ref"] is None or uo <= union["min_ref"]),
        "missed_le_0.5pct": all(
            max(r["missed"], r.get("missed_union_only", 0)) <= MAX_MISSED * r["n"] for r in rows
        ),
        "cpu_per_threat_le_1x_aa": _at_most(cpu["per_threat_ratio"], MAX_CPU_PER_THREAT),
        "cpu_union_only_le_0.5x_aa": _at_most(cpu["union_only_ratio"], MAX_CPU_UNION_ONLY),
        "cpu_union_only_le_1x_apgd_pair": None
        if masked
        else _at_most(cpu["union_only_ratio_apgd"], MAX_CPU_UNION_ONLY_APGD),
    }


def pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def yes_no(v: bool | None) -> str:
    return "n/a" if v is None else ("yes" if v else "NO")


def ratio_cell(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def masked_cell(r: dict[str, Any]) -> str:
    """Why a model counts as masked (trained to be, thresholding filters) or "no"."""
    filters = r.get("thresholding_filters")
    if not r["masked"]:
        return "no"
    return f"yes ({filters} thresholding filters)" if filters else "yes"


def count_cell(k: int | None, n: int) -> str:
    return "" if k is None else f"{k} ({100 * k / n:.1f} %)"


def tables(results: dict[str, dict[str, Any]]) -> str:
    """The markdown report: accuracy and misses per model and cell, CPU time, AutoAttack's
    attacks."""
    refs = list(REFERENCES)
    rows = []
    for name, r in results.items():
        n = r["n"]
        for key, v in r["verdicts"].items():
            union = key == "union"
            rows.append(
                (
                    name,
                    key,
                    pct(r["clean"]),
                    *[pct(v["refs"].get(ref)) for ref in refs],
                    pct(v["all_refs"]),
                    "n/a" if v["ours"] is None else pct(v["ours"]),
                    pct(v.get("ours_union_only")) if union else "",
                    count_cell(v["missed"], n),
                    count_cell(v.get("missed_union_only"), n) if union else "",
                    v["extra"],
                )
            )
    acc = markdown_table(
        (
            "model",
            "threat",
            "clean %",
            "AutoAttack %",
            "Boundary %",
            "Pointwise %",
            "all references %",
            "ours %",
            "ours union-only %",
            "refs break, we miss",
            "… union-only",
            "we break, no ref does",
        ),
        rows,
    )
    cpu_rows = []
    for name, r in results.items():
        c = r["cpu"]
        aa = c["refs"]["autoattack"]
        cpu_rows.append(
            (
                name,
                masked_cell(r),
                " + ".join(f"{aa[s]:.1f}" for s in aa if s != "total") + f" = {aa['total']:.1f}",
                f"{c['aa_apgd']:.1f}",
                *[f"{c['refs'][ref]['total']:.1f}" for ref in refs[1:] if ref in c["refs"]],
                "n/a" if c["per_threat"] is None else f"{c['per_threat']:.1f}",
                ratio_cell(c["per_threat_ratio"]),
                "n/a" if c["union_only"] is None else f"{c['union_only']:.1f}",
                ratio_cell(c["union_only_ratio"]),
                ratio_cell(c["union_only_ratio_apgd"]),
                ", ".join(f"{k} {yes_no(v)}" for k, v in r["targets"].items()),
            )
        )
    cpu = markdown_table(
        (
            "model",
            "masked",
            "AutoAttack CPU s (ℓ∞ + ℓ2 + ℓ1 = total)",
            "AA APGD pair s",
            "Boundary s",
            "Pointwise s",
            "ours per-threat s",
            "× AA",
            "ours union-only s",
            "× AA",
            "× APGD pair",
            "targets met",
        ),
        cpu_rows,
    )
    attack_rows = []
    for name, r in results.items():
        for spec, f in r.get("autoattack", {}).items():
            cells = [
                f"{v['cpu_s']:.1f} s, {v['broken']}/{v['attacked']}"
                for v in f["per_attack"].values()
            ]
            attack_rows.append((name, spec, *cells, f["rejected_by_recheck"]))
    if not attack_rows:
        return acc + "\n\n" + cpu
    per_attack = markdown_table(
        ("model", "threat", *[f"AA {a}: CPU, broken/attacked" for a in AA_ATTACKS], "rejected"),
        attack_rows,
    )
    return acc + "\n\n" + cpu + "\n\n" + per_attack


def tensor_digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over named tensors (name, dtype, shape and bytes, in the order given)."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over the Python files under ``root`` (relative path and bytes, sorted)."""
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def reference_key(weights: str, points: str, settings: dict[str, Any]) -> str:
    """The cache key of one model's references: its weights digest, the points' digest and the
    reference settings (budgets, seed, batch size, AutoAttack's code digest, Foolbox version)."""
    blob = json.dumps({"weights": weights, "points": points, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ------------------------------------------------------------------------ models


def trained_model(kind: str, arch: str, seed: int, cache: Path) -> tuple[torch.nn.Module, dict]:
    """The ``kind`` model (a key of :data:`CONFIGS`) trained with its built-in config and
    ``arch``, from ``cache`` when a file with the same config is there, else trained and cached."""
    cfg = load_config(
        CONFIGS[kind],
        [
            f"model.name={arch}",
            f"training.seed={seed}",
            "training.progress=false",
            "training.device=cpu",
            "eval.n=0",  # train on all 4,000 digits; no per-epoch evaluation
        ],
    )
    text = dump_config(cfg)
    weights = cache / f"{arch}-{kind}-seed{seed}.safetensors"
    meta_file = weights.with_suffix(".json")
    if weights.is_file() and meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("config") == text:
            model = build_model_from(cfg)
            load_weights(model, weights)
            return model.eval(), {**meta, "cached": True}
    c0, w0 = time.process_time(), time.perf_counter()
    result = train(cfg)
    meta = {
        "config": text,
        "train_cpu_s": time.process_time() - c0,
        "train_wall_s": time.perf_counter() - w0,
        "final_epoch": result.history[-1] if result.history else None,
    }
    cache.mkdir(parents=True, exist_ok=True)
    save_weights(result.model, weights)
    atomic_write_text(meta_file, json.dumps(meta, indent=1))
    return result.model.eval(), {**meta, "cached": False}


# ------------------------------------------------------------------------ references


def load_autoattack(path: str) -> tuple[Callable[..., Any], str]:
    """``AutoAttack`` imported from a checkout at ``path`` (the folder holding autoattack/), and
    a digest of its code (part of the reference cache key)."""
    pkg = Path(path) / "autoattack"
    if not (pkg / "autoattack.py").is_file():
        raise SystemExit(
            f"AutoAttack not found under {path!r}: pass --autoattack PATH, the folder that "
            "holds autoattack/autoattack.py (a checkout of github.com/fra31/auto-attack)"
        )
    sys.path.insert(0, str(Path(path).resolve()))
    from autoattack import AutoAttack

    return AutoAttack, tree_digest(pkg)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, process CPU seconds, wall seconds) of ``fn()``."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


#: AutoAttack's attack names -> the attribute of AutoAttack holding that attack
AA_ATTACKS = {"apgd-ce": "apgd", "apgd-t": "apgd_targeted", "fab-t": "fab", "square": "square"}


def instrument(adversary: Any, model: torch.nn.Module) -> tuple[dict[str, dict], list[float]]:
    """Wrap the ``perturb`` of each of AutoAttack's attack objects (on the instance, its code
    untouched): per attack, CPU seconds, points attacked and points it broke (counted as
    AutoAttack counts them). Returns the stats and a one-item list with the CPU seconds spent
    counting, to subtract from AutoAttack's time."""
    stats = {name: {"cpu_s": 0.0, "attacked": 0, "broken": 0} for name in AA_ATTACKS}
    overhead = [0.0]
    for name, attr in AA_ATTACKS.items():
        obj = getattr(adversary, attr)

        def perturb(x, y=None, *a, _orig=obj.perturb, _s=stats[name], **k):
            c0 = time.process_time()
            out = _orig(x, y, *a, **k)
            c1 = time.process_time()
            with torch.no_grad():
                _s["broken"] += int((model(out).argmax(dim=1) != y).sum())
            _s["cpu_s"] += c1 - c0
            _s["attacked"] += int(x.shape[0])
            overhead[0] += time.process_time() - c1
            return out

        obj.perturb = perturb
    return stats, overhead


def indices(mask: torch.Tensor) -> list[int]:
    return [int(i) for i in mask.nonzero().flatten()]


def standard_autoattack(AutoAttack: Callable[..., Any], model: torch.nn.Module, threat, seed: int):
    """AutoAttack ``version='standard'`` for one member of the union, on the CPU, silent."""
    return AutoAttack(
        model,
        norm=AA_NORM[threat.name],
        eps=float(threat.size),
        version="standard",
        seed=seed,
        verbose=False,
        device="cpu",
    )


def run_autoattack(
    AutoAttack: Callable[..., Any],
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: torch.Tensor,
    seed: int,
    batch_size: int,
) -> dict[str, Any]:
    """AutoAttack standard once per norm: per threat spec, the points broken (after our
    re-check), CPU seconds, and facts (wall time, per-attack CPU and counts, examples
    AutoAttack counted but our check rejected)."""
    broken_at, cpu, facts = {}, {}, {}
    for threat in parse(THREATS).members:
        adversary = standard_autoattack(AutoAttack, model, threat, seed)
        per_attack, overhead = instrument(adversary, model)

        def run(adversary: Any = adversary) -> torch.Tensor:
            return adversary.run_standard_evaluation(x, y, bs=batch_size)

        x_adv, c, w = timed(run)
        broken, _ = recheck(model, threat, x, y, x_adv)
        with torch.no_grad():
            claimed = model(x_adv).argmax(dim=1) != y
        broken_at[threat.spec] = indices(broken & clean)
        cpu[threat.spec] = c - overhead[0]
        facts[threat.spec] = {
            "wall_s": w - overhead[0],
            "attacks": list(adversary.attacks_to_run),
            "per_attack": {k: v for k, v in per_attack.items() if k in adversary.attacks_to_run},
            "rejected_by_recheck": int((claimed & clean & ~broken).sum()),
        }
    return {"broken": broken_at, "cpu": cpu, "facts": facts}


def run_peer(
    name: str,
    norm: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: torch.Tensor,
    seed: int,
    batch_size: int,
    **options: Any,
) -> dict[str, Any]:
    """A Foolbox attack through its adapter (``fb-boundary``, ``fb-pointwise``) on the union's
    ``norm`` member, in batches; the points broken after our re-check, CPU and wall seconds."""
    threat = next(m for m in parse(THREATS).members if m.name == norm)
    attack = make_attack(name, threat, seed=seed, **options)

    def run() -> torch.Tensor:
        return torch.cat(
            [
                attack(model, x[i : i + batch_size], y[i : i + batch_size]).x_adv
                for i in range(0, len(x), batch_size)
            ]
        )

    x_adv, c, w = timed(run)
    broken, _ = recheck(model, threat, x, y, x_adv)
    return {
        "broken": {threat.spec: indices(broken & clean)},
        "cpu": {threat.spec: c},
        "facts": {threat.spec: {"wall_s": w, "attack": name, **options}},
    }


def boundary_steps(name: str, args: argparse.Namespace) -> int:
    return args.boundary_steps if MODELS[name].masked else args.boundary_steps_unmasked


def reference_settings(name: str, args: argparse.Namespace, aa_digest: str) -> dict[str, Any]:
    """Everything that changes model ``name``'s reference results (part of the cache key)."""
    import foolbox

    return {
        "threats": THREATS,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "autoattack": {"version": "standard", "code_sha256": aa_digest},
        "boundary": {"steps": boundary_steps(name, args)},
        "pointwise": {},
        "foolbox": foolbox.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def cache_path(folder: str, name: str, key: str, part: str) -> Path:
    return Path(folder) / f"{name}-{key[:16]}-{part}.json"


def cached_or_run(
    path: Path, key: str, header: dict[str, Any], run: Callable[[], dict[str, Any]] | None
) -> dict[str, Any] | None:
    """The result cached at ``path`` under ``key``; else ``run()`` (None: not run, None
    returned), cached with ``header`` as soon as it is done."""
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("key") == key:
            return data["result"]
    if run is None:
        return None
    result = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"key": key, **header, "result": result}, indent=1))
    return result


def references(
    name: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: torch.Tensor,
    AutoAttack: Callable[..., Any],
    settings: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The references of one model, each from its file in ``args.ref_cache`` when present
    (same weights, points and settings), else run (if in ``args.references``) and cached."""
    weights = tensor_digest(sorted(model.state_dict().items()))
    points = tensor_digest([("x", x), ("y", y)])
    key = reference_key(weights, points, settings)
    header = {"model": name, "weights": weights, "points": points, "settings": settings}
    runs = {
        "autoattack": lambda: run_autoattack(
            AutoAttack, model, x, y, clean, args.seed, args.batch_size
        ),
        "boundary": lambda: run_peer(
            "fb-boundary",
            "l2",
            model,
            x,
            y,
            clean,
            args.seed,
            args.batch_size,
            steps=settings["boundary"]["steps"],
        ),
        "pointwise": lambda: run_peer(
            "fb-pointwise", "l1", model, x, y, clean, args.seed, args.batch_size
        ),
    }
    out: dict[str, Any] = {"key": key}
    for ref, run in runs.items():
        path = cache_path(args.ref_cache, name, key, ref)
        fresh = not path.is_file()
        res = cached_or_run(
            path, key, {**header, "reference": ref}, run if ref in args.references else None
        )
        if res is not None:
            out[ref] = {**res, "path": str(path)}
            how = f"done ({sum(res['cpu'].values()):.0f} s CPU)" if fresh else "cached"
            print(f"{name}: {ref} {how}", flush=True)
    return out


# ------------------------------------------------------------------------ ours


def has_union_only() -> bool:
    return "union_only" in inspect.signature(evaluate).parameters


def source_digest() -> str:
    """sha256 of the installed unionrobust's Python sources (part of ours' cache key: a change
    to the suites reruns ours)."""
    import unionrobust

    return tree_digest(Path(unionrobust.__file__).parent)


def run_ours(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    batch_size: int,
    union_only: bool,
) -> tuple[Any, float, float]:
    """(report, CPU s, wall s) of our ``standard`` suite on the union."""
    extra = {"union_only": True} if union_only else {}
    return timed(
        lambda: evaluate(
            model,
            x,
            y,
            threats=THREATS,
            suite="standard",
            batch_size=batch_size,
            seed=seed,
            diagnostics=False,
            progress=False,
            **extra,
        )
    )


def ours_result(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """Our ``standard`` suite per threat and union-only: the points each calls robust, CPU and
    wall seconds, the per-attack breakdown (JSON-able, for the ours cache)."""
    rep, cpu, wall = run_ours(model, x, y, args.seed, args.batch_size, False)
    robust = rep.threat_robust()
    out: dict[str, Any] = {
        "robust": {s: indices(robust[:, i]) for i, s in enumerate(rep.threats)},
        "cpu": cpu,
        "wall": wall,
        "clean": rep.clean_accuracy,
        "per_attack": rep.breakdown(),
        "union_only_robust": None,
        "union_only_cpu": None,
        "union_only_wall": None,
    }
    if has_union_only():
        rep_u, cpu_u, wall_u = run_ours(model, x, y, args.seed, args.batch_size, True)
        out.update(
            union_only_robust=indices(rep_u.union_robust),
            union_only_cpu=cpu_u,
            union_only_wall=wall_u,
        )
    return out


def ours(
    name: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, Any] | None:
    """:func:`ours_result`, from ``args.ours_cache`` when the weights, points, settings and the
    package's sources are unchanged; run when ``args.stage`` is not "refs"."""
    settings = {
        "threats": THREATS,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "source_sha256": source_digest(),
    }
    weights = tensor_digest(sorted(model.state_dict().items()))
    points = tensor_digest([("x", x), ("y", y)])
    key = reference_key(weights, points, settings)
    path = cache_path(args.ours_cache or ".", name, key, "ours")
    run = None if args.stage == "refs" else (lambda: ours_result(model, x, y, args))
    if not args.ours_cache:
        return None if run is None else {**run(), "path": None}
    res = cached_or_run(path, key, {"model": name, "settings": settings}, run)
    return None if res is None else {**res, "path": str(path)}


def warm_up(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """A few forward/backward passes, so no side pays first-call costs."""
    for _ in range(3):
        xa = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xa), y)
        torch.autograd.grad(loss, xa)


def from_indices(idx: list[int], n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.bool)
    out[torch.as_tensor(idx, dtype=torch.long)] = True
    return out


def bench_model(
    name: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    AutoAttack: Any,
    aa_digest: str,
    args: argparse.Namespace,
) -> dict[str, Any] | None:
    """One model: references and ours (each cached), compared; None when a part is missing
    (``--stage refs`` or ``ours``, or references not in ``--references``)."""
    frozen(model)  # no parameter gradients on any side
    warm_up(model, x, y)
    n = int(y.numel())
    with torch.no_grad():
        clean = model(x).argmax(dim=1) == y
    settings = reference_settings(name, args, aa_digest)
    refs = (
        references(name, model, x, y, clean, AutoAttack, settings, args)
        if args.stage != "ours"
        else {}
    )
    mine = ours(name, model, x, y, args)
    if mine is None or any(r not in refs for r in REFERENCES):
        return None
    refs_robust = robust_from_broken({r: refs[r]["broken"] for r in REFERENCES}, clean)
    aa_facts = refs["autoattack"]["facts"]
    aa_apgd = sum(
        f["per_attack"][a]["cpu_s"] for f in aa_facts.values() for a in ("apgd-ce", "apgd-t")
    )
    ours_robust = {s: from_indices(i, n) for s, i in mine["robust"].items()}
    uo = mine["union_only_robust"]
    verdicts = compare_verdicts(
        refs_robust, ours_robust, None if uo is None else from_indices(uo, n)
    )
    cpu = cpu_summary(
        {r: refs[r]["cpu"] for r in REFERENCES}, aa_apgd, mine["cpu"], mine["union_only_cpu"]
    )
    filters = int(thresholding_filters(model).get("count", 0))
    masked = MODELS[name].masked or filters > 0
    return {
        "n": n,
        "clean": float(clean.double().mean()),
        "clean_ours": mine["clean"],
        "masked": masked,
        "thresholding_filters": filters,
        "caches": {**{r: refs[r]["path"] for r in REFERENCES}, "ours": mine["path"]},
        "reference_settings": settings,
        "verdicts": verdicts,
        "cpu": cpu,
        "wall": {"per_threat": mine["wall"], "union_only": mine["union_only_wall"]},
        "autoattack": aa_facts,
        "peers": {r: refs[r]["facts"] for r in REFERENCES if r != "autoattack"},
        "ours_per_attack": mine["per_attack"],
        "targets": targets(verdicts, cpu, masked),
    }


# ------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--autoattack", default="/work/aa", help="folder holding autoattack/")
    p.add_argument("--n", type=int, default=None, help="first N test digits (default 200)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 points, 500 Boundary steps")
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {', '.join(MODELS)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="attack seed (training seeds: MODELS)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--boundary-steps", type=int, default=None, help="masked models (25000)")
    p.add_argument("--boundary-steps-unmasked", type=int, default=None, help="the LeNets (5000)")
    p.add_argument(
        "--stage",
        default="all",
        choices=("all", "refs", "ours"),
        help="refs / ours: run and cache one side only (e.g. in parallel); all: both, the table",
    )
    p.add_argument(
        "--references",
        default=",".join(REFERENCES),
        help=f"the references to run when not cached (subset of {', '.join(REFERENCES)})",
    )
    p.add_argument("--cache", default="runs/bench-aa/models", help="trained-weights folder")
    p.add_argument("--ref-cache", default="runs/bench-aa/references", help="references folder")
    p.add_argument("--ours-cache", default="runs/bench-aa/ours", help="ours folder ('' = none)")
    p.add_argument("--out", default="runs/bench-aa/bench_vs_autoattack.json")
    args = p.parse_args(argv)
    if args.n is None:
        args.n = 20 if args.quick else 200
    if args.boundary_steps is None:
        args.boundary_steps = 500 if args.quick else 25000
    if args.boundary_steps_unmasked is None:
        args.boundary_steps_unmasked = 500 if args.quick else 5000
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.references = [r.strip() for r in args.references.split(",") if r.strip()]
    bad = [r for r in args.references if r not in REFERENCES]
    if bad:
        p.error(f"unknown reference(s) {bad}; choose from {', '.join(REFERENCES)}")
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    AutoAttack, aa_digest = load_autoattack(args.autoattack)
    c0, w0 = time.process_time(), time.perf_counter()
    x, y = load_embedded_mnist("test")
    x, y = x[: args.n], y[: args.n]
    mode = f"union-only mode {'on' if has_union_only() else 'n/a'}"
    head = (
        f"{args.n} embedded MNIST test digits, threats {THREATS}; ours: suite standard "
        f"(per-threat mode; {mode}); references: "
        f"AutoAttack standard per norm from {args.autoattack}, Foolbox Boundary "
        f"(ℓ2; {args.boundary_steps} steps on the masked models, "
        f"{args.boundary_steps_unmasked} on the others) and Pointwise (ℓ1); seed {args.seed}; "
        f"{machine_note()}"
    )
    out: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "threats": THREATS,
        "n": args.n,
        "seed": args.seed,
        "threads": threads,
        "batch_size": args.batch_size,
        "boundary_steps": {"masked": args.boundary_steps, "unmasked": args.boundary_steps_unmasked},
        "autoattack_path": str(Path(args.autoattack).resolve()),
        "union_only_available": has_union_only(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": head,
        "training": {},
        "results": {},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        spec = MODELS[name]
        model, meta = trained_model(spec.kind, spec.arch, spec.seed, Path(args.cache))
        out["training"][name] = {k: v for k, v in meta.items() if k != "config"}
        print(f"{name}: {'cached' if meta['cached'] else 'trained'}", flush=True)
        result = bench_model(name, model, x, y, AutoAttack, aa_digest, args)
        if result is None:
            print(f"{name}: {args.stage} cached", flush=True)
            continue
        out["results"][name] = result
        # after each model, so an interrupted run keeps the models done
        out.update(cpu_s=time.process_time() - c0, wall_s=time.perf_counter() - w0)
        out["table"] = tables(out["results"])
        atomic_write_text(args.out, json.dumps(out, indent=1, default=float))
        print(f"{name}: done ({out['cpu_s']:.0f} s CPU so far)", flush=True)

    if not out["results"]:
        return
    print(f"\n{head}\n\n{out['table']}\n")
    print(
        "accuracy: robust %, every reference's examples re-checked by our engine; misses: points "
        "some reference breaks and we call robust (count, % of the points); CPU: process "
        f"user+sys seconds. Whole run: {out['cpu_s']:.0f} s CPU, {out['wall_s']:.0f} s wall."
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
