"""Train a U-Net on Kvasir-SEG: get the data, train with BCE+Dice, validate every epoch, keep the best model.

    python scripts/train.py                              # the defaults below: the best recipe measured
    python scripts/train.py configs/cpu_quick.py         # about a minute on an idle 2-core CPU
    python scripts/train.py configs/seed.py --epochs 3   # a recipe file, then flags on top of it
    python scripts/train.py --resume                     # continue a stopped run from OUTPUT_DIR/last.pth
    python scripts/train.py --resume --epochs 150        # ... or train a finished one for longer

Every UPPER_CASE constant below can be edited here, set in a recipe file (configs/), or given as a flag
(IMAGE_SIZE -> --image-size); flags win over recipe files, which win over the constants.
"""

import contextlib
import functools
import math
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from common.background import BackgroundWriter
from common.config import Settings, flag_name, parse_settings, script_constants
from common.device import autocast, autocast_dtype, configure_fast_path, describe_device, resolve_device, use_threads
from common.distributed import (
    Processes,
    agreed_stop,
    barrier,
    data_parallel,
    mean_over_processes,
    peer_failure_reported,
    process_device,
    start_processes,
    stop_processes,
)
from common.errors import UserError, run_main
from common.files import writable_folder, write_csv_atomic, write_json_atomic
from common.run_folder import check_output_paths, check_resumed_checkpoint_path, held_run_folder
from common.signals import StopRequest
from dataset import kvasir, transforms
from dataset.sources import DataRecord, parse_source
from dataset.splits import check_folds
from dataset.training_data import TrainingData, prepare_data
from model import build_unet, load_checkpoint, model_checkpoint, model_from_checkpoint, save_checkpoint
from model.unet import DeepSupervision, check_unet_size, smallest_input
from utils.inference import THRESHOLD
from utils.losses import LOSSES, deeply_supervised, make_loss
from utils.metrics import binarize
from utils.tensorboard_log import TensorBoardLog, events_folder, require_tensorboard
from utils.training import (
    COMPILE_MODES,
    OPTIMIZERS,
    SCHEDULES,
    TimeEstimate,
    check_step_memory,
    compile_model,
    format_duration,
    gpu_sized_on_a_cpu,
    learning_rate_factor,
    learning_rate_stride,
    make_optimizer,
    make_scaler,
    multi_scale_size,
    probed_seconds,
    resize_batch,
    set_learning_rate,
    training_step,
)
from utils.training_state import (
    NonFiniteLoss,
    Progress,
    Training,
    check_finite,
    describe_earlier_run,
    load_training_state,
    restore_training,
    restored_progress,
    save_training_state,
)
from utils.validation import choose_threshold, validate
from utils.visualization import can_show_windows, panel_figure, save_figure, show_figure, write_curves, write_panels

# ----------------------------------------------------------------------------------------------------------
# Data
DATASETS = ["kvasir"]  # what to train on (several are mixed): kvasir, NAME=FOLDER or NAME=IMAGES:MASKS
DATA_DIR = "data"  # holds Kvasir-SEG/ or kvasir-seg.zip (downloaded here when neither is present), and the cache
DATA_URL = kvasir.KVASIR_SEG_URL  # where to download the zip from
IMAGE_SIZE = 256  # images and masks are resized to IMAGE_SIZE x IMAGE_SIZE
VAL_FRACTION = 0.1  # share of each dataset's training images (Kvasir-SEG: the official 880) held out for validation
FOLDS = 0  # 0: validate on the VAL_FRACTION carve-out; else on fold FOLD of a seeded FOLDS-fold partition of them
FOLD = 0  # with FOLDS: the fold (0 to FOLDS - 1) held out for validation; the rest train
COPY_GROUPS = True  # keep each group of same-frame images (dataset/copies.py) on one side of the carve-out and folds
LEAVE_OUT_COPIES = False  # leave out the training images that are the same frame as a test image (said, with ids)
AUGMENTATION = "strong"  # random changes to each training image (see dataset/transforms.py)
CACHE = True  # decode and resize each image once into DATA_DIR/cache (memory-mapped afterwards)
NUM_WORKERS = -1  # DataLoader worker processes; -1 picks min(8, CPU count - 1)
# Model
BASE_CHANNELS = 64  # width of the first U-Net level; doubles at each of DEPTH levels
DEPTH = 4  # number of down-sampling steps
# Optimisation (the best recipe measured, see README "Results"; configs/seed.py is the original one)
EPOCHS = 100  # passes over the training images
BATCH_SIZE = 16  # images per training step
LEARNING_RATE = 1e-3  # peak learning rate
OPTIMIZER = "adamw"  # AdamW decouples weight decay from the gradient step
WEIGHT_DECAY = 1e-4  # L2 penalty on the weights (decoupled with adamw)
DECAY_NORMS_AND_BIASES = True  # apply WEIGHT_DECAY to BatchNorm and bias parameters too (False: conv weights only)
SCHEDULE = "cosine"  # learning rate after warm-up: constant, or cosine decay to zero (per step)
WARMUP_EPOCHS = 3  # linear warm-up from 0 to LEARNING_RATE over this many epochs, at most a tenth of the run
LOSS = "bce_dice"  # bce_dice: BCE_WEIGHT * BCE + DICE_WEIGHT * (1 - soft Dice); structure: boundary-weighted BCE + IoU
BCE_WEIGHT = 1.0  # weight of the pixel-wise BCE in the bce_dice loss
DICE_WEIGHT = 1.0  # weight of the soft Dice loss in the bce_dice loss
DEEP_SUPERVISION = 0.0  # 0: off; else the weight of auxiliary losses on the 2 coarser decoder levels (training only)
MULTI_SCALE = False  # train each batch at 0.75, 1 or 1.25 x IMAGE_SIZE (seeded per step; validation stays at size)
GRAD_CLIP = 0.0  # 0: off; else clip the gradients' global norm to this
EMA_DECAY = 0.0  # 0: off; else validate and save an exponential moving average of the weights, updated every step
THRESHOLD_SEARCH = False  # after training, pick the probability threshold (0.3-0.7) with the best validation Dice
# Run
SEED = 42  # seeds the split, initialisation, shuffling and augmentation
DEVICE = "auto"  # auto (the GPU when there is one) | cpu | cuda | cuda:N
MIXED_PRECISION = True  # bf16 autocast on CUDA (fp16 with loss scaling on GPUs without bf16); ignored on CPU
COMPILE = "off"  # torch.compile mode of the training forward pass; off until scripts/benchmark.py shows a gain
THREADS = 0  # PyTorch CPU threads; 0 keeps PyTorch's default (one per core). 1 is far faster on busy shared CPUs
PANEL_EVERY = 5  # save (and show, where a window can open) panels of predictions over their images every N epochs
PANEL_IMAGES = 4  # how many fixed validation images the panels show
SHOW_PANELS = True  # also open the panels in a window when matplotlib has an interactive backend
TENSORBOARD = False  # also write TensorBoard events to OUTPUT_DIR/tensorboard/ (needs requirements-tensorboard.txt)
SAVE_EVERY = 60.0  # seconds between saves of the resumable state (also saved at the end and on Ctrl-C/SIGTERM)
STOP_CHECK_STEPS = 10  # under torchrun, processes agree every this many steps whether a Ctrl-C/SIGTERM came
OUTPUT_DIR = "outputs"  # history.csv, curves.png, panels/, last.pth (the resumable state), summary.json
CHECKPOINT_PATH = "models/unet_kvasirseg.pth"  # the best model by validation Dice
RESUME = False  # continue the run saved in OUTPUT_DIR/last.pth, with its recipe
OVERWRITE = False  # start a new run even where OUTPUT_DIR or CHECKPOINT_PATH hold an earlier run's files

CHOICES = {
    "AUGMENTATION": transforms.AUGMENTATIONS,
    "LOSS": LOSSES,
    "OPTIMIZER": OPTIMIZERS,
    "SCHEDULE": SCHEDULES,
    "COMPILE": COMPILE_MODES,
}
# What --resume may change: how the run is carried out, and EPOCHS (train longer); never the recipe.
RESUME_MAY_CHANGE = (
    "DATA_DIR", "DATA_URL", "CACHE", "NUM_WORKERS", "DEVICE", "COMPILE", "THREADS", "PANEL_EVERY", "PANEL_IMAGES",
    "SHOW_PANELS", "TENSORBOARD", "SAVE_EVERY", "STOP_CHECK_STEPS", "OUTPUT_DIR", "CHECKPOINT_PATH", "RESUME",
    "OVERWRITE", "EPOCHS",
)  # fmt: skip
# ----------------------------------------------------------------------------------------------------------


def check_settings(config: dict) -> None:
    """Refuse impossible settings before any work starts, naming the setting."""
    rules = [
        (config["DATASETS"] != [], "DATASETS is empty; give at least one dataset (kvasir, NAME=FOLDER, ...)"),
        (config["BATCH_SIZE"] >= 1, "BATCH_SIZE must be at least 1"),
        (config["EPOCHS"] >= 1, "EPOCHS must be at least 1"),
        (config["LEARNING_RATE"] > 0 and math.isfinite(config["LEARNING_RATE"]), "LEARNING_RATE must be > 0"),
        (config["WEIGHT_DECAY"] >= 0, "WEIGHT_DECAY must be >= 0"),
        (
            all(math.isfinite(config[name]) and config[name] >= 0 for name in ("BCE_WEIGHT", "DICE_WEIGHT"))
            and config["BCE_WEIGHT"] + config["DICE_WEIGHT"] > 0,
            "BCE_WEIGHT and DICE_WEIGHT must be finite, >= 0 and not both 0",
        ),
        (0 < config["VAL_FRACTION"] < 1, "VAL_FRACTION must be between 0 and 1 (exclusive)"),
        (config["DEPTH"] >= 1 and config["BASE_CHANNELS"] >= 1, "DEPTH and BASE_CHANNELS must be at least 1"),
        (
            config["IMAGE_SIZE"] >= smallest_input(config["DEPTH"]),
            f"IMAGE_SIZE must be at least {smallest_input(config['DEPTH'])} for a U-Net of DEPTH {config['DEPTH']}",
        ),
        *[
            (config[name] in allowed, f"{name} must be one of {', '.join(allowed)}")
            for name, allowed in CHOICES.items()
        ],
        (config["WARMUP_EPOCHS"] >= 0, "WARMUP_EPOCHS must be >= 0"),
        (0 <= config["EMA_DECAY"] < 1, "EMA_DECAY must be in [0, 1) (0 turns the moving average off)"),
        (
            math.isfinite(config["DEEP_SUPERVISION"]) and config["DEEP_SUPERVISION"] >= 0,
            "DEEP_SUPERVISION must be >= 0",
        ),
        (math.isfinite(config["GRAD_CLIP"]) and config["GRAD_CLIP"] >= 0, "GRAD_CLIP must be >= 0 (0 turns it off)"),
        (config["PANEL_EVERY"] >= 1 and config["PANEL_IMAGES"] >= 1, "PANEL_EVERY and PANEL_IMAGES must be >= 1"),
        (config["NUM_WORKERS"] >= -1, "NUM_WORKERS must be >= 0, or -1 to pick one per CPU core"),
        (0 <= config["SEED"] < 2**32, "SEED must be a whole number from 0 to 2**32 - 1"),
        (config["SAVE_EVERY"] >= 0, "SAVE_EVERY must be >= 0 seconds"),
        (config["STOP_CHECK_STEPS"] >= 1, "STOP_CHECK_STEPS must be at least 1"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(f"{message}.")
    check_unet_size(config["BASE_CHANNELS"], config["DEPTH"])
    check_folds(config["FOLDS"], config["FOLD"])
    if config["TENSORBOARD"]:
        require_tensorboard()
    names = [parse_source(spec).name for spec in config["DATASETS"]]
    if len(set(names)) < len(names):
        raise UserError(f"DATASETS names a dataset twice ({', '.join(names)}); give each a name of its own.")


def read_settings() -> tuple[dict, dict | None]:
    """The run's settings (the constants above, then recipe files, then flags), and with --resume the saved state
    it continues, whose recipe it keeps."""
    settings = parse_settings(script_constants(globals()), __file__, choices=CHOICES, recipes=True)
    config = {**settings.values, "RECIPES": settings.recipes, "RUN_ID": secrets.token_hex(8)}  # RUN_ID: whose model
    if not config["RESUME"]:
        return config, None
    state = load_training_state(Path(config["OUTPUT_DIR"]) / "last.pth")
    return resumed_settings(state, settings), state


def resumed_settings(state: dict, settings: Settings) -> dict:
    """The saved run's settings, with the flags that may change on resuming (RESUME_MAY_CHANGE) taken from
    `settings`; a flag or recipe that would change the recipe mid-run is refused, naming it."""
    saved = {**script_constants(globals()), **state["config"]}
    changed = [
        f"{flag_name(name)} {settings.values[name]!r} (the run has {saved[name]!r})"
        for name in sorted(settings.given)
        if name not in RESUME_MAY_CHANGE and settings.values[name] != saved[name]
    ]
    if changed:
        raise UserError(
            f"--resume continues the run saved in {settings.values['OUTPUT_DIR']} with its own recipe, which"
            f" {', '.join(changed)} would change; drop those, or start a new run with another --output-dir."
        )
    config = {**saved, **{name: settings.values[name] for name in RESUME_MAY_CHANGE if name in settings.given}}
    config["RESUME"] = True
    config.setdefault("RUN_ID", None)  # a run started before runs had ids
    check_resumed_checkpoint_path(saved["CHECKPOINT_PATH"], config["CHECKPOINT_PATH"])
    finished = len(state["history"])
    if config["EPOCHS"] <= finished:
        raise UserError(
            f"nothing to resume: the run saved in {config['OUTPUT_DIR']} has finished {finished} of its"
            f" {config['EPOCHS']} epochs; give --epochs above {finished} to train it for longer."
        )
    print(
        f"resuming {config['OUTPUT_DIR']} at epoch {state['epoch']}, step {state['step']}, with its recipe"
        + (f", now for {config['EPOCHS']} epochs" if config["EPOCHS"] != state["config"]["EPOCHS"] else "")
    )
    return config


# --- the run --------------------------------------------------------------------------------------------------------


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
    tensorboard: TensorBoardLog | None = None  # the main process's event files, with TENSORBOARD

    @property
    def last_path(self) -> Path:
        return self.output_dir / "last.pth"


# --- setting up -------------------------------------------------------------------------------------------------


def start_run(config: dict) -> Run:
    """Pick the device (each torchrun process its own GPU), precision and CPU threads, and check the output paths."""
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
    config["RUN_FOLDER"] = str(output_dir.resolve())  # recorded in its checkpoints: which run a model belongs to
    if processes.is_main:
        check_output_paths(output_dir, checkpoint_path, example=CHECKPOINT_PATH)
        if config["TENSORBOARD"]:
            writable_folder(events_folder(output_dir), "OUTPUT_DIR's TensorBoard folder")
    check_step_memory(config, device, processes.world_size)
    if gpu_sized_on_a_cpu(device, config["IMAGE_SIZE"], config["BASE_CHANNELS"]):
        print(
            f"note: this is the full GPU-sized recipe ({config['IMAGE_SIZE']} px, base width {config['BASE_CHANNELS']},"
            f" {config['EPOCHS']} epochs) on a CPU, where it takes a day or more (an estimate follows once the data is"
            " ready). For a run of minutes: python scripts/train.py configs/cpu_quick.py"
        )
    return Run(config, device, amp_dtype, configure_fast_path(device), processes, output_dir, checkpoint_path)


def held_outputs(run: Run, resuming: bool):
    """The run's output folder and checkpoint held against other runs (see common/run_folder.py). Only the main
    process writes, so only it holds them."""
    if not run.processes.is_main:
        return contextlib.nullcontext()
    recipe_free = (*RESUME_MAY_CHANGE, "RECIPES", "RUN_ID", "RUN_FOLDER")  # settings that leave the recipe as it is
    describe = functools.partial(
        describe_earlier_run, run.last_path, run.checkpoint_path, script_constants(globals()), run.config, recipe_free
    )
    return held_run_folder(
        run.output_dir, run.checkpoint_path, resuming, run.config["OVERWRITE"], run.config["RUN_ID"],
        read_config=lambda path: load_checkpoint(path).get("config", {}), describe=describe,
    )  # fmt: skip


def prepare_training(run: Run) -> Training:
    """The seeded U-Net on the device, its weight average when EMA_DECAY > 0, the optimizer and the loss scaler.

    Under torchrun on GPUs, BatchNorm statistics are synchronised over the processes (SyncBatchNorm), so a batch
    split among them normalises as one; PyTorch's SyncBatchNorm does not run on the CPU, where each process
    normalises its own slice.
    """
    config = run.config
    torch.manual_seed(config["SEED"])
    unet = build_unet(config["BASE_CHANNELS"], config["DEPTH"])
    trained = DeepSupervision(unet, levels=min(2, config["DEPTH"] - 1)) if config["DEEP_SUPERVISION"] else unet
    if run.processes.distributed and run.device.type == "cuda":
        trained = torch.nn.SyncBatchNorm.convert_sync_batchnorm(trained)  # swaps the layers inside `unet` too
    trained.to(run.device, memory_format=run.memory_format)
    ema = None
    if config["EMA_DECAY"]:  # a shadow copy; batch-norm statistics are averaged like the weights
        ema = AveragedModel(unet, multi_avg_fn=get_ema_multi_avg_fn(config["EMA_DECAY"]), use_buffers=True)
    optimizer = make_optimizer(
        trained, config["OPTIMIZER"], config["LEARNING_RATE"], config["WEIGHT_DECAY"], run.device,
        config["DECAY_NORMS_AND_BIASES"],
    )  # fmt: skip
    return Training(unet, trained, ema, optimizer, make_scaler(run.device, run.amp_dtype))


def announce_training(run: Run, training: Training, total_steps: int) -> None:
    """Print the U-Net's size and the run's steps, and for a GPU-sized run on a CPU its probed training time."""
    config = run.config
    print(
        f"training {sum(p.numel() for p in training.unet.parameters()) / 1e6:.2f} M parameters for {total_steps} steps"
    )
    if gpu_sized_on_a_cpu(run.device, config["IMAGE_SIZE"], config["BASE_CHANNELS"]):
        seconds = probed_seconds(training.trained, config["IMAGE_SIZE"], config["BATCH_SIZE"], total_steps)
        print(f"estimated time on this CPU: {format_duration(seconds)} (from one step of two images)")


# --- at the end of an epoch ----------------------------------------------------------------------------------------


def end_epoch(
    run: Run, training: Training, data: TrainingData, progress: Progress, loss_fn, writer, seconds, learning_rate
) -> dict:
    """Validate, then record the epoch: the best model, panels, history.csv, the curves and the TensorBoard events
    are written by the background `writer`. `seconds` holds the epoch's time so far in training and saving;
    `learning_rate` is the next step's, which the history records. Returns the history row."""
    config, epoch, started = run.config, progress.epoch, time.perf_counter()
    validation = validate(training.evaluated, data.val_batches, loss_fn, run.device, run.amp_dtype)
    validated = time.perf_counter()
    row = {
        "epoch": epoch,
        "train_loss": progress.step_losses.mean().item(),
        "val_loss": validation["loss"],
        "val_dice": validation["dice"],
        "val_iou": validation["iou"],
        "learning_rate": learning_rate,
    }
    improved = row["val_dice"] > progress.best_dice
    if improved:
        progress.best_dice = row["val_dice"]
        checkpoint = model_checkpoint(training.evaluated, config["IMAGE_SIZE"], epoch, row, data.record, config)
        writer.submit("best model", save_checkpoint, run.checkpoint_path, checkpoint)
    if epoch % config["PANEL_EVERY"] == 0 or epoch == config["EPOCHS"]:
        save_panels(run, training.evaluated, data, epoch, writer)
    row["train_seconds"] = round(seconds["train"], 3)
    row["val_seconds"] = round(validated - started, 3)
    row["save_seconds"] = round(seconds["save"] + time.perf_counter() - validated, 3)
    row["seconds"] = round(seconds["train"] + seconds["save"] + time.perf_counter() - started, 3)
    progress.history.append(row)
    writer.submit("history", write_csv_atomic, run.output_dir / "history.csv", list(progress.history))
    steps = progress.steps_per_epoch
    curves = (list(progress.history), list(progress.learning_rates), steps, run.output_dir / "curves.png")
    writer.submit("curves", write_curves, *curves)
    if run.tensorboard:
        learning_rates = [point for point in progress.learning_rates if point[0] > (epoch - 1) * steps]
        writer.submit(f"tensorboard epoch {epoch}", run.tensorboard.add_epoch, row, learning_rates, epoch * steps)
    print(epoch_line(row, improved))
    return row


def save_panels(run: Run, model, data: TrainingData, epoch: int, writer) -> None:
    """Predict the fixed validation images and save their panels (see panel_figure): drawn by the background
    `writer`, or here when they also open in a window; with TENSORBOARD, logged as the epoch's image too."""
    with torch.inference_mode(), autocast(run.device, run.amp_dtype):
        predictions = binarize(model(data.panel_images.to(run.device, memory_format=run.memory_format))).cpu()
    path = run.output_dir / "panels" / f"epoch_{epoch:03d}.png"
    title = f"epoch {epoch}: validation images (Dice at {run.config['IMAGE_SIZE']} px)"
    pictures = (data.panel_images, data.panel_masks, predictions, data.panel_ids, data.panel_aspects)
    if run.config["SHOW_PANELS"] and can_show_windows():
        figure = panel_figure(*pictures, title, window=True)
        save_figure(figure, path)
        show_figure(figure)
    else:
        writer.submit(path.name, write_panels, *pictures, path, title)
    if run.tensorboard:
        writer.submit(f"tensorboard {path.name}", run.tensorboard.add_panels, path, epoch * data.steps_per_epoch)


def epoch_line(row: dict, improved: bool) -> str:
    """The line printed after each epoch."""
    return (
        f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}"
        f"  val Dice {row['val_dice']:.4f}  val IoU {row['val_iou']:.4f}  ({row['seconds']:.1f} s)"
        + ("  * best, saved" if improved else "")
    )


@contextlib.contextmanager
def saved_on_error(run: Run, training: Training, progress: Progress, record: DataRecord):
    """Save the training state when the block ends with a problem the user can fix (a bad image, say), so the run
    resumes where it stopped once it is fixed; not after a non-finite loss, which has spoilt the weights."""
    try:
        yield
    except NonFiniteLoss:
        raise
    except UserError:
        if run.processes.is_main:
            save_training_state(run.last_path, training, progress, record, run.config)
        raise


# --- the loop -----------------------------------------------------------------------------------------------------


@dataclass
class PeriodicSave:
    """Saves the resumable state every SAVE_EVERY seconds, which bounds what a kill -9 loses; `seconds` adds up the
    time spent saving since it was last reset."""

    every: float
    saved_at: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def when_due(self, run: Run, training: Training, progress: Progress, record: DataRecord) -> None:
        if run.processes.is_main and time.monotonic() - self.saved_at >= self.every:
            started = time.perf_counter()
            save_training_state(run.last_path, training, progress, record, run.config)
            self.seconds += time.perf_counter() - started
            self.saved_at = time.monotonic()


def learning_rate_schedule(config: dict, steps_per_epoch: int):
    """The learning rate of each global step: warm-up over WARMUP_EPOCHS (at most a tenth of the run), then SCHEDULE."""
    total_steps = config["EPOCHS"] * steps_per_epoch
    warmup_steps = min(config["WARMUP_EPOCHS"] * steps_per_epoch, total_steps // 10)
    factor = functools.partial(
        learning_rate_factor, warmup_steps=warmup_steps, total_steps=total_steps, schedule=config["SCHEDULE"]
    )
    return lambda global_step: config["LEARNING_RATE"] * factor(global_step)


def train(run: Run, training: Training, data: TrainingData, progress: Progress, stop: StopRequest, writer) -> int:
    """The epoch loop, from `progress` to the last epoch or until a stop is requested; the images trained on."""
    config, epochs, steps_per_epoch = run.config, run.config["EPOCHS"], progress.steps_per_epoch
    total_steps, is_main = epochs * steps_per_epoch, run.processes.is_main
    # the module trained, under torchrun in DistributedDataParallel and with COMPILE compiled: the same weights
    forward = compile_model(data_parallel(training.trained, run.processes, run.device), config["COMPILE"])
    loss_fn = make_loss(config["LOSS"], config["BCE_WEIGHT"], config["DICE_WEIGHT"])  # also validation's loss
    train_loss_fn = deeply_supervised(loss_fn, config["DEEP_SUPERVISION"]) if config["DEEP_SUPERVISION"] else loss_fn
    learning_rate = learning_rate_schedule(config, steps_per_epoch)
    batches, estimate = iter(data.train_loader), TimeEstimate(run.device, steps_per_epoch)
    learning_rate_every = learning_rate_stride(steps_per_epoch)  # how often the curves record the rate
    periodic_save = PeriodicSave(config["SAVE_EVERY"])
    start_global_step, stopping = progress.global_step, False
    while progress.epoch <= epochs and not stopping:
        epoch_start, periodic_save.seconds = time.perf_counter(), 0.0
        training.trained.train()
        for _ in tqdm(
            range(progress.epoch_step, steps_per_epoch), f"epoch {progress.epoch}/{epochs}", leave=False, unit="step",
            disable=not is_main,
        ):  # fmt: skip
            periodic_save.when_due(run, training, progress, data.record)
            step_rate = learning_rate(progress.global_step)
            set_learning_rate(training.optimizer, step_rate)
            images, masks = next(batches)
            images = images.to(run.device, non_blocking=True, memory_format=run.memory_format)
            masks = masks.to(run.device, non_blocking=True)
            if config["MULTI_SCALE"]:
                size = multi_scale_size(config["IMAGE_SIZE"], config["SEED"], progress.global_step)
                images, masks = resize_batch(images, masks, size)
            # the forward pass, the loss, the backward pass and the optimizer step (utils/training.py)
            loss = training_step(
                forward, images, masks, train_loss_fn, training.optimizer, training.scaler, run.amp_dtype,
                config["GRAD_CLIP"],
            )  # fmt: skip
            if is_main:
                estimate.step_done(total_steps - progress.global_step - 1, write=tqdm.write)
            if training.ema:
                training.ema.update_parameters(training.unet)
            stopping = agreed_stop(stop, run.processes, run.device, progress.global_step, config["STOP_CHECK_STEPS"])
            if progress.epoch_step % learning_rate_every == 0:  # a Python float: no GPU synchronisation
                progress.learning_rates.append((progress.global_step + 1, step_rate))
            progress.step_done(loss)
            if stopping:
                break
        progress.step_losses = mean_over_processes(progress.step_losses, run.processes)
        check_finite(progress, run.checkpoint_path)  # waits for the device to finish the epoch's steps
        seconds = {"train": time.perf_counter() - epoch_start - periodic_save.seconds, "save": periodic_save.seconds}
        if progress.epoch_step < steps_per_epoch:
            break  # stopped mid-epoch: saved by the caller, at this step
        if is_main:
            end_epoch(run, training, data, progress, loss_fn, writer, seconds, learning_rate(progress.global_step))
        barrier(run.processes)  # the other processes wait for validation
        progress.epoch += 1
        stopping = agreed_stop(stop, run.processes, run.device, None, config["STOP_CHECK_STEPS"])
    return (progress.global_step - start_global_step) * config["BATCH_SIZE"]


# --- the end ------------------------------------------------------------------------------------------------------


def choose_and_save_threshold(run: Run, data: TrainingData) -> float:
    """Pick the probability threshold with the best validation Dice for the best model, and store it in its
    checkpoint, where evaluate.py, predict.py and the notebook read it."""
    checkpoint = load_checkpoint(run.checkpoint_path)
    model = model_from_checkpoint(checkpoint).to(run.device, memory_format=run.memory_format)
    threshold, dice = choose_threshold(model, data.val_batches, run.device, run.amp_dtype)
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


def open_tensorboard(run: Run, resuming: bool, progress: Progress) -> TensorBoardLog | None:
    """With TENSORBOARD, the main process's event files in OUTPUT_DIR/tensorboard/. A resumed run writes its
    current epoch again from its first step (an earlier process may have written part of it before being killed),
    so TensorBoard hides what was written from there on."""
    if not (run.config["TENSORBOARD"] and run.processes.is_main):
        return None
    resumed_from = (progress.epoch - 1) * progress.steps_per_epoch + 1 if resuming else None
    return TensorBoardLog(events_folder(run.output_dir), resumed_from)


def close_tensorboard(run: Run, progress: Progress, writer) -> None:
    """Hand the event files their last writes: for a finished run, its recipe (the settings a resume may not
    change, and EPOCHS) with its best validation Dice and IoU, for TensorBoard's HParams view."""
    if progress.epoch > run.config["EPOCHS"]:
        recipe = {name: value for name, value in run.config.items() if name not in RESUME_MAY_CHANGE}
        settings = {**recipe, "EPOCHS": run.config["EPOCHS"]}
        step = len(progress.history) * progress.steps_per_epoch
        writer.submit("tensorboard settings", run.tensorboard.add_settings, settings, best_epoch(progress), step)
    writer.submit("tensorboard close", run.tensorboard.close)


def best_epoch(progress: Progress) -> dict:
    """The history row of the epoch with the best validation Dice."""
    return max(progress.history, key=lambda row: row["val_dice"])


def main() -> int:
    started = time.perf_counter()
    # 1. Settings: the constants above, recipe files, flags; with --resume, the saved run's recipe and state
    config, resumed = read_settings()
    check_settings(config)
    # 2. Device, processes and output paths, checked before any work
    run = start_run(config)
    with held_outputs(run, resuming=resumed is not None):
        # 3. The U-Net, its optimizer and loss scaler, seeded (or restored from last.pth)
        training = prepare_training(run)
        if resumed:
            restore_training(resumed, training)
        # 4. The data: split, cached, and the training stream from where the run stands
        first = (resumed["epoch"], resumed["step"]) if resumed else (1, 0)
        saved = DataRecord.from_checkpoint(resumed) if resumed else None  # a resumed run keeps its datasets and split
        data = prepare_data(config, run.processes, run.device, run.memory_format, *first, saved)
        steps_per_epoch = data.steps_per_epoch
        progress = (
            restored_progress(resumed, steps_per_epoch, run.device)
            if resumed
            else Progress(1, 0, steps_per_epoch, step_losses=torch.zeros(steps_per_epoch, device=run.device))
        )
        announce_training(run, training, steps_per_epoch * config["EPOCHS"])
        # 5. Train, saving the resumable state at the end or on Ctrl-C/SIGTERM
        with (
            # a lone process stops without a step that has not ended 5 s after a signal (the last save stays);
            # under torchrun, whose launcher passes a second signal on, every process saves after its step
            StopRequest(escalate=not run.processes.distributed, state_path=run.last_path) as stop,
            BackgroundWriter() as writer,
            saved_on_error(run, training, progress, data.record),
            peer_failure_reported(run.processes),  # inside: the main process saves when another one died
        ):
            run.tensorboard = open_tensorboard(run, resumed is not None, progress)
            images_trained = train(run, training, data, progress, stop, writer)
            if run.processes.is_main:
                save_training_state(run.last_path, training, progress, data.record, run.config)
            if run.tensorboard:
                close_tensorboard(run, progress, writer)
        stop_processes(run.processes)
        if stop.requested and progress.epoch <= config["EPOCHS"]:
            where = f"epoch {progress.epoch} step {progress.epoch_step}"
            print(f"saved the state at {where} to {run.last_path}; continue with --resume")
            return stop.exit_status
        if not run.processes.is_main:
            return 0
        # 6. The end: the threshold (with THRESHOLD_SEARCH) and summary.json
        threshold = choose_and_save_threshold(run, data) if config["THRESHOLD_SEARCH"] else THRESHOLD
        summary = run_summary(progress, time.perf_counter() - started, images_trained, run.device, config, threshold)
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


if __name__ == "__main__":
    run_main(main)
