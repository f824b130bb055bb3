"""The CLI's glibc allocator settings: applied once, inherited by children, user choices win."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from unionrobust.allocator import OPT_OUT, SETTINGS

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

PROBE = (
    "import json, os, subprocess, sys\n"
    "from unionrobust.allocator import tune_allocator\n"
    "applied = tune_allocator()\n"
    "child = subprocess.run([sys.executable, '-c', 'import os, json; "
    'print(json.dumps({k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}))\'],'
    " capture_output=True, text=True, check=True).stdout\n"
    "print(json.dumps({'applied': applied, 'child': json.loads(child)}))\n"
)


def _probe(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in SETTINGS and k != OPT_OUT}
    base.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_applied_to_the_process_and_inherited_by_children():
    got = _probe()
    expected = {name: value for name, (_, value) in SETTINGS.items()}
    assert got["applied"] == expected
    assert got["child"] == {k: str(v) for k, v in expected.items()}


def test_opt_out_changes_nothing():
    assert _probe(**{OPT_OUT: "System"}) == {"applied": {}, "child": {}}


def test_user_settings_win():
    got = _probe(MALLOC_TRIM_THRESHOLD_="12345")
    assert got == {"applied": {}, "child": {"MALLOC_TRIM_THRESHOLD_": "12345"}}
