"""RobustBench models by name: a tiny fake zoo (always runs) and the real package (if installed)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest
import torch
from torch import nn

import unionrobust as ur
from unionrobust.cli import main as cli_main
from unionrobust.errors import UnionRobustError
from unionrobust.models import robustbench as rb
from unionrobust.models import robustbench_zoo as rb_zoo


class TinyNet(nn.Module):
    """A zoo-style architecture: normalisation constants as buffers, then conv + linear."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.register_buffer("mu", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("sigma", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.fc = nn.Linear(width * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv((x - self.mu) / self.sigma)).flatten(1))


class TinyEnsemble(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.models = nn.ModuleList([TinyNet(), TinyNet(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(m(x) for m in self.models) / 2


ZOO = {
    "cifar10": {
        "Linf": {
            "Tiny2024": {"model": TinyNet, "gdrive_id": "abc"},
            "TinyEnsemble2024": {"model": TinyEnsemble, "gdrive_id": ["e0", "e1"]},
        },
        "L2": {"Tiny2024L2": {"model": lambda: TinyNet(2), "gdrive_id": "def"}},
    }
}


def trained_state(seed: int = 0, width: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return TinyNet(width).state_dict()


def data(n: int = 12):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def write_rb_checkpoint(root, name: str, state, threat: str = "Linf", layout: str = "wrapped"):
    """Save like RobustBench's files: {'state_dict': {'module.' + key: ...}} at its layout."""
    path = root / "cifar10" / threat / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in state.items() if k not in ("mu", "sigma")}  # files lack buffers
    if layout == "wrapped":
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 100}
    elif layout == "model_state_dict":
        obj = {"model_state_dict": state}
    else:
        obj = state
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("layout", ["wrapped", "model_state_dict", "plain"])
def test_zoo_model_loaded_by_name_from_local_folder_and_evaluated(tmp_path, layout):
    state = trained_state()
    write_rb_checkpoint(tmp_path, "Tiny2024", state, layout=layout)
    model = ur.load_model(
        "robustbench:Tiny2024", dataset="cifar10", threat_model="Linf", model_dir=tmp_path, zoo=ZOO
    )
    reference = TinyNet()
    reference.load_state_dict(state)
    x, _ = data()
    assert not model.training
    assert torch.equal(model(x), reference.eval()(x))
    y = reference(x).argmax(1)  # the loaded weights (not a fresh init) get every point right
    report = ur.evaluate(
        model, x, y, threats="linf:8/255, l2:0.5", suite="quick", batch_size=6, progress=False
    )
    assert report.n_examples == 12
    assert bool(report.clean_correct.all())
    assert report.union_robust.shape == (12,)


def test_ensemble_members_load_from_their_files(tmp_path):
    base = tmp_path / "cifar10" / "Linf" / "TinyEnsemble2024.pt"
    base.parent.mkdir(parents=True)
    states = [trained_state(3, 4), trained_state(4, 2)]
    for i, s in enumerate(states):
        torch.save({"state_dict": s}, f"{base}_m{i}.pt")
    model = rb.load_robustbench_model("TinyEnsemble2024", model_dir=tmp_path, zoo=ZOO)
    for member, s in zip(model.models, states, strict=True):
        assert all(torch.equal(member.state_dict()[k], v) for k, v in s.items())


def test_missing_file_names_the_expected_path(tmp_path):
    expected = tmp_path / "cifar10" / "L2" / "Tiny2024L2.pt"
    with pytest.raises(UnionRobustError, match="expected") as err:
        ur.load_model("robustbench:Tiny2024L2", threat_model="L2", model_dir=tmp_path, zoo=ZOO)
    assert str(expected) in str(err.value) and "\n" not in str(err.value)


def test_download_only_when_asked(tmp_path):
    calls = []

    def fake_download(gid, path):
        calls.append(gid)
        torch.save(trained_state(width=2), path)

    with pytest.raises(UnionRobustError, match="not found"):
        rb.load_robustbench_model(
            "Tiny2024L2", threat_model="L2", model_dir=tmp_path, zoo=ZOO, downloader=fake_download
        )
    assert calls == []
    model = rb.load_robustbench_model(
        "Tiny2024L2", threat_model="L2", model_dir=tmp_path, zoo=ZOO,
        downloader=fake_download, download=True,
    )  # fmt: skip
    assert calls == ["def"] and (tmp_path / "cifar10" / "L2" / "Tiny2024L2.pt").is_file()
    assert isinstance(model, TinyNet)


def test_wrong_keys_and_shapes_are_one_line_errors(tmp_path):
    state = trained_state()
    state["extra.weight"] = torch.zeros(2)
    write_rb_checkpoint(tmp_path, "Tiny2024", state)
    with pytest.raises(UnionRobustError, match=r"unexpected key.*extra.weight"):
        rb.load_robustbench_model("Tiny2024", model_dir=tmp_path, zoo=ZOO)
    model = rb.load_robustbench_model("Tiny2024", model_dir=tmp_path, zoo=ZOO, strict=False)
    assert torch.equal(model.conv.weight, state["conv.weight"])
    del state["extra.weight"], state["fc.bias"]
    write_rb_checkpoint(tmp_path, "Tiny2024", state)
    with pytest.raises(UnionRobustError, match=r"missing parameter\(s\) fc.bias"):
        rb.load_robustbench_model("Tiny2024", model_dir=tmp_path, zoo=ZOO)
    write_rb_checkpoint(tmp_path, "Tiny2024", trained_state(width=2))  # another width
    with pytest.raises(UnionRobustError, match="shape mismatch"):
        rb.load_robustbench_model("Tiny2024", model_dir=tmp_path, zoo=ZOO)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "cifar10" / "Linf" / "Tiny2024.pt"
    path.parent.mkdir(parents=True)
    torch.save(TinyNet(), path)  # a whole pickled module: code could run on load
    with pytest.raises(UnionRobustError, match="refused"):
        rb.load_robustbench_model("Tiny2024", model_dir=tmp_path, zoo=ZOO)


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(UnionRobustError, match="valid: Tiny2024, TinyEnsemble2024"):
        rb.load_robustbench_model("Nope", model_dir=tmp_path, zoo=ZOO)
    with pytest.raises(UnionRobustError, match="valid: L2, Linf"):
        rb.load_robustbench_model("Tiny2024", threat_model="L1", zoo=ZOO)
    with pytest.raises(UnionRobustError, match="valid: cifar10"):
        rb.load_robustbench_model("Tiny2024", dataset="mnist", zoo=ZOO)
    with pytest.raises(UnionRobustError, match=r"do not take.*colour"):
        ur.load_model("robustbench:Tiny2024", zoo=ZOO, colour="red")


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "robustbench.model_zoo", raising=False)
    monkeypatch.setattr(rb_zoo.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UnionRobustError, match=r'pip install "unionrobust\[robustbench\]"') as err:
        ur.load_model("robustbench:Standard", model_dir="nowhere")
    assert 'pip install --no-deps "robustbench==1.1.1"' in str(err.value)


FAKE_PACKAGE = {
    # importing the package runs its attack code, which needs a module PyPI does not provide
    "__init__.py": "from autoattack import AutoAttack\n",
    "model_zoo/__init__.py": "raise ImportError('the table files are read, not imported')\n",
    "model_zoo/enums.py": (
        "from enum import Enum\n"
        "class BenchmarkDataset(Enum):\n    cifar_10 = 'cifar10'\n"
        "class ThreatModel(Enum):\n    Linf = 'Linf'\n"
    ),
    "model_zoo/architectures/__init__.py": "",
    "model_zoo/architectures/tiny.py": (
        "import torch\nfrom torch import nn\ndef tiny():\n    return nn.Linear(4, 3)\n"
    ),
    "model_zoo/models.py": (
        "from collections import OrderedDict\n"
        "from robustbench.model_zoo.cifar10 import cifar_10_models\n"
        "from robustbench.model_zoo.enums import BenchmarkDataset\n"
        "model_dicts = OrderedDict([(BenchmarkDataset.cifar_10, cifar_10_models)])\n"
    ),
    "model_zoo/cifar10.py": (
        "from collections import OrderedDict\n"
        "import timm_not_installed_here\n"
        "from robustbench.model_zoo.architectures.tiny import tiny\n"
        "from robustbench.model_zoo.enums import ThreatModel\n"
        "class Big(timm_not_installed_here.Module):\n    pass\n"
        "linf = OrderedDict([\n"
        "    ('Small', {'model': lambda: tiny(), 'gdrive_id': 'abc'}),\n"
        "    ('Huge', {'model': lambda: timm_not_installed_here.create_model('x'),\n"
        "              'gdrive_id': 'def'}),\n"
        "    ('Bigger', {'model': Big, 'gdrive_id': 'ghi'}),\n"
        "])\n"
        "cifar_10_models = OrderedDict([(ThreatModel.Linf, linf)])\n"
    ),
}


@pytest.fixture
def fake_robustbench(tmp_path, monkeypatch):
    """A robustbench package laid out like 1.1.1 whose import fails (no ``autoattack``, an
    optional architecture package missing): only its table files are read."""
    for rel, text in FAKE_PACKAGE.items():
        path = tmp_path / "site" / "robustbench" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m.split(".")[0] == "robustbench"]:
        monkeypatch.delitem(sys.modules, name)
    yield tmp_path
    for name in [m for m in sys.modules if m.split(".")[0] == "robustbench"]:
        del sys.modules[name]


def test_zoo_table_is_read_without_importing_the_package(fake_robustbench):
    zoo = rb.robustbench_zoo()
    assert list(zoo) == ["cifar10"] and list(zoo["cifar10"]["Linf"]) == ["Small", "Huge", "Bigger"]
    torch.manual_seed(0)
    source = zoo["cifar10"]["Linf"]["Small"]["model"]()
    path = fake_robustbench / "models" / "cifar10" / "Linf" / "Small.pt"
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    model = ur.load_model("robustbench:Small", model_dir=fake_robustbench / "models")
    x = torch.rand(2, 4)
    assert torch.equal(model(x), source(x))
    for name in ("Huge", "Bigger"):  # needs the missing package: one line naming it
        with pytest.raises(UnionRobustError, match="timm_not_installed_here") as err:
            ur.load_model(f"robustbench:{name}", model_dir=fake_robustbench / "models")
        assert "\n" not in str(err.value)


def test_download_uses_gdown_like_robustbench(fake_robustbench, monkeypatch):
    """robustbench 1.1.1 downloads with ``gdown.download(id=..., output=...)``: so do we, into a
    temporary file renamed into place (a failed download leaves nothing behind)."""
    calls = []
    state = nn.Linear(4, 3).state_dict()

    def download(*, id, output):  # the mocked opener
        calls.append(id)
        if id == "abc":
            torch.save(state, output)
        else:
            raise ConnectionError("Failed to retrieve file url")

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    models = fake_robustbench / "models"
    model = ur.load_model("robustbench:Small", model_dir=models, download=True)
    assert calls == ["abc"] and torch.equal(model.weight, state["weight"])
    failed = fake_robustbench / "failed"
    zoo = {"cifar10": {"Linf": {"Small": {"model": lambda: nn.Linear(4, 3), "gdrive_id": "zzz"}}}}
    with pytest.raises(UnionRobustError, match=r"Small\.pt failed: Failed to retrieve") as err:
        rb.load_robustbench_model("Small", model_dir=failed, zoo=zoo, download=True)
    assert "\n" not in str(err.value) and calls == ["abc", "zzz"]
    assert [p.name for p in failed.rglob("*") if p.is_file()] == []


def test_cli_eval_loads_a_zoo_model_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_main, "COMMANDS", ["eval"])
    zoo = {"cifar10": {"Linf": {"Small2024": {"model": lambda: ur.build_model("small-cnn")}}}}
    monkeypatch.setattr(rb, "robustbench_zoo", lambda: zoo)
    torch.manual_seed(0)
    state = ur.build_model("small-cnn").state_dict()
    write_rb_checkpoint(tmp_path, "Small2024", state)
    code = cli_main.main([
        "eval", "--model", "robustbench:Small2024", "--dataset", "cifar10", "--threat-model",
        "Linf", "--model-dir", str(tmp_path), "--n", "8", "--threats", "linf:0.1",
        "--suite", "quick", "--no-progress", "--out", str(tmp_path / "run"),
    ])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["meta"]["model"] == "robustbench:Small2024"
    x, y = ur.load_embedded_mnist("test")
    reference = ur.build_model("small-cnn")
    reference.load_state_dict(state)
    with torch.no_grad():
        clean = (reference.eval()(x[:8]).argmax(1) == y[:8]).float().mean().item()
    assert report["clean_accuracy"] == pytest.approx(clean)
    capsys.readouterr()
    code = cli_main.main(["eval", "--model", "robustbench:Small2024", "--model-dir",
                          str(tmp_path), "--threat-model", "L2", "--n", "4"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "threat model for cifar10 'L2'; valid: Linf" in err
    assert err.count("\n") == 1


@pytest.mark.skipif(
    importlib.util.find_spec("robustbench") is None, reason="robustbench is not installed"
)
def test_real_robustbench_zoo_architecture(tmp_path):
    """The real zoo's 'Standard' WideResNet-28-10, weights written here (no download)."""
    try:
        zoo = rb.robustbench_zoo()
    except UnionRobustError as exc:  # installed but not importable (e.g. no pkg_resources)
        pytest.skip(str(exc))
    builder = zoo["cifar10"]["Linf"]["Standard"]["model"]
    torch.manual_seed(0)
    source = builder()
    path = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = ur.load_model("robustbench:Standard", model_dir=tmp_path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), source.eval()(x))
    assert "robustbench" in sys.modules
