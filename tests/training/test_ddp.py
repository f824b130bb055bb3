"""DDP with 2 CPU processes (gloo) equals 1 process with the same global batch.

The model has no BatchNorm and no Dropout: with BatchNorm each rank normalises its own half of
the batch (use ``training.sync_bn``), and Dropout masks come from each rank's own RNG.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from _helpers import tiny_data, tiny_mlp
from unionrobust.training.config import config_from_dict
from unionrobust.training.distributed import DistContext, free_port, init_local_cpu, shutdown
from unionrobust.training.trainer import train

# two spawned processes: `pytest -m "not slow"` skips them in a fast loop; CI runs them
pytestmark = pytest.mark.slow


def _model() -> nn.Module:
    return tiny_mlp(seed=0)  # Dropout(0): no randomness


def _data():
    x, y = tiny_data(44, seed=0)
    return (x[:34], y[:34]), (x[34:], y[34:])


def _config():
    return config_from_dict(
        {
            "threats": "linf:0.1, l2:0.5, l1:2",
            "strategy": {"name": "max", "steps": 2},
            "data": {"batch_size": 10},  # global batch; the last one has 4 examples
            "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9},
            "schedule": {"name": "piecewise"},
            "training": {"epochs": 2, "progress": False, "seed": 2, "warmup_epochs": 1},
            "eval": {"n": 10, "suite": "quick", "batch_size": 10},
        }
    )


def _worker(rank: int, world: int, port: int, out: str) -> None:
    ctx = init_local_cpu(rank, world, port)
    train_data, eval_data = _data()
    try:
        train(_config(), out, model=_model(), train_data=train_data, eval_data=eval_data, ctx=ctx)
    finally:
        shutdown(ctx)


def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train_data, eval_data = _data()
    train(
        _config(),
        one,
        model=_model(),
        train_data=train_data,
        eval_data=eval_data,
        ctx=DistContext(),
    )
    mp.spawn(_worker, args=(2, free_port(), str(two)), nprocs=2, join=True)
    a, b = load_file(one / "last.safetensors"), load_file(two / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max())
    assert any(not torch.equal(a[k], _model().state_dict()[k]) for k in a)  # it did train
    logs = [[json.loads(s) for s in (d / "log.jsonl").read_text().splitlines()] for d in (one, two)]
    for r1, r2 in zip(*logs, strict=True):
        for key in ("clean_acc", "union_acc", "average_acc", "train_loss", "train_acc"):
            assert abs(r1[key] - r2[key]) < 1e-5, key
    assert not list((two).glob("**/*.tmp"))
