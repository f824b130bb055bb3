"""Accuracy-vs-ε plots with 95% bands: the bands are the Wilson intervals, files are written
and embedded in report.html."""

from __future__ import annotations

import pytest
import torch

from _helpers import tiny_data, tiny_mlp
from unionrobust.evaluation import evaluate
from unionrobust.evaluation import multirobust as mrb
from unionrobust.evaluation.curves import RobustnessCurve
from unionrobust.evaluation.metrics import wilson_interval
from unionrobust.reporting.html import write_reports
from unionrobust.reporting.plots import curves_figure, multirobust_figure

pytest.importorskip("matplotlib")


def robust_matrix(counts: list[int], n: int = 10) -> torch.Tensor:
    """(n, K) bool: the first counts[k] examples robust at radius k."""
    return torch.stack([torch.arange(n) < k for k in counts], dim=1)


def hand_curves() -> list[RobustnessCurve]:
    linf = robust_matrix([10, 7, 3])
    l2 = robust_matrix([9, 6, 5])
    union = linf & l2

    def make(label, eps, r, x_label="epsilon"):
        acc = r.double().mean(dim=0).tolist()
        return RobustnessCurve(label, eps, acc, r, x_label=x_label)

    return [
        make("linf", [0.0, 0.1, 0.2], linf),
        make("l2", [0.0, 1.0, 2.0], l2),
        make("union", [0.0, 0.5, 1.0], union, x_label="scale s"),
    ]


def band_vertices(ax) -> list[set[tuple[float, float]]]:
    """The (x, y) corners of every filled band of an axes, rounded."""
    out = []
    for coll in ax.collections:
        pts = set()
        for path in coll.get_paths():
            pts |= {(round(float(x), 6), round(float(y), 6)) for x, y in path.vertices}
        out.append(pts)
    return out


def test_curve_intervals_are_wilson_and_drawn_as_bands():
    curves = hand_curves()
    counts = {"linf": [10, 7, 3], "l2": [9, 6, 5], "union": [9, 6, 3]}
    for c in curves:
        assert c.intervals() == [wilson_interval(k, 10) for k in counts[c.label]]
        assert c.to_dict()["ci95"] == [list(wilson_interval(k, 10)) for k in counts[c.label]]
    fig = curves_figure(curves)
    joint, *panels = fig.axes
    assert len(panels) == 3 and len(joint.collections) == 3  # a band per curve on the joint one
    scales = curves[-1].eps
    for bands, c in zip(band_vertices(joint), curves, strict=True):
        for x, (lo, hi) in zip(scales, c.intervals(), strict=True):
            assert (round(x, 6), round(100 * lo, 6)) in bands
            assert (round(x, 6), round(100 * hi, 6)) in bands
    for ax, c in zip(panels, curves, strict=True):
        (bands,) = band_vertices(ax)
        for x, (lo, hi) in zip(c.eps, c.intervals(), strict=True):
            assert {(round(x, 6), round(100 * lo, 6)), (round(x, 6), round(100 * hi, 6))} <= bands


def test_multirobust_bands_are_wilson_and_every_plot_is_in_the_reports(tmp_path):
    model = tiny_mlp(seed=1)
    x, _ = tiny_data(20, seed=3)
    y = model(x).argmax(1)
    grid = {"AutoLinfAttack": [0.05, 0.2], "AutoL2Attack": [0.5, 2.0]}
    result = mrb.multirobust_evaluation(model, x, y, grid, suite="quick", batch_size=10)
    n = 20
    for family, values in grid.items():
        for e in values:
            key = mrb.eps_key(e)
            k = round(result["accuracies"][family][key] * n / 100)
            assert result["ci95"][family][key] == pytest.approx(
                [100 * b for b in wilson_interval(k, n)]
            )
    for step in result["union"]:
        k = round(step["accuracy"] * n / 100)
        assert step["ci95"] == pytest.approx([100 * b for b in wilson_interval(k, n)])
    fig = multirobust_figure(result)
    assert len(fig.axes) == 3
    (linf_band,) = band_vertices(fig.axes[0])
    lo, hi = result["ci95"]["AutoLinfAttack"]["0.2"]
    assert {(0.2, round(lo, 6)), (0.2, round(hi, 6))} <= linf_band

    report = evaluate(model, x, y, "linf:0.1, l2:1", suite="quick", progress=False)
    written = write_reports(tmp_path, report, model=model, curves=hand_curves(), multirobust=result)
    for name in ("curves.png", "mrb.png"):
        assert written[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report.html").read_text()
    assert 'alt="curves.png" src="data:image/png;base64,' in page
    assert 'alt="mrb.png" src="data:image/png;base64,' in page
    md = (tmp_path / "report.md").read_text()
    assert "![mrb.png](mrb.png)" in md and "95% CI" in md


def test_a_member_identical_to_the_union_stays_visible_and_is_named():
    linf = robust_matrix([10, 6, 3])
    union = robust_matrix([10, 6, 3])  # the union's curve equals the l-inf member's
    curves = [
        RobustnessCurve("linf", [0.0, 0.1, 0.2], linf.double().mean(0).tolist(), linf),
        RobustnessCurve("union", [0.0, 0.5, 1.0], union.double().mean(0).tolist(), union),
    ]
    joint = curves_figure(curves).axes[0]
    first, second = joint.get_lines()
    looks = [(line.get_marker(), line.get_linestyle()) for line in (first, second)]
    assert looks[0] != looks[1]  # different marker and dashes
    # the wider line lies underneath, so the narrower one on top leaves it visible
    wide, narrow = sorted((first, second), key=lambda line: -line.get_linewidth())
    assert wide.get_linewidth() > narrow.get_linewidth()
    assert wide.get_zorder() < narrow.get_zorder()
    labels = [t.get_text() for t in joint.get_legend().get_texts()]
    assert any("union (identical to linf)" in t for t in labels)
