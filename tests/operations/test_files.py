"""Atomic writes (durable, with the umask's permissions, a full disk reported and harmless), the waiting lock, and
SIGTERM turned into a clean exit."""

import errno
import os
import signal
import stat
import threading

import pytest

from common import files
from common.errors import UserError
from common.files import atomic_path, waiting_lock, write_text_atomic
from common.signals import sigterm_cleans_up


def test_the_file_reaches_the_disk_before_the_rename_and_the_rename_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "fsync file")
        real_fsync(descriptor)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", lambda *paths: events.append("rename") or real_replace(*paths))
    write_text_atomic(tmp_path / "history.csv", "epoch\n1\n")
    assert events == ["fsync file", "rename", "fsync folder"]
    assert (tmp_path / "history.csv").read_text() == "epoch\n1\n"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_permissions_of_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "new.csv", "x")
        (tmp_path / "old.csv").write_text("old")
        write_text_atomic(tmp_path / "old.csv", "replaced")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.csv").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "old.csv").stat().st_mode) == mode


def test_a_full_disk_keeps_the_old_file_and_says_so(tmp_path, full_disk):
    target = tmp_path / "history.csv"
    target.write_text("the previous history\n")
    code = (
        "from common.errors import run_main; from common.files import write_text_atomic;"
        f" run_main(lambda: write_text_atomic({str(target)!r}, 'x' * 100_000))"
    )
    result = full_disk(code, limit=50_000)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: no space left on device while writing {target} (File too large); free space and run again."
    )
    assert target.read_text() == "the previous history\n"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left


def save_like_torch(path) -> None:
    """What torch.save(obj, file) does when the disk fills up: a RuntimeError raised while handling the OSError
    (checked with torch 2.14 under RLIMIT_FSIZE)."""
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")  # noqa: B904


def test_a_full_disk_reported_by_a_library_as_its_own_error_is_recognised(tmp_path):
    (tmp_path / "best.pth").write_bytes(b"the best model")
    expected = "no space left on device while writing .*best.pth"
    with pytest.raises(UserError, match=expected), atomic_path(tmp_path / "best.pth") as temporary:
        save_like_torch(temporary)
    assert (tmp_path / "best.pth").read_bytes() == b"the best model" and len(list(tmp_path.iterdir())) == 1


def test_the_waiting_lock_waits_for_the_holder_and_says_who_it_is(tmp_path, capsys):
    order = []
    with waiting_lock(tmp_path / ".lock", "holding the lock"):
        waiter = threading.Thread(target=lambda: waiting_lock_then(tmp_path / ".lock", order))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive()  # still waiting
        order.append("holder done")
    waiter.join(10)
    assert order == ["holder done", "waiter in"]
    assert f"waiting for another process extracting the test's data (pid {os.getpid()})" in capsys.readouterr().out


def waiting_lock_then(path, order: list) -> None:
    with waiting_lock(path, "extracting the test's data"):
        order.append("waiter in")


def test_sigterm_becomes_a_clean_exit_and_the_handler_comes_back():
    cleaned = []
    with pytest.raises(SystemExit) as stopped, sigterm_cleans_up():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            cleaned.append(True)
    assert stopped.value.code == 143 and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
