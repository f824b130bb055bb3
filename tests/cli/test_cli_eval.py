"""`unionrobust eval` and `unionrobust attack` end to end, and their one-line errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from unionrobust.cli import main as cli_main
from unionrobust.data import as_tensors, get_dataset
from unionrobust.evaluation import evaluate
from unionrobust.models import build_model, load_weights, save_weights
from unionrobust.threats import parse

THREATS = "linf:0.1, l2:1, l1:5"


@pytest.fixture(autouse=True)
def only_our_commands(monkeypatch):
    """Other sub-commands are not under test here (and may be mid-development)."""
    monkeypatch.setattr(cli_main, "COMMANDS", ["eval", "attack"])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """small-cnn fitted for a few steps on embedded MNIST (so some points are correct)."""
    torch.manual_seed(0)
    model = build_model("small-cnn")
    x, y = as_tensors(get_dataset("mnist-embedded", "train"), 256)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for i in range(0, 256, 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    save_weights(model, path)
    return path


def cli(*argv: str) -> int:
    return cli_main.main(list(argv))


def on_fitted(command: str, weights, *extra: str) -> int:
    """`unionrobust COMMAND` on the fitted small-cnn against THREATS, without progress bars."""
    return cli(command, "--model", "small-cnn", "--weights", str(weights), "--threats", THREATS,
               "--no-progress", *extra)  # fmt: skip


def eval_quick(weights, out, *extra: str) -> int:
    """`unionrobust eval` of the fitted small-cnn on 20 points with the quick suite."""
    return on_fitted("eval", weights, "--n", "20", "--suite", "quick", "--batch-size", "8",
                     "--out", str(out), *extra)  # fmt: skip


def test_eval_end_to_end_matches_the_api(weights, tmp_path, capsys):
    out = tmp_path / "run"
    code = eval_quick(weights, out)
    assert code == 0
    screen = capsys.readouterr().out
    assert "union (1 - R_max)" in screen and "l1:5" in screen and "report.json" in screen
    report = json.loads((out / "report.json").read_text())
    for key in (
        "clean_accuracy",
        "union_accuracy",
        "average_accuracy",
        "per_threat",
        "n_examples",
        "suite",
        "seed",
        "version",
        "per_attack",
    ):
        assert key in report
    assert report["n_examples"] == 20 and report["suite"] == "quick"
    assert report["meta"]["model"] == "small-cnn"
    rows = list(csv.DictReader((out / "verdicts.csv").open()))
    assert len(rows) == 20
    assert sum(int(r["robust[union]"]) for r in rows) / 20 == pytest.approx(
        report["union_accuracy"]
    )
    assert sum(int(r["clean_correct"]) for r in rows) / 20 == pytest.approx(
        report["clean_accuracy"]
    )
    assert report["clean_accuracy"] > 0.3  # the model was fitted; the cascade had work to do
    # the same evaluation through the Python API gives the same verdicts
    model = build_model("small-cnn")
    load_weights(model, weights)
    x, y = as_tensors(get_dataset("mnist-embedded", "test"), 20)
    api = evaluate(model, x, y, threats=THREATS, suite="quick", batch_size=8, progress=False)
    assert api.union_robust.int().tolist() == [int(r["robust[union]"]) for r in rows]
    assert api.to_dict()["per_threat"] == report["per_threat"]

    # --resume of the finished run recomputes nothing and reports the same numbers
    assert eval_quick(weights, out, "--resume") == 0
    again = json.loads((out / "report.json").read_text())
    assert again["per_threat"] == report["per_threat"]
    assert again["union_accuracy"] == report["union_accuracy"]
    # resuming with other settings is refused in one line
    assert eval_quick(weights, out, "--resume", "--seed", "3") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot resume" in err and "\n" not in err


def test_eval_of_a_user_module(tmp_path, capsys):
    src = tmp_path / "my_net.py"
    src.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(1)\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))\n"
    )
    code = cli(
        "eval",
        "--model-module",
        f"{src}:build",
        "--n",
        "12",
        "--suite",
        "quick",
        "--threats",
        "linf:0.05",
        "--no-progress",
        "--format",
        "plain",
    )
    assert code == 0
    assert "linf:0.05" in capsys.readouterr().out
    assert cli("eval", "--model-module", f"{src}:nothing", "--n", "5") == 2
    assert "no function 'nothing'" in capsys.readouterr().err


def test_attack_end_to_end(weights, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "adv"
    code = on_fitted(
        "attack", weights, "--n", "16", "--attack", "pgd", "--steps", "10", "--out", str(out)
    )
    assert code == 0
    screen = capsys.readouterr().out
    assert "success rate" in screen and "robust accuracy  ≤ " in screen
    assert "≤: one attack (pgd)" in screen  # one attack's number is labelled as such
    report = json.loads((out / "report.json").read_text())
    assert report["upper_bound"] is True and "upper bound" in report["upper_bound_note"]
    saved = load_file(str(out / "adversarial.safetensors"))
    x, y = as_tensors(get_dataset("mnist-embedded", "test"), 16)
    assert torch.equal(saved["y"], y)
    xa, ok, which = saved["x_adv"], saved["success"].bool(), saved["threat_index"]
    assert xa.shape == x.shape and xa.min() >= 0 and xa.max() <= 1
    union = parse(THREATS)
    assert union.contains(xa - x, x).all()
    model = build_model("small-cnn")
    load_weights(model, weights)
    with torch.no_grad():
        pred = model.eval()(xa).argmax(1)
        clean = model(x).argmax(1) == y
    assert torch.equal(ok, pred != y)  # success is exactly misclassification of the saved x_adv
    for i, m in enumerate(union):
        sel = which == i
        if sel.any():
            assert m.contains((xa - x)[sel], x[sel]).all()
    assert report["robust_accuracy"] == pytest.approx(float((clean & ~ok).double().mean()))
    assert report["success_rate"] == pytest.approx(float(ok[clean].double().mean()))
    assert report["success_rate"] > 0


@pytest.mark.parametrize("name", ["msd", "msd-1g"])
def test_attack_msd(name, weights, capsys):
    assert on_fitted("attack", weights, "--n", "8", "--attack", name, "--steps", "5") == 0
    assert f"attack {name}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["eval", "--model", "small-cnn", "--n", "0"], "--n must be positive"),
        (["eval", "--model", "small-cnn", "--n", "ten"], "--n must be a whole number"),
        (["eval", "--model", "small-cnn", "--suite", "strong"], "unknown suite"),
        (["eval", "--model", "small-cnn", "--threats", "l3:1"], "unknown norm"),
        (["eval", "--model", "small-cnn", "--threats", "linf:abc"], "not a number"),
        (["eval", "--model", "resnet1000"], "unknown model"),
        (["eval", "--model", "small-cnn", "--data", "imagenet21k"], "unknown dataset"),
        (["eval", "--model", "small-cnn", "--weights", "/no/such/file.pt"], "not found"),
        (["eval"], "give exactly one of --model"),
        (["eval", "--model", "small-cnn", "--resume"], "--resume needs --out"),
        (["eval", "--model", "small-cnn", "--batch-size", "-1"], "--batch-size"),
        (["eval", "--model", "small-cnn", "--format", "html"], "invalid choice"),
        (["attack", "--model", "small-cnn", "--attack", "deepfool9"], "unknown attack"),
        (["attack", "--model", "small-cnn", "--steps", "0"], "--steps must be positive"),
        (["attack", "--model", "small-cnn", "--attack", "fgsm", "--restarts", "2"], "restarts"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) if "--format" in argv else _no_raise() as info:
        code = cli(*argv)
    if info is not None and getattr(info, "value", None) is not None:
        code = info.value.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert len(err.splitlines()) == 1, err


class _no_raise:
    value = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("command", ["eval", "attack"])
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli(command, "--help")
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"unionrobust {command} --model" in text
    assert "--threats" in text and "--out" in text
