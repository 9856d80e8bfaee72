"""common/background.py: writes run in order off the caller's thread, newest-per-key, errors come back."""

import threading
import time

import pytest

from common.background import BackgroundWriter


def test_writes_run_in_order_and_wait_returns_when_all_are_done():
    done = []
    with BackgroundWriter() as writer:
        for index in range(5):
            writer.submit(f"file-{index}", lambda i: (time.sleep(0.01), done.append(i)), index)
    assert done == [0, 1, 2, 3, 4]


def test_a_waiting_write_is_replaced_by_a_newer_one_of_the_same_key():
    release, done = threading.Event(), []
    writer = BackgroundWriter()
    writer.submit("slow", release.wait)  # keeps the thread busy while the next three queue up
    for version in (1, 2, 3):
        writer.submit("curves", done.append, version)
    release.set()
    writer.wait()
    assert done == [3]


def test_an_error_is_raised_in_the_callers_thread():
    def fail():
        raise OSError("disk full")

    writer = BackgroundWriter()
    writer.submit("bad", fail)
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    writer.submit("good", lambda: None)  # the error was reported once; the writer goes on
    writer.wait()


def test_leaving_the_block_with_an_error_still_finishes_the_writes():
    done = []
    with pytest.raises(ValueError), BackgroundWriter() as writer:
        writer.submit("best", lambda: (time.sleep(0.05), done.append("best")))
        raise ValueError("a bad image")
    assert done == ["best"]
