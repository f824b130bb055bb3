"""Requests that cannot fit in memory are refused, with the numbers, before allocating (issue 11):
``spatial --n-rot``, ``geometry --dim``, ``theory --dim``."""

from __future__ import annotations

import pytest

from unionrobust import resources
from unionrobust.cli.main import main
from unionrobust.errors import UnionRobustError
from unionrobust.resources import GIB, available_memory, check_memory
from unionrobust.theory.theorem1 import theorem1_bytes
from unionrobust.threats import RotationTranslation


@pytest.fixture
def one_gib(monkeypatch):
    """Pretend the machine has 1 GiB available."""
    monkeypatch.setattr(resources, "available_memory", lambda: GIB)


def test_available_memory_is_read():
    assert available_memory() is None or available_memory() > 0


def test_check_memory_refuses_with_the_numbers(one_gib):
    check_memory(0.9 * GIB, "a request", "lower --x")
    with pytest.raises(UnionRobustError) as err:
        check_memory(3 * GIB, "a request", "lower --x")
    expected = "a request needs ~3.0 GiB, this machine has 1.0 GiB available; lower --x"
    assert str(err.value) == expected


def test_small_requests_and_unknown_memory_pass(monkeypatch):
    def unreadable():
        raise AssertionError("small requests must not read the available memory")

    monkeypatch.setattr(resources, "available_memory", unreadable)
    check_memory(resources.CHECK_ABOVE - 1, "a request", "lower --x")
    monkeypatch.setattr(resources, "available_memory", lambda: None)
    check_memory(10**18, "a request", "lower --x")


def test_a_huge_lattice_is_refused_before_it_is_built(one_gib):
    threat = RotationTranslation(30, 3, n_rot=10**8)
    needs = r"rt:30:3 \(2.5e\+09 points\) needs ~2[23]\d\.\d GiB"
    with pytest.raises(UnionRobustError, match=needs):
        threat.grid()
    assert RotationTranslation(30, 3).grid().shape == (775, 3)  # the default lattice is fine


def test_theory_estimate_grows_with_dim_and_samples():
    base = theorem1_bytes(200, 11, 20000)
    assert theorem1_bytes(400, 11, 20000) > base > theorem1_bytes(200, 11, 10)
    assert theorem1_bytes(200, 11, 20000, radius_scale=0.5) < base  # no Monte-Carlo part


@pytest.mark.parametrize(
    ("argv", "fix"),
    [
        (["spatial", "--model", "mlp", "--n-rot", "100000000", "--n", "2"], "lower n_rot"),
        (["geometry", "--dim", "1000000000", "--l1", "10", "--linf", "0.3"], "lower --dim"),
        (["theory", "--dim", "100000000"], "lower --dim or --samples"),
    ],
    ids=["spatial", "geometry", "theory"],
)
def test_cli_refuses_what_cannot_fit(one_gib, capsys, argv, fix):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "this machine has 1.0 GiB available; " + fix in err and len(err.splitlines()) == 1


def test_cli_small_requests_still_run(one_gib, capsys):
    assert main(["geometry", "--dim", "784", "--l1", "10", "--linf", "0.3"]) == 0
    assert main(["theory", "--dim", "20", "--samples", "100", "--mix", "3"]) == 0
