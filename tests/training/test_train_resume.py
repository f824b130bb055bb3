"""A run killed with SIGKILL mid-epoch and resumed ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _helpers import tiny_data, tiny_mlp
from unionrobust.training.config import config_from_dict
from unionrobust.training.trainer import train


def run_worker(mode: str, out: str, marker: str) -> None:
    """One training run: "full" (uninterrupted), "kill" (hangs after step 4, to be killed) or
    "resume"; P-inf... here E-AT (it has state), Dropout (global RNG), mid-epoch checkpoints."""
    torch.set_num_threads(1)
    model = tiny_mlp(seed=0, dropout=0.2)
    data = tiny_data(40, seed=0)
    cfg = config_from_dict(
        {
            "threats": "linf:0.1, l2:0.5, l1:2",
            "strategy": {"name": "eat", "steps": 2},
            "data": {"batch_size": 8},
            "optimizer": {"name": "adam", "lr": 0.01},
            "schedule": {"name": "piecewise"},
            "training": {"epochs": 2, "progress": False, "seed": 3, "checkpoint_every": 3,
                         "warmup_epochs": 1},
            "eval": {"n": 0},
        }
    )  # fmt: skip

    class HangAfter:
        # after global step 4 (mid epoch 0; checkpoint written at step 3): signal, then wait
        def on_step_end(self, trainer, epoch, i, step):
            if mode == "kill" and step == 4:
                Path(marker).write_text(str(step))
                time.sleep(600)

    train(cfg, out, resume=(mode == "resume"), model=model, train_data=data,
          callbacks=[HangAfter()])  # fmt: skip


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path[:0] = {paths!r}  # this folder and tests/ (_helpers)
    from test_train_resume import run_worker
    run_worker(*sys.argv[1:4])
    """
)


def _run(script, *args):
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # a subprocess
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "worker.py"
    here = Path(__file__).resolve()
    script.write_text(SCRIPT.format(paths=[str(here.parent), str(here.parents[1])]))
    full, killed, marker = tmp_path / "full", tmp_path / "killed", tmp_path / "marker"
    run_worker("full", str(full), str(marker))  # the reference, in this process
    proc = subprocess.Popen(
        [sys.executable, str(script), "kill", str(killed), str(marker)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "worker never reached step 4"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "last.safetensors").exists()  # it really died mid-run
    assert (killed / "checkpoints" / "last.json").is_file()
    r = _run(script, "resume", killed, marker)
    assert r.returncode == 0, r.stderr
    a = load_file(full / "last.safetensors")
    b = load_file(killed / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_full = (full / "log.jsonl").read_text().splitlines()
    log_resumed = (killed / "log.jsonl").read_text().splitlines()
    assert len(log_full) == len(log_resumed) == 2
