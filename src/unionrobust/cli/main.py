"""``unionrobust`` command line: a thin layer over the library.

Each sub-command lives in its own module ``unionrobust.cli.cmd_<name>`` exposing
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from unionrobust._version import __version__
from unionrobust.allocator import tune_allocator
from unionrobust.errors import UnionRobustError

#: sub-command names, in the order ``--help`` lists them
COMMANDS: list[str] = [
    "geometry",
    "theory",
    "eval",
    "attack",
    "train",
    "finetune",
    "compare",
    "minmax",
    "affine",
    "spatial",
]


def _load(name: str):
    return importlib.import_module(f"unionrobust.cli.cmd_{name.replace('-', '_')}")


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors on one line and exit code 2, like every other error."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="unionrobust",
        description=(
            "Attack, train and evaluate neural networks against unions of perturbation models "
            "(l-inf, l2, l1 balls and more). Run 'unionrobust COMMAND --help' for each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"unionrobust {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMANDS:
        module = _load(name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command; from the real command line (``argv`` None) with the allocator
    settings of :mod:`unionrobust.allocator` (opt out: ``UNIONROBUST_MALLOC=system``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    if argv is None:
        tune_allocator()
    try:
        return int(args._run(args) or 0)
    except UnionRobustError as err:
        print(f"unionrobust {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unionrobust {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
