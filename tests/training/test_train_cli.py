"""`unionrobust train` / `finetune` from the command line (in-process)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from _helpers import TINY_TRAINING
from unionrobust.cli.main import main
from unionrobust.models import build_model

TINY = [*TINY_TRAINING, "--set", "eval.n=0", "--no-progress"]


def test_bad_key_is_a_one_line_error_with_exit_2(tmp_path, capsys):
    code = main(["train", "--config", "mnist-small", "--set", "training.epoch=2",
                 "--out", str(tmp_path / "r")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "unknown config key 'training.epoch'" in err and "'epochs'" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: small-cnn}\nschedul: {name: step}\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r2")]) == 2
    assert "unknown config key 'schedul'" in capsys.readouterr().err
    assert main(["train", "--config", "mnist-small", "--set", "strategy.name=nope",
                 "--out", str(tmp_path / "r3")]) == 2  # fmt: skip
    assert "unknown strategy 'nope'" in capsys.readouterr().err


def test_train_then_resume_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", "mnist-small-pinf", "--set", "training.epochs=1", *TINY,
            "--set", "eval.n=10", "--set", "eval.suite=quick"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained 1 epochs" in printed
    # a held-out suite of quick (PGD-20): its figures are labelled upper bounds
    assert "(suite quick: upper bounds" in printed
    log = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and "union_acc" in log[0]
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0  # nothing left
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    assert main(["train", "--config", "list"]) == 0
    assert "mnist-small-msd" in capsys.readouterr().out


def _robustbench_like(path, state):
    """A wrapped torch file with DataParallel prefixes, as RobustBench and others save them."""
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)


def test_finetune_from_plain_and_wrapped_state_dicts(tmp_path, capsys):
    torch.manual_seed(5)
    state = build_model("small-cnn").state_dict()
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pth"
    torch.save(state, plain)
    _robustbench_like(wrapped, state)
    for i, src in enumerate((plain, wrapped)):
        out = tmp_path / f"ft{i}"
        code = main(["finetune", "--weights", str(src), "--model", "small-cnn", "--strategy",
                     "pinf", "--epochs", "1", "--lr", "0", "--out", str(out), *TINY])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        got = load_file(out / "last.safetensors")
        for k, v in state.items():  # lr 0: the loaded weights come out unchanged
            assert torch.equal(got[k], v), k
    out = tmp_path / "ft"
    code = main(["finetune", "--weights", str(plain), "--model", "small-cnn", "--strategy",
                 "eat", "--epochs", "2", "--lr", "0.05", "--out", str(out), *TINY])  # fmt: skip
    assert code == 0
    log = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == [0.05, 0.005]  # divided by 10 at each epoch
    cfg = (out / "config.yaml").read_text()
    assert "name: finetune" in cfg and "name: sgd" in cfg
    assert main(["finetune", "--weights", str(tmp_path / "nope.pt"), "--model", "small-cnn",
                 "--out", str(tmp_path / "x"), *TINY]) == 2  # fmt: skip
    assert "not found" in capsys.readouterr().err
