"""Progress for a person at a terminal and for a log file: a tqdm bar when the bar's stream (stderr) is a terminal,
otherwise a plain line every PLAIN_EVERY_SECONDS and one at the end, since a bar redirected into a file (a cluster
job, `nohup`) writes one carriage-return update per step."""

import sys
import time

from tqdm import tqdm

PLAIN_EVERY_SECONDS = 30.0


def format_duration(seconds: float) -> str:
    """A duration as a person reads it: '45 s', '12 min', '3 h 12 min', '2 days 5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} days {hours % 24} h"


def format_size(size: float) -> str:
    """A number of bytes as a person reads it, never rounded to nothing: '512 bytes', '4.2 MiB', '1.5 GiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.{1 if size < 100 * scale else 0}f} {unit}"
    return f"{size:.0f} bytes"


def progress_bar(
    iterable=None,
    description: str = "",
    total: int | None = None,
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
    every: float = PLAIN_EVERY_SECONDS,
):
    """Wrap `iterable` (or count `.update(n)` calls up to `total`) with progress shown on stderr: a tqdm bar on a
    terminal, plain lines in a file. Usable as an iterable and as a context manager, as tqdm is. unit="B" counts
    bytes (shown in KB, MB, ...)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if disable or sys.stderr.isatty():
        byte_scale = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
        return tqdm(iterable, description, total=total, unit=unit, disable=disable, leave=leave, **byte_scale)
    return PlainProgress(iterable, description, total, unit, every)


def print_line(text: str) -> None:
    """Print a line on stdout without breaking a progress bar on the terminal (above it, as tqdm.write does)."""
    tqdm.write(text)


class PlainProgress:
    """Progress as plain lines on stderr, for a log file: "epoch 3/100: 120/500 steps, 2.1 step/s, ETA 3 min" every
    `every` seconds, and "... 500/500 steps, 2.1 step/s, took 4 min" once at the end."""

    def __init__(self, iterable, description: str, total: int | None, unit: str, every: float):
        self.iterable, self.description, self.total, self.every = iterable, description, total, every
        self.scale, self.unit = (2**20, "MB") if unit == "B" else (1, unit)
        self.n, self.closed = 0, False
        self.started = self.last_line = time.monotonic()

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last_line >= self.every and self.n != self.total:  # the end line follows a finished count
            self.last_line = now
            self._write(now)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(time.monotonic(), done=True)

    def _write(self, now: float, done: bool = False) -> None:
        elapsed = now - self.started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        count = self._amount(self.n) + (f"/{self._amount(self.total)}" if self.total is not None else "")
        units = self.unit if self.scale > 1 else f"{self.unit}s"
        line = f"{self.description}: {count} {units}, {rate / self.scale:.1f} {self.unit}/s"
        if done:
            line += f", took {format_duration(elapsed)}"
        elif self.total is not None and rate > 0:
            line += f", ETA {format_duration((self.total - self.n) / rate)}"
        print(line, file=sys.stderr, flush=True)

    def _amount(self, count: int) -> str:
        return f"{count / self.scale:.1f}" if self.scale > 1 else str(count)
