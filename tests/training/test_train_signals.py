"""Stopping training from outside: SIGINT/SIGTERM save a checkpoint that resumes exactly;
``compare`` validates everything before training, stops its workers at once on Ctrl-C, and its
workers die with it (issue 11)."""

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

from _helpers import TINY_TRAINING, tiny_data, tiny_mlp
from unionrobust.cli.main import main
from unionrobust.training import checkpoint as ckpt
from unionrobust.training.config import config_from_dict
from unionrobust.training.trainer import train

# subprocesses killed by signals: `pytest -m "not slow"` skips them in a fast loop; CI runs them
pytestmark = pytest.mark.slow

TINY = ["--set", "training.epochs=1", *TINY_TRAINING, "--set", "eval.n=10"]


def default_sigint() -> None:
    """In the child before exec: SIGINT back to its default action. A shell starts background
    jobs with SIGINT ignored, and an ignored SIGINT stays ignored across exec, so a suite run
    with ``cmd &`` (e.g. under nohup) would otherwise send Ctrl-C into the void."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_worker(mode: str, out: str, marker: str) -> None:
    """ "full" (uninterrupted), "signal" (waits after step 4 for a signal) or "resume"; E-AT (it
    has state), Dropout (global RNG), no periodic checkpoints: only the signal writes one."""
    torch.set_num_threads(1)
    cfg = config_from_dict(
        {
            "threats": "linf:0.1, l2:0.5, l1:2",
            "strategy": {"name": "eat", "steps": 2},
            "data": {"batch_size": 8},
            "optimizer": {"name": "adam", "lr": 0.01},
            "training": {"epochs": 2, "progress": False, "seed": 3, "warmup_epochs": 1},
            "eval": {"n": 0},
        }
    )

    class WaitForSignal:
        def on_step_end(self, trainer, epoch, i, step):
            if mode == "signal" and step == 4:
                Path(marker).write_text(str(os.getpid()))
                deadline = time.time() + 120
                while trainer._stop is None and time.time() < deadline:
                    time.sleep(0.02)

    train(cfg, out, resume=(mode == "resume"), model=tiny_mlp(seed=0, dropout=0.2),
          train_data=tiny_data(40, seed=0), callbacks=[WaitForSignal()])  # fmt: skip


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path[:0] = {paths!r}  # this folder and tests/ (_helpers)
    from test_train_signals import run_worker
    run_worker(*sys.argv[1:4])
    """
)


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_that_resumes_exactly(tmp_path, sig):
    script = tmp_path / "worker.py"
    here = Path(__file__).resolve()
    script.write_text(SCRIPT.format(paths=[str(here.parent), str(here.parents[1])]))
    full, stopped, marker = tmp_path / "full", tmp_path / "stopped", tmp_path / "marker"
    run_worker("full", str(full), str(marker))
    proc = subprocess.Popen(
        [sys.executable, str(script), "signal", str(stopped), str(marker)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=default_sigint,
    )  # fmt: skip
    _wait_for(marker, proc)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    else:
        assert proc.returncode == -signal.SIGTERM, err.decode()
    assert not (stopped / "last.safetensors").exists()  # it stopped mid-run
    pointer = ckpt.read_pointer(stopped / "checkpoints", "last")
    assert pointer["step"] == 4  # the steps since the last checkpoint were saved
    r = subprocess.run([sys.executable, str(script), "resume", str(stopped), str(marker)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    a, b = load_file(full / "last.safetensors"), load_file(stopped / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "0"], "--n"),
        (["--suite", "nosuch"], "unknown suite or attack 'nosuch'"),
        (["--set", "eval.suite=nosuch"], "unknown suite or attack 'nosuch'"),
        (["--jobs", "0"], "jobs must be >= 1"),
        (["--jobs", "-2"], "jobs must be >= 1"),
    ],
)
def test_compare_checks_everything_before_training(tmp_path, capsys, args, message):
    out = tmp_path / "cmp"
    code = main(["compare", "--strategies", "pinf", "--out", str(out), *TINY, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (out / "runs").exists()  # nothing was trained


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_compare(out: Path) -> tuple[subprocess.Popen, list[int]]:
    """``compare`` with 2 workers on long trainings; returns once both are training."""
    long = ["--set", "training.epochs=100000", *TINY_TRAINING, "--set", "eval.n=0",
            "--set", "training.checkpoint_every=1"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "unionrobust.cli.main", "compare", "--strategies", "pinf,avg",
         "--jobs", "2", "--n", "10", "--out", str(out), *long],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=default_sigint,
    )  # fmt: skip
    try:
        for name in ("pinf-seed0", "avg-seed0"):
            _wait_for(out / "runs" / name / "checkpoints" / "last.json", proc)
        workers = [p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)]
        assert len(workers) == 2, [_cmdline(p) for p in _children(proc.pid)]
    except BaseException:
        _kill([*_children(proc.pid), proc.pid])
        raise
    return proc, workers


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_dead(pids: list[int], seconds: float = 120) -> list[int]:
    deadline = time.time() + seconds
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _kill(pids: list[int]) -> None:
    """SIGKILL whatever a failed test left running (never leave a trainer behind)."""
    for p in pids:
        if _alive(p):
            os.kill(p, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_compare_ctrl_c_stops_the_workers_at_once(tmp_path):
    proc, workers = _start_compare(tmp_path / "cmp")
    try:
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C reaches the parent; it stops the workers
        _, err = proc.communicate(timeout=120)  # 100000 epochs would take days
        assert proc.returncode == 130, err.decode()
        assert "interrupted" in err.decode()
        assert not _wait_dead(workers)
    finally:
        _kill([proc.pid, *workers])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_compare_workers_die_with_a_killed_parent(tmp_path):
    proc, workers = _start_compare(tmp_path / "cmp")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not _wait_dead(workers)  # no orphans training on
    finally:
        _kill([proc.pid, *workers])
