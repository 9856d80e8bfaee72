"""Turn Ctrl-C (SIGINT) and SIGTERM into a flag the training loop checks, so it can save and stop cleanly."""

import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While active (`with StopRequest() as stop:`), the first SIGINT/SIGTERM sets `stop.requested` instead
    of raising mid-step; a second one raises KeyboardInterrupt at once, unless `escalate` is False (under torchrun,
    whose launcher passes the terminal's signal on to every process a second time). The previous handlers come back
    on exit.
    """

    def __init__(self, escalate: bool = True):
        self.escalate = escalate
        self.signal_name = None
        self.previous_handlers = {}

    def __enter__(self):
        self.previous_handlers = {number: signal.signal(number, self._record) for number in SIGNALS}
        return self

    def __exit__(self, *_exception):
        for number, handler in self.previous_handlers.items():
            signal.signal(number, handler)

    def _record(self, number, _frame) -> None:
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
        """The shell convention 128 + signal number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + signal.Signals[self.signal_name].value
