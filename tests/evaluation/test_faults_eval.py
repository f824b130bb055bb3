"""Issue 11, evaluation side: broken models, bad outputs and clumsy use give a one-line error or
an honest number, never a wrong one, and never lose a result."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import unionrobust as ur
from _helpers import Scaled, tiny_data, tiny_mlp
from unionrobust.attacks.base import misclassified
from unionrobust.cli import main as cli_main
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import evaluate, recheck
from unionrobust.outdir import FolderLock
from unionrobust.threats import Linf, Union, parse


@pytest.fixture(autouse=True)
def only_our_commands(monkeypatch):
    monkeypatch.setattr(cli_main, "COMMANDS", ["eval", "attack"])


def cli(*argv: str) -> int:
    return cli_main.main(list(argv))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


class NaNWhere(nn.Module):
    """Predicts class 0 with a margin, but returns NaN logits on chosen inputs."""

    def __init__(self, rule) -> None:
        super().__init__()
        self.rule = rule
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 10) + self.w
        logits[:, 0] = 5.0 + 1e-3 * x.flatten(1).sum(1)
        bad = self.rule(x)
        return torch.where(bad.reshape(-1, 1), torch.full_like(logits, float("nan")), logits)


def quantised(x: torch.Tensor) -> torch.Tensor:
    """True where an image is not on the 1/255 grid (an attacked image)."""
    return ((x * 255 - (x * 255).round()).abs() > 1e-3).flatten(1).any(1)


def grid_data(n: int = 12):
    x, _ = tiny_data(n)
    return (x * 255).round() / 255, torch.zeros(n, dtype=torch.int64)


# --------------------------------------------------------------------------- non-finite logits
def test_nan_logits_everywhere_is_an_error_not_robustness():
    x, y = tiny_data(20)
    for model in (Scaled(tiny_mlp(), float("nan")), tiny_mlp()):
        if not isinstance(model, Scaled):
            with torch.no_grad():
                model[1].weight.fill_(float("nan"))
        with pytest.raises(UnionRobustError, match="non-finite logits") as info:
            evaluate(model, x, y, "linf:0.1", suite="quick", progress=False)
        assert "\n" not in str(info.value)


def test_isolated_nonfinite_rows_count_as_not_correct_and_are_reported():
    x, y = grid_data(12)
    x[:3] = 1.0  # three images with NaN logits
    model = NaNWhere(lambda v: v.flatten(1).min(1).values > 0.99)
    report = evaluate(model, x, y, "linf:0.01", suite="quick", progress=False)
    assert report.clean_correct.tolist() == [False] * 3 + [True] * 9
    assert report.nonfinite == 3 and report.to_dict()["nonfinite_logits"] == 3


def test_nan_logits_at_the_adversarial_point_break_it():
    """A model finite on clean images and NaN on every perturbed one is not robust."""
    x, y = grid_data(8)
    model = NaNWhere(quantised)
    assert misclassified(torch.full((2, 10), float("nan")), torch.zeros(2, dtype=torch.long)).all()
    threat = Linf(0.1)
    broken, _ = recheck(model, threat, x, y, (x + 0.05).clamp(0, 1))
    assert broken.all()
    report = evaluate(model, x, y, threat, suite="quick", progress=False)
    assert report.clean_accuracy == 1.0 and report.union_accuracy == 0.0


# --------------------------------------------------------------------------- model errors
class Raising(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom\nsecond line")


class Tupled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_mlp()

    def forward(self, x):
        return self.inner(x), x


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        (Raising(), "the model's forward failed"),
        (Tupled(), "got tuple"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10)), "forward failed"),
    ],
)
def test_broken_forward_is_one_line(model, needle):
    x, y = tiny_data(6)
    with pytest.raises(UnionRobustError, match=needle) as info:
        evaluate(model, x, y, "linf:0.1", suite="quick", progress=False)
    assert "\n" not in str(info.value)


def _module_file(tmp_path, body: str):
    src = tmp_path / "net.py"
    src.write_text("import torch\nfrom torch import nn\n" + body)
    return src


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("def build():\n    raise KeyError('no such layer')\n", "build() failed"),
        (
            "class M(nn.Module):\n    def forward(self, x):\n        return x.sum(), x\n"
            "def build():\n    return M()\n",
            "got tuple",
        ),
        ("def build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())\n", "forward"),
        (
            "def build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n"
            "def build_nan():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10),"
            " nn.Dropout(0), Nan())\n"
            "class Nan(nn.Module):\n    def forward(self, x):\n        return x * float('nan')\n",
            "non-finite logits",
        ),
    ],
)
def test_cli_broken_user_model_is_one_line(tmp_path, capsys, body, needle):
    src = _module_file(tmp_path, body)
    factory = "build_nan" if "build_nan" in body else "build"
    argv = ["eval", "--model-module", f"{src}:{factory}", "--n", "20", "--suite", "quick"]
    assert cli(*argv, "--no-progress") == 2
    assert needle in one_line_error(capsys)
    assert cli("attack", *argv[1:5], "--no-progress") == 2
    assert needle in one_line_error(capsys)


# --------------------------------------------------------------------------- inputs
def test_weights_directory_and_missing_weights(tmp_path, capsys):
    assert cli("eval", "--model", "small-cnn", "--weights", str(tmp_path), "--n", "5") == 2
    err = one_line_error(capsys)
    assert "is a directory" in err and ".safetensors" in err
    for command in ("eval", "attack"):
        assert cli(command, "--model", "small-cnn", "--n", "5", "--no-progress") == 2
        err = one_line_error(capsys)
        assert "--weights" in err and "--untrained" in err
    argv = ["--model", "small-cnn", "--untrained", "--n", "5", "--no-progress"]
    assert cli("eval", *argv, "--suite", "quick", "--threats", "linf:0.1") == 0
    assert cli("attack", *argv, "--threats", "linf:0.1", "--steps", "2") == 0


def test_too_large_n_is_an_error_in_the_cli_and_the_api(capsys):
    argv = ["--model", "small-cnn", "--untrained", "--n", "5000", "--no-progress"]
    for command in ("eval", "attack"):
        assert cli(command, *argv) == 2
        err = one_line_error(capsys)
        assert "5000" in err and "1000" in err
    x, y = tiny_data(10)
    with pytest.raises(UnionRobustError, match="only 10"):
        evaluate(tiny_mlp(), x, y, "linf:0.1", suite="quick", n=11, progress=False)


def test_duplicate_threats_are_refused():
    for make in (
        lambda: parse("linf:0.3, l2:2, linf:3/10"),
        lambda: Union([Linf(0.3), Linf(0.3)]),
        lambda: Linf(0.3) | parse("l2:1, linf:0.3"),
    ):
        with pytest.raises(UnionRobustError, match=r"duplicate threat 'linf:0\.3'"):
            make()
    assert len(parse("linf:0.1, linf:0.3")) == 2  # other radii are other threats


def test_evaluate_accepts_dataloaders_and_iterables_of_batches():
    x, y = tiny_data(23)
    model = tiny_mlp()
    ref = evaluate(model, x, y, "linf:0.1, l2:0.5", suite="quick", progress=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    for data in (loader, ((x[i : i + 4], y[i : i + 4]) for i in range(0, 23, 4))):
        got = evaluate(model, data, threats="linf:0.1, l2:0.5", suite="quick", progress=False)
        assert torch.equal(got.broken, ref.broken) and torch.equal(got.labels, ref.labels)
    part = evaluate(model, loader, threats="linf:0.1", suite="quick", n=7, progress=False)
    assert part.n_examples == 7
    with pytest.raises(UnionRobustError, match="batches of"):
        evaluate(model, [(x[:2],)], threats="linf:0.1", suite="quick", progress=False)


# --------------------------------------------------------------------------- output folders
EVAL = ["eval", "--model-module", "MODULE", "--n", "12", "--suite", "quick", "--batch-size", "4",
        "--threats", "linf:0.1, l2:1", "--no-progress"]  # fmt: skip


@pytest.fixture
def eval_argv(tmp_path):
    src = _module_file(
        tmp_path,
        "def build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n",
    )
    return [a.replace("MODULE", f"{src}:build") for a in EVAL]


def test_rerun_into_an_existing_out_is_refused_unless_resume_or_overwrite(
    eval_argv, tmp_path, capsys
):
    out = tmp_path / "run"
    assert cli(*eval_argv, "--out", str(out)) == 0
    first = (out / "report.json").read_text()
    capsys.readouterr()
    assert cli(*eval_argv, "--seed", "1", "--out", str(out)) == 2
    err = one_line_error(capsys)
    assert "--resume" in err and "--overwrite" in err
    assert (out / "report.json").read_text() == first
    assert cli(*eval_argv, "--seed", "1", "--out", str(out), "--overwrite") == 0
    assert json.loads((out / "report.json").read_text())["seed"] == 1
    x, y = tiny_data(4)
    with pytest.raises(UnionRobustError, match="overwrite=True"):
        evaluate(tiny_mlp(), x, y, "linf:0.1", suite="quick", out_dir=out, progress=False)
    with pytest.raises(UnionRobustError, match="not both"):
        evaluate(tiny_mlp(), x, y, "linf:0.1", out_dir=out, resume=True, overwrite=True)


def test_a_locked_out_is_refused_by_eval_and_attack(eval_argv, tmp_path, capsys):
    out = tmp_path / "run"
    with FolderLock(out):
        assert cli(*eval_argv, "--out", str(out)) == 2
        assert "in use by another run" in one_line_error(capsys)
        assert cli("attack", *eval_argv[1:5], "--no-progress", "--out", str(out)) == 2
        assert "in use by another run" in one_line_error(capsys)
        x, y = tiny_data(4)
        with pytest.raises(UnionRobustError, match="in use"):
            evaluate(tiny_mlp(), x, y, "linf:0.1", suite="quick", out_dir=out, progress=False)
    assert not (out / "verdicts.jsonl").exists()


def test_bad_out_paths_fail_before_any_work(eval_argv, tmp_path, capsys, monkeypatch):
    import unionrobust.evaluation as ev

    calls = []
    monkeypatch.setattr("unionrobust.cli.cmd_eval.evaluate", lambda *a, **k: calls.append(a))
    monkeypatch.setattr("unionrobust.cli.cmd_attack.attack_report", lambda *a, **k: calls.append(a))
    assert ev.attack_report is not None
    afile = tmp_path / "a_file"
    afile.write_text("keep me")
    attack = ["attack", *eval_argv[1:5], "--no-progress"]
    for argv in (eval_argv, attack):
        assert cli(*argv, "--out", str(afile)) == 2
        assert "is an existing file" in one_line_error(capsys)
    real_open = os.open

    def refusing(path, *a, **k):
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr("unionrobust.outdir.os.open", refusing)
    for argv in (eval_argv, attack):
        assert cli(*argv, "--out", str(tmp_path / "ro")) == 2
        assert "Permission denied" in one_line_error(capsys)
    assert calls == [] and afile.read_text() == "keep me"


def test_attack_rerun_into_an_existing_out_is_refused(eval_argv, tmp_path, capsys):
    out = tmp_path / "adv"
    attack = ["attack", *eval_argv[1:5], "--no-progress", "--steps", "2", "--out", str(out)]
    assert cli(*attack) == 0
    capsys.readouterr()
    assert cli(*attack) == 2
    assert "--overwrite" in one_line_error(capsys)
    assert cli(*attack, "--overwrite") == 0


def test_full_disk_is_one_line_and_loses_nothing(eval_argv, tmp_path, capsys, monkeypatch):
    ref = tmp_path / "ref"
    assert cli(*eval_argv, "--out", str(ref)) == 0
    out = tmp_path / "run"
    real_fsync, count = os.fsync, [0]

    def full(fd):
        count[0] += 1
        if count[0] > 4:  # the header and three records fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    capsys.readouterr()
    assert cli(*eval_argv, "--out", str(out)) == 2
    err = one_line_error(capsys)
    assert "No space left on device" in err and "--resume" in err
    monkeypatch.setattr(os, "fsync", real_fsync)
    lines = (out / "verdicts.jsonl").read_text().splitlines()
    assert len(lines) >= 4
    assert cli(*eval_argv, "--out", str(out), "--resume") == 0
    got, want = (json.loads((d / "report.json").read_text()) for d in (out, ref))
    assert (
        got["per_threat"] == want["per_threat"] and got["union_accuracy"] == want["union_accuracy"]
    )


def test_a_verdict_record_missing_a_key_is_one_line_on_resume(eval_argv, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(*eval_argv, "--out", str(out)) == 0
    log = out / "verdicts.jsonl"
    lines = log.read_text().splitlines()
    rec = json.loads(lines[-2])
    del rec["broken" if rec["type"] == "attack" else "correct"]
    lines[-2] = json.dumps(rec)
    log.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert cli(*eval_argv, "--out", str(out), "--resume") == 2
    err = one_line_error(capsys)
    assert "line" in err and "missing" in err and "--overwrite" in err


# --------------------------------------------------------------------------- library functions
def test_attack_report_is_a_library_function_with_the_engine_checks():
    x, y = tiny_data(16)
    model = tiny_mlp()
    rep = ur.attack_report(model, x, y, "pgd", "linf:0.1, l2:0.5", steps=3, progress=False)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        pred = model(rep.x_adv).argmax(1)
    assert torch.equal(rep.clean_correct, clean)
    assert torch.equal(rep.success, pred != y)
    d = rep.to_dict()
    assert d["robust_accuracy"] == pytest.approx(float((clean & ~rep.success).double().mean()))
    with pytest.raises(UnionRobustError, match="non-finite logits"):
        ur.attack_report(Scaled(model, float("nan")), x, y, "pgd", "linf:0.1", progress=False)
    xg, yg = grid_data(8)
    nan_adv = ur.attack_report(NaNWhere(quantised), xg, yg, "pgd", "linf:0.1", progress=False)
    assert nan_adv.to_dict()["robust_accuracy"] == 0.0


def test_model_and_data_loaders_are_library_functions(tmp_path):
    x, _, classes = ur.load_data("mnist-embedded", "test", n=30)
    assert x.shape == (30, 1, 28, 28) and classes == 10
    with pytest.raises(UnionRobustError, match="untrained=True"):
        ur.load_model("small-cnn", num_classes=10)
    model = ur.load_model("small-cnn", untrained=True, num_classes=10)
    path = tmp_path / "w.safetensors"
    ur.save_weights(model, path)
    again = ur.load_model("small-cnn", weights=path)
    assert torch.equal(again(x[:2]), model.eval()(x[:2]))
    src = _module_file(tmp_path, "def build():\n    return nn.Linear(2, 2)\n")
    assert isinstance(ur.load_model(module=f"{src}:build"), nn.Linear)


def test_locked_folder_is_reentrant_in_one_process_only_through_locked_folder(tmp_path):
    from unionrobust.outdir import locked_folder

    out = tmp_path / "run"
    with locked_folder(out) as outer:
        with locked_folder(tmp_path / "." / "run") as inner:
            assert inner is outer and outer.held
        assert outer.held  # the nested exit did not release it
        with pytest.raises(UnionRobustError, match="in use"):
            FolderLock(out).acquire()
    FolderLock(out).acquire().release()
