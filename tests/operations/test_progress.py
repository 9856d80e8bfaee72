"""common/progress.py: a tqdm bar on a terminal; plain periodic lines, without carriage returns, in a log file."""

import re
import subprocess
import sys
import textwrap

import pytest
from tqdm import tqdm

from common import progress as progress_module
from common.progress import PlainProgress, progress_bar
from tests.scripts import REPO

PLAIN_LINE = r"^epoch 3/100: \d+/6 steps, [\d.]+ step/s, ETA \d+ s$"


def test_a_terminal_gets_a_tqdm_bar(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = progress_bar(range(3), "epoch 3/100", unit="step")
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]
    assert "\r" in capsys.readouterr().err


def test_a_file_gets_plain_lines_every_period_and_one_at_the_end(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    clock = iter(range(0, 100, 10))  # each reading 10 s after the last: one line every 20 s
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    bar = progress_bar(range(6), "epoch 3/100", unit="step", every=20)
    assert isinstance(bar, PlainProgress)
    assert list(bar) == list(range(6))
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "epoch 3/100: 2/6 steps, 0.1 step/s, ETA 40 s",
        "epoch 3/100: 4/6 steps, 0.1 step/s, ETA 20 s",
        "epoch 3/100: 6/6 steps, 0.1 step/s, took 70 s",  # no periodic line at 6/6,
    ]


def test_plain_bytes_are_counted_in_megabytes_and_closing_twice_writes_one_end_line(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with progress_bar(description="kvasir-seg.zip", total=4 * 2**20, unit="B", every=3600) as bar:
        bar.update(2**20)
        bar.close()
    assert capsys.readouterr().err.startswith("kvasir-seg.zip: 1.0/4.0 MB, ")
    assert capsys.readouterr().err == ""


def test_disabled_progress_writes_nothing(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with progress_bar(description="predicting", total=1, unit="img", disable=True) as bar:
        bar.update(1)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_a_process_writing_into_a_file_writes_periodic_lines_and_no_carriage_return(tmp_path):
    program = textwrap.dedent("""
        import time
        from common.progress import progress_bar
        for _ in progress_bar(range(6), "epoch 3/100", unit="step", every=0.1):
            time.sleep(0.06)
    """)
    log = tmp_path / "train.log"
    with open(log, "w") as file:
        subprocess.run([sys.executable, "-c", program], cwd=REPO, stdout=file, stderr=file, check=True)
    text = log.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) >= 3, text  # at least two periodic lines and the end line
    assert all(re.match(PLAIN_LINE, line) for line in lines[:-1]), text
    assert lines[-1].startswith("epoch 3/100: 6/6 steps, ") and ", took " in lines[-1]
