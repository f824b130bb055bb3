"""Issue 18, every command's output folder and checks: lock → validate → call → format → write.

``affine``, ``spatial`` and ``minmax`` own their ``--out`` as ``eval`` and ``attack`` do (lock,
refusal to replace, writability checked before any work); ``eval --overwrite`` never leaves an
old run's files next to a new one; a non-finite model is an error in every command; options
are checked before the first forward pass.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from unionrobust.cli import main as cli_main
from unionrobust.models import build_model, save_weights

#: tiny runs of the three commands that used to write --out on their own
TINY = {
    "affine": ["affine", "--model", "mlp", "--threats", "linf:0.1, l1:3", "--betas", "0,1",
               "--steps", "2", "--n", "4", "--untrained", "--no-progress"],
    "spatial": ["spatial", "--model", "mlp", "--threat", "rt:10:1", "--n-rot", "3",
                "--n-trans", "3", "--n", "4", "--untrained", "--no-progress"],
    "minmax": ["minmax", "universal", "--model", "mlp", "--group-size", "2", "--n", "4",
               "--steps", "2", "--untrained", "--no-progress"],
    "attack": ["attack", "--model", "mlp", "--threats", "linf:0.1", "--steps", "2", "--n", "4",
               "--untrained", "--no-progress"],
}  # fmt: skip
NAN_MODULE = (
    "import torch\n"
    "class NaNNet(torch.nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.lin = torch.nn.Linear(784, 10)\n"
    "    def forward(self, x):\n"
    "        return self.lin(x.flatten(1)) * float('nan')\n"
    "def build():\n"
    "    return NaNNet()\n"
)


def cli(*argv: str) -> int:
    return cli_main.main(list(argv))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def no_work(monkeypatch):
    """Make loading the model an error: a command that reaches it has started its work."""

    def refuse(*args, **kwargs):
        raise AssertionError("the command started its work")

    for name in ("cmd_affine", "cmd_spatial", "cmd_minmax", "cmd_eval", "cmd_attack"):
        module = __import__(f"unionrobust.cli.{name}", fromlist=["x"])
        monkeypatch.setattr(module, "load_model_and_data", refuse)


# --------------------------------------------------------------------------- one run per folder
@pytest.mark.parametrize("command", sorted(TINY))
def test_an_earlier_run_is_not_replaced_without_overwrite(command, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(*TINY[command], "--out", str(out)) == 0
    before = (out / "report.json").read_bytes()
    capsys.readouterr()
    assert cli(*TINY[command], "--out", str(out), "--seed", "3") == 2
    err = one_line_error(capsys)
    assert "already holds a run" in err and "--overwrite" in err
    assert (out / "report.json").read_bytes() == before
    assert cli(*TINY[command], "--out", str(out), "--seed", "3", "--overwrite") == 0
    assert json.loads((out / "report.json").read_text())


def test_a_killed_attack_overwrite_never_mixes_two_runs(tmp_path, capsys, monkeypatch):
    import importlib

    module = importlib.import_module("unionrobust.evaluation.attack_report")
    out = tmp_path / "run"
    assert cli(*TINY["attack"], "--out", str(out)) == 0
    real = module.save_file

    def killed(*args, **kwargs):  # dies writing the new run's first file
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_file", killed)
    assert cli(*TINY["attack"], "--out", str(out), "--n", "3", "--overwrite") == 130
    assert not (out / "report.json").exists()  # the old report is not left beside new tensors
    monkeypatch.setattr(module, "save_file", real)
    capsys.readouterr()


@pytest.mark.parametrize("command", sorted(TINY))
def test_an_unwritable_out_is_refused_before_any_work(command, tmp_path, capsys, monkeypatch,
                                                      no_work):  # fmt: skip
    out = tmp_path / "ro"
    out.mkdir()
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # what a read-only folder does to every write
        if dir is not None and Path(dir).resolve() == out.resolve():
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert cli(*TINY[command], "--out", str(out)) == 2
    err = one_line_error(capsys)
    assert "cannot write to output folder" in err and "Permission denied" in err


@pytest.mark.parametrize("command", [*sorted(TINY), "eval"])
def test_an_empty_out_is_an_error_not_the_current_folder(command, tmp_path, capsys, monkeypatch,
                                                         no_work):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    argv = TINY.get(command, ["eval", "--model", "mlp", "--n", "4", "--suite", "quick"])
    assert cli(*argv, "--out", "") == 2
    assert "--out" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- eval --overwrite
def _mlp_weights(tmp_path: Path, nan: bool = False) -> Path:
    model = build_model("mlp")
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    path = tmp_path / ("nan.safetensors" if nan else "mlp.safetensors")
    save_weights(model, path)
    return path


def test_a_killed_eval_overwrite_leaves_no_file_of_the_old_run(tmp_path, capsys, monkeypatch):
    from unionrobust.evaluation import engine

    weights, out = _mlp_weights(tmp_path), tmp_path / "run"
    argv = ["eval", "--model", "mlp", "--weights", str(weights), "--suite", "quick",
            "--threats", "linf:0.05", "--no-progress", "--out", str(out)]  # fmt: skip
    assert cli(*argv, "--n", "6") == 0
    old = {p.name for p in out.iterdir()}
    assert {"report.json", "report.md", "report.html", "verdicts.csv"} <= old

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the new run dies after its clean pass

    monkeypatch.setattr(engine, "_attack_passes", killed)
    assert cli(*argv, "--n", "8", "--overwrite") == 130
    left = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert left == {"verdicts.jsonl"}  # the new run's log only: it resumes, nothing is mixed
    header = json.loads((out / "verdicts.jsonl").read_text().splitlines()[0])
    assert header["config"]["n"] == 8
    monkeypatch.undo()
    capsys.readouterr()
    assert cli(*argv, "--n", "8", "--resume") == 0
    assert json.loads((out / "report.json").read_text())["n_examples"] == 8


# --------------------------------------------------------------------------- non-finite models
@pytest.mark.parametrize(
    "argv",
    [
        TINY["spatial"],
        TINY["affine"],
        ["affine", "--model", "mlp", "--threats", "linf:0.1, rt:10:1", "--k", "2",
         "--steps", "2", "--n", "4", "--no-progress"],
        TINY["minmax"],
        ["minmax", "transforms", "--model", "mlp", "--transforms", "ori,flh", "--n", "4",
         "--steps", "2", "--no-progress"],
    ],
    ids=["spatial", "affine-lp", "affine-rt", "minmax-universal", "minmax-transforms"],
)  # fmt: skip
def test_an_all_nan_model_is_an_error_in_every_command(argv, tmp_path, capsys):
    src = tmp_path / "nan_net.py"
    src.write_text(NAN_MODULE)
    argv = [a for a in argv if a != "--untrained"]
    at = argv.index("--model")
    argv[at : at + 2] = ["--model-module", f"{src}:build"]
    assert cli(*argv) == 2
    assert "non-finite" in one_line_error(capsys)


def test_an_ensemble_with_one_nan_member_is_an_error(tmp_path, capsys):
    good, bad = _mlp_weights(tmp_path), _mlp_weights(tmp_path, nan=True)
    code = cli("minmax", "ensemble", "--ensemble", f"mlp={good}, mlp={bad}", "--n", "4",
               "--steps", "2", "--no-progress")  # fmt: skip
    assert code == 2
    assert "non-finite" in one_line_error(capsys)


# --------------------------------------------------------------------------- options before work
def test_a_curve_attack_that_cannot_run_is_refused_before_the_evaluation(tmp_path, capsys,
                                                                         no_work):  # fmt: skip
    out = tmp_path / "run"
    code = cli("eval", "--model", "mlp", "--n", "4", "--suite", "quick", "--threats", "linf:0.1",
               "--curves", "0.5,1,1.5", "--curve-attack", "ddn", "--out", str(out))  # fmt: skip
    assert code == 2
    assert "ddn" in one_line_error(capsys).lower()
    assert not (out / "report.json").exists()


# --------------------------------------------------------------------------- re-checked verdicts
class Boastful:
    """Wraps an attack and claims success on every point: only the re-check may decide."""

    def __init__(self, inner) -> None:
        self.inner, self.threat, self.name = inner, inner.threat, inner.name

    @property
    def __class__(self):  # isinstance checks see the wrapped attack
        return type(self.inner)

    def __call__(self, model, x, y, example_ids=None):
        result = self.inner(model, x, y, example_ids=example_ids)
        result.success = torch.ones_like(result.success)
        return result


def _tiny_model_and_data():
    from _helpers import tiny_data, tiny_mlp

    x, _ = tiny_data(12)
    model = tiny_mlp()
    with torch.no_grad():
        y = model(x).argmax(1)  # every point correct: only attacks can break them
    return model, x, y


def test_spatial_report_counts_rechecked_verdicts_not_the_attacks_claims():
    from unionrobust.attacks.spatial import GridAttack
    from unionrobust.evaluation.spatial_report import spatial_report
    from unionrobust.threats import RotationTranslation

    model, x, y = _tiny_model_and_data()
    atk = GridAttack(RotationTranslation(10, 1, 3, 3))
    honest = spatial_report(model, x, y, attack=atk, batch_size=5, progress=False)
    boast = spatial_report(model, x, y, attack=Boastful(atk), batch_size=5, progress=False)
    assert torch.equal(honest.broken, boast.broken)
    assert boast.rejected == int((~honest.broken).sum()) > 0
    assert honest.to_dict()["robust_accuracy"] == float(honest.robust.double().mean())


def test_affine_report_counts_rechecked_verdicts_not_the_attacks_claims(monkeypatch):
    from unionrobust.evaluation import affine_report as module

    model, x, y = _tiny_model_and_data()
    kw = dict(k=2, steps=2, batch_size=5, progress=False)
    honest = module.affine_report(model, x, y, "linf:0.02, l1:0.5", [0.0, 1.0], **kw)
    real = module.affine_attack
    monkeypatch.setattr(module, "affine_attack", lambda *a, **k: Boastful(real(*a, **k)))
    boast = module.affine_report(model, x, y, "linf:0.02, l1:0.5", [0.0, 1.0], **kw)
    for b in (0.0, 1.0):
        assert torch.equal(honest.robust[b], boast.robust[b])
    assert boast.rejected > 0 and honest.rejected == 0
    assert honest.union_accuracy == float((honest.robust[0.0] & honest.robust[1.0]).double().mean())


# --------------------------------------------------------------------------- public names
def test_public_names_are_unambiguous_with_deprecated_aliases():
    import typing

    import unionrobust as ur
    from unionrobust.threats import Union

    namespace: dict = {}
    exec("from typing import Union\nfrom unionrobust import *", namespace)
    assert namespace["Union"] is typing.Union  # a star import no longer shadows typing.Union
    assert namespace["ThreatUnion"] is Union and "get_model" not in ur.__all__
    with pytest.warns(DeprecationWarning, match="ThreatUnion"):
        assert ur.Union is Union
    with pytest.warns(DeprecationWarning, match="load_model"):
        assert ur.get_model is not None
    with pytest.raises(AttributeError):
        ur.no_such_name  # noqa: B018
    from unionrobust.evaluation import engine
    from unionrobust.evaluation.inputs import read_examples

    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
    assert "as_tensors" not in engine.__all__
    with pytest.warns(DeprecationWarning, match="read_examples"):
        old = engine.as_tensors(x, y)
    assert all(torch.equal(a, b) for a, b in zip(old, read_examples(x, y), strict=True))
    from unionrobust import reporting

    assert "write_report" not in reporting.__all__ and callable(reporting.write_report)


def test_load_model_is_the_one_loader(tmp_path):
    import unionrobust as ur
    from unionrobust.errors import UnionRobustError

    with pytest.raises(UnionRobustError, match="untrained=True"):
        ur.load_model("small-cnn", num_classes=10)
    model = ur.load_model("small-cnn", untrained=True, num_classes=10)
    path = tmp_path / "w.safetensors"
    ur.save_weights(model, path)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(ur.load_model("small-cnn", path)(x), model(x))
    src = tmp_path / "net.py"
    src.write_text("import torch\ndef build():\n    return torch.nn.Linear(2, 2)\n")
    assert isinstance(ur.load_model(module=f"{src}:build"), torch.nn.Linear)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--model", "mlp", "--n", "4", "--suite", "quick", "--cifar10c", "nowhere"],
         "does not exist"),
        (["eval", "--model", "mlp", "--n", "4", "--suite", "quick", "--curves", "1",
          "--curve-attack", "nope"], "unknown attack 'nope'"),
        (["minmax", "universal", "--model", "mlp", "--n", "4", "--fixed-weights", "1,-1"],
         "weights"),
    ],
)  # fmt: skip
def test_other_late_options_are_refused_before_any_work(argv, message, capsys, no_work):
    assert cli(*argv) == 2
    assert message in one_line_error(capsys)
