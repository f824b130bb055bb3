"""The glibc allocator settings: applied on import (this process only) and by the CLI (inherited
by children); user choices and the opt-out win."""

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


def _probe(probe: str = PROBE, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in SETTINGS and k != OPT_OUT}
    base.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", probe], env={**base, **env}, capture_output=True, text=True
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



IMPORT_PROBE = (
    "import ctypes, json, os\n"
    "import unionrobust\n"
    "from unionrobust import allocator\n"
    "libc = ctypes.CDLL(None)\n"
    "libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]\n"
    "libc.free.argtypes = [ctypes.c_void_p]\n"
    "libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]\n"
    # 48 MiB: above glibc's largest dynamic mmap threshold (32 MiB), below ours (256 MiB)
    "p = libc.malloc(48 << 20)\n"
    "top = libc.sbrk(0)\n"
    "in_heap = p < top\n"
    "libc.free(p)\n"
    "kept = libc.sbrk(0) == top\n"
    "print(json.dumps({'applied': allocator.APPLIED_ON_IMPORT, 'in_heap': in_heap, 'kept': kept,\n"
    "                  'env': {k: v for k, v in os.environ.items() if k.startswith('MALLOC_')}}))\n"
)


def _import_probe(**env: str) -> dict:
    return _probe(IMPORT_PROBE, **env)


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_import_tunes_this_process_only():
    """``import unionrobust`` applies the settings to its process: a 48 MiB block comes from the
    heap, not a fresh mmap, and stays mapped once freed; child processes' environment is left
    alone."""
    got = _import_probe()
    assert got["applied"] == {name: value for name, (_, value) in SETTINGS.items()}
    assert got["env"] == {}
    assert got["in_heap"] and got["kept"], got


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_import_opt_out_keeps_glibc_defaults():
    got = _import_probe(**{OPT_OUT: "system"})
    assert got["applied"] == {} and got["env"] == {}
    assert not got["in_heap"], got  # glibc maps the block afresh


@pytest.mark.slow
def test_import_leaves_user_settings():
    got = _import_probe(MALLOC_MMAP_THRESHOLD_="65536")
    assert got["applied"] == {} and got["env"] == {"MALLOC_MMAP_THRESHOLD_": "65536"}
