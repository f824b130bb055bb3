"""One run owns an output folder: an exclusive OS file lock on ``<folder>/.lock``.

The lock is an advisory ``flock`` (``msvcrt.locking`` on Windows) held on an open file for the
life of the run, so the operating system releases it when the process dies, even by SIGKILL:
there is no stale lock file to clean up. A second run that asks for the same folder gets a
one-line :class:`~unionrobust.errors.UnionRobustError` naming the folder and the process that
holds it. The lock also proves the folder writable (a probe file is created and removed), so
a read-only ``--out`` is refused before any work, not after it.

A command owns its ``--out`` through :func:`owned_folder`: the lock, then the refusal to
replace an earlier run (:func:`refuse_existing`) unless ``--overwrite``; with it, that run's
files are removed (:func:`clear_run`) before the new run writes anything, so a killed run never
leaves an old report next to new results.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from unionrobust.errors import UnionRobustError

LOCK_NAME = ".lock"


def _try_lock(fd: int) -> bool:
    """Take an exclusive non-blocking lock on ``fd``; False if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # e.g. a file system without locks
        raise UnionRobustError(f"cannot lock output folder: {exc.strerror or exc}") from None
    return True


def check_folder_name(folder: str | os.PathLike) -> str | os.PathLike:
    """Refuse an empty folder name (``--out ''``), which would mean the current folder."""
    if not str(os.fspath(folder)).strip():
        raise UnionRobustError(
            "--out (out_dir) is empty; give a folder name (use '.' for the current folder)"
        )
    return folder


def _probe_writable(folder: Path, lock_fd: int) -> None:
    """Create and remove a file in ``folder`` (raises OSError where writes would fail later);
    on failure ``lock_fd`` is closed."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
    except OSError:
        os.close(lock_fd)
        raise
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


class FolderLock:
    """An exclusive lock on an output folder; use as a context manager or call ``release``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(check_folder_name(folder))
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise UnionRobustError(
                f"output folder {str(self.folder)!r} is an existing file; give a folder to --out"
            )
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            _probe_writable(self.folder, fd)
        except OSError as exc:
            raise UnionRobustError(
                f"cannot write to output folder {str(self.folder)!r}: {exc.strerror or exc}"
            ) from None
        if not _try_lock(fd):
            os.close(fd)
            raise UnionRobustError(
                f"output folder {str(self.folder)!r} is in use by another run"
                f"{_holder(self.path)}; wait for it to finish or choose another --out"
            )
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


#: folders this process holds through :func:`locked_folder`, by real path
_HELD: dict[str, FolderLock] = {}


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike | None) -> Iterator[FolderLock | None]:
    """Hold ``folder``'s lock for the ``with`` block; ``None`` locks nothing.

    Re-entrant within a process: a nested ``locked_folder`` of a folder this process already
    holds this way yields the same lock (a command holds its ``--out`` across library calls
    that lock it too, e.g. ``evaluate(out_dir=...)``)."""
    if folder is None:
        yield None
        return
    key = os.path.realpath(check_folder_name(folder))
    if key in _HELD:
        yield _HELD[key]
        return
    lock = FolderLock(folder).acquire()
    _HELD[key] = lock
    try:
        yield lock
    finally:
        del _HELD[key]
        lock.release()


def refuse_existing(folder: str | os.PathLike | None, names: tuple[str, ...], fix: str) -> None:
    """Raise if ``folder`` already holds one of ``names`` (an earlier run's results, which
    this run would replace); ``fix`` says how to go on, e.g. "use --overwrite"."""
    if folder is None:
        return
    found = [n for n in names if (Path(folder) / n).exists()]
    if found:
        raise UnionRobustError(
            f"output folder {str(folder)!r} already holds a run ({', '.join(found)}); {fix}"
        )


def clear_run(folder: str | os.PathLike | None, names: tuple[str, ...]) -> None:
    """Remove an earlier run's files ``names`` from ``folder`` (``--overwrite``), in the order
    given: put the file that makes a folder resumable (a verdict log) last, so a kill midway
    leaves that run resumable rather than mixed."""
    if folder is None:
        return
    for name in names:
        path = Path(folder) / name
        if path.exists() and not path.is_file():
            raise UnionRobustError(f"{path} is not a file (a folder?); remove it by hand first")
    with writing(folder):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (Path(folder) / name).unlink()


@contextlib.contextmanager
def owned_folder(
    folder: str | os.PathLike | None, names: tuple[str, ...], overwrite: bool
) -> Iterator[FolderLock | None]:
    """What every command that writes ``--out`` does first, before any work: lock ``folder``
    (checking it is writable) and refuse it if it holds a run (one of ``names``) unless
    ``overwrite``. ``None``: no folder. The run calls :func:`clear_run` just before its first
    write, so a failure before then (a bad weights file) loses nothing."""
    with locked_folder(folder) as lock:
        if not overwrite:
            refuse_existing(folder, names, "replace it with --overwrite or choose another --out")
        yield lock


@contextlib.contextmanager
def writing(folder: str | os.PathLike, then: str = "", what: str = "") -> Iterator[None]:
    """Turn an ``OSError`` while writing into ``folder`` (a full disk, a read-only file system)
    into a one-line error; ``what``: the file(s) being written, ``then``: how to continue.
    The writers are atomic, so files written earlier stay intact."""
    try:
        yield
    except OSError as exc:
        hint = f"; {then}" if then else ""
        target = f"{what} in {str(folder)!r}" if what else f"to {str(folder)!r}"
        raise UnionRobustError(f"cannot write {target}: {exc.strerror or exc}{hint}") from None
