"""Process lifetime: stop on SIGINT/SIGTERM at a safe point; workers that die with their parent.

- :func:`deferred_signals` records SIGINT/SIGTERM instead of acting on them, so the trainer can
  finish its step and save a checkpoint; :func:`redeliver` then raises the signal again with the
  caller's own handler (KeyboardInterrupt for SIGINT, termination for SIGTERM by default).
- :func:`worker_init` is the initializer of ``compare``'s training processes: they ignore SIGINT
  (the parent handles Ctrl-C and stops them), receive SIGTERM when the parent dies (Linux
  ``prctl(PR_SET_PDEATHSIG)``, with a parent-pid watchdog thread as the portable fallback), and so
  save a checkpoint and exit instead of training on as orphans.
- :func:`stop_workers` cancels a pool's pending jobs and terminates its processes at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1
#: seconds between the watchdog's parent checks, and from its SIGTERM to its SIGKILL
WATCH_PERIOD, KILL_GRACE = 1.0, 60.0


@contextlib.contextmanager
def deferred_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Call ``on_signal(signum)`` for SIGINT/SIGTERM inside the block instead of acting.

    Signals the process ignores (``SIG_IGN``, e.g. under ``nohup`` or in a ``compare`` worker)
    stay ignored. Outside the main thread (where handlers cannot be set) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old: dict[int, Any] = {}
    try:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                old[sig] = signal.signal(sig, lambda signum, frame: on_signal(signum))
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def redeliver(signum: int) -> None:
    """Raise ``signum`` again under the restored handler; exit 128 + signum if it returns."""
    signal.raise_signal(signum)
    raise SystemExit(128 + signum)


def _set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (False elsewhere)."""
    name = ctypes.util.find_library("c")
    if not name or not hasattr(os, "getppid"):
        return False
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    """Terminate this process (SIGTERM, then SIGKILL after a grace period) once orphaned."""
    while os.getppid() == parent:
        time.sleep(WATCH_PERIOD)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(KILL_GRACE)
    os.kill(os.getpid(), signal.SIGKILL)


def worker_init(parent: int) -> None:
    """Initializer of a training worker process whose parent has pid ``parent``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def stop_workers(pool: ProcessPoolExecutor, grace: float = 60.0) -> None:
    """Cancel pending jobs and SIGTERM the running workers (they checkpoint and exit); SIGKILL
    any still alive after ``grace`` seconds."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(OSError, ValueError):
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(OSError, ValueError):
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
