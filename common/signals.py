"""Ctrl-C (SIGINT) and SIGTERM, everywhere they arrive: in the training loop, in its DataLoader workers, in the
sweep that runs trainings, and around writes that must not leave partial files.

- `StopRequest`: the training loop's main process turns the first signal into a flag it checks after each step,
  so it can save and stop cleanly.
- `worker_init`: DataLoader workers leave the first signal to the main process.
- `SignalForwarder`: the sweep records the signals and passes each one, once, to the runs it started.
- `sigterm_cleans_up`: SIGTERM stops a process through Python's clean-up, so interrupted work leaves no partial files.
"""

import contextlib
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SIGTERM_STATUS = 128 + signal.SIGTERM  # the shell convention for a process stopped by SIGTERM: 143


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
    of raising mid-step; a second one raises KeyboardInterrupt at once, unless `escalate` is False (under torchrun,
    whose launcher passes the terminal's signal on to every process a second time).
    """

    def __init__(self, escalate: bool = True):
        self.escalate = escalate
        self.signal_name = None

    def handle(self, number, _frame) -> None:
        if self.signal_name is not None:
            if self.escalate:
                raise KeyboardInterrupt
            return
        self.signal_name = signal.Signals(number).name
        again = " (again to stop at once)" if self.escalate else ""
        print(f"\n{self.signal_name} received: saving after this step to resume later{again}")

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
        return self.signal_name is not None

    @property
    def exit_status(self) -> int:
        """130 for SIGINT, 143 for SIGTERM."""
        return exit_status(self.number)


def worker_init(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and a first SIGTERM to the main process, which saves and then shuts them down
    in order.

    A terminal's Ctrl-C, and SLURM's or systemd's SIGTERM, reach every process of the run at once; a worker that
    died of it would end the run with a DataLoader traceback instead of a save. A second SIGTERM (how a worker is
    terminated when it does not stop by itself) ends the worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _ignore_first_sigterm)


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
