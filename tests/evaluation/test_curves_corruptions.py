"""CIFAR-10-C accuracy per corruption and severity, on a tiny fake CIFAR-10-C folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unionrobust.errors import UnionRobustError
from unionrobust.evaluation.corruptions import available_corruptions, corruption_accuracy

K = 10  # images per severity block


class Brightness(nn.Module):
    """Class 1 iff the mean pixel is above 0.5."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        m = x.flatten(1).mean(dim=1)
        return self.scale * torch.stack([0.5 - m, m - 0.5], dim=1)


@pytest.fixture
def fake_c(tmp_path):
    """fog: severity s has K - 2(s - 1) bright images (accuracy 1 - 0.2 (s - 1)); snow: dark."""
    labels = np.ones(5 * K, dtype=np.uint8)
    fog = np.full((5 * K, 8, 8, 3), 40, dtype=np.uint8)
    for s in range(1, 6):
        fog[(s - 1) * K : (s - 1) * K + K - 2 * (s - 1)] = 220
    snow = np.full((5 * K, 8, 8, 3), 10, dtype=np.uint8)
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "labels.npy", labels)
    np.save(folder / "fog.npy", fog)
    np.save(folder / "snow.npy", snow)
    (folder / "notes.npy").write_bytes(b"not a corruption")
    return tmp_path


def test_accuracy_per_corruption_and_severity(fake_c):
    model = Brightness().train()
    assert available_corruptions(fake_c) == ["fog", "snow"]
    res = corruption_accuracy(model, fake_c)
    assert res["corruptions"] == ["fog", "snow"] and res["n"] == K
    for s in range(1, 6):
        assert res["accuracy"]["fog"][s] == pytest.approx(1 - 0.2 * (s - 1))
        assert res["accuracy"]["snow"][s] == 0.0
    assert res["per_corruption"]["fog"] == pytest.approx(0.6)
    assert res["per_severity"][2] == pytest.approx(0.4)
    assert res["mean"] == pytest.approx(0.3)
    assert model.training and model.scale.requires_grad and model.scale.grad is None
    # first n images of each block, chosen corruptions and severities
    sub = corruption_accuracy(model, fake_c, corruptions=["fog"], severities=(4,), n=4)
    assert sub["accuracy"] == {"fog": {4: 1.0}} and sub["n"] == 4


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"corruptions": ["smog"]}, "smog"),
        ({"severities": (0,)}, "severities"),
        ({"corruptions": ["frost"]}, "frost.npy"),
    ],
)
def test_bad_requests_are_one_line_errors(fake_c, kwargs, needle):
    with pytest.raises(UnionRobustError, match=needle):
        corruption_accuracy(Brightness(), fake_c, **kwargs)


def test_missing_folder(tmp_path):
    with pytest.raises(UnionRobustError, match="does not exist"):
        corruption_accuracy(Brightness(), tmp_path / "nope")
