"""Markdown and self-contained HTML reports; `unionrobust eval --out --curves` writes them."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
import torch
from PIL import Image
from torch import nn

from _helpers import CONV_MODULE
from unionrobust.cli import main as cli_main
from unionrobust.evaluation import evaluate
from unionrobust.evaluation.curves import union_curve
from unionrobust.reporting import plots
from unionrobust.reporting.html import markdown_table_to_html, write_reports
from unionrobust.reporting.tables import format_table

THREATS = "linf:0.1, l2:0.5"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    ).eval()
    x = torch.rand(30, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 3
    report = evaluate(model, x, y, threats=THREATS, suite=["pgd", "fgsm"], progress=False,
                      cascade=False)  # fmt: skip
    curves = union_curve(model, x, y, THREATS, scales=[0.5, 1.0], steps=5)
    corr = {
        "accuracy": {"fog": {1: 0.5, 2: 0.25}},
        "per_corruption": {"fog": 0.375},
        "per_severity": {1: 0.5, 2: 0.25},
        "mean": 0.375,
        "n": 4,
        "corruptions": ["fog"],
        "severities": [1, 2],
    }
    return model, report, curves, corr


def _pct(v):
    return f"{100 * v:.1f}%"


def test_reports_hold_every_section(setup, tmp_path):
    model, report, curves, corr = setup
    written = write_reports(tmp_path, report, model=model, curves=curves, corruptions=corr)
    assert set(written) == {"filters.png", "curves.png", "report.md", "report.html", "report.json"}
    saved = json.loads((tmp_path / "report.json").read_text())["curves"]  # one attack: bounds
    assert [c["label"] for c in saved] == ["linf", "l2", "union"]
    assert all(c["upper_bound"] and "upper bound" in c["upper_bound_note"] for c in saved)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    for text in (md, page):
        assert _pct(report.union_accuracy) in text
        assert _pct(report.clean_accuracy) in text
        for spec, acc in report.per_threat_accuracy.items():
            assert spec in text and _pct(acc) in text
        assert "Diagnostics" in text and "gradient masking linf:0.1" in text
        assert "CIFAR-10-C" in text and "37.5%" in text
        assert "Robustness curves" in text and _pct(curves[-1].accuracy[-1]) in text
    # MSD Tables 3-4 "alone" column: accuracy against fgsm alone, every point attacked; the
    # row is named by the entry's key, as in verdicts.csv
    e = report.entry_keys.index("fgsm@linf:0.1")
    alone = int((report.clean_correct & ~report.broken[:, e]).sum()) / report.n_examples
    assert re.search(rf"\| linf:0.1 +\| +fgsm@linf:0.1 \| +{re.escape(_pct(alone))} \|", md)
    assert "![filters.png](filters.png)" in md and "![curves.png](curves.png)" in md
    # self-contained: no external resources, pictures embedded and decodable
    assert not re.search(r'(src|href)="(?!data:)', page)
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 2
    sizes = [Image.open(io.BytesIO(base64.b64decode(b))).size for b in imgs]
    assert sizes[0] == Image.open(tmp_path / "filters.png").size
    assert all(w > 10 and h > 10 for w, h in sizes)
    tables = len(re.findall(r"^\|-", md, flags=re.M))
    assert tables == 8 and page.count("<table>") == tables


def test_without_matplotlib_a_note_not_a_crash(setup, tmp_path, monkeypatch):
    _, report, curves, _ = setup
    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    written = write_reports(tmp_path, report, model=nn.Flatten(), curves=curves)
    assert set(written) == {"report.md", "report.html", "report.json"}
    for name in ("report.md", "report.html"):
        text = (tmp_path / name).read_text()
        assert "matplotlib is not installed" in text
        assert "no convolution layer" in text
    assert "data:image/png" not in (tmp_path / "report.html").read_text()


def test_markdown_table_to_html_escapes():
    table = format_table(["a", "b"], [["<x>", "**WARNING**"], ["1", "2"]])
    out = markdown_table_to_html(table)
    assert out.count("<tr>") == 3 and "&lt;x&gt;" in out and 'class="warn"' in out
    assert "---" not in out


def test_cli_eval_writes_reports_and_curves(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli_main, "COMMANDS", ["eval"])
    src = tmp_path / "net.py"
    src.write_text(CONV_MODULE)
    out = tmp_path / "run"
    argv = ["eval", "--model-module", f"{src}:build", "--n", "8", "--suite", "quick"]
    argv += ["--threats", "linf:0.05", "--no-progress", "--curves", "0.5,1", "--out", str(out)]
    assert cli_main.main(argv) == 0
    printed = capsys.readouterr().out
    assert "accuracy (union)" in printed and "report.html" in printed
    for name in ("report.json", "verdicts.csv", "report.md", "report.html", "filters.png"):
        assert (out / name).is_file()
    assert "Robustness curves" in (out / "report.html").read_text()
    assert cli_main.main([*argv[:-2], "--curves", "1,0.5"]) == 2
    assert "increasing" in capsys.readouterr().err


def test_cli_eval_cifar10c_table(tmp_path, capsys, monkeypatch):
    import numpy as np

    monkeypatch.setattr(cli_main, "COMMANDS", ["eval"])
    folder = tmp_path / "c"
    folder.mkdir()
    np.save(folder / "labels.npy", np.ones(10, dtype=np.uint8))
    img = np.full((10, 8, 8, 3), 200, dtype=np.uint8)
    img[1::2] = 20  # every other image dark: a brightness model gets half right
    np.save(folder / "fog.npy", img)
    src = tmp_path / "bright.py"
    src.write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.s = torch.nn.Parameter(torch.tensor(1.0))\n"
        "    def forward(self, x):\n"
        "        m = x.flatten(1).mean(1)\n"
        "        two = self.s * torch.stack([0.5 - m, m - 0.5], 1)\n"
        "        return torch.cat([two, torch.full((x.shape[0], 8), -9.0)], 1)  # 10 classes\n"
        "def build():\n"
        "    return M()\n"
    )
    out = tmp_path / "run"
    argv = ["eval", "--model-module", f"{src}:build", "--data", "cifar10c:fog:1"]
    argv += ["--root", str(folder), "--suite", "quick", "--threats", "linf:0.01"]
    argv += ["--no-progress", "--cifar10c", str(folder), "--out", str(out)]
    assert cli_main.main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\| fog +(\| +50\.0% ){6}\|", printed)  # 5 severities and the mean
    assert "CIFAR-10-C" in (out / "report.html").read_text()
