"""train.py under torchrun with 2 processes (gloo, CPU): the same history as 1 process within a stated tolerance,
and Ctrl-C to the whole group stops every process at one step, saves once, and resumes exactly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataset.synthetic import make_kvasir_folder
from tests.scripts import REPO
from tests.train_runs import read_events, read_history
from utils.tensorboard_log import event_files

FLAGS = [
    "--device", "cpu", "--no-show-panels", "--image-size", "32", "--base-channels", "4", "--depth", "2",
    "--batch-size", "4", "--num-workers", "1", "--epochs", "12", "--learning-rate", "3e-3", "--tensorboard",
]  # fmt: skip
# losses: on the CPU each process normalises its own half batch (no SyncBatchNorm there), so the two runs drift
# apart; most on the validation loss of the 3 validation images (0.050 by epoch 12 on the copy-group split, whose 3
# images differ from the earlier train_test_split's, 0.03 on those)
TOLERANCE = 0.06


def command(data, run, processes: int, *flags) -> list[str]:
    """train.py on `data` writing into `run`, alone or under torchrun with `processes` processes."""
    paths = ["--data-dir", str(data), "--output-dir", str(run), "--checkpoint-path", str(run / "best.pth")]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [*(launcher if processes > 1 else [sys.executable]), str(REPO / "scripts" / "train.py"), *paths, *flags]


ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}


def run(*arguments) -> subprocess.CompletedProcess:
    result = subprocess.run(command(*arguments), capture_output=True, text=True, env=ENVIRONMENT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process, two processes, and two processes stopped by Ctrl-C after epoch 2 and resumed."""
    tmp_path = tmp_path_factory.mktemp("distributed")
    data = tmp_path / "data"
    make_kvasir_folder(data, count=24)
    run(data, tmp_path / "one", 1, *FLAGS)
    run(data, tmp_path / "two", 2, *FLAGS)
    stopped_output = stop_after_epoch_2(data, tmp_path / "stopped", lambda pid: os.killpg(pid, signal.SIGINT))
    resumed = run(data, tmp_path / "stopped", 2, "--resume")
    one_signalled = stop_after_epoch_2(
        data, tmp_path / "one-signalled", lambda pid: os.kill(workers(pid)[-1], signal.SIGTERM)
    )
    run(data, tmp_path / "one-signalled", 2, "--resume")
    return tmp_path, stopped_output, resumed, one_signalled


def stop_after_epoch_2(data, folder, send) -> str:
    """Start a 2-process run in its own session, call `send(torchrun's pid)` once epoch 2 is logged, and return
    everything it printed."""
    log_path = folder.with_suffix(".log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command(data, folder, 2, *FLAGS), stdout=log, stderr=subprocess.STDOUT, env=ENVIRONMENT,
            start_new_session=True,
        )  # fmt: skip
        while "epoch   2" not in log_path.read_text().replace("\r", "\n"):
            assert process.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.1)
        send(process.pid)
        process.wait(timeout=120)
    return log_path.read_text()


def workers(launcher_pid: int) -> list[int]:
    """The pids of the training processes torchrun started."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    return sorted(map(int, children))


@pytest.mark.slow
def test_two_processes_give_the_history_of_one_within_the_tolerance(runs):
    tmp_path, _, _, _ = runs
    one, two = (read_history(tmp_path / name / "history.csv") for name in ("one", "two"))
    assert [row["learning_rate"] for row in one] == [row["learning_rate"] for row in two]
    for column in ("train_loss", "val_loss"):
        gaps = [abs(float(a[column]) - float(b[column])) for a, b in zip(one, two, strict=True)]
        assert max(gaps) < TOLERANCE, (column, gaps)
    files = {name: sorted(map(file_kind, (tmp_path / name).rglob("*"))) for name in ("one", "two")}
    assert files["one"] == files["two"]  # the main process writes what a single process writes, once
    assert files["two"].count("events.out.tfevents.*") == 2  # the run's events and its tensorboard/hparams/ ones


def file_kind(path: Path) -> str:
    """A file's name, with the time, host and process id of a TensorBoard event file's name left out."""
    return "events.out.tfevents.*" if path.name.startswith("events.out.tfevents.") else path.name


@pytest.mark.slow
def test_ctrl_c_stops_every_process_once_and_the_run_resumes_exactly(runs):
    tmp_path, stopped_output, resumed, _ = runs
    assert stopped_output.count("saved the state at epoch") == 1  # only the main process writes
    assert "again to stop at once" not in stopped_output  # torchrun passes the signal on a second time
    assert "resuming" in resumed.stdout
    assert read_history(tmp_path / "stopped" / "history.csv") == read_history(tmp_path / "two" / "history.csv")
    assert len(event_files(tmp_path / "stopped")) == 2  # one per run of the main process
    stopped, uninterrupted = read_events(tmp_path / "stopped"), read_events(tmp_path / "two")
    for tag in uninterrupted.Tags()["scalars"]:
        steps = [event.step for event in stopped.Scalars(tag)]
        assert steps == sorted(set(steps)) == [event.step for event in uninterrupted.Scalars(tag)], tag


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_at_the_same_step(runs):
    tmp_path, _, _, one_signalled = runs  # SIGTERM to one training process only: the others must not hang
    assert one_signalled.count("saved the state at epoch") == 1
    assert read_history(tmp_path / "one-signalled" / "history.csv") == read_history(tmp_path / "two" / "history.csv")


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1], ids=["main-process", "other-process"])
def test_kill_9_of_one_process_stops_the_others_with_one_line(tmp_path, victim):
    data = tmp_path / "data"
    make_kvasir_folder(data, count=24)
    output = stop_after_epoch_2(data, tmp_path / "run", lambda pid: os.kill(workers(pid)[victim], signal.SIGKILL))
    assert "error: another of the 2 training processes stopped without a word" in output
    assert "[rank" not in output  # no survivor's traceback (torchrun's own failure summary follows)
    if victim == 1:  # the main process survived and saved the state: the run continues
        assert "resuming" in run(data, tmp_path / "run", 2, "--resume").stdout
