"""The suite text grammar: attack budgets from the command line.

::

    suite    := named | list | per-threat
    named    := NAME [ "(" params ")" ]            quick(steps=50), rand(eot=20,repeats=10)
    list     := call ("," call)*                     pgd(steps=50), mim    (every threat)
    per-threat := spec "=" call ("+" call)* (";" spec "=" ...)*
                                    linf:0.3=apgd-ce(steps=200,restarts=2)+square(queries=10000)
    call     := ATTACK [ "(" params ")" ]
    params   := key "=" value ("," key "=" value)*  value: int, float, 8/255, true/false, word

Commas and semicolons inside parentheses belong to the parameters. A parameter the attack (or
the named suite) does not take is a one-line error listing the ones it does; ``queries`` is
accepted for ``steps`` (a score-based attack spends one query per step) and ``targets`` for
``n_targets``. ``repeats=K`` is a suite-level parameter of every suite text: a point counts as
robust only if the model classifies each attack's final point correctly in K of K evaluations
(:func:`unionrobust.evaluation.checks.recheck`; for randomised defences).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from unionrobust.errors import UnionRobustError, check_int, short_repr
from unionrobust.threats.parse import parse_number

#: other spellings of parameters, used when the attack takes the canonical name
ALIASES = {"queries": "steps", "iterations": "steps", "targets": "n_targets"}
#: fixed by the evaluation, never by a suite text
RESERVED = ("threat", "seed", "self")
#: the suite-level parameter: K of K evaluations of each attack's final point
REPEATS = "repeats"

Call = tuple[str, dict[str, Any]]


@dataclass
class ParsedSuite:
    """A suite text, parsed: a named suite with its parameters, or attack calls per threat
    (key None: every threat), and the suite-level ``repeats``."""

    named: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    calls: dict[str | None, list[Call]] = field(default_factory=dict)
    repeats: int | None = None


def split_top(text: str, seps: str) -> list[str]:
    """``text`` split at the characters of ``seps`` outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise UnionRobustError(f"unbalanced ')' in suite {text!r}")
        elif ch in seps and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise UnionRobustError(f"unbalanced '(' in suite {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_value(text: str) -> Any:
    """``200`` → int, ``0.5`` / ``8/255`` → float, ``true``/``false`` → bool, else the word."""
    word = text.strip()
    low = word.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(word)
    except ValueError:
        pass
    try:
        return parse_number(word, "suite parameter")
    except UnionRobustError:
        return word


def parse_call(token: str) -> Call:
    """``"apgd-ce(steps=200,restarts=2)"`` → ``("apgd-ce", {"steps": 200, "restarts": 2})``."""
    if not isinstance(token, str):
        raise UnionRobustError(f"suite entries must be attack names, got {short_repr(token)}")
    text = token.strip()
    name, paren, rest = text.partition("(")
    name = name.strip()
    if not name:
        raise UnionRobustError(f"empty attack name in suite part {text!r}")
    if not paren:
        return name, {}
    if not rest.endswith(")"):
        raise UnionRobustError(f"{text!r} must look like 'name(key=value, ...)'")
    params: dict[str, Any] = {}
    body = rest[:-1].strip()
    for item in split_top(body, ",") if body else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or not value.strip():
            raise UnionRobustError(f"parameter {item!r} of {name!r} must look like key=value")
        if key in params:
            raise UnionRobustError(f"parameter {key!r} of {name!r} given twice")
        params[key] = parse_value(value)
    return name, params


def call_label(name: str, params: Mapping[str, Any]) -> str:
    """``name(k=v,...)`` (parameters sorted), or the bare name."""
    if not params:
        return name
    return f"{name}({','.join(f'{k}={params[k]}' for k in sorted(params))})"


#: the parameters that set an attack's budget, shown next to its entry in report.md
BUDGET_KEYS = ("steps", "restarts", "n_targets", "eot")


def _take_repeats(out: ParsedSuite, params: dict[str, Any], where: str) -> None:
    """Move a call's ``repeats`` to the suite (suite-wide: the largest K given wins)."""
    if REPEATS not in params:
        return
    value = check_int(f"{where}: repeats", params.pop(REPEATS), 1)
    out.repeats = max(out.repeats or 1, value)


def parse_suite_text(text: str, named_suites: Mapping[str, Any]) -> ParsedSuite:
    """Parse a suite text (see the module doc); attack names are checked later."""
    key = text.strip()
    if not key:
        raise UnionRobustError("empty suite text")
    out = ParsedSuite()
    if "=" in key and "(" not in key.split("=", 1)[0]:  # per threat: 'linf:0.3=...'
        for part in split_top(key, ";"):
            spec, eq, calls = part.partition("=")
            if not eq or not spec.strip() or not calls.strip():
                raise UnionRobustError(
                    f"per-threat suite {key!r} must look like "
                    "'linf:0.3=apgd-ce(steps=200)+square(queries=5000); l1:10=pgd'"
                )
            out.calls.setdefault(spec.strip(), []).extend(
                parse_call(c) for c in split_top(calls, "+")
            )
    else:
        parts = split_top(key, ",;")
        if any(not p for p in parts):
            raise UnionRobustError(f"empty attack name in {key!r}")
        out.calls[None] = [parse_call(p) for p in parts]
        name, params = out.calls[None][0]
        if len(parts) == 1 and name in named_suites:
            out.named, out.params = name, params
            out.calls = {}
    for name, params in [c for calls in out.calls.values() for c in calls]:
        _take_repeats(out, params, f"suite part {name!r}")
    _take_repeats(out, out.params, f"suite {out.named!r}")
    return out


def accepted(factory: Callable[..., Any]) -> list[str]:
    """The keyword parameters ``factory`` takes (a class, function or ``functools.partial``;
    a named suite's builder without its first argument, the union)."""
    names = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in RESERVED
        and not p.name.startswith("_")  # a builder's own switch, not a budget
    ]
    return names[1:] if names and names[0] == "threats" else names


def check_params(kind: str, name: str, params: dict[str, Any], valid: list[str]) -> dict:
    """``params`` with aliases resolved; an unknown one is a one-line error listing ``valid``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        canonical = ALIASES.get(key, key) if key not in valid else key
        if canonical not in valid:
            listed = ", ".join(sorted([*valid, REPEATS]))
            raise UnionRobustError(
                f"{kind} {name!r} has no parameter {key!r}; valid: {listed}"
                + ("" if kind == "suite" else f" ({REPEATS} is suite-wide)")
            )
        out[canonical] = value
    return out
