"""Attack cost per step relative to one forward+backward, and strength against other libraries.

Part 1 (cost): for the MNIST CNN of Madry et al. and LeNet (``unionrobust.models.build_model``,
untrained: cost does not depend on the weights) at batch 100 and 250, on embedded MNIST test
digits labelled with the model's own predictions (so every point is attacked), the time of one
step of each attack divided by t_fb, one forward + backward of the CE loss w.r.t. the input.
t_fb is measured at a typical attack iterate (``attack_point``: x plus uniform ℓ∞ noise of
0.3, clipped), since a forward+backward at the clean digits is 2-6 % cheaper than anywhere an
attack evaluates it; the clean-input figure is printed too. A step's time is
(T(long) − T(short)) / (long − short) for runs of two step counts, which cancels the fixed
cost of a call; all timed functions of a setting run round-robin and the median over rounds
is kept, so the ratios of one run are comparable on a shared CPU.
Targets (issue 2): PGD ℓ∞/ℓ2 ≤ 1.1, ℓ1 PGD, SLIDE and Auto-PGD ≤ 1.3, MSD ≤ 1.1 × its floor
t_fb + one forward over the 3B candidates. Peers (optional extras ``torchattacks``, ``foolbox``)
are timed on the same model, points and parameters (frozen, as ours freeze them).

Part 2 (strength): the MNIST CNN trained for a few epochs on the embedded MNIST training split
(nothing is cached), then robust accuracy and wall time on the first test digits for our PGD and
Auto-PGD and the peers' PGD/APGD at equal budget (one random start, same steps and step size).

The process runs with the allocator settings ``import unionrobust`` applies
(``unionrobust.allocator``): freed activation buffers stay mapped instead of being re-faulted.
For glibc's defaults run with ``UNIONROBUST_MALLOC=system`` (``--system-malloc`` checks it).

    python benchmarks/bench_attacks.py [--quick] [--threads 1] [--no-peers] [--no-strength]
        [--system-malloc]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _common import (
    clock,
    fit_embedded,
    forward_backward,
    forward_only,
    frozen,
    interleaved,
    machine_note,
    markdown_table,
    per_step,
    set_threads,
    use_allocator,
)
from torch import nn

from unionrobust.attacks import MSD, PGD, SLIDE
from unionrobust.attacks.apgd import APGD
from unionrobust.data import load_embedded_mnist
from unionrobust.models import build_model
from unionrobust.threats import L1, L2, Linf, ThreatModel

EPS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}  # the MNIST radii of Maini et al.
MSD_SPEC = "linf:0.3, l2:2, l1:10"

Runner = Callable[[nn.Module, torch.Tensor, torch.Tensor], object]


@dataclass
class Entry:
    label: str
    make: Callable[[int], Runner]  # steps -> callable(model, x, y)
    target: float | None
    floor: str = "fb"  # "fb" or "msd" (t_fb + forward over 3B)


def ours() -> list[Entry]:
    """Our attacks; each factory maps a step count to an attack callable (model, x, y)."""
    return [
        Entry("PGD ℓ∞", lambda s: PGD(Linf(EPS["linf"]), steps=s), 1.1),
        Entry("PGD ℓ2", lambda s: PGD(L2(EPS["l2"]), steps=s), 1.1),
        Entry("PGD ℓ1", lambda s: PGD(L1(EPS["l1"]), steps=s), 1.3),
        Entry("SLIDE", lambda s: SLIDE(EPS["l1"], steps=s), 1.3),
        Entry("MSD", lambda s: MSD(MSD_SPEC, steps=s), 1.1, "msd"),
        Entry("APGD ℓ∞", lambda s: APGD(Linf(EPS["linf"]), steps=s), 1.3),
        Entry("APGD ℓ2", lambda s: APGD(L2(EPS["l2"]), steps=s), 1.3),
        Entry("APGD ℓ1", lambda s: APGD(L1(EPS["l1"]), steps=s), 1.3),
    ]


# -- peers ---------------------------------------------------------------------------------------


def peer_entries(model: nn.Module, eps: dict[str, float], alpha_of) -> list[Entry]:
    """torchattacks' PGD/PGDL2/APGD and Foolbox's LinfPGD/L2PGD, if installed."""
    out: list[Entry] = []
    try:
        import torchattacks as ta
    except ImportError:
        ta = None
    try:
        import foolbox as fb
    except ImportError:
        fb = None
    if ta is not None:

        def ta_run(cls, **kw):
            def make(steps: int) -> Runner:
                kwargs = {k: (v(steps) if callable(v) else v) for k, v in kw.items()}
                atk = cls(model, steps=steps, **kwargs)
                return lambda m, x, y: atk(x, y)

            return make

        out += [
            Entry(
                "torchattacks PGD ℓ∞",
                ta_run(
                    ta.PGD, eps=eps["linf"], alpha=lambda s: alpha_of("linf", s), random_start=True
                ),
                None,
            ),
            Entry(
                "torchattacks PGDL2",
                ta_run(
                    ta.PGDL2, eps=eps["l2"], alpha=lambda s: alpha_of("l2", s), random_start=True
                ),
                None,
            ),
            Entry(
                "torchattacks APGD ℓ∞",
                ta_run(ta.APGD, norm="Linf", eps=eps["linf"], n_restarts=1, loss="ce", seed=0),
                None,
            ),
            Entry(
                "torchattacks APGD ℓ2",
                ta_run(ta.APGD, norm="L2", eps=eps["l2"], n_restarts=1, loss="ce", seed=0),
                None,
            ),
        ]
    if fb is not None:
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cpu")

        def fb_run(cls, norm: str):
            def make(steps: int) -> Runner:
                atk = cls(abs_stepsize=alpha_of(norm, steps), steps=steps, random_start=True)

                def run(m, x, y):
                    _, adv, _ = atk(fmodel, x, y, epsilons=eps[norm])
                    return adv

                return run

            return make

        out += [
            Entry("foolbox LinfPGD", fb_run(fb.attacks.LinfPGD, "linf"), None),
            Entry("foolbox L2PGD", fb_run(fb.attacks.L2PGD, "l2"), None),
        ]
    return out


# -- part 1: cost per step ---------------------------------------------------------------------


def attack_point(x: torch.Tensor, eps: float = EPS["linf"]) -> torch.Tensor:
    """Where t_fb is measured: a typical attack iterate, x + U(−ε, ε) clipped to [0, 1] (fixed
    draw). A forward+backward costs 2-6 % more there than at the clean digits (mostly exact
    zeros), so t_fb at x would flatter nobody but inflate every attack's ratio alike."""
    g = torch.Generator().manual_seed(0)
    u = torch.rand(x.shape, generator=g, dtype=x.dtype)
    return (x + (2 * u - 1) * eps).clamp(0, 1)


def cost_tables(args: argparse.Namespace) -> None:
    x_all, _ = load_embedded_mnist("test")
    short, long = args.short, args.long
    for model_name in args.models:
        torch.manual_seed(0)
        model = frozen(build_model(model_name))
        entries = ours()
        if args.peers:
            entries += peer_entries(
                model, EPS, lambda n, s: {"linf": Linf, "l2": L2}[n](EPS[n]).default_alpha(s)
            )
        rows: dict[str, list[object]] = {e.label: [e.label] for e in entries}
        header = ["attack"]
        floors: list[object] = ["floor: t_fb + forward(3B) [ms]"]
        fb_row: list[object] = ["t_fb [ms]"]
        fb_clean_row: list[object] = ["forward+backward at the clean x [ms]"]
        for batch in args.batches:
            x = x_all[:batch].contiguous()
            with torch.no_grad():
                y = model(x).argmax(1)
            fns: dict[str, Callable[[], object]] = {
                "fb": forward_backward(model, attack_point(x), y),
                "fb clean": forward_backward(model, x, y),
                "f3": forward_only(model, torch.cat([x, x, x])),
            }
            for e in entries:
                for steps in (short, long):
                    run = e.make(steps)
                    fns[f"{e.label}@{steps}"] = lambda run=run, m=model, x=x, y=y: run(m, x, y)
            t = interleaved(fns, warmup=1, rounds=args.rounds)
            t_fb, t_msd_floor = t["fb"], t["fb"] + t["f3"]
            header += [f"B={batch} ratio", f"B={batch} target"]
            fb_row += [1e3 * t_fb, ""]
            fb_clean_row += [f"{1e3 * t['fb clean']:.3g} ({t['fb clean'] / t_fb:.2f} × t_fb)", ""]
            floors += [1e3 * t_msd_floor, ""]
            for e in entries:
                step = per_step(t, e.label, short, long)
                if e.floor == "msd":
                    ratio = f"{step / t_fb:.2f} (÷ floor: {step / t_msd_floor:.2f})"
                else:
                    ratio = step / t_fb
                rows[e.label] += [ratio, "" if e.target is None else f"≤ {e.target}"]
        print(f"\n### Cost per step / t_fb — {model_name} ({machine_note()})\n")
        print(markdown_table(header, [fb_row, fb_clean_row, floors, *rows.values()]))


# -- part 2: strength ----------------------------------------------------------------------------

EPS_STRENGTH = {"linf": 0.1, "l2": 1.0, "l1": 10.0}  # a naturally trained model: smaller radii


def strength_table(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    model = frozen(fit_embedded("mnist-cnn", args.epochs))
    train_s = time.perf_counter() - t0
    x, y = load_embedded_mnist("test")
    x, y = x[: args.n], y[: args.n]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    steps = args.strength_steps
    threats: dict[str, ThreatModel] = {
        n: c(EPS_STRENGTH[n]) for n, c in (("linf", Linf), ("l2", L2), ("l1", L1))
    }
    alpha = {n: threats[n].default_alpha(steps) for n in threats}
    runs: list[tuple[str, str, Runner]] = []
    for norm, threat in threats.items():
        label = "ours PGD (random-k)" if norm == "l1" else "ours PGD"
        runs.append((label, norm, PGD(threat, steps=steps)))
        if norm == "l1":
            runs.append(("ours SLIDE", norm, SLIDE(threat.eps, steps=steps)))
        for loss in ("ce", "dlr"):
            runs.append((f"ours APGD-{loss.upper()}", norm, APGD(threat, steps=steps, loss=loss)))
    if args.peers:
        try:
            import torchattacks as ta

            for norm, ta_norm, pgd_name in (("linf", "Linf", "PGD"), ("l2", "L2", "PGDL2")):
                eps = EPS_STRENGTH[norm]
                pgd = getattr(ta, pgd_name)(
                    model, eps=eps, alpha=alpha[norm], steps=steps, random_start=True
                )
                runs.append((f"torchattacks {pgd_name}", norm, _ta(pgd)))
                for loss in ("ce", "dlr"):
                    apgd = ta.APGD(
                        model, norm=ta_norm, eps=eps, steps=steps, n_restarts=1, loss=loss, seed=0
                    )
                    runs.append((f"torchattacks APGD-{loss.upper()}", norm, _ta(apgd)))
        except ImportError:
            print("(torchattacks not installed: skipped)")
        try:
            import foolbox as fb

            fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cpu")
            runs += [
                (
                    "foolbox LinfPGD",
                    "linf",
                    _fb(
                        fmodel,
                        fb.attacks.LinfPGD(
                            abs_stepsize=alpha["linf"], steps=steps, random_start=True
                        ),
                        EPS_STRENGTH["linf"],
                    ),
                ),
                (
                    "foolbox L2PGD",
                    "l2",
                    _fb(
                        fmodel,
                        fb.attacks.L2PGD(abs_stepsize=alpha["l2"], steps=steps, random_start=True),
                        EPS_STRENGTH["l2"],
                    ),
                ),
                (
                    "foolbox SparseL1Descent",
                    "l1",
                    _fb(
                        fmodel,
                        fb.attacks.SparseL1DescentAttack(
                            abs_stepsize=alpha["l1"], steps=steps, random_start=True
                        ),
                        EPS_STRENGTH["l1"],
                    ),
                ),
            ]
        except ImportError:
            print("(foolbox not installed: skipped)")
    rows = []
    for label, norm, attack in runs:
        threat = threats[norm]
        now = clock()
        t0 = now()
        adv = []
        for i in range(0, x.shape[0], args.eval_batch):
            out = attack(model, x[i : i + args.eval_batch], y[i : i + args.eval_batch])
            adv.append(out.x_adv if hasattr(out, "x_adv") else out)
        seconds = now() - t0
        x_adv = torch.cat(adv).detach()
        inside = threat.contains(x_adv - x, x)
        with torch.no_grad():
            wrong = model(x_adv).argmax(1) != y
        broken = ~clean | (inside & wrong)
        rows.append(
            [
                label,
                threat.spec,
                f"{100 * (1 - broken.float().mean().item()):.1f}",
                f"{100 * inside.float().mean().item():.0f}",
                seconds,
            ]
        )
    print(
        f"\n### Strength — MNIST CNN trained {args.epochs} epoch(s) on embedded MNIST "
        f"({train_s:.0f} s), {args.n} test digits, clean accuracy "
        f"{100 * clean.float().mean().item():.1f}%, {steps} steps, 1 random start "
        f"({machine_note()})\n"
    )
    print(markdown_table(["attack", "threat", "robust acc. %", "inside ball %", "time [s]"], rows))


def _ta(atk) -> Runner:
    return lambda m, x, y: atk(x, y)


def _fb(fmodel, atk, eps: float) -> Runner:
    def run(m, x, y):
        _, adv, _ = atk(fmodel, x, y, epsilons=eps)
        return adv

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run: fewer rounds and steps")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--models", nargs="+", default=["mnist-cnn", "lenet"])
    p.add_argument("--batches", nargs="+", type=int, default=[100, 250])
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (median kept)")
    p.add_argument("--no-peers", dest="peers", action="store_false", help="skip other libraries")
    p.add_argument("--no-cost", dest="cost", action="store_false", help="skip part 1")
    p.add_argument("--no-strength", dest="strength", action="store_false", help="skip part 2")
    p.add_argument(
        "--system-malloc", action="store_true", help="glibc defaults, not the CLI's settings"
    )
    args = p.parse_args()
    use_allocator(args.system_malloc)
    set_threads(args.threads)
    args.short, args.long = (2, 6) if args.quick else (2, 12)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.epochs = 1 if args.quick else 3
    args.n = 100 if args.quick else 500
    args.eval_batch = 100 if args.quick else 250
    args.strength_steps = 20 if args.quick else 50
    if args.cost:
        cost_tables(args)
    if args.strength:
        strength_table(args)


if __name__ == "__main__":
    main()
