"""Diagnostics: each check fires on a model built to trigger it and not on a plain model."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from unionrobust.attacks.base import Attack, AttackResult, misclassified
from unionrobust.attacks.pgd import PGD
from unionrobust.evaluation import Suite, SuiteEntry, evaluate
from unionrobust.evaluation.diagnostics import (
    check_gradients,
    check_probabilities,
    check_randomized,
    check_training_mode,
    gradient_masking,
    run_diagnostics,
)
from unionrobust.evaluation.filters import filter_grid_png, thresholding_filters
from unionrobust.threats import parse

THREAT = "linf:0.15"


class CornerSearch(Attack):
    """Gradient-free: the best of ``trials`` keyed random corners of the ℓ∞ ball."""

    name = "random-search"

    def __init__(self, threat, seed=0, trials=12):
        super().__init__(threat, seed=seed)
        self.trials = trials

    def _run(self, model, x, y, rand, clean_logits):
        best = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool)
        for k in range(self.trials):
            sign = (rand.uniform(k, x.shape[1:]) < 0.5).float() * 2 - 1
            cand = (x + self.threat.size * sign).clamp(0, 1)
            with torch.no_grad():
                hit = misclassified(model(cand), y) & ~found
            best[hit] = cand[hit]
            found |= hit
        return AttackResult(best, found, torch.zeros(x.shape[0]))


def centre_model(threshold: bool) -> nn.Module:
    """3x3 conv with one centre weight. ``threshold``: ReLU(50 (x − 0.5)) (a thresholding
    filter: zero gradient below 0.5); else the identity. A linear read-out of the centre."""
    conv = nn.Conv2d(1, 1, 3, padding=1)
    lin = nn.Linear(9, 2)
    with torch.no_grad():
        conv.weight.zero_()
        lin.weight.zero_()
        if threshold:
            conv.weight[0, 0, 1, 1] = 50.0
            conv.bias.fill_(-25.0)
            lin.weight[1, 4] = 1.0
            lin.bias.copy_(torch.tensor([0.0, -1.0]))
        else:
            conv.weight[0, 0, 1, 1] = 1.0
            conv.bias.zero_()
            lin.weight[1, 4] = 10.0
            lin.bias.copy_(torch.tensor([0.0, -5.0]))
    act = nn.ReLU() if threshold else nn.Identity()
    return nn.Sequential(conv, act, nn.Flatten(), lin).eval()


def centre_data(n: int = 40):
    y = torch.arange(n) % 2
    x = torch.zeros(n, 1, 3, 3)
    x[:, 0, 1, 1] = torch.where(y == 1, 0.6, 0.4)
    return x, y


def masking_suite() -> Suite:
    union = parse(THREAT)
    grad = SuiteEntry(0, "pgd", (), lambda t, s: PGD(t, steps=10, start="zero", seed=s))
    free = SuiteEntry(0, "random-search", (), lambda t, s: CornerSearch(t, seed=s))
    return Suite("masking-test", union, (grad, free))


@pytest.mark.parametrize("threshold", [True, False])
def test_masking_flag_fires_only_on_the_thresholding_model(threshold):
    model = centre_model(threshold)
    x, y = centre_data()
    report = evaluate(model, x, y, threats=THREAT, suite=masking_suite(), progress=False)
    assert report.clean_accuracy == 1.0
    diag = report.diagnostics
    row = diag["gradient_masking"]["per_threat"][THREAT]
    assert row["checked"]
    # PGD breaks exactly the class-1 points (gradient alive) on the thresholding model and all
    # points on the plain one; the corner search finds every class-0 point in both cases
    assert row["broken_by_gradient"] == (20 if threshold else 40)
    assert row["broken_only_by_gradient_free"] == (20 if threshold else 0)
    assert row["flag"] is threshold
    assert diag["gradient_masking"]["flag"] is threshold
    assert ("gradient_masking" in diag["flags"]) is threshold
    # the same model fires the zero-gradient and thresholding-filter checks
    assert diag["gradients"]["flag"] is threshold
    assert diag["gradients"]["zero_fraction"] == (0.5 if threshold else 0.0)
    assert diag["first_layer"]["count"] == (1 if threshold else 0)
    assert ("thresholding_filters" in diag["flags"]) is threshold
    assert report.to_dict()["diagnostics"]["flags"] == diag["flags"]


def test_masking_needs_both_kinds_of_attack():
    model = centre_model(True)
    x, y = centre_data(10)
    report = evaluate(model, x, y, threats=THREAT, suite=["pgd"], progress=False)
    row = gradient_masking(report)["per_threat"][THREAT]
    assert not row["checked"] and not row["flag"]


def test_masking_margin_small_samples_do_not_fire():
    model = centre_model(True)
    x, y = centre_data(40)
    report = evaluate(model, x, y, threats=THREAT, suite=masking_suite(), progress=False)
    # 20/40 extra: lower Wilson bound ~0.35 -> fires at 0.3 but not at 0.4
    assert gradient_masking(report, threshold=0.3)["flag"]
    assert not gradient_masking(report, threshold=0.4)["flag"]
    # naming the corner search first-order removes the evidence
    assert not gradient_masking(report, gradient_free=())["flag"]


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(9, 3)

    def forward(self, x):
        return self.lin(x.flatten(1)) + 0.1 * torch.randn(x.shape[0], 3)


class Softmaxed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(9, 3)

    def forward(self, x):
        return self.lin(x.flatten(1)).softmax(dim=1)


class NaNGrad(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(9, 3)

    def forward(self, x):  # sqrt at 0 has an infinite derivative -> inf * 0 = NaN
        return self.lin(x.flatten(1)) + torch.sqrt(x.flatten(1)).sum(1, keepdim=True) * 0


class Detach(nn.Module):
    def forward(self, z):
        return z.detach()


def test_model_checks_fire_on_models_built_for_them():
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 3, 3), torch.arange(8) % 3
    plain = nn.Sequential(nn.Flatten(), nn.Linear(9, 3)).eval()
    assert not check_randomized(plain, x)["flag"]
    assert check_randomized(Noisy().eval(), x)["flag"]
    with torch.no_grad():
        assert check_probabilities(Softmaxed()(x))["flag"]
        assert not check_probabilities(plain(x))["flag"]
        assert check_probabilities(plain(x).log_softmax(1))["log_probabilities"]
    assert not check_gradients(plain, x, y)["flag"]
    xz = x.clone()
    xz[0] = 0.0
    g = check_gradients(NaNGrad().eval(), xz, y)
    assert g["flag"] and g["nan_fraction"] == 1 / 8
    cut = nn.Sequential(nn.Flatten(), nn.Linear(9, 3), Detach()).eval()
    g = check_gradients(cut, x, y)  # gradient-free suites must still run on such a model
    assert g["flag"] and g["zero_fraction"] == 1.0 and "not differentiable" in g["message"]
    assert not check_training_mode(plain)["flag"]
    dropout = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(9, 3))
    dropout.train()
    assert check_training_mode(dropout)["flag"]
    d = run_diagnostics(dropout, x, y, "linf:0.1")
    assert d["flags"] == ["training_mode"]  # dropout is off in eval mode: not randomised
    assert dropout.training and all(m.training for m in dropout.modules())  # left as found
    assert all(p.grad is None and p.requires_grad for p in dropout.parameters())


def test_thresholding_criterion():
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(-0.3)
        conv.weight[0, 1, 0, 2] = 2.0  # single positive weight off-centre: t = 0.15
        conv.weight[1, 0, 1, 1] = -2.0  # negative: not a threshold on x > t
        conv.weight[2, 0, 1, 1] = 1.0  # dominant but with much spread-out mass
        conv.weight[2, 1] += 0.1
        conv.weight[3, 0, 1, 1] = 0.2  # t = 1.5 > 1: never fires inside the pixel box
    res = thresholding_filters(nn.Sequential(conv, nn.ReLU()))
    assert res["count"] == 1 and res["filters"] == 4
    assert res["thresholding"][0]["filter"] == 0
    assert res["thresholding"][0]["threshold"] == pytest.approx(0.15)
    assert res["thresholding"][0]["at_centre"] is False
    assert thresholding_filters(conv, max_threshold=2.0)["count"] == 2
    assert thresholding_filters(nn.Sequential(nn.ReLU()))["available"] is False


def test_filter_grid_png_decodes():
    from PIL import Image

    conv = nn.Conv2d(1, 10, 5)
    png = filter_grid_png(nn.Sequential(conv), scale=4, columns=4)
    img = Image.open(io.BytesIO(png))
    gap = 1
    assert img.size == (4 * (20 + gap) + gap, 3 * (20 + gap) + gap)
    rgb = filter_grid_png(nn.Conv2d(3, 2, 3), scale=2)
    assert Image.open(io.BytesIO(rgb)).mode == "RGB"
    # each filter is scaled to its own peak: the peak weight is pure white or black
    arr = torch.from_numpy(np.asarray(img).copy())
    tile = arr[gap : gap + 20, gap : gap + 20]
    assert int(tile.max()) == 255 or int(tile.min()) == 0
    assert filter_grid_png(nn.Sequential(nn.Linear(3, 2))) is None


def test_masking_flag_with_the_registered_square_attack():
    from unionrobust.attacks.registry import attack_names

    if "square" not in attack_names():
        pytest.skip("no gradient-free attack registered")
    x, y = centre_data()
    for threshold in (True, False):
        rep = evaluate(centre_model(threshold), x, y, threats=THREAT,
                       suite=f"{THREAT}=pgd+square", progress=False)  # fmt: skip
        assert rep.diagnostics["gradient_masking"]["flag"] is threshold


def test_thresholds_are_in_pixel_units_after_a_normalize_layer():
    from unionrobust.models import with_normalization

    conv = nn.Conv2d(1, 2, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 2.0
        conv.bias.copy_(torch.tensor([-0.6, 0.0]))
    model = with_normalization(nn.Sequential(conv, nn.ReLU()), 0.5, 0.25)
    res = thresholding_filters(model)  # 2 (x - 0.5)/0.25 - 0.6 > 0  <=>  x > 0.575
    assert res["count"] == 1
    assert res["thresholding"][0]["threshold"] == pytest.approx(0.575)
    assert thresholding_filters(conv)["thresholding"][0]["threshold"] == pytest.approx(0.3)
