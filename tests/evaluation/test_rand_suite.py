"""Randomised defences: the ``rand`` suite (EOT APGD, AutoAttack's version='rand') and the
K-of-K re-check of each attack's final point (checks.recheck ``repeats``)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import unionrobust as ur
from unionrobust.attacks.apgd import APGD
from unionrobust.evaluation import get_suite
from unionrobust.evaluation.checks import recheck
from unionrobust.reporting.markdown import render_markdown, report_sections
from unionrobust.threats import Linf


class NoisyLinear(nn.Module):
    """A noise-injection defence: Gaussian noise (std ``sigma``) on the input at every forward
    pass, eval mode included, then a fixed linear classifier."""

    def __init__(self, d: int = 16, classes: int = 3, sigma: float = 0.05) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(d, classes)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(classes, d, generator=gen))
            self.lin.bias.zero_()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.lin(x + self.sigma * torch.randn_like(x))


def noisy_task(n: int = 200):
    torch.manual_seed(0)
    model = NoisyLinear()
    x = torch.rand(n, 16)
    with torch.no_grad():
        y = model.lin(x).argmax(1)  # the noise-free labels
    return model, x, y


def test_rand_suite_is_autoattacks_rand_version():
    suite = get_suite("rand", "linf:8/255, l1:10")
    assert suite.repeats == 20
    assert [(e.attack, dict(e.params)["loss"], dict(e.params)["eot"]) for e in suite.entries] == [
        ("apgd-ce", "ce", 20), ("apgd-dlr", "dlr", 20)
    ] * 2  # fmt: skip
    assert dict(suite.entries[2].params)["large_eps"] is True  # ℓ1 as in standard
    assert get_suite("rand(eot=5,repeats=3)", "linf:0.1").repeats == 3
    assert get_suite("quick", "linf:0.1").repeats == 1


def test_k_of_k_recheck_on_a_coin_flip_model():
    """The model is right with probability 1/2 at every point: one evaluation calls about half
    the points robust, 30 evaluations almost none."""

    class Coin(nn.Module):
        def forward(self, x):
            noise = torch.randn(x.shape[0], 1)
            return torch.cat([torch.zeros_like(noise), noise], dim=1)

    torch.manual_seed(0)
    x = torch.rand(400, 4)
    y = torch.zeros(400, dtype=torch.long)
    once, _ = recheck(Coin(), Linf(0.1), x, y, x)
    k30, _ = recheck(Coin(), Linf(0.1), x, y, x, repeats=30)
    assert 0.4 < once.float().mean() < 0.6
    assert k30.float().mean() > 0.99


def test_one_evaluation_overstates_a_noise_injection_model(tmp_path):
    model, x, y = noisy_task()
    accs = {}
    for k in (1, 20):
        torch.manual_seed(1)
        out = tmp_path / f"k{k}"
        report = ur.evaluate(model, x, y, threats="linf:0.05", progress=False, out_dir=out,
                             suite=f"rand(steps=10,eot=4,repeats={k})")  # fmt: skip
        accs[k] = report.union_accuracy
        text = render_markdown(report_sections(report))
        saved = json.loads((out / "report.json").read_text())
        assert saved["repeats"] == k and report.repeats == k
        assert "--suite rand" in saved["diagnostics"]["randomized"]["message"]
        assert ("in 20 of 20 evaluations" in text) == (k == 20)
    assert accs[1] - accs[20] >= 0.1, accs  # measured: 0.55 vs 0.35


def test_eot_averages_draws_and_keeps_the_model():
    model, x, y = noisy_task(20)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attack = APGD(Linf(0.05), steps=5, eot=3)
    assert "eot=3" in repr(attack)
    torch.manual_seed(2)
    result = attack(model, x, y)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert ((result.x_adv - x).abs().amax() <= 0.05 + 1e-6) and result.x_adv.min() >= 0
    with pytest.raises(ur.UnionRobustError, match="eot"):
        APGD(Linf(0.05), eot=0)


def test_cli_points_a_randomised_model_to_rand(tmp_path, monkeypatch, capsys):
    from unionrobust.cli import main as cli_main

    monkeypatch.setattr(cli_main, "COMMANDS", ["eval"])
    src = tmp_path / "noisy_net.py"
    src.write_text(
        "import torch\n"
        "class Noisy(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(784, 10)\n"
        "    def forward(self, x):\n"
        "        x = x.flatten(1)\n"
        "        return self.lin(x + 0.1 * torch.randn_like(x))\n"
        "def build():\n"
        "    torch.manual_seed(1)\n"
        "    return Noisy()\n"
    )
    base = ["eval", "--model-module", f"{src}:build", "--n", "6", "--threats", "linf:0.05",
            "--no-progress"]  # fmt: skip
    assert cli_main.main([*base, "--suite", "pgd(steps=2)"]) == 0
    err = capsys.readouterr().err
    assert "randomized" in err and "evaluate it with --suite rand" in err
    assert cli_main.main([*base, "--suite", "rand(steps=2,eot=2,repeats=3)"]) == 0
    assert "evaluate it with --suite rand" not in capsys.readouterr().err  # already K of K
