"""``unionrobust attack``: run one attack against a union and save the adversarial examples."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from unionrobust.cli.cmd_eval import (
    DEFAULT_THREATS,
    add_model_data_arguments,
    batches,
    int_arg,
    load_model_and_data,
    write_report,
)
from unionrobust.errors import unknown_name

HELP = "run one attack against a union of threat models and save the adversarial examples"
DESCRIPTION = """\
Run a single attack against a union of perturbation models and report how often it succeeds.

With a union of several threat models, --attack msd runs Multi Steepest Descent (Maini et al.
2020), which searches all balls inside one loop; any other attack (pgd, apgd-ce, apgd-t, fgsm,
...) is run once per threat model and, per example, the strongest result is kept (worst case
over the union). Every adversarial example is re-checked (inside a ball of the union and the
[0,1] box, and misclassified) before it counts.

Prints the attack's success rate on correctly classified points and the robust accuracy. With
--out DIR it writes report.json and adversarial.safetensors (x_adv, y, success, threat_index:
the member of the union whose ball holds each x_adv, -1 where x_adv = x).

For an honest robustness number use 'unionrobust eval' (several attacks per threat model)."""
EPILOG = """\
examples:
  unionrobust attack --model mnist-cnn --weights w.safetensors --attack msd --steps 100 \\
      --threats "linf:0.3, l2:2, l1:10" --n 500 --out runs/msd
  unionrobust attack --model lenet --weights w.safetensors --attack apgd-ce --threats l2:2"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_model_data_arguments(parser)
    a = parser.add_argument_group("attack")
    a.add_argument(
        "--attack",
        default="pgd",
        help="attack name: msd, or one run per threat model such as pgd, fgsm, mim, apgd-ce, "
        "apgd-t (default: %(default)s; 'list' shows all)",
    )
    a.add_argument(
        "--threats",
        default=DEFAULT_THREATS,
        metavar="SPEC",
        help="the union, as comma-separated norm:radius (default: '%(default)s')",
    )
    a.add_argument("--steps", metavar="T", help="iterations per restart (attack default if unset)")
    a.add_argument("--restarts", metavar="R", help="restarts (attack default if unset)")
    a.add_argument("--out", metavar="DIR", help="write report.json and adversarial.safetensors")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")


def _names() -> list[str]:
    from unionrobust.attacks.registry import attack_names

    return attack_names()


def build_attack(name: str, threats, steps: int | None, restarts: int | None, seed: int):
    """The registry's attack over the union: MSD directly, any other attack once per member,
    combined per example by ``WorstOf``."""
    from unionrobust.attacks.registry import make_attack

    kw: dict[str, int] = {"seed": seed}
    if steps is not None:
        kw["steps"] = steps
    if restarts is not None:
        kw["restarts"] = restarts
    if name not in _names():
        raise unknown_name("attack", name, _names())
    return make_attack(name, threats, **kw)


def run(args: argparse.Namespace) -> int:
    import torch

    from unionrobust._version import __version__
    from unionrobust.evaluation.engine import recheck
    from unionrobust.evaluation.metrics import proportion
    from unionrobust.threats import parse

    if args.attack == "list":
        print("\n".join(_names()))
        return 0
    threats = parse(args.threats)
    steps = None if args.steps is None else int_arg(args.steps, "--steps", 1)
    restarts = None if args.restarts is None else int_arg(args.restarts, "--restarts", 1)
    batch_size = int_arg(args.batch_size, "--batch-size", 1)
    seed = int_arg(args.seed, "--seed", 0)
    attack = build_attack(args.attack, threats, steps, restarts, seed)
    model, x, y, device, meta = load_model_and_data(args)

    count = x.shape[0]
    x_adv = torch.empty_like(x)
    clean_ok = torch.zeros(count, dtype=torch.bool)
    success = torch.zeros(count, dtype=torch.bool)
    rejected = torch.zeros(count, dtype=torch.bool)
    which = torch.full((count,), -1, dtype=torch.int64)
    t0 = time.perf_counter()
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=count, desc=args.attack, unit="ex", leave=False)
    for start, xb, yb, ids in batches(x, y, batch_size, device):
        sl = slice(start, start + xb.shape[0])
        with torch.no_grad():
            clean_ok[sl] = (model(xb).argmax(1) == yb).cpu()
        result = attack(model, xb, yb, example_ids=ids)
        broken, _ = recheck(model, threats, xb, yb, result.x_adv)
        claimed = result.success.bool()
        ok = broken | ~claimed  # refuse claimed successes that fail the re-check
        xa = torch.where(ok.reshape(-1, *[1] * (xb.dim() - 1)), result.x_adv.clamp(0, 1), xb)
        x_adv[sl] = xa.cpu()
        success[sl] = broken.cpu()
        rejected[sl] = (~ok).cpu()
        if result.threat_index is not None:
            which[sl] = torch.where(broken, result.threat_index, -1).cpu()
        if bar is not None:
            bar.update(sl.stop - sl.start)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0

    robust = clean_ok & ~success
    acc, acc_ci = proportion(robust)
    clean, clean_ci = proportion(clean_ok)
    rate = float(success[clean_ok].double().mean()) if clean_ok.any() else float("nan")
    per_threat = {m.spec: int(((which == i) & clean_ok).sum()) for i, m in enumerate(threats)}
    report = {
        "attack": args.attack,
        "threats": [m.spec for m in threats],
        "steps": steps,
        "restarts": restarts,
        "seed": seed,
        "n_examples": count,
        "clean_accuracy": clean,
        "clean_accuracy_ci95": list(clean_ci),
        "robust_accuracy": acc,
        "robust_accuracy_ci95": list(acc_ci),
        "success_rate": rate,
        "successes_by_threat": per_threat,
        "rejected": int(rejected.sum()),
        "seconds": seconds,
        "meta": meta,
        "version": __version__,
        "library_version": __version__,
    }
    print(f"attack {args.attack} on {threats.spec} | {count} examples | seed {seed}")
    print(f"clean accuracy   {100 * clean:.1f}%")
    print(
        f"success rate     {100 * rate:.1f}% of correctly classified points "
        f"({int((success & clean_ok).sum())}/{int(clean_ok.sum())})"
    )
    print(
        f"robust accuracy  {100 * acc:.1f}%  95% CI [{100 * acc_ci[0]:.1f}, {100 * acc_ci[1]:.1f}]"
    )
    if len(threats) > 1:
        print("successes by threat: " + ", ".join(f"{k} {v}" for k, v in per_threat.items()))
    if report["rejected"]:
        print(f"rejected by the re-check: {report['rejected']}")
    if args.out:
        out = Path(args.out)
        write_report(out, report)
        _save_adversarial(
            out / "adversarial.safetensors",
            {"x_adv": x_adv, "y": y, "success": success, "threat_index": which},
        )
        print(f"wrote {out / 'report.json'} and {out / 'adversarial.safetensors'}")
    return 0


def _save_adversarial(path: Path, tensors: dict) -> None:
    """Atomic safetensors write (temp file in the same folder + os.replace)."""
    from safetensors.torch import save_file

    from unionrobust.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
