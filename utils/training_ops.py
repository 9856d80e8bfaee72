"""Everything a training run does besides learning, behind scripts/train.py's two calls per step and per epoch
(`ops.after_step`, `ops.after_epoch`): the device and processes, the held output folder, the resumable state saved
every SAVE_EVERY seconds, at the end and on Ctrl-C/SIGTERM, the stop agreed under torchrun, the time estimate, the
panels, curves, history.csv and TensorBoard events written in the background, the epoch's timing, and the summary."""

import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common.background import BackgroundWriter
from common.device import autocast, autocast_dtype, configure_fast_path, describe_device, resolve_device, use_threads
from common.distributed import (
    Processes,
    agreed_stop,
    barrier,
    mean_over_processes,
    peer_failure_reported,
    process_device,
    start_processes,
    stop_processes,
)
from common.errors import UserError
from common.files import writable_folder, write_csv_atomic, write_json_atomic
from common.progress import print_line
from common.run_folder import check_output_paths, locked_run_folder
from common.signals import StopRequest
from dataset.training_data import TrainingData
from model import load_checkpoint, save_checkpoint
from utils.inference import Predictor, inference_batch_size
from utils.metrics import THRESHOLD, binarize
from utils.tensorboard_log import TensorBoardLog, events_folder
from utils.train_settings import RECIPE_FREE, RESUME_MAY_CHANGE
from utils.training import (
    TimeEstimate,
    check_step_memory,
    format_duration,
    gpu_sized_on_a_cpu,
    learning_rate_stride,
    parameter_count,
    probed_seconds,
)
from utils.training_state import (
    NonFiniteLoss,
    Progress,
    Training,
    check_finite,
    describe_earlier_run,
    read_run_config,
    save_training_state,
)
from utils.validation import choose_threshold
from utils.visualization import can_show_windows, panel_figure, save_figure, show_figure, write_curves, write_panels


@dataclass
class Run:
    """The fixed facts of this run: its settings, where it computes (and, under torchrun, which process this is
    among how many), and where it writes."""

    config: dict
    device: torch.device
    amp_dtype: torch.dtype | None  # the autocast type, None for full precision
    memory_format: torch.memory_format
    processes: Processes
    output_dir: Path
    checkpoint_path: Path

    @property
    def last_path(self) -> Path:
        return self.output_dir / "last.pth"


def start_run(config: dict, example: str) -> Run:
    """Pick the device (each torchrun process its own GPU), precision and CPU threads, and check the output paths
    (`example`: the default CHECKPOINT_PATH, for the messages)."""
    use_threads(config["THREADS"])
    requested = resolve_device(config["DEVICE"])
    processes = start_processes(requested)
    device = process_device(requested, processes)
    if config["BATCH_SIZE"] % processes.world_size:
        raise UserError(f"BATCH_SIZE {config['BATCH_SIZE']} must divide among the {processes.world_size} processes.")
    amp_dtype = autocast_dtype(device) if config["MIXED_PRECISION"] else None
    gpu = f" ({torch.cuda.get_device_name(device)}, autocast {amp_dtype})" if device.type == "cuda" else ""
    print(f"device: {device}{gpu}" + (f", {processes.world_size} processes" if processes.distributed else ""))
    output_dir, checkpoint_path = Path(config["OUTPUT_DIR"]), Path(config["CHECKPOINT_PATH"])
    # recorded in its checkpoints: which run a model belongs to, and where the run and its model were (see
    # common/run_folder.py's relocated_run, for a run folder moved or copied)
    config["RUN_FOLDER"], config["RUN_CHECKPOINT"] = str(output_dir.resolve()), str(checkpoint_path.resolve())
    if processes.is_main:
        check_output_paths(output_dir, checkpoint_path, example=example)
        if config["TENSORBOARD"]:
            writable_folder(events_folder(output_dir), "OUTPUT_DIR's TensorBoard folder")
    return Run(config, device, amp_dtype, configure_fast_path(device), processes, output_dir, checkpoint_path)


def locked_outputs(run: Run, resuming: bool, defaults: dict):
    """The run's output folder and checkpoint locked against other runs (see common/run_folder.py), `defaults` being
    the script's constants. Only the main process writes, so only it holds them."""
    if not run.processes.is_main:
        return contextlib.nullcontext()
    describe = functools.partial(
        describe_earlier_run, run.last_path, run.checkpoint_path, defaults, run.config, RECIPE_FREE
    )
    return locked_run_folder(
        run.output_dir, run.checkpoint_path, resuming, run.config["OVERWRITE"], run.config["RUN_ID"],
        read_config=read_run_config, describe=describe, copy_of=run.config.get("COPY_OF", ()),
    )  # fmt: skip


def check_fits(run: Run, network: torch.nn.Module) -> None:
    """Before any data: refuse a step that cannot fit in the device's memory, and say so of a GPU-sized run on a
    CPU."""
    config = run.config
    check_step_memory(network, config, run.device, run.processes.world_size)
    if gpu_sized_on_a_cpu(run.device, config["IMAGE_SIZE"], network):
        size = f"{config['IMAGE_SIZE']} px, {parameter_count(network) / 1e6:.2f} M parameters"
        print(
            f"note: this is the full GPU-sized recipe ({size}, {config['EPOCHS']} epochs) on a CPU, where it takes a"
            " day or more (an estimate follows once the data is ready). For a run of minutes:"
            " python scripts/train.py configs/cpu_quick.py"
        )


def announce_training(run: Run, training: Training, progress: Progress) -> None:
    """Print the network's size and the steps left to train (of the run's total, when resumed), and for a GPU-sized
    run on a CPU the probed time those steps take."""
    config = run.config
    total_steps = config["EPOCHS"] * progress.steps_per_epoch
    steps_left = total_steps - progress.global_step
    steps = f"{steps_left} step{'s' * (steps_left != 1)}"
    if progress.global_step:
        steps += f" left of {total_steps} (from epoch {progress.epoch} step {progress.epoch_step})"
    print(f"training {parameter_count(training.network) / 1e6:.2f} M parameters for {steps}")
    if gpu_sized_on_a_cpu(run.device, config["IMAGE_SIZE"], training.network):
        seconds = probed_seconds(training.trained, config["IMAGE_SIZE"], config["BATCH_SIZE"], steps_left)
        print(f"estimated time on this CPU: {format_duration(seconds)} (from one step of two images)")


class Operations:
    """The run's bookkeeping around the learning in scripts/train.py: `after_step` and `after_epoch` say whether
    to stop; `writer` writes files in the background; `stop` is the Ctrl-C/SIGTERM received."""

    def __init__(self, run: Run, training: Training, data: TrainingData, progress: Progress, stop, writer):
        self.run, self.training, self.data, self.progress, self.stop, self.writer = (
            run, training, data, progress, stop, writer,
        )  # fmt: skip
        self.estimate = TimeEstimate(run.device, progress.steps_per_epoch)
        self.learning_rate_every = learning_rate_stride(progress.steps_per_epoch)  # how often the curves record it
        self.start_global_step = progress.global_step
        self.tensorboard = open_tensorboard(run, progress)
        self.stopping = False
        if self.is_main and not run.config["RESUME"]:  # resumable from the start: a kill -9 before SAVE_EVERY too
            save_training_state(run.last_path, training, progress, data.record, run.config)
        self.saved_at = time.monotonic()
        self.epoch_started, self.trained_at, self.save_seconds = time.perf_counter(), 0.0, 0.0

    @property
    def is_main(self) -> bool:
        return self.run.processes.is_main

    @property
    def images_trained(self) -> int:
        return (self.progress.global_step - self.start_global_step) * self.run.config["BATCH_SIZE"]

    def after_step(self, loss: torch.Tensor, learning_rate: float) -> bool:
        """Count the step just taken (its detached `loss`, its `learning_rate`): the time estimate, the stop agreed
        among the processes, the rates the curves show, the resumable state when SAVE_EVERY has passed; at the
        epoch's end, or on stopping, its losses averaged over the processes and checked finite. True: stop now."""
        run, progress, config = self.run, self.progress, self.run.config
        total_steps = config["EPOCHS"] * progress.steps_per_epoch
        if self.is_main:
            self.estimate.step_done(total_steps - progress.global_step - 1, write=print_line)
        self.stopping = agreed_stop(
            self.stop, run.processes, run.device, progress.global_step, config["STOP_CHECK_STEPS"]
        )
        if progress.epoch_step % self.learning_rate_every == 0:  # a Python float: no GPU synchronisation
            progress.learning_rates.append((progress.global_step + 1, learning_rate))
        progress.step_done(loss)
        if self.stopping or progress.epoch_step == progress.steps_per_epoch:
            progress.step_losses = mean_over_processes(progress.step_losses, run.processes)
            check_finite(progress, run.checkpoint_path)  # waits for the device to finish the epoch's steps
            self.trained_at = time.perf_counter()
            if self.is_main and progress.epoch_step == progress.steps_per_epoch:
                self.stop.save_before_exit = (f"epoch {progress.epoch}'s validation", self.saver(progress))
        elif self.is_main and time.monotonic() - self.saved_at >= config["SAVE_EVERY"]:
            started = time.perf_counter()
            save_training_state(run.last_path, self.training, progress, self.data.record, config)
            self.save_seconds += time.perf_counter() - started
            self.saved_at = time.monotonic()
        return self.stopping

    def after_epoch(self, row: dict | None, improved: bool) -> bool:
        """Record the epoch validated in `row` (the main process's; None on the others): its timing, the panels,
        history.csv, the curves and the TensorBoard events, written in the background, and its line; then count
        it. True: a stop was requested."""
        run, progress, config = self.run, self.progress, self.run.config
        if self.is_main:
            validated = time.perf_counter()
            epoch, steps = progress.epoch, progress.steps_per_epoch
            if epoch % config["PANEL_EVERY"] == 0 or epoch == config["EPOCHS"]:
                self.save_panels(epoch)
            train_seconds = self.trained_at - self.epoch_started - self.save_seconds
            row["train_seconds"] = round(train_seconds, 3)
            row["val_seconds"] = round(validated - self.trained_at, 3)
            row["save_seconds"] = round(self.save_seconds + time.perf_counter() - validated, 3)
            row["seconds"] = round(time.perf_counter() - self.epoch_started, 3)
            progress.history.append(row)
            self.writer.submit("history", write_csv_atomic, run.output_dir / "history.csv", list(progress.history))
            curves = (list(progress.history), list(progress.learning_rates), steps, run.output_dir / "curves.png")
            self.writer.submit("curves", write_curves, *curves)
            if self.tensorboard:
                rates = [point for point in progress.learning_rates if point[0] > (epoch - 1) * steps]
                self.writer.submit(f"tensorboard epoch {epoch}", self.tensorboard.add_epoch, row, rates, epoch * steps)
            print(epoch_line(row, improved))
        barrier(run.processes)  # the other processes wait for validation
        progress.epoch += 1
        self.epoch_started, self.save_seconds = time.perf_counter(), 0.0
        self.stopping = agreed_stop(self.stop, run.processes, run.device, None, config["STOP_CHECK_STEPS"])
        self.stop.save_before_exit = None  # the next step changes the weights
        return self.stopping

    def saver(self, progress: Progress):
        """A function that saves the resumable state at `progress`, the end of an epoch's training steps, as it is
        now (the weights do not change while the epoch is validated and recorded, until the next step), and says so;
        the watcher of a Ctrl-C/SIGTERM calls it when validation (or the panels) has not ended within the grace, so
        that a resume validates the epoch again rather than training it again."""
        snapshot = dataclasses.replace(
            progress, step_losses=progress.step_losses.clone(), history=list(progress.history),
            learning_rates=list(progress.learning_rates),
        )  # fmt: skip
        run, epoch = self.run, progress.epoch

        def save() -> str:
            save_training_state(run.last_path, self.training, snapshot, self.data.record, run.config)
            return (
                f"saved the state after its training steps to {run.last_path}; continue with --resume, which"
                f" validates epoch {epoch} again"
            )

        return save

    def save_panels(self, epoch: int) -> None:
        """Predict the fixed validation images and save their panels (see panel_figure): drawn by the background
        writer, or here when they also open in a window; with TENSORBOARD, logged as the epoch's image too."""
        run, data = self.run, self.data
        with torch.inference_mode(), autocast(run.device, run.amp_dtype):
            images = data.panel_images.to(run.device, memory_format=run.memory_format)
            predictions = binarize(self.training.evaluated(images)).cpu()
        path = run.output_dir / "panels" / f"epoch_{epoch:03d}.png"
        title = f"epoch {epoch}: validation images (Dice at {run.config['IMAGE_SIZE']} px)"
        pictures = (data.panel_images, data.panel_masks, predictions, data.panel_ids, data.panel_aspects)
        if run.config["SHOW_PANELS"] and can_show_windows():
            figure = panel_figure(*pictures, title, window=True)
            save_figure(figure, path)
            show_figure(figure)
        else:
            self.writer.submit(path.name, write_panels, *pictures, path, title)
        if self.tensorboard:
            self.writer.submit(
                f"tensorboard {path.name}", self.tensorboard.add_panels, path, epoch * data.steps_per_epoch
            )

    def close(self) -> None:
        """Save the resumable state where the run stands, and hand TensorBoard its last writes."""
        if self.is_main:
            save_training_state(self.run.last_path, self.training, self.progress, self.data.record, self.run.config)
        if self.tensorboard:
            close_tensorboard(self.run, self.progress, self.tensorboard, self.writer)


def epoch_line(row: dict, improved: bool) -> str:
    """The line printed after each epoch."""
    return (
        f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}"
        f"  val Dice {row['val_dice']:.4f}  val IoU {row['val_iou']:.4f}  ({row['seconds']:.1f} s)"
        + ("  * best, saved" if improved else "")
    )


@contextlib.contextmanager
def operations(run: Run, training: Training, data: TrainingData, progress: Progress):
    """The Operations of the block's training, which saves the resumable state when it ends: finished, stopped by
    Ctrl-C/SIGTERM, or with a problem the user can fix (a bad image, say), so the run resumes where it stopped; not
    after a non-finite loss, which has spoilt the weights."""
    with (
        # a lone process stops without a step that has not ended 5 s after a signal (the last save stays);
        # under torchrun, whose launcher passes a second signal on, every process saves after its step
        StopRequest(escalate=not run.processes.distributed, state_path=run.last_path) as stop,
        BackgroundWriter() as writer,
    ):
        ops = Operations(run, training, data, progress, stop, writer)
        try:
            with peer_failure_reported(run.processes):  # the main process saves when another one died
                yield ops
        except NonFiniteLoss:
            raise
        except UserError:
            if ops.is_main:
                save_training_state(run.last_path, training, progress, data.record, run.config)
            raise
        ops.close()
    stop_processes(run.processes)


def open_tensorboard(run: Run, progress: Progress) -> TensorBoardLog | None:
    """With TENSORBOARD, the main process's event files in OUTPUT_DIR/tensorboard/. A resumed run writes its
    current epoch again from its first step (an earlier process may have written part of it before being killed),
    so TensorBoard hides what was written from there on."""
    if not (run.config["TENSORBOARD"] and run.processes.is_main):
        return None
    resumed_from = (progress.epoch - 1) * progress.steps_per_epoch + 1 if run.config["RESUME"] else None
    return TensorBoardLog(events_folder(run.output_dir), resumed_from)


def close_tensorboard(run: Run, progress: Progress, tensorboard: TensorBoardLog, writer) -> None:
    """Hand the event files their last writes: for a finished run, its recipe (the settings a resume may not
    change, and EPOCHS) with its best validation Dice and IoU, for TensorBoard's HParams view."""
    if progress.epoch > run.config["EPOCHS"]:
        recipe = {name: value for name, value in run.config.items() if name not in RESUME_MAY_CHANGE}
        settings = {**recipe, "EPOCHS": run.config["EPOCHS"]}
        step = len(progress.history) * progress.steps_per_epoch
        writer.submit("tensorboard settings", tensorboard.add_settings, settings, best_epoch(progress), step)
    writer.submit("tensorboard close", tensorboard.close)


def finish(run: Run, ops: Operations, started: float) -> int:
    """After the loop: the way on for a stopped run; for a finished one (main process), the threshold (with
    THRESHOLD_SEARCH), summary.json and the closing line. The script's exit status."""
    config, progress = run.config, ops.progress
    if ops.stop.requested and progress.epoch <= config["EPOCHS"]:
        where = f"epoch {progress.epoch} step {progress.epoch_step}"
        print(f"saved the state at {where} to {run.last_path}; continue with --resume")
        return ops.stop.exit_status
    if not run.processes.is_main:
        return 0
    threshold = choose_and_save_threshold(run, ops.data) if config["THRESHOLD_SEARCH"] else THRESHOLD
    summary = run_summary(progress, time.perf_counter() - started, ops.images_trained, run.device, config, threshold)
    write_json_atomic(run.output_dir / "summary.json", summary)
    print(
        f"done in {summary['wall_seconds']:.1f} s: {summary['images_trained']} training images at"
        f" {summary['images_per_second']:.1f} images/s end to end; best validation Dice {summary['best_val_dice']:.4f}"
        f" (epoch {summary['best_epoch']}), "
        + (
            f"model saved to {run.checkpoint_path}"
            if run.checkpoint_path.is_file()
            else f"whose model is no longer at {run.checkpoint_path} (moved or deleted; no epoch since resuming beat"
            " it)"
        )
    )
    return 0


def choose_and_save_threshold(run: Run, data: TrainingData) -> float:
    """Pick the probability threshold with the best validation Dice for the best model, scored as evaluate.py scores
    (each image at its own size, DEFAULT_TTA_VIEWS-view TTA), and store it in its checkpoint, where evaluate.py,
    predict.py and the notebook read it."""
    checkpoint = load_checkpoint(run.checkpoint_path)
    predictor = Predictor.from_checkpoint(checkpoint, run.device, run.amp_dtype is not None, tta=True)
    threshold, dice = choose_threshold(predictor, data.val_pairs, inference_batch_size(0, run.device))
    checkpoint["preprocessing"]["threshold"] = threshold
    checkpoint["metrics"]["val_dice_by_threshold"] = dice
    save_checkpoint(run.checkpoint_path, checkpoint)
    chosen, usual = dice[threshold], dice[THRESHOLD]
    print(f"threshold {threshold} chosen on validation (Dice {chosen:.4f}; {usual:.4f} at {THRESHOLD})")
    return threshold


def run_summary(
    progress: Progress, wall_seconds: float, images_trained: int, device, config: dict, threshold: float
) -> dict:
    """What OUTPUT_DIR/summary.json records of a finished run: its best epoch and how fast it ran end to end."""
    best = best_epoch(progress)
    return {
        "epochs": len(progress.history),
        "best_epoch": best["epoch"],
        "best_val_dice": best["val_dice"],
        "best_val_iou": best["val_iou"],
        "wall_seconds": round(wall_seconds, 2),
        "images_trained": images_trained,
        "images_per_second": round(images_trained / wall_seconds, 1),
        "device": describe_device(device),
        "checkpoint": config["CHECKPOINT_PATH"],
        "threshold": threshold,
        "recipes": config["RECIPES"],
    }


def best_epoch(progress: Progress) -> dict:
    """The history row of the epoch with the best validation Dice."""
    return max(progress.history, key=lambda row: row["val_dice"])
