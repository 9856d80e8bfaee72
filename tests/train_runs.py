"""Run `scripts/train.py` on tiny settings: as a subprocess (as a user does) or in this process (no start-up cost)."""

import contextlib
import csv
import io
import subprocess
import sys

from common.errors import run_main
from tests.scripts import REPO, load_script, run_script
from utils.tensorboard_log import events_folder

TINY = ["--image-size", "32", "--base-channels", "4", "--depth", "2", "--batch-size", "4", "--num-workers", "0"]
train_script = load_script("train")


def command_line(tmp_path, *flags, name="run") -> list[str]:
    """Flags for a CPU run on the synthetic data in tmp_path/data, writing into tmp_path/name."""
    return [
        "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / name),
        "--checkpoint-path", str(tmp_path / name / "best.pth"), "--device", "cpu", "--no-show-panels", *TINY, *flags,
    ]  # fmt: skip


def train(tmp_path, *flags, name="run", check=True):
    """Run the training script in a subprocess; return the completed process."""
    result = run_script("train", *command_line(tmp_path, *flags, name=name))
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def train_in_process(tmp_path, *flags, name="run") -> tuple[int, str, str]:
    """Run the script's `main` through `run_main` here on `command_line`; return (exit status, stdout, stderr)."""
    return run_in_process(command_line(tmp_path, *flags, name=name))


def run_in_process(arguments: list[str]) -> tuple[int, str, str]:
    """Run the script's `main` through `run_main` here with these arguments; return (exit status, stdout, stderr).
    It starts on the thread count a fresh process has (tests/conftest.py restores it after every test), so that it
    computes as a subprocess run would (sums over two threads and over one round differently)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["train.py", *arguments]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), _patched_argv(argv):
        try:
            run_main(train_script.main)
            status = 0
        except SystemExit as exit_:
            status = exit_.code
    return status, stdout.getvalue(), stderr.getvalue()


@contextlib.contextmanager
def _patched_argv(argv):
    saved, sys.argv = sys.argv, argv
    try:
        yield
    finally:
        sys.argv = saved


def error_line(stderr: str) -> str:
    """The one `error: ...` line a failed run ends with, after checking there is no traceback."""
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr[-2000:]
    return last


def read_history(path):
    """history.csv rows without the wall-clock columns (`seconds`, `train_seconds`, ...)."""
    with open(path) as file:
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in csv.DictReader(file)]


def read_events(run_folder, folder=events_folder):
    """Every TensorBoard event of the run in `run_folder` (in its `folder(run_folder)`: the curves', or
    settings_folder), as TensorBoard's server loads them (purged steps hidden), with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder(run_folder)), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


@contextlib.contextmanager
def lock_held_elsewhere(path):
    """Hold `path` with common.files.exclusive_lock in another process (as another run would) for the block; yield
    that process's pid."""
    code = (
        "import sys, time; from common.files import exclusive_lock\n"
        "with exclusive_lock(sys.argv[1], 'the test'):\n    print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
