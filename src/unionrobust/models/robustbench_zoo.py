"""RobustBench's model table read from the installed package's files, not by importing it.

``import robustbench`` runs its data and attack modules (torchvision, and an ``autoattack`` module
that PyPI's ``pyautoattack`` does not provide), and ``robustbench.model_zoo`` imports every
architecture, some through timm and torchvision. A CPU machine whose torch came from a local
CPU wheel has no torchvision that fits it on PyPI, so those imports fail. This module therefore
executes the table files (``model_zoo/models.py`` and the per-dataset files it names) one top-level
statement at a time under their own names, with ``robustbench`` and ``robustbench.model_zoo``
registered as bare packages (their ``__init__`` files are not run): an import that fails binds its
names to :class:`Unavailable`, so the table is complete and only the entries whose architecture
needs the missing package fail -- when built, with a one-line error naming it. The common
WideResNet/PreActResNet/ResNet entries need nothing but torch.

The package is installed with ``pip install --no-deps "robustbench==1.1.1"`` (its declared
dependencies pull an unpinned torchvision, which replaces a CPU torch).
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

from unionrobust.errors import UnionRobustError

#: how the zoo's package is installed without touching torch
PACKAGE_HINT = 'pip install --no-deps "robustbench==1.1.1"'
#: the model table's modules, read as files (``models`` names the per-dataset ones)
_TABLE = "robustbench.model_zoo"


class Unavailable:
    """Stands for a name whose import failed; using it raises a one-line error naming why."""

    def __init__(self, name: str, reason: str) -> None:
        self._name, self._reason = name, reason

    def _fail(self) -> UnionRobustError:
        hint = ""
        if "timm" in self._reason or "torchvision" in self._reason:
            hint = (
                "; timm/torchvision architectures need a torchvision build that matches your "
                "torch (for a CPU torch: the CPU wheel from download.pytorch.org)"
            )
        return UnionRobustError(
            f"this RobustBench architecture needs {self._name!r}, which is unavailable "
            f"({self._reason}){hint}"
        )

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise self._fail()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._fail()


def package_dir() -> Path:
    """The installed ``robustbench`` package's folder (found without importing it)."""
    spec = importlib.util.find_spec("robustbench")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise UnionRobustError(
            f"RobustBench models need the robustbench package's model table: {PACKAGE_HINT} "
            '(after pip install "unionrobust[robustbench]")'
        )
    return Path(locations[0])


def _bare_package(name: str, path: Path) -> None:
    """Register ``name`` as a package at ``path`` without running its ``__init__``."""
    if name in sys.modules:
        return
    init = path / "__init__.py"
    locations = [str(path)]
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=locations)
    module = types.ModuleType(name)
    module.__spec__, module.__path__, module.__file__ = spec, locations, str(init)
    sys.modules[name] = module


def _bound_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names if a.name != "*"]
    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_module(name: str, root: Path, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Execute table module ``name`` statement by statement; failed statements bind
    :class:`Unavailable`. Imports from other table modules are read the same way."""
    if name in cache:
        return cache[name]
    path = root / "model_zoo" / f"{name.rsplit('.', 1)[1]}.py"
    namespace: dict[str, Any] = {"__name__": name, "__file__": str(path), "__builtins__": builtins}
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        table = isinstance(node, ast.ImportFrom) and _is_table_module(node.module, root)
        try:
            if table:  # another table file: read it the same way
                source = _read_module(node.module, root, cache)  # type: ignore[arg-type]
                for alias in node.names:
                    namespace[alias.asname or alias.name] = source[alias.name]
            else:
                exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
        except Exception as exc:  # a missing optional package: bind the names, keep reading
            for bound in _bound_names(node):
                namespace[bound] = Unavailable(bound, _reason(exc))
    cache[name] = namespace
    return namespace


def _is_table_module(module: str | None, root: Path) -> bool:
    if not module or not module.startswith(_TABLE + "."):
        return False
    rest = module[len(_TABLE) + 1 :]
    return "." not in rest and rest != "enums" and (root / "model_zoo" / f"{rest}.py").is_file()


def read_model_dicts() -> Any:
    """RobustBench's ``model_dicts`` (``{dataset: {threat_model: {name: entry}}}``, enum keys)."""
    loaded = sys.modules.get(_TABLE)
    if getattr(loaded, "model_dicts", None) is not None:  # a fully working import already ran
        return loaded.model_dicts  # type: ignore[union-attr]
    return _read_table(package_dir())


@functools.lru_cache(maxsize=4)
def _read_table(root: Path) -> Any:
    """The table of the package at ``root`` (read once per process: a few seconds)."""
    _bare_package("robustbench", root)
    _bare_package(_TABLE, root / "model_zoo")
    table = _read_module(f"{_TABLE}.models", root, {}).get("model_dicts")
    if not isinstance(table, dict):
        raise UnionRobustError(
            f"could not read RobustBench's model table from {root} "
            f"({type(table).__name__}); the supported release is {PACKAGE_HINT}"
        )
    return table
