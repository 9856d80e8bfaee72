"""Let SIGTERM stop a process through Python's clean-up, so that work it interrupts leaves no partial files."""

import contextlib
import signal
import sys
import threading

SIGTERM_STATUS = 128 + signal.SIGTERM  # the shell convention for a process stopped by SIGTERM: 143


@contextlib.contextmanager
def sigterm_cleans_up():
    """While active, SIGTERM raises SystemExit(143) instead of killing the process where it stands, so the
    `finally` blocks that delete partial files run first; further SIGTERMs are ignored while they do. The previous
    handler comes back on exit.

    It changes nothing where SIGTERM already has a handler (e.g. the training loop's StopRequest) or is ignored,
    and outside the main thread, where Python cannot handle signals.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _exit_cleanly(_number, _frame) -> None:
    """Raise SystemExit(143) once, telling the user why the process ends."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("\nSIGTERM received: stopping, without keeping partial files", file=sys.stderr)
    raise SystemExit(SIGTERM_STATUS)
