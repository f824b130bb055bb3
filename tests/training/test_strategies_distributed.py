"""E-AT in a distributed run: every process holds the global running errors (2 gloo processes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unionrobust.attacks.base import AttackResult
from unionrobust.training.strategies import make_strategy

# two spawned processes: `pytest -m "not slow"` skips them in a fast loop; CI runs them
pytestmark = pytest.mark.slow


class _Fixed:
    """A picklable fake attack: x unchanged, the given success mask."""

    def __init__(self, success: torch.Tensor) -> None:
        self.success, self.seed, self.loss_fn = success, 0, None

    def __call__(self, model, x, y, example_ids=None):
        return AttackResult(x.clone(), self.success.clone(), torch.zeros(x.shape[0]))


def _worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        x = torch.rand(4, 1, 4, 4)
        y = torch.zeros(4, dtype=torch.int64)
        s = make_strategy("eat", "l1:1, linf:0.1", steps=1, seed=4)
        # local robust errors differ by rank: l1 (1.0, 0.5), linf (0.0, 1.0); global 0.75, 0.5
        s.attacks[0] = _Fixed(torch.arange(4) < (4 if rank == 0 else 2))
        s.attacks[1] = _Fixed(torch.full((4,), rank == 1))
        stats = [s(model, x, y).stats for _ in range(12)]
        Path(out).with_suffix(f".{rank}.json").write_text(json.dumps(stats))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs gloo")
def test_eat_running_errors_are_global(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    out = str(tmp_path / "stats")
    mp.spawn(_worker, args=(2, init, out), nprocs=2, join=True)
    a, b = (json.loads(Path(out).with_suffix(f".{r}.json").read_text()) for r in (0, 1))
    assert a == b  # same probabilities, same draws, same running errors on both ranks
    last = a[-1]
    assert last["rerr_l1"] == pytest.approx(0.75) and last["rerr_linf"] == pytest.approx(0.5)
    assert last["p_l1"] == pytest.approx(0.6)  # eq. 5 on the global errors
