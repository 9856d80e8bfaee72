"""Ctrl-C (SIGINT) and SIGTERM, everywhere they arrive: in the training loop, in its DataLoader workers, in the
sweep that runs trainings, and around writes that must not leave partial files.

- `StopRequest`: the training loop's main process turns the first signal into a flag it checks after each step,
  so it can save and stop cleanly; a step that has not ended a few seconds later is dropped instead.
- `worker_init`: DataLoader workers leave the first signal to the main process.
- `SignalForwarder`: the sweep records the signals and passes each one, once, to the runs it started.
- `sigterm_cleans_up`: SIGTERM stops a process through Python's clean-up, so interrupted work leaves no partial files.
"""

import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time
from multiprocessing import AuthenticationError
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SIGTERM_STATUS = 128 + signal.SIGTERM  # the shell convention for a process stopped by SIGTERM: 143
GRACE_SECONDS = 5.0  # how long the step in progress may take to end after a signal before the run stops without it


def exit_status(number: int) -> int:
    """The shell convention 128 + signal number: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + number


class SignalHandler:
    """While active (`with ...:`), SIGINT and SIGTERM call `self.handle(number, frame)` instead of their previous
    handlers, which come back on exit."""

    previous_handlers: dict = {}

    def __enter__(self):
        self.previous_handlers = {number: signal.signal(number, self.handle) for number in SIGNALS}
        return self

    def __exit__(self, *_exception):
        for number, handler in self.previous_handlers.items():
            signal.signal(number, handler)

    def handle(self, number, _frame) -> None:
        raise NotImplementedError


class StopRequest(SignalHandler):
    """While active (`with StopRequest() as stop:`), the first SIGINT/SIGTERM sets `stop.requested` instead
    of raising mid-step; a second one, once the loop has seen the first, raises KeyboardInterrupt at once, unless
    `escalate` is False (under torchrun, whose launcher passes the terminal's signal on to every process a second
    time). The previous handlers come back on exit.

    With `escalate`, a watcher thread also hears each signal as it arrives (through signal.set_wakeup_fd), even while
    the main thread is inside one long call that Python cannot interrupt, such as a backward pass of many seconds
    on a CPU. If the loop has not seen `requested` within `grace` seconds of the first signal, or a second signal
    comes before it has, the process ends at once with the signal's exit status: the step in progress is dropped,
    and `state_path` keeps the last state saved (files are written atomically, so none is left half-written).
    """

    def __init__(self, escalate: bool = True, grace: float = GRACE_SECONDS, state_path: Path | None = None):
        self.escalate, self.grace, self.state_path = escalate, grace, state_path
        self.signal_name = None
        # while set, (what is in progress, save): the watcher calls `save()`, which saves what is done and says where,
        # before it ends the process (e.g. the epoch's finished training during its validation)
        self.save_before_exit = None
        self._seen = threading.Event()  # the loop has seen the request: it is saving and stopping by itself
        self._watcher, self._first, self._deadline = None, 0, 0.0  # the watcher's: the first signal, and when

    def __enter__(self):
        super().__enter__()
        if self.escalate:
            self._watcher = _SignalWatcher(self._watch)
        return self

    def __exit__(self, *exception):
        if self._watcher:
            self._watcher.close()
        super().__exit__(*exception)

    def handle(self, number, _frame) -> None:
        if self.signal_name is not None:
            if self.escalate and self._seen.is_set():
                raise KeyboardInterrupt
            return  # under torchrun; or before the loop has seen the first, when the watcher stops the run
        self.signal_name = signal.Signals(number).name
        again = f" (without it if it has not ended in {self.grace:g} s, or at a second signal)" if self.escalate else ""
        print(f"\n{self.signal_name} received: saving after this step to resume later{again}")

    def _watch(self, numbers: list[int], deadline_passed: bool) -> float | None:
        """The watcher's decision after signals `numbers` arrived (or its wait ended): the seconds to wait for
        more, None for no limit; it ends the process when the loop has not seen the request in time."""
        if self._seen.is_set():
            return None
        if numbers and not self._first:
            self._first, self._deadline = numbers[0], time.monotonic() + self.grace
            numbers = numbers[1:]
        if not self._first:
            return None
        if numbers or deadline_passed or time.monotonic() >= self._deadline:
            self._stop_now()
        return max(0.0, self._deadline - time.monotonic())

    def _stop_now(self) -> None:
        """End the process now, saying what the last save kept (the main thread may be anywhere in its work); with
        `save_before_exit` set, after saving what is done."""
        in_progress, kept = "the step in progress", None
        if self.save_before_exit:
            in_progress, save = self.save_before_exit
            try:
                kept = save()
            except Exception as error:  # the last save stays, said below
                print(f"\ncould not save before stopping ({error})", flush=True)
        kept = kept or self._last_save()
        name, seconds = signal.Signals(self._first).name, f"{self.grace:g} s"
        message = f"\n{name}: stopped without {in_progress}, which had not ended {seconds} on; {kept}\n"
        sys.stdout.flush()  # what the run printed so far, then the message, unbuffered
        os.write(1, message.encode())
        os._exit(exit_status(self._first))

    def _last_save(self) -> str:
        """What `state_path` keeps, for the line the process ends with."""
        if self.state_path and self.state_path.is_file():
            age = time.time() - self.state_path.stat().st_mtime
            return f"{self.state_path} keeps the state saved {age:.0f} s before; continue with --resume"
        return "no resumable state was saved yet"

    @property
    def number(self) -> int:
        """The number of the signal received, 0 for none."""
        return signal.Signals[self.signal_name].value if self.signal_name else 0

    def adopt(self, number: int) -> None:
        """Stop as if signal `number` had come here too (another process of the run received it); 0 changes nothing."""
        if number and self.signal_name is None:
            self.signal_name = signal.Signals(number).name

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for. Reading True tells the watcher that the loop is stopping by itself."""
        if self.signal_name is not None:
            self._seen.set()
        return self.signal_name is not None

    @property
    def exit_status(self) -> int:
        """130 for SIGINT, 143 for SIGTERM."""
        return exit_status(self.number)


class _SignalWatcher:
    """A thread told of every signal the moment it arrives, whatever the main thread is doing: Python writes each
    signal's number to a socket (signal.set_wakeup_fd) before its handler can run. It calls `decide(numbers,
    deadline_passed)`, which returns how long to wait for the next signals (None: no limit)."""

    def __init__(self, decide):
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._decide, self._closing = decide, False
        _WATCHED.extend([self._reader, self._writer])
        self._thread = threading.Thread(target=self._run, name="signal watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        timeout = None
        while True:
            ready, _, _ = select.select([self._reader], [], [], timeout)
            data = self._reader.recv(64) if ready else b""
            if self._closing:
                return
            timeout = self._decide([number for number in data if number in SIGNALS], deadline_passed=not ready)

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        self._closing = True
        self._writer.send(b"\0")  # wakes the thread, which returns
        self._thread.join()
        _WATCHED.clear()
        self._reader.close()
        self._writer.close()


_WATCHED = []  # the active watcher's sockets


def _forget_watcher_in_child() -> None:
    """In a process forked while a watcher runs (a DataLoader worker): its signals are its own, so they must not
    reach the parent's watcher through the inherited wakeup socket."""
    if _WATCHED:
        with contextlib.suppress(ValueError):  # only a main thread may set it
            signal.set_wakeup_fd(-1)
        for sock in _WATCHED:
            sock.close()
        _WATCHED.clear()


os.register_at_fork(after_in_child=_forget_watcher_in_child)


def worker_init(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and a first SIGTERM to the main process, which saves and then shuts them down
    in order.

    A terminal's Ctrl-C, and SLURM's or systemd's SIGTERM, reach every process of the run at once; a worker that
    died of it would end the run with a DataLoader traceback instead of a save. A second SIGTERM (how a worker is
    terminated when it does not stop by itself) ends the worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _ignore_first_sigterm)
    sys.excepthook = _quiet_lost_consumer


def _quiet_lost_consumer(kind, value, traceback) -> None:
    """In a DataLoader worker, a connection lost mid-transfer (multiprocessing's resource_sharer thread, handing a
    batch's file descriptors over) means the training process it feeds was killed: the run says that once, so the
    orphaned worker prints no traceback of its own. Every other error is printed as usual."""
    if not issubclass(kind, EOFError | ConnectionError | AuthenticationError):
        sys.__excepthook__(kind, value, traceback)


def _ignore_first_sigterm(number, _frame) -> None:
    signal.signal(number, signal.SIG_DFL)


class SignalForwarder(SignalHandler):
    """While active, SIGINT and SIGTERM are recorded instead of stopping the process; `forward` passes each one, once,
    to the running child processes (train.py saves its state and stops at the first, stops at once at a second)."""

    def __init__(self):
        self.received, self.forwarded = [], 0

    def handle(self, number, _frame) -> None:
        self.received.append(number)  # only this: printing here could interrupt a print of the main loop

    def forward(self, processes: list, say=print) -> None:
        """Send the signals received since the last call to `processes` (subprocess.Popen), announced with `say`."""
        new = self.received[self.forwarded :]
        self.forwarded += len(new)
        for number in new:
            say(f"{signal.Signals(number).name} received: stopping {len(processes)} running process(es), no new runs")
            for process in processes:
                process.send_signal(number)

    @property
    def exit_status(self) -> int:
        """The first signal's: 130 for SIGINT, 143 for SIGTERM."""
        return exit_status(self.received[0])


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
