"""Training under hostile input and failures (issue 11): divergence, bad values, full disks,
busy or unwritable output folders, torn logs. Every error is one line."""

from __future__ import annotations

import errno
import json
import os
import pickle
import sys
import types
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from _helpers import TINY_TRAINING, tiny_data, tiny_mlp
from unionrobust.cli.main import main
from unionrobust.errors import UnionRobustError
from unionrobust.outdir import FolderLock
from unionrobust.training import checkpoint as ckpt
from unionrobust.training.config import config_from_dict, load_config
from unionrobust.training.trainer import train

TINY = [*TINY_TRAINING, "--set", "eval.n=0", "--no-progress"]


def tiny_config(**sections):
    base = {
        "threats": "linf:0.1, l2:0.5, l1:2",
        "strategy": {"name": "pinf", "steps": 1},
        "data": {"batch_size": 8},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "schedule": {"name": "constant"},
        "training": {"epochs": 2, "progress": False, "seed": 1},
        "eval": {"n": 8},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return config_from_dict(base)


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------ non-finite training


def test_diverged_training_stops_and_is_never_saved_as_best(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(optimizer={"lr": 1e30})
    with pytest.raises(UnionRobustError, match=r"diverged.*lower optimizer\.lr"):
        train(cfg, out, model=tiny_mlp(), train_data=tiny_data(40))
    assert not (out / "best.safetensors").exists()
    assert not ckpt.has_checkpoint(out / "checkpoints", "best")


def test_diverged_training_is_a_one_line_cli_error(tmp_path, capsys):
    code = main(["train", "--config", "mnist-small-pinf", *TINY, "--set", "optimizer.name=sgd",
                 "--set", "optimizer.lr=1e30", "--out", str(tmp_path / "r")])  # fmt: skip
    assert "training diverged" in one_line_error(capsys, code)


class NanOnCall(nn.Module):
    """``tiny_mlp`` whose training forward number ``bad`` (0-based) returns NaN logits."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.inner, self.bad, self.calls = tiny_mlp(), bad, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls - 1 == self.bad:
                return out * float("nan")
        return out


def natural(**over):
    cfg = tiny_config(**over)
    cfg.strategy = {"name": "natural"}
    return cfg


def test_nonfinite_skip_drops_the_batch_and_error_stops(tmp_path):
    with pytest.raises(UnionRobustError, match=r"training\.nonfinite=skip"):
        train(natural(), None, model=NanOnCall(2), train_data=tiny_data(40))
    model = NanOnCall(2)
    result = train(natural(training={"nonfinite": "skip"}), tmp_path / "skip", model=model,
                   train_data=tiny_data(40))  # fmt: skip
    assert result.steps == 8  # the skipped batch still counts as a step (same batch order)
    assert result.history[-1]["skipped_batches"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    best = load_file(tmp_path / "skip" / "best.safetensors")
    assert all(torch.isfinite(v).all() for v in best.values())
    with pytest.raises(UnionRobustError, match="max_skipped = 0"):
        train(natural(training={"nonfinite": "skip", "max_skipped": 0}), None,
              model=NanOnCall(2), train_data=tiny_data(40))  # fmt: skip


def test_nonfinite_weights_are_never_best(tmp_path):
    class Poison:  # the weights become NaN after the last step of epoch 0 (its loss is finite)
        def on_step_end(self, trainer, epoch, i, step):
            if step == 4:
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(float("nan"))

    out = tmp_path / "run"
    with pytest.raises(UnionRobustError, match="weights are not finite"):
        train(natural(), out, model=tiny_mlp(), train_data=tiny_data(40), callbacks=[Poison()])
    assert not (out / "best.safetensors").exists()
    # the only checkpoint is the initial one (step 0), with finite weights
    weights, state, _ = ckpt.load_checkpoint(out / "checkpoints", "last")
    assert int(state["global_step"]) == 0
    assert all(torch.isfinite(v).all() for v in weights.values())


# ------------------------------------------------------------------ config values


@pytest.mark.parametrize(
    "section, key",
    [
        ({"optimizer": {"lr": float("nan")}}, "optimizer.lr"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr"),
        ({"optimizer": {"name": "adam", "betas": [2, 3]}}, "optimizer.betas[0]"),
        ({"optimizer": {"momentum": -0.5}}, "optimizer.momentum"),
        ({"optimizer": {"weight_decay": float("inf")}}, "optimizer.weight_decay"),
        ({"training": {"nonfinite": "ignore"}}, "training.nonfinite"),
        ({"training": {"warmup_epochs": float("nan")}}, "training.warmup_epochs"),
        ({"eval": {"suite": "nosuch"}}, "suite"),
        ({"data": {"batch_size": 0}}, "data.batch_size"),
    ],
)
def test_bad_values_fail_when_the_config_loads(section, key):
    with pytest.raises(UnionRobustError, match=key.replace("[", r"\[")) as info:
        tiny_config(**section)
    assert "\n" not in str(info.value)


def test_optimizer_values_from_the_cli(tmp_path, capsys):
    code = main(["finetune", "--weights", "x.pt", "--model", "small-cnn", "--lr", "-1",
                 "--out", str(tmp_path / "ft"), *TINY])  # fmt: skip
    assert "optimizer.lr" in one_line_error(capsys, code)
    code = main(["train", "--config", "mnist-small", "--set", "optimizer.lr=.nan", "--out",
                 str(tmp_path / "t"), *TINY])  # fmt: skip
    assert "optimizer.lr" in one_line_error(capsys, code)
    assert not (tmp_path / "t").exists()  # refused before the output folder is touched


@pytest.mark.parametrize("progress", [[], ["--no-progress"]])
def test_a_section_is_never_replaced_by_a_scalar(tmp_path, capsys, progress):
    code = main(["train", "--config", "mnist-small", "--set", "training=5", *progress,
                 "--out", str(tmp_path / "r")])  # fmt: skip
    assert "'training' is a config section" in one_line_error(capsys, code)
    for bad in ("model.options=3", "training=null", "eval="):
        with pytest.raises(UnionRobustError, match="is a config section"):
            load_config("mnist-small", [bad])
    cfg = load_config("mnist-small", ["strategy={name: max}", "model.options.in_channels=1"])
    assert cfg.strategy == {"name": "max"} and cfg.model.options == {"in_channels": 1}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_as_extra_data_is_a_one_line_error(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    bad = tmp_path / "extra.pt"
    bad.write_bytes(pickle.dumps({"x": Evil()}))
    code = main(["train", "--config", "mnist-small-pinf", *TINY, "--set", f"data.extra={bad}",
                 "--out", str(tmp_path / "r")])  # fmt: skip
    assert "cannot read extra data" in one_line_error(capsys, code)
    assert not (tmp_path / "pwned").exists()


def test_theory_negative_seed(capsys):
    code = main(["theory", "--seed", "-1", "--dim", "10", "--samples", "10", "--mix", "2"])
    assert "--seed" in one_line_error(capsys, code)


# ------------------------------------------------------------------ output folders


def test_output_folder_checks_before_any_work(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for cmd in (["train", "--config", "mnist-small-pinf"], ["compare", "--strategies", "pinf"]):
        code = main([*cmd, *TINY, "--out", str(f)])
        assert "is an existing file" in one_line_error(capsys, code)
    assert f.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_output_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for out in (ro, ro / "sub"):
            code = main(["train", "--config", "mnist-small-pinf", *TINY, "--out", str(out)])
            assert "cannot write to output folder" in one_line_error(capsys, code)
    finally:
        ro.chmod(0o755)


def test_a_busy_output_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with FolderLock(out):  # another run holds it
        for cmd in (["train", "--config", "mnist-small-pinf"],
                    ["compare", "--strategies", "pinf", "--jobs", "1"]):  # fmt: skip
            code = main([*cmd, *TINY, "--set", "training.epochs=1", "--out", str(out)])
            assert "in use by another run" in one_line_error(capsys, code)
    assert not (out / "config.yaml").exists() and not (out / "runs").exists()


def test_full_disk_is_a_one_line_error_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_fsync = os.fsync

    class DiskFull:  # after step 6 (checkpoints at steps 2, 4, 6), every fsync fails
        def on_step_end(self, trainer, epoch, i, step):
            if step == 6:

                def fsync(fd):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                monkeypatch.setattr(os, "fsync", fsync)

    cfg = natural(training={"checkpoint_every": 2, "epochs": 3})
    with pytest.raises(UnionRobustError, match=r"No space left on device.*--resume") as info:
        train(cfg, out, model=tiny_mlp(), train_data=tiny_data(40), callbacks=[DiskFull()])
    assert "\n" not in str(info.value)
    monkeypatch.setattr(os, "fsync", real_fsync)
    _, state, pointer = ckpt.load_checkpoint(out / "checkpoints", "last")
    assert pointer["step"] == 6 and state["global_step"] == 6
    assert not list((out / "checkpoints").glob(".*.tmp"))
    assert FolderLock(out).acquire().release() is None  # the failed run let go of the folder


def test_resume_tolerates_a_torn_last_log_line(tmp_path, capsys):
    out = tmp_path / "run"
    sets = [a for a in TINY if a != "--no-progress"] + ["--set", "training.progress=false"]
    cfg = load_config("mnist-small-pinf", [v for v in sets if v != "--set"])

    class KilledWritingEpoch1:  # the checkpoint is at the end of epoch 0
        def on_epoch_end(self, trainer, record):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, callbacks=[KilledWritingEpoch1()])
    log = out / "log.jsonl"
    first = log.read_text().splitlines()[0]
    log.write_text(first + "\n" + '{"epoch": 1, "st')  # torn while writing the next line
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    records = [json.loads(s) for s in log.read_text().splitlines()]
    assert records[0] == json.loads(first)
    assert [r["epoch"] for r in records] == list(range(cfg.training.epochs))
    log.write_text('{"epoch": 0, "st\n' + first + "\n")  # corrupt in the middle: an error
    code = main(["train", "--out", str(out), "--resume", "--no-progress"])
    assert "line 1 is corrupt" in one_line_error(capsys, code)


def test_a_run_saved_before_new_config_keys_still_resumes(tmp_path):
    out = tmp_path / "run"
    cfg = natural(training={"epochs": 1})
    train(cfg, out, model=tiny_mlp(), train_data=tiny_data(40))
    weights, state, pointer = ckpt.load_checkpoint(out / "checkpoints", "last")
    saved = json.loads(state["config"])
    del saved["training"]["nonfinite"], saved["training"]["max_skipped"]  # an older version
    state["config"] = json.dumps(saved)
    ckpt.save_checkpoint(out / "checkpoints", "last", weights, state,
                         epoch=pointer["epoch"], step=pointer["step"])  # fmt: skip
    result = train(cfg, out, resume=True, model=tiny_mlp(), train_data=tiny_data(40))
    assert result.epochs == 1
    changed = natural(training={"epochs": 1, "nonfinite": "skip"})
    with pytest.raises(UnionRobustError, match=r"'training\.nonfinite' differs"):
        train(changed, out, resume=True, model=tiny_mlp(), train_data=tiny_data(40))


class FakeWriter:
    """Stands in for ``torch.utils.tensorboard.SummaryWriter`` (records every call)."""

    made: ClassVar[list[FakeWriter]] = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, global_step):
        self.scalars.append((tag, value, global_step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_gets_each_epoch_when_installed(tmp_path, monkeypatch):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    FakeWriter.made.clear()
    out = tmp_path / "run"
    result = train(tiny_config(), out, model=tiny_mlp(), train_data=tiny_data(40))
    (writer,) = FakeWriter.made
    assert writer.log_dir == str(out / "tensorboard") and writer.closed
    got = {(tag, step): value for tag, value, step in writer.scalars}
    for record in result.history:
        step = record["step"]
        assert got[("train_loss", step)] == record["train_loss"]
        assert got[("union_acc", step)] == record["union_acc"]
        assert got[("threat/linf:0.1", step)] == record["threat:linf:0.1"]
        assert got[("strategy/attack_success", step)] == record["strategy_stats"]["attack_success"]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    train(tiny_config(), tmp_path / "plain", model=tiny_mlp(), train_data=tiny_data(40))
    assert len(FakeWriter.made) == 1 and not (tmp_path / "plain" / "tensorboard").exists()


def test_tensorboard_per_step_scalars_every_n_steps(tmp_path, monkeypatch):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    FakeWriter.made.clear()
    cfg = tiny_config(training={"tensorboard_every": 2})
    result = train(cfg, tmp_path / "run", model=tiny_mlp(), train_data=tiny_data(40))
    (writer,) = FakeWriter.made
    steps = sorted(step for tag, _, step in writer.scalars if tag == "step/train_loss")
    assert result.steps >= 4 and steps == list(range(2, result.steps + 1, 2))
    lrs = {value for tag, value, _ in writer.scalars if tag == "step/lr"}
    assert lrs == {0.1}  # the constant schedule's
    accs = [value for tag, value, _ in writer.scalars if tag == "step/train_acc"]
    assert all(0.0 <= a <= 1.0 for a in accs)
    with pytest.raises(UnionRobustError, match="tensorboard_every"):
        tiny_config(training={"tensorboard_every": -1}).validate()
