"""``unionrobust minmax``: min-max attacks over domains (models, inputs, transformations)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from unionrobust.attacks.domains import ModelEnsemble, TransformDomains, UniversalGroups
from unionrobust.attacks.minmax import DomainMinMax
from unionrobust.attacks.transforms import make_transforms
from unionrobust.cli.common import (
    add_model_data_arguments,
    int_arg,
    load_model_and_data,
    write_command_report,
)
from unionrobust.data import load_data
from unionrobust.errors import UnionRobustError, check_number, unknown_name
from unionrobust.evaluation.engine import resolve_device
from unionrobust.evaluation.minmax import (
    DEFAULT_WEIGHTINGS,
    minmax_report,
    minmax_table,
    run_minmax,
)
from unionrobust.models import build_model, load_weights, model_names
from unionrobust.outdir import owned_folder, writing
from unionrobust.reporting.plots import plot_weights
from unionrobust.reporting.tables import format_table
from unionrobust.threats import parse

HELP = "min-max attack over several models, inputs (universal) or transformations"
DESCRIPTION = """\
Min-max attacks over K domains (Wang et al. 2020, Algorithm 1): one perturbation per input
(or per group of inputs) that must work on every domain, with domain weights w on the
probability simplex learned along the attack (the hardest domain gets the weight). Each run
compares the learned weights ('minmax') with the uniform average ('avg': ensemble PGD / EOT)
and, with --fixed-weights, your own static weights.

modes:
  ensemble     fool K models at once (--ensemble "mlp=a.safetensors, lenet=b.safetensors");
               reports each model's accuracy, ASR_avg and ASR_all (every model fooled)
  universal    one perturbation for each group of K consecutive inputs (--group-size K);
               reports ASR_avg and ASR_gp (every input of the group fooled)
  transforms   a perturbation that survives K transformations of the input (--transforms
               "ori, flh, flv, bri, gam, crop, rot", --random for the random versions);
               reports accuracy per transformation, ASR_avg and ASR_gp

With --out DIR: report.json (settings, metrics, mean weights per iteration) and weights.png
(domain weights and fooled fraction per iteration of the min-max run, Wang Fig. 1c / 3a)."""
EPILOG = """\
examples:
  unionrobust minmax ensemble --ensemble "mlp=mlp.safetensors, lenet=lenet.safetensors" \\
      --threat linf:0.2 --steps 50 --n 500 --out runs/ens
  unionrobust minmax universal --model lenet --weights lenet.safetensors --group-size 5 \\
      --threat linf:0.3 --steps 20
  unionrobust minmax transforms --model lenet --weights lenet.safetensors --random"""

MODES = ("ensemble", "universal", "transforms")


def add_attack_arguments(a: argparse._ArgumentGroup, steps: str = "50") -> None:
    a.add_argument("--steps", default=steps, metavar="T", help="iterations (default: %(default)s)")
    a.add_argument("--alpha", metavar="A", help="perturbation step size (default: the threat's)")
    a.add_argument(
        "--loss", default="cw", choices=("cw", "ce"), help="attack loss (default: %(default)s)"
    )
    a.add_argument("--kappa", default="50", help="CW confidence cap κ (default: %(default)s)")
    a.add_argument(
        "--start", default="zero", choices=("zero", "random"), help="start (default: zero)"
    )
    a.add_argument("--out", metavar="DIR", help="write report.json (and plots) to DIR")
    a.add_argument("--overwrite", action="store_true", help="replace the run already in --out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("mode", choices=MODES, help="which domains: " + ", ".join(MODES))
    add_model_data_arguments(parser)
    e = parser.add_argument_group("domains")
    e.add_argument(
        "--ensemble",
        metavar="SPEC",
        help='ensemble mode: comma-separated NAME=WEIGHTS models, e.g. "mlp=a.safetensors, '
        'lenet=b.safetensors" (NAME alone: random weights, for smoke tests)',
    )
    e.add_argument("--group-size", default="5", metavar="K", help="universal: inputs per group")
    e.add_argument(
        "--transforms",
        default="ori, flh, flv, bri, gam, crop",
        help="transforms mode: names among ori, flh, flv, bri, gam, crop, rot "
        "(default: '%(default)s')",
    )
    e.add_argument("--random", action="store_true", help="random transformations (Wang Tab. A5)")
    e.add_argument("--p", default="0.8", help="probability of a random transformation")
    a = parser.add_argument_group("attack")
    a.add_argument("--threat", default="linf:0.2", metavar="SPEC", help="one threat model")
    a.add_argument("--w-lr", default="0.02", metavar="BETA", help="weight step β (default 1/50)")
    a.add_argument("--gamma", default="4", help="simplex regulariser γ (default: %(default)s)")
    a.add_argument(
        "--fixed-weights", metavar="W1,W2,...", help="also run with these static weights"
    )
    add_attack_arguments(a)
    a.add_argument("--no-progress", action="store_true", help="no progress bars")


def _ensemble(args, x):
    if not args.ensemble:
        raise UnionRobustError('ensemble mode needs --ensemble "NAME=WEIGHTS, NAME=WEIGHTS"')
    models, labels = [], []
    for item in args.ensemble.split(","):
        name, _, weights = (s.strip() for s in item.partition("="))
        if name not in model_names():
            raise unknown_name("model", name, model_names())
        m = build_model(name, in_channels=int(x.shape[1]), input_size=tuple(x.shape[2:]))
        if weights:
            if not Path(weights).is_file():
                raise UnionRobustError(f"weights file {weights!r} not found")
            load_weights(m, weights)
        models.append(m.eval())
        labels.append(name if name not in labels else f"{name}#{len(labels)}")
    return models, labels


def _ensemble_data(args):
    """The data of ensemble mode (no --model to load it with): the library's loader, which
    refuses a --n larger than the split."""
    n = None if args.n is None else int_arg(args.n, "--n", 1)
    x, y, _ = load_data(args.data, args.split, args.root, n)
    return x, y


def build_domains(args):
    """(domains, x, y, device) for the chosen mode."""
    if args.mode == "ensemble":
        if args.model or args.model_module:
            raise UnionRobustError("ensemble mode takes --ensemble, not --model/--model-module")
        x, y = _ensemble_data(args)
        models, labels = _ensemble(args, x)
        device = resolve_device(args.device, models[0])
        return ModelEnsemble([m.to(device) for m in models], labels), x, y, device
    model, x, y, device, _ = load_model_and_data(args)
    if args.mode == "universal":
        k = int_arg(args.group_size, "--group-size", 1)
        usable = x.shape[0] - x.shape[0] % k
        if usable == 0:
            raise UnionRobustError(f"need at least --group-size={k} examples")
        return UniversalGroups(model, k), x[:usable], y[:usable], device
    ts = make_transforms(args.transforms, random=args.random, p=check_number("--p", args.p))
    return TransformDomains(model, ts), x, y, device


#: the files of a min-max run in --out
RUN_FILES = ("report.json", "weights.png")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The attack options shared by every weighting, checked before anything is loaded."""
    return dict(
        steps=int_arg(args.steps, "--steps", 1),
        alpha=None if args.alpha is None else check_number("--alpha", args.alpha),
        w_lr=check_number("--w-lr", args.w_lr),
        gamma=check_number("--gamma", args.gamma),
        loss=args.loss,
        kappa=check_number("--kappa", args.kappa),
        start=args.start,
        seed=int_arg(args.seed, "--seed", 0),
    )


def run(args: argparse.Namespace) -> int:
    threat = parse(args.threat)
    options = _options(args)
    weightings: dict = dict(DEFAULT_WEIGHTINGS)
    if args.fixed_weights:
        weightings["fixed"] = [
            check_number("--fixed-weights", v) for v in args.fixed_weights.split(",")
        ]
    for weights in weightings.values():  # bad options fail before loading
        DomainMinMax(threat, weights=weights, **options)
    batch = int_arg(args.batch_size, "--batch-size", 1)
    with owned_folder(args.out, RUN_FILES, args.overwrite):
        domains, x, y, device = build_domains(args)
        progress = not args.no_progress
        results = run_minmax(domains, x, y, threat, weightings, batch, device, progress, **options)
        print(format_minmax(args.mode, threat.spec, int(x.shape[0]), options, domains, results))
        if args.out:
            report = {
                "mode": args.mode,
                "threat": threat.spec,
                "settings": options,
                "n_inputs": int(x.shape[0]),
                **minmax_report(results),
            }
            _write(Path(args.out), report, results, f"{args.mode}: {threat.spec}", args.overwrite)
    return 0


def format_minmax(mode, spec, n, options, domains, results) -> str:
    """The screen summary: the table of weightings and the learned run's mean final weights."""
    mean_w = results["minmax"].weights.double().mean(0).tolist()
    pairs = zip(domains.labels, mean_w, strict=True)
    return "\n".join(
        [
            f"{mode} min-max attack, {spec}, {n} inputs, {options['steps']} steps (metrics in %)",
            format_table(*minmax_table(results)),
            "mean final weights: " + ", ".join(f"{lab}={w:.3f}" for lab, w in pairs),
        ]
    )


def _write(out: Path, report: dict, results: dict, title: str, overwrite: bool) -> None:
    """report.json and weights.png (no plot without matplotlib: said, not an error)."""
    path = write_command_report(out, report, overwrite, RUN_FILES)
    try:
        with writing(out):
            plot_weights(results["minmax"], out / "weights.png", title)
    except UnionRobustError as err:
        print(f"(no plot: {err})")
    print(f"wrote {path}")
