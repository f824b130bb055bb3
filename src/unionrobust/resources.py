"""Refuse a request that cannot fit in memory, with the numbers, before allocating (issue 11).

Callers estimate the bytes a request needs (lattice points, dimension × samples, ...) and call
:func:`check_memory`; requests below :data:`CHECK_ABOVE` are not checked (no file read).
"""

from __future__ import annotations

import os

from unionrobust.errors import UnionRobustError

#: requests smaller than this (bytes) always pass without reading the available memory
CHECK_ABOVE = 256 * 2**20

GIB = 2**30


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``; elsewhere the free
    physical pages), or ``None`` when the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(needed: float, what: str, fix: str) -> None:
    """Raise the one-line error when ``needed`` bytes exceed the available memory:
    ``"<what> needs ~X GiB, this machine has Y GiB available; <fix>"``."""
    if needed < CHECK_ABOVE:
        return
    available = available_memory()
    if available is not None and needed > available:
        raise UnionRobustError(
            f"{what} needs ~{needed / GIB:,.1f} GiB, this machine has "
            f"{available / GIB:,.1f} GiB available; {fix}"
        )
