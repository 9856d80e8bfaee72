"""File writes on a background thread, so a training loop never waits for the disk or for matplotlib."""

import contextlib
import threading


class BackgroundWriter:
    """Runs submitted writes one at a time, in order, on one daemon thread.

    A write submitted under a `key` that still waits replaces the waiting one (only the newest picture of the
    curves, say, is worth drawing). The first error a write raises is raised again in the caller's thread by the
    next `submit` or `wait`; `wait()` returns once every submitted write is done. Use as a context manager: leaving
    the block waits for the writes, also when an error is on its way out (a best model queued before a data error
    still lands), but not after Ctrl-C, which means "stop now".
    """

    def __init__(self):
        self._waiting: dict[str, tuple] = {}  # key -> (function, args), in submission order
        self._condition = threading.Condition()
        self._busy = False
        self._error: BaseException | None = None
        threading.Thread(target=self._work, name="background-writer", daemon=True).start()

    def submit(self, key: str, function, *args) -> None:
        """Run `function(*args)` soon, after the writes submitted before it."""
        with self._condition:
            self._raise_error()
            self._waiting.pop(key, None)
            self._waiting[key] = (function, args)
            self._condition.notify_all()

    def wait(self) -> None:
        """Block until every submitted write has finished; raise the first error one of them raised."""
        with self._condition:
            self._condition.wait_for(lambda: not self._waiting and not self._busy)
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _work(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._waiting)
                key = next(iter(self._waiting))
                function, args = self._waiting.pop(key)
                self._busy = True
            try:
                function(*args)
            except BaseException as error:  # handed to the caller's thread, which decides what to do
                with self._condition:
                    self._error = self._error or error
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def __enter__(self):
        return self

    def __exit__(self, exception_type, *_):
        if exception_type is None:
            self.wait()
        elif not issubclass(exception_type, KeyboardInterrupt):
            with contextlib.suppress(Exception):  # the error already leaving the block is the one to report
                self.wait()
