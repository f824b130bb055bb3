"""glibc allocator settings for every process that imports unionrobust (issues 9 and 16).

PyTorch on CPU frees and re-allocates its activation and gradient buffers (0.1-100 MB) at every
attack or training step. glibc serves blocks above its mmap threshold (dynamic, 128 KiB to
32 MiB) with a fresh ``mmap`` and unmaps them on ``free``, and trims the heap top beyond
128 KiB, so every step faults the same memory in again and the kernel zeroes it: millions of
minor page faults and 10-30 % of the CPU time on small models. Serving blocks up to 256 MiB from
the heap and trimming only beyond 256 MiB of free top memory keeps those pages mapped.

Applied with ``mallopt`` to the running process when ``unionrobust`` is imported
(:func:`tune_on_import`, so the Python API runs as lean as the command line: a 1,000-digit
``evaluate`` made 43.6 M minor page faults and spent 22 % of its CPU time in the kernel without
it). The command line also exports the settings through the environment
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, read at start-up) to the processes it
spawns; the import does not touch the environment. Nothing is changed when the C library is not
glibc, when the user set any of these variables or a ``glibc.malloc`` tunable, or when
``UNIONROBUST_MALLOC=system`` (also ``0``, ``off``, ``no``, ``false``).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

#: opt-out variable: ``system`` (or 0/off/no/false) keeps glibc's defaults
OPT_OUT = "UNIONROBUST_MALLOC"
_OFF = ("system", "0", "off", "no", "false")

#: environment variable -> (mallopt parameter number from <malloc.h>, value in bytes)
SETTINGS: dict[str, tuple[int, int]] = {
    "MALLOC_MMAP_THRESHOLD_": (-3, 256 << 20),  # M_MMAP_THRESHOLD
    "MALLOC_TRIM_THRESHOLD_": (-1, 256 << 20),  # M_TRIM_THRESHOLD
}


def _user_chose() -> bool:
    if any(name in os.environ for name in SETTINGS):
        return True
    return "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


#: what :func:`tune_on_import` applied when ``unionrobust`` was imported (empty: skipped)
APPLIED_ON_IMPORT: dict[str, int] = {}


def tune_allocator(export: bool = True) -> dict[str, int]:
    """Apply :data:`SETTINGS` to this process and, with ``export``, to its future children
    (through the environment); return what was set (empty when skipped: not glibc, opted out,
    or the user's own settings present)."""
    if os.environ.get(OPT_OUT, "").strip().lower() in _OFF or _user_chose():
        return {}
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return {}
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return {}
    applied: dict[str, int] = {}
    for name, (param, value) in SETTINGS.items():
        if mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1:
            if export:
                os.environ[name] = str(value)
            applied[name] = value
    return applied


def tune_on_import() -> dict[str, int]:
    """Called once by ``import unionrobust``: :func:`tune_allocator` for this process only
    (the environment is left alone); the result is kept in :data:`APPLIED_ON_IMPORT`."""
    APPLIED_ON_IMPORT.clear()
    APPLIED_ON_IMPORT.update(tune_allocator(export=False))
    return dict(APPLIED_ON_IMPORT)
