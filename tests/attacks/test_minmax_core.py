"""The shared pieces under the min-max attack: the payload tracker, the Attack entry point for
domains, batch-independent runs over a dataset (evaluation/minmax.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unionrobust.attacks import PGD, DomainMinMax, ModelEnsemble, UniversalGroups
from unionrobust.attacks.best import BestTracker, PayloadTracker
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation.minmax import attack_in_batches, minmax_table, run_minmax
from unionrobust.threats import Linf


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def data(n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_payload_tracker_with_bool_success_is_the_best_tracker():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, generator=g)
    base = BestTracker(x, torch.zeros(6), torch.zeros(6, dtype=torch.bool))
    pay = PayloadTracker(
        x, torch.zeros(6), torch.zeros(6, dtype=torch.bool), {"id": torch.zeros(6)}
    )
    expected = torch.zeros(6)
    for step in range(1, 6):
        cand = torch.rand(6, 3, generator=g)
        loss = torch.randn(6, generator=g)
        succ = torch.rand(6, generator=g) > 0.7
        a = base.update(cand, loss, succ)
        b = pay.update(cand, loss, succ, payload={"id": torch.full((6,), float(step))})
        assert torch.equal(a, b)
        expected = torch.where(a, float(step), expected)
    assert torch.equal(base.x_adv, pay.x_adv) and torch.equal(base.loss, pay.loss)
    assert torch.equal(pay.payload["id"], expected)  # the iterate each row kept


def test_payload_tracker_ranks_counts_and_subsets():
    x = torch.zeros(3, 2)
    t = PayloadTracker(x, torch.zeros(3), torch.zeros(3, dtype=torch.int64), {"p": torch.zeros(3)})
    t.update(
        x + 1, torch.tensor([5.0, -1.0, 0.0]), torch.tensor([1, 2, 0]), payload={"p": torch.ones(3)}
    )
    t.update(
        x + 2,
        torch.tensor([9.0, 9.0, 1.0]),
        torch.tensor([0, 2, 0]),
        payload={"p": torch.full((3,), 2.0)},
    )
    # row 0: more domains fooled beats a higher loss; row 1: equal count, higher loss; row 2: loss
    assert t.payload["p"].tolist() == [1.0, 2.0, 2.0]
    assert t.success.tolist() == [1, 2, 0]
    idx = torch.tensor([2])
    sub = t.subset(idx)
    sub.update(
        x[:1] + 3, torch.tensor([0.5]), torch.tensor([1]), payload={"p": torch.tensor([3.0])}
    )
    t.merge(sub, idx)
    assert t.payload["p"].tolist() == [1.0, 2.0, 3.0] and t.success.tolist() == [1, 2, 1]


def test_attack_entry_point_checks_domains_and_empty_batches():
    x, y = data(4)
    attack = DomainMinMax(Linf(0.1), steps=2)
    with pytest.raises(UnionRobustError, match="Domains object"):
        attack(net(0), x, y)
    with pytest.raises(UnionRobustError, match=r"torch\.nn\.Module"):
        PGD(Linf(0.1))(ModelEnsemble([net(0)]), x, y)
    empty = attack(ModelEnsemble([net(0), net(1)]), x[:0], y[:0])
    assert empty.x_adv.shape == (0, 1, 4, 4) and empty.fooled.shape == (0, 2)
    with pytest.raises(UnionRobustError, match="example_ids"):
        attack(ModelEnsemble([net(0)]), x, y, torch.zeros(4))


@pytest.mark.parametrize("universal", [False, True])
def test_runs_over_a_dataset_do_not_depend_on_the_batch_size(universal):
    models = [net(0), net(1)]
    x, y = data(12)
    domains = UniversalGroups(models[0], 3) if universal else ModelEnsemble(models)
    attack = DomainMinMax(Linf(0.2), steps=3, start="random", seed=2)
    a = attack_in_batches(attack, domains, x, y, batch_size=5)
    b = attack_in_batches(attack, domains, x, y, batch_size=12)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.weights, b.weights)
    assert torch.equal(a.fooled, b.fooled)
    results = run_minmax(domains, x, y, Linf(0.2), batch_size=5, progress=False, steps=3, seed=2)
    headers, rows = minmax_table(results)
    assert [r[0] for r in rows] == ["avg", "minmax"] and rows[0][-1] == "-"
    assert headers[-2] == ("asr_gp" if universal else "asr_all")
