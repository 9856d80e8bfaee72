"""train.py under stress: bad files, bad resumes, a held lock, a diverging loss, and Ctrl-C / SIGTERM / kill -9
in the middle of a run, after which `--resume` must end exactly where an uninterrupted run ends."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from common.signals import StopRequest
from dataset.synthetic import make_kvasir_folder
from tests.checkpoints import save_untrained_checkpoint
from tests.scripts import REPO
from tests.train_runs import command_line, error_line, lock_held_elsewhere, read_events, read_history, train_in_process
from utils.tensorboard_log import event_files

# long enough that a signal after epoch 1 lands mid-run; with the weight average and the auxiliary heads of deep
# supervision, whose states must resume too, and TensorBoard events, whose curves must go on without a step twice
EPOCHS = ["--epochs", "10", "--panel-every", "100", "--ema-decay", "0.9", "--deep-supervision", "0.5", "--tensorboard"]
EPOCH_LINE = re.compile(r"^epoch +\d+  train loss")


@pytest.mark.parametrize("loading", [["--cache"], ["--no-cache", "--num-workers", "1"]], ids=["cache", "worker"])
def test_empty_image_stops_the_run_with_one_line(kvasir_dir, tmp_path, loading):
    (kvasir_dir / "Kvasir-SEG" / "images" / "sample_003.jpg").write_bytes(b"")
    status, _, stderr = train_in_process(tmp_path, "--epochs", "1", *loading)
    assert status == 2
    assert error_line(stderr).endswith("sample_003.jpg is empty (0 bytes); replace or remove it and its pair.")


def test_training_on_a_read_only_data_folder_reads_the_image_files(kvasir_dir, tmp_path, read_only):
    read_only(kvasir_dir)
    status, stdout, stderr = train_in_process(tmp_path, "--epochs", "1", "--cache")
    assert status == 0, stderr[-2000:]
    assert (
        f"note: cannot write the image cache in {kvasir_dir / 'cache'} (Read-only file system); reading the image"
        " files instead" in stdout
    )


@pytest.mark.parametrize(
    ("last_pth", "message"),
    [
        (None, "nothing to resume: {last} does not exist"),
        (b"not a checkpoint", "{last} is not a readable checkpoint of this repository"),
        ("model", "{last} is a model checkpoint, not a resumable training state"),
    ],
    ids=["missing", "corrupt", "model-only"],
)
def test_resume_without_a_usable_state_is_refused(tmp_path, last_pth, message):
    last = tmp_path / "run" / "last.pth"
    last.parent.mkdir()
    if isinstance(last_pth, bytes):
        last.write_bytes(last_pth)
    elif last_pth == "model":
        save_untrained_checkpoint(last, tmp_path / "no data")
    status, _, stderr = train_in_process(tmp_path, "--resume")
    assert status == 2 and message.format(last=last) in error_line(stderr)


@pytest.mark.parametrize(("lock", "guarded"), [("train.lock", ""), ("best.pth.lock", "best.pth")])
def test_a_second_run_on_the_same_files_is_refused(kvasir_dir, tmp_path, lock, guarded):
    with lock_held_elsewhere(tmp_path / "run" / lock) as holder:
        status, _, stderr = train_in_process(tmp_path, "--epochs", "1")
    assert status == 2
    assert f"another run (pid {holder}) is writing {tmp_path / 'run' / guarded}" in error_line(stderr)
    assert not list((tmp_path / "run").glob("*.[pc][ts][hv]"))  # no history.csv, last.pth or best.pth


def test_non_finite_loss_stops_and_keeps_the_best_checkpoint(kvasir_dir, tmp_path):
    assert train_in_process(tmp_path, "--epochs", "1")[0] == 0
    run = tmp_path / "run"
    best_before, history_before = (run / "best.pth").read_bytes(), (run / "history.csv").read_text()
    state = torch.load(run / "last.pth", weights_only=True)
    state["config"]["EPOCHS"] = 2  # continue for one more epoch, with a weight that makes every loss NaN
    state["model_state"]["inc.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, run / "last.pth")
    status, _, stderr = train_in_process(tmp_path, "--resume")
    assert status == 2
    assert "the training loss became non-finite at epoch 2, step 1; nothing from this epoch was saved" in error_line(
        stderr
    )
    assert (run / "best.pth").read_bytes() == best_before and (run / "history.csv").read_text() == history_before


def test_a_second_signal_stops_at_once_and_handlers_come_back():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.exit_status == 143
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def start(tmp_path, *flags):
    """Start train.py in its own process group, with unbuffered stdout piped and stderr in a file."""
    stderr = open(tmp_path / f"stderr-{len(list(tmp_path.glob('stderr-*')))}.txt", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), *command_line(tmp_path, *flags)],
        stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"},
    )  # fmt: skip
    return process, stderr


def interrupt_after_first_epoch(process, send) -> tuple[int, str]:
    """Wait for the first epoch line, call `send(pid)`, and return (exit status, all stdout)."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if EPOCH_LINE.match(line):
            send(process.pid)
            break
    rest, _ = process.communicate(timeout=120)
    return process.returncode, "".join(lines) + rest


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory):
    """An uninterrupted run, and the same run stopped by Ctrl-C, SIGTERM and kill -9 and resumed each time."""
    tmp_path = tmp_path_factory.mktemp("interrupts")
    make_kvasir_folder(tmp_path / "data")
    reference = train_in_process(tmp_path, *EPOCHS, name="reference")
    assert reference[0] == 0, reference[2][-2000:]
    results = {}
    control_c = lambda pid: os.killpg(pid, signal.SIGINT)  # noqa: E731  the terminal signals the whole group
    sigterm = lambda pid: os.killpg(pid, signal.SIGTERM)  # noqa: E731  as SLURM and systemd signal the whole group
    kill_9 = lambda pid: os.kill(pid, signal.SIGKILL)  # noqa: E731
    for name, send, flags in [
        ("SIGINT", control_c, [*EPOCHS, "--num-workers", "1"]),
        ("SIGTERM", sigterm, ["--resume", "--num-workers", "1"]),
        ("SIGKILL", kill_9, ["--resume", "--num-workers", "1"]),
    ]:
        process, stderr = start(tmp_path, *flags)
        status, stdout = interrupt_after_first_epoch(process, send)
        stderr.seek(0)
        results[name] = (status, stdout, stderr.read())
        if name == "SIGKILL":
            (tmp_path / "run" / ".last.pth.killed.tmp").write_bytes(b"half a file")  # as if killed mid-write
    results["final"] = train_in_process(tmp_path, "--resume")
    return tmp_path, results


@pytest.mark.slow
@pytest.mark.parametrize(("name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_saves_a_resumable_state_and_exits_cleanly(interrupted_runs, name, status):
    _, results = interrupted_runs
    exit_status, stdout, stderr = results[name]
    assert exit_status == status, stderr[-2000:]
    assert f"{name} received: saving after this step" in stdout
    assert re.search(r"saved the state at epoch \d+ step \d+ to .*last.pth; continue with --resume", stdout)
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_kill_9_leaves_loadable_checkpoints(interrupted_runs):
    tmp_path, results = interrupted_runs
    assert results["SIGKILL"][0] == -signal.SIGKILL
    for path in (tmp_path / "run" / "best.pth", tmp_path / "run" / "last.pth"):
        assert "model_state" in torch.load(path, weights_only=True)
    assert not list((tmp_path / "run").glob(".*.tmp"))  # the next run tidied the stale temporary file away


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_like_an_uninterrupted_one(interrupted_runs):
    tmp_path, results = interrupted_runs
    assert results["final"][0] == 0, results["final"][2][-2000:]
    assert read_history(tmp_path / "run" / "history.csv") == read_history(tmp_path / "reference" / "history.csv")
    for name, weights in [("last.pth", "model_state"), ("last.pth", "ema_state"), ("best.pth", "model_state")]:
        resumed = torch.load(tmp_path / "run" / name, weights_only=True)[weights]
        reference = torch.load(tmp_path / "reference" / name, weights_only=True)[weights]
        assert resumed.keys() == reference.keys()
        assert all(torch.equal(resumed[key], reference[key]) for key in reference)


@pytest.mark.slow
def test_interrupted_and_resumed_run_continues_its_tensorboard_curves(interrupted_runs):
    tmp_path, _ = interrupted_runs
    resumed, reference = (read_events(tmp_path / name) for name in ("run", "reference"))
    assert len(event_files(tmp_path / "run")) == 4  # the first run and its three resumptions
    assert resumed.Tags()["scalars"] == reference.Tags()["scalars"]
    for tag in reference.Tags()["scalars"]:
        steps = [event.step for event in resumed.Scalars(tag)]
        assert steps == sorted(set(steps)), tag  # strictly increasing: no step twice, none going back
        assert steps == [event.step for event in reference.Scalars(tag)], tag
    history = read_history(tmp_path / "run" / "history.csv")
    assert [event.value for event in resumed.Scalars("validation/dice")] == pytest.approx(
        [float(row["val_dice"]) for row in history], rel=1e-6
    )


def test_a_stop_taken_from_another_process_exits_with_its_signal():
    with StopRequest() as stop:
        stop.adopt(0)
        assert not stop.requested
        stop.adopt(signal.SIGTERM)  # under torchrun: another process received SIGTERM
        assert stop.requested and stop.exit_status == 143
        stop.adopt(signal.SIGINT)  # the first reason stays
        assert stop.exit_status == 143


# A process whose "step" is one call that does not return for 60 s (as a long backward pass on a CPU), inside
# StopRequest; it prints "stepping" when the call starts, and reads `stop.requested` only after it.
LONG_STEP = """
import sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from common.signals import StopRequest
with StopRequest(grace=1.0, state_path=Path(sys.argv[2])) as stop:
    print("stepping", flush=True)
    threading.Event().wait(float(sys.argv[3]))  # a signal's handler runs, but the wait goes on
    print("step ended; requested:", stop.requested, flush=True)
    time.sleep(float(sys.argv[4]))  # saving, after the loop has seen the request
print("stopped by itself", flush=True)
"""


def run_long_step(tmp_path, signals, step_seconds=60, save_seconds=0):
    """Start LONG_STEP, send `signals` (pauses in seconds between them) once it steps; (status, stdout, seconds
    from the first signal to the exit)."""
    process = subprocess.Popen(
        [sys.executable, "-c", LONG_STEP, str(REPO), str(tmp_path / "last.pth"), str(step_seconds), str(save_seconds)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout.readline() == "stepping\n"
    sent = time.monotonic()
    for pause, number in signals:
        time.sleep(pause)
        process.send_signal(number)
    stdout, _ = process.communicate(timeout=30)
    return process.returncode, stdout, time.monotonic() - sent


def test_a_step_that_does_not_end_within_the_grace_is_dropped_and_the_last_save_kept(tmp_path):
    (tmp_path / "last.pth").write_bytes(b"the state saved before the step")
    status, stdout, seconds = run_long_step(tmp_path, [(0, signal.SIGINT)])
    assert status == 130 and seconds < 10  # 1 s of grace, not the step's 60 s
    assert "SIGINT: stopped without the step in progress, which had not ended 1 s on;" in stdout
    assert f"{tmp_path / 'last.pth'} keeps the state saved" in stdout and "continue with --resume" in stdout
    assert "step ended" not in stdout


def test_a_second_signal_during_a_long_step_stops_at_once(tmp_path):
    status, stdout, seconds = run_long_step(tmp_path, [(0, signal.SIGTERM), (0.2, signal.SIGINT)])
    assert status == 143 and seconds < 1.0 + 0.9  # before the 1 s of grace ran out
    assert "SIGTERM: stopped without the step in progress" in stdout and "no resumable state was saved yet" in stdout


def test_a_step_that_ends_within_the_grace_saves_however_long_saving_takes(tmp_path):
    status, stdout, _ = run_long_step(tmp_path, [(0, signal.SIGINT)], step_seconds=0.3, save_seconds=2)
    assert status == 0, stdout
    assert "step ended; requested: True" in stdout and "stopped by itself" in stdout
    assert "stopped without" not in stdout


FORKED_WORKER = """
import os, signal, sys, threading
sys.path.insert(0, sys.argv[1])
from common.signals import StopRequest
with StopRequest(grace=0.5) as stop:
    worker = os.fork()  # as a DataLoader worker is started
    if worker == 0:
        signal.signal(signal.SIGTERM, lambda *_: None)
        os.kill(os.getpid(), signal.SIGTERM)  # a signal to the worker alone (as DataLoader ends a stuck one)
        os._exit(0)
    os.waitpid(worker, 0)
    threading.Event().wait(2)
    print("still running; requested:", stop.requested)
"""


def test_a_signal_to_a_forked_worker_alone_does_not_stop_the_run():
    result = subprocess.run([sys.executable, "-c", FORKED_WORKER, str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "still running; requested: False\n", result.stdout


WORKER_THREAD_FAILS = """
import sys, threading
sys.path.insert(0, sys.argv[1])
from common.signals import worker_init
worker_init(0)
def fail():  # as multiprocessing's resource_sharer thread reports a failed transfer
    try:
        raise {error}
    except Exception:
        sys.excepthook(*sys.exc_info())
thread = threading.Thread(target=fail)
thread.start()
thread.join()
"""


@pytest.mark.parametrize(
    ("error", "printed"), [("EOFError()", False), ("ConnectionResetError()", False), ("ValueError('own')", True)]
)
def test_a_worker_whose_training_process_was_killed_prints_no_traceback_of_a_lost_connection(error, printed):
    """The resource_sharer thread of an orphaned DataLoader worker fails with a lost connection: that is the killed
    process's death, which the run reports once; any other error of a worker still prints its traceback."""
    code = WORKER_THREAD_FAILS.format(error=error)
    result = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert ("Traceback" in result.stderr) == printed, result.stderr


def test_a_resumed_run_announces_the_steps_left_of_its_total(kvasir_dir, tmp_path):
    status, stdout, _ = train_in_process(tmp_path, "--epochs", "2")
    assert status == 0 and "training 0.01 M parameters for 6 steps\n" in stdout  # 3 steps an epoch
    status, stdout, _ = train_in_process(tmp_path, "--resume", "--epochs", "3")
    assert status == 0 and "training 0.01 M parameters for 3 steps left of 9 (from epoch 3 step 0)\n" in stdout


# train.py whose validation of epoch `sys.argv[2]` prints "validating" and then does not end for 60 s (as a long
# validation on a busy CPU), run with the flags after it
SLOW_VALIDATION = """
import runpy, sys, time
sys.path.insert(0, sys.argv[1])
import utils.validation
real, slow_epoch, calls = utils.validation.validate, int(sys.argv[2]), []
def validate(*args, **kwargs):
    calls.append(1)
    if len(calls) == slow_epoch:
        print("validating", flush=True)
        time.sleep(60)  # a signal's handler runs, but the sleep goes on
    return real(*args, **kwargs)
utils.validation.validate = validate
sys.argv = [sys.argv[1] + "/scripts/train.py", *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def stop_during_validation(tmp_path, epoch: int, send, *flags) -> tuple[int, str]:
    """Start train.py with `flags`, whose validation of `epoch` does not end, `send` it a signal as that begins;
    return (exit status, stdout)."""
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_VALIDATION, str(REPO), str(epoch), *command_line(tmp_path, *flags)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"},
    )  # fmt: skip
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line == "validating\n":
            send(process.pid)
            break
    rest, _ = process.communicate(timeout=60)
    return process.returncode, "".join(lines) + rest


@pytest.mark.parametrize(
    ("epoch", "send", "status", "announced"),
    [
        (2, lambda pid: os.kill(pid, signal.SIGINT), 130, "for 3 steps left of 9 (from epoch 2 step 3)"),
        (1, lambda pid: os.kill(pid, signal.SIGKILL), -signal.SIGKILL, "for 9 steps\n"),
    ],
    ids=["ctrl-c-during-validation", "kill-9-before-the-first-save"],
)
def test_a_run_stopped_early_or_during_validation_resumes_without_training_again(
    kvasir_dir, tmp_path, epoch, send, status, announced
):
    assert train_in_process(tmp_path, "--epochs", "3", name="reference")[0] == 0
    exit_status, stdout = stop_during_validation(tmp_path, epoch, send, "--epochs", "3")
    assert exit_status == status, stdout[-2000:]
    if status == 130:
        assert (
            "SIGINT: stopped without epoch 2's validation, which had not ended 5 s on; saved the state after its"
            f" training steps to {tmp_path / 'run' / 'last.pth'}; continue with --resume, which validates epoch 2"
            " again" in stdout
        )
    resumed, stdout, stderr = train_in_process(tmp_path, "--resume")  # SAVE_EVERY's 60 s had not passed
    assert resumed == 0, stderr[-2000:]
    assert announced in stdout  # epoch 2's training is not done again; a kill -9 resumes from the start
    assert read_history(tmp_path / "run" / "history.csv") == read_history(tmp_path / "reference" / "history.csv")
