"""glibc allocator tuning of the CLI (issue 9): applied once, exported, the user's values win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from unionrobust import allocator

# the module is loaded from its file: importing the package (and torch) would take seconds
CHILD = """
import os, json, importlib.util
spec = importlib.util.spec_from_file_location("alloc", %r)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
applied = mod.tune_allocator()
print(json.dumps({"applied": applied, "env": {k: os.environ.get(k) for k in %r}}))
"""


def run_child(env: dict[str, str]) -> dict:
    import json

    code = CHILD % (allocator.__file__, list(allocator.SETTINGS))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "UNIONROBUST_"))}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_settings_are_applied_and_exported_unless_the_user_set_them():
    res = run_child({})
    assert res["applied"] == {k: v for k, (_, v) in allocator.SETTINGS.items()}
    assert res["env"] == {k: str(v) for k, (_, v) in allocator.SETTINGS.items()}
    res = run_child({"MALLOC_TRIM_THRESHOLD_": "12345"})
    assert "MALLOC_TRIM_THRESHOLD_" not in res["applied"]
    assert res["env"]["MALLOC_TRIM_THRESHOLD_"] == "12345"
    assert res["applied"].keys() == allocator.SETTINGS.keys() - {"MALLOC_TRIM_THRESHOLD_"}


def test_the_tuning_can_be_turned_off():
    res = run_child({"UNIONROBUST_MALLOC": "0"})
    assert res["applied"] == {}
    assert all(v is None for v in res["env"].values())
