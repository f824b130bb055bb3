"""Small first-mile slips (issue 19 item 5): shuffled loaders, long name lists, the --root
hint, decimal fractions in threat specs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

import unionrobust as ur
from unionrobust.data import get_dataset
from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.evaluation.inputs import read_examples
from unionrobust.models import robustbench as rb
from unionrobust.threats import Linf, parse


def data(n: int = 24):
    torch.manual_seed(0)
    return torch.rand(n, 1, 4, 4), torch.randint(0, 3, (n,))


def test_a_shuffled_loader_is_read_in_index_order():
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True)
    with pytest.warns(UserWarning, match="index order"):
        xs, ys = read_examples(loader, n=7)
    assert torch.equal(xs, x[:7]) and torch.equal(ys, y[:7])  # n: the first 7, not a random 7


def test_a_shuffled_loader_gives_the_numbers_of_the_tensors():
    x, y = data()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    kw = {"threats": "linf:0.2, l2:1", "suite": "pgd(steps=3)", "progress": False, "n": 20}
    direct = ur.evaluate(model, x, y, **kw)
    with pytest.warns(UserWarning, match="shuffles"):
        shuffled = ur.evaluate(model, DataLoader(TensorDataset(x, y), 6, shuffle=True), **kw)
    assert torch.equal(direct.broken, shuffled.broken)
    assert direct.union_accuracy == shuffled.union_accuracy


def test_another_reordering_sampler_is_warned_about():
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=5, sampler=SubsetRandomSampler(range(10)))
    with pytest.warns(UserWarning, match="SubsetRandomSampler"):
        read_examples(loader)


def test_a_misspelt_name_among_many_suggests_the_closest():
    names = [f"Author{year}Method{k}" for year in range(2019, 2025) for k in range(20)]
    err = str(unknown_name("RobustBench model", "Author2021Methd3", names))
    assert "did you mean Author2021Method3" in err and f"({len(names)} valid names)" in err
    assert len(err) < 250
    far = str(unknown_name("RobustBench model", "Zzz", names))
    assert "120 valid names, e.g." in far and len(far) < 250
    short = str(unknown_name("model", "lenett", ["lenet", "mlp"]))
    assert short == "unknown model 'lenett'; valid: lenet, mlp"  # short lists stay whole
    zoo = {"cifar10": {"Linf": {n: {"model": nn.Identity} for n in names}}}
    with pytest.raises(UnionRobustError, match="did you mean Author2019Method1"):
        rb.load_robustbench_model("Author2019Methd1", zoo=zoo)


def test_the_data_folder_error_names_the_real_flag(monkeypatch):
    monkeypatch.delenv("UNIONROBUST_DATA", raising=False)
    with pytest.raises(UnionRobustError) as err:
        get_dataset("cifar10", "test")
    assert "--root FOLDER" in str(err.value) and "--data-root" not in str(err.value)


def test_decimal_fractions_in_threat_specs():
    (threat,) = parse("linf:0.5/255")
    assert isinstance(threat, Linf) and threat.eps == pytest.approx(0.5 / 255)
    assert parse("l2:1.5/10")[0].eps == pytest.approx(0.15)
    with pytest.raises(UnionRobustError, match="not a number"):
        parse("linf:1/2/3")
    with pytest.raises(UnionRobustError, match="not a number"):
        parse("linf:1/0")
