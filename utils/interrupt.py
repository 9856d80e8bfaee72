"""Turn Ctrl-C (SIGINT) and SIGTERM into a flag the training loop checks, so it can save and stop cleanly."""

import signal


class StopRequest:
    """Installs handlers that record the first SIGINT/SIGTERM instead of raising mid-step."""

    def __init__(self):
        self.signal_name = None
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._record)

    def _record(self, number, _frame) -> None:
        if self.signal_name is None:
            print(f"\n{signal.Signals(number).name} received: finishing this step, then saving to resume later")
        self.signal_name = signal.Signals(number).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @property
    def exit_status(self) -> int:
        """The shell convention 128 + signal number."""
        return 128 + signal.Signals[self.signal_name].value
