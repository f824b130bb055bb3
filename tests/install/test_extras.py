"""Every optional extra installs into a fresh venv next to the README's CPU torch, without
replacing it, and imports (the README's "Install" commands, run for real against the package index).

The venv gets the running interpreter's torch (and its requirements) by hard links -- the state
after the README's ``pip install torch==2.13.0`` -- so the test pays for the extras only. Skipped
only when the package index cannot be reached.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
#: the README's install commands for the extras (the --no-deps packages declare torchvision)
EXTRAS = "plot,test,dev,peers,robustbench"
NO_DEPS = ["torchattacks>=3.5", "robustbench==1.1.1"]

CHECK = """
import importlib.util, torch
import foolbox, torchattacks, gdown, matplotlib, mlxtend, pytest, hypothesis
import unionrobust as ur
from unionrobust.models.robustbench import robustbench_zoo
assert importlib.util.find_spec("torchvision") is None, "torchvision was installed"
wrn = robustbench_zoo()["cifar10"]["Linf"]["Carmon2019Unlabeled"]["model"]()
assert type(wrn).__name__ == "WideResNet"
ur.attacks.adapters.require("torchattacks", "check")
print(torch.__version__)
"""


def _index_reachable() -> bool:
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + "/pip/"
    try:
        with urllib.request.urlopen(url, timeout=20):
            return True
    except OSError:
        return False


def _closure(name: str) -> list[md.Distribution]:
    """``name``'s distribution and the installed ones it requires (markers evaluated)."""
    seen: dict[str, md.Distribution] = {}
    todo = [name]
    while todo:
        dist = md.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _link_distributions(dists: list[md.Distribution], site: Path) -> None:
    """Hard-link (copy across file systems) each distribution's files into ``site``."""
    for dist in dists:
        for rel in dist.files or []:
            if str(rel).startswith(".."):  # console scripts outside site-packages
                continue
            src, dst = Path(dist.locate_file(rel)), site / rel
            if not src.is_file() or dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


@pytest.mark.slow
def test_every_extra_installs_next_to_a_cpu_torch(tmp_path):
    if not _index_reachable():
        pytest.skip("the package index is unreachable")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    assert site != Path(sysconfig.get_paths()["purelib"])
    _link_distributions(_closure("torch"), site)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for cmd in ([*pip, "-e", f"{ROOT}[{EXTRAS}]"], [*pip, "--no-deps", *NO_DEPS]):
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
    run = subprocess.run(
        [str(python), "-c", CHECK], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == torch.__version__
