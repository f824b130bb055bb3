"""glibc allocator settings for long CPU runs (issue 9): keep freed memory in the process.

PyTorch on CPU allocates and frees activation-sized buffers at every step. With glibc's
defaults the larger ones are returned to the OS when freed and page-faulted back on the next
step: on MSD training (a forward over 3B candidates per step) that was 5× the minor page faults
and 30 % of the CPU time (benchmarks/RESULTS.md). :func:`tune_allocator` raises the trim
threshold (freed memory is kept for reuse), fixes the mmap threshold at 32 MiB (buffers up to
that size come from the heap) and pads heap growth. The CLI applies it at start; the variables
are also exported, so the processes it spawns (``compare``, DDP) start with them. Variables
already set by the user win; ``UNIONROBUST_MALLOC=0`` turns the tuning off. Peak memory
(RSS) is unchanged in our runs; memory is simply not handed back between steps.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: environment variable -> (mallopt parameter, value): M_MMAP_THRESHOLD, M_TRIM_THRESHOLD,
#: M_TOP_PAD of glibc's malloc.h
SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": (-3, 32 << 20),
    "MALLOC_TRIM_THRESHOLD_": (-1, 1 << 30),
    "MALLOC_TOP_PAD_": (-2, 256 << 20),
}


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
        return libc if hasattr(libc, "mallopt") else None
    except (OSError, AttributeError):
        return None


def tune_allocator() -> dict[str, int]:
    """Apply :data:`SETTINGS` to this process (``mallopt``) and export them for child processes;
    returns the settings applied (empty off glibc, with ``UNIONROBUST_MALLOC=0``, or for the
    variables the user already set)."""
    if os.environ.get("UNIONROBUST_MALLOC", "1") == "0":
        return {}
    libc = _glibc()
    if libc is None:
        return {}
    applied = {}
    for name, (param, value) in SETTINGS.items():
        if name in os.environ:
            continue
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1:
            os.environ[name] = str(value)
            applied[name] = value
    return applied
