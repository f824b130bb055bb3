"""One run owns an output folder: a second locker gets a one-line error; death releases it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from unionrobust.errors import UnionRobustError
from unionrobust.outdir import FolderLock, locked_folder


def test_second_lock_in_same_process_is_refused_and_release_frees(tmp_path):
    out = tmp_path / "run"
    with locked_folder(out) as lock:
        assert lock is not None and lock.held
        with pytest.raises(UnionRobustError, match="in use by another run"):
            FolderLock(out).acquire()
    FolderLock(out).acquire().release()  # released on exit


@pytest.mark.slow  # a subprocess
def test_lock_held_by_another_process_names_it_and_dies_with_it(tmp_path):
    out = tmp_path / "run"
    code = textwrap.dedent(
        f"""
        import sys, time
        from unionrobust.outdir import FolderLock
        FolderLock({str(out)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UnionRobustError, match=rf"process {proc.pid}"):
            FolderLock(out).acquire()
    finally:
        proc.kill()
        proc.wait()
    FolderLock(out).acquire().release()  # the OS dropped the dead process's lock


def test_existing_file_and_none(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UnionRobustError, match="is an existing file"):
        FolderLock(f).acquire()
    with locked_folder(None) as lock:
        assert lock is None
