"""The one set of argument validators (errors.py): bad values raise a one-line UnionRobustError."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unionrobust.attacks import PGD, DomainMinMax
from unionrobust.errors import (
    UnionRobustError,
    check_choice,
    check_finite,
    check_fraction,
    check_int,
    check_number,
    check_positive,
)
from unionrobust.threats import Linf
from unionrobust.training.strategies import make_strategy

BAD_ALWAYS = [math.inf, -math.inf, math.nan, True, False, "3", "x", None, [1], object()]


@pytest.mark.parametrize("value", [*BAD_ALWAYS, 2.5, -1, 0])
def test_check_int_rejects_with_one_line(value):
    with pytest.raises(UnionRobustError, match=r"^steps must be an integer >= 1, got") as err:
        check_int("steps", value, 1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", [1, 3.0, np.int64(7), torch.tensor(4), 2**60 + 1])
def test_check_int_accepts_whole_numbers(value):
    assert check_int("n", value, 1) == int(value)
    assert isinstance(check_int("n", value, 1), int)


@pytest.mark.parametrize(
    ("check", "value"),
    [(check_positive, v) for v in [*BAD_ALWAYS, 0, -0.5]]
    + [(check_finite, v) for v in [*BAD_ALWAYS, -1e-9]]
    + [(lambda n, v: check_number(n, v, 0.0, 1.0), v) for v in [*BAD_ALWAYS, -0.1, 1.5]],
)
def test_number_checks_reject_with_one_line(check, value):
    if isinstance(value, str) and value == "3":
        pytest.skip("a numeric string is a number for the number checks")
    with pytest.raises(UnionRobustError) as err:
        check("x", value) if check is not check_finite else check("x", value, 0.0)
    assert str(err.value).startswith("x must") and "\n" not in str(err.value)


def test_numbers_pass_and_choice_lists_valid_names():
    assert check_positive("a", 0.5) == 0.5
    assert check_number("m", 1, 0.0, 1.0) == 1.0
    assert check_number("g", math.inf, 0.0) == math.inf  # an open upper bound admits inf
    assert check_finite("w", 0, 0.0) == 0.0
    assert check_choice("start", "zero", ("zero", "random")) == "zero"
    with pytest.raises(UnionRobustError, match="valid: random, zero"):
        check_choice("start", "middle", ("zero", "random"))


@pytest.mark.parametrize("value", [math.inf, math.nan, True, "ten"])
def test_attack_and_strategy_options_use_the_contract(value):
    """The bare OverflowError/ValueError of int(inf)/int(nan) never escapes an option check."""
    with pytest.raises(UnionRobustError):
        DomainMinMax(Linf(0.1), steps=value)
    with pytest.raises(UnionRobustError):
        make_strategy("minmax", "linf:0.1", steps=value)
    with pytest.raises(UnionRobustError):
        make_strategy("universal", "linf:0.1", steps=value)
    with pytest.raises(UnionRobustError):
        DomainMinMax(Linf(0.1), gamma=value)
    assert PGD(Linf(0.1), steps=3).steps == 3


@pytest.mark.parametrize("value", [*BAD_ALWAYS, 0, -0.2, 1.5])
def test_check_fraction_rejects_with_one_line(value):
    if isinstance(value, str) and value == "3":
        value = "3.0"  # a numeric string outside (0, 1] still fails on range
    with pytest.raises(UnionRobustError, match=r"^p must (lie in \(0, 1\]|be a number)") as err:
        check_fraction("p", value)
    assert "\n" not in str(err.value)


def test_check_fraction_open_and_closed_at_one():
    assert check_fraction("p", 1) == 1.0
    assert check_fraction("p", 0.25, one=False) == 0.25
    with pytest.raises(UnionRobustError, match=r"^rho must lie in \(0, 1\), got 1"):
        check_fraction("rho", 1, one=False)


def test_pgd_validators_are_the_shared_ones():
    """PGD's options raise the one-line errors of errors.py (were bare OverflowError/ValueError
    for inf/NaN before issue 10)."""
    for bad in (math.inf, math.nan):
        with pytest.raises(UnionRobustError, match=r"^steps must be an integer >= 1"):
            PGD(Linf(0.1), steps=bad)
    with pytest.raises(UnionRobustError, match=r"^alpha must be a positive finite number"):
        PGD(Linf(0.1), alpha=math.inf)


@pytest.mark.parametrize(
    "ids", [torch.zeros(3), torch.zeros(2, dtype=torch.int64), [0, 1, 2], torch.zeros(3, 1).long()]
)
def test_example_ids_check_is_one_rule_for_attacks_and_strategies(ids):
    """One check (errors.check_example_ids) for attacks and training strategies: integer ids,
    one per example; float ids used to pass the strategy's copy of the check."""
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    for run in (PGD("linf:0.1", steps=1), make_strategy("pinf", "linf:0.1", steps=1)):
        with pytest.raises(UnionRobustError, match=r"example_ids must be an integer tensor"):
            run(model, x, y, example_ids=ids)
