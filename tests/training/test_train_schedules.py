"""Learning-rate schedules: the shapes of MSD App. C.2, Croce & Hein §3.4/App. A, step, cyclic."""

from __future__ import annotations

import itertools

import pytest

from unionrobust.errors import UnionRobustError
from unionrobust.training.schedules import SCHEDULES, make_schedule


def test_msd_mnist_piecewise_shape():
    lr = make_schedule("piecewise", lr=1e-3, epochs=15, points=[[0, 0], [6, 1e-3], [15, 0]])
    assert lr(0) == 0
    assert lr(3) == pytest.approx(5e-4)
    assert lr(6) == pytest.approx(1e-3)
    assert lr(10.5) == pytest.approx(5e-4)
    assert lr(15) == 0 and lr(20) == 0
    vals = [lr(t / 10) for t in range(151)]
    top = vals.index(max(vals))
    assert all(a <= b for a, b in itertools.pairwise(vals[: top + 1]))
    assert all(a >= b for a, b in itertools.pairwise(vals[top:]))


def test_msd_cifar_piecewise_shape():
    lr = make_schedule(
        "piecewise", lr=0.1, epochs=50, points=[[0, 0], [20, 0.1], [40, 0.005], [50, 0]]
    )
    assert lr(10) == pytest.approx(0.05)
    assert lr(20) == pytest.approx(0.1)
    assert lr(30) == pytest.approx(0.0525)
    assert lr(40) == pytest.approx(0.005)
    assert lr(45) == pytest.approx(0.0025)


def test_default_piecewise_scales_with_the_run():
    lr = make_schedule("piecewise", lr=2.0, epochs=10)
    assert lr(0) == 0 and lr(4) == pytest.approx(2.0) and lr(10) == 0
    assert lr(7) == pytest.approx(1.0)


def test_finetune_divides_by_ten_at_each_epoch_start():
    lr = make_schedule("finetune", lr=0.05, epochs=3)
    assert lr(0) == pytest.approx(0.05) and lr(0.99) == pytest.approx(0.05)
    assert lr(1) == pytest.approx(0.005) and lr(1.5) == pytest.approx(0.005)
    assert lr(2) == pytest.approx(0.0005)


def test_step_and_cyclic_and_constant():
    step = make_schedule("step", lr=0.05, epochs=80, milestones=[70], gamma=0.1)
    assert step(69.9) == pytest.approx(0.05) and step(70) == pytest.approx(0.005)
    cyc = make_schedule("cyclic", lr=0.1, epochs=30, peak=0.4)
    assert cyc(0) == 0 and cyc(12) == pytest.approx(0.1) and cyc(21) == pytest.approx(0.05)
    assert cyc(30) == 0
    assert make_schedule("constant", lr=1e-3, epochs=5)(3.3) == 1e-3


def test_bad_schedules_are_named():
    with pytest.raises(UnionRobustError, match=r"unknown schedule 'cosine'.*piecewise"):
        make_schedule("cosine", lr=0.1, epochs=3)
    with pytest.raises(UnionRobustError, match="non-decreasing"):
        make_schedule("piecewise", lr=0.1, epochs=3, points=[[2, 0.1], [1, 0.0]])
    with pytest.raises(UnionRobustError, match="peak"):
        make_schedule("cyclic", lr=0.1, epochs=3, peak=1.5)
    assert set(SCHEDULES) == {"constant", "cyclic", "finetune", "piecewise", "step"}
