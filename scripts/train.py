"""Train a U-Net on Kvasir-SEG: get the data, train with BCE+Dice, validate every epoch, keep the best model.

    python scripts/train.py                              # the defaults below: the best recipe measured
    python scripts/train.py configs/cpu_quick.py         # a few minutes on a laptop CPU
    python scripts/train.py configs/seed.py --epochs 3   # a recipe file, then flags on top of it
    python scripts/train.py --resume                     # continue a stopped run from OUTPUT_DIR/last.pth
    python scripts/train.py --resume --epochs 150        # ... or train a finished one for longer

Every UPPER_CASE constant below can be edited here, set in a recipe file (configs/), or given as a flag
(IMAGE_SIZE -> --image-size); flags win over recipe files, which win over the constants.
"""

import contextlib
import copy
import functools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.background import BackgroundWriter
from common.config import Settings, flag_name, parse_settings, script_constants
from common.device import autocast, autocast_dtype, configure_fast_path, describe_device, resolve_device
from common.distributed import (
    Processes,
    barrier,
    main_process_first,
    max_over_processes,
    mean_over_processes,
    process_device,
    start_processes,
    stop_processes,
)
from common.errors import UserError, run_main
from common.files import exclusive_lock, remove_stale_temporaries, writable_folder, write_csv_atomic, write_text_atomic
from common.interrupt import StopRequest
from dataset import kvasir, transforms
from dataset.segmentation import PolypDataset, RunBatchSampler, loader_options, worker_count
from dataset.sources import DataRecord, combined_split, file_digest, parse_source, source_pairs, source_split
from model import build_unet, load_checkpoint, model_checkpoint, model_from_checkpoint, save_checkpoint
from model.checkpoint import cpu_state
from model.unet import DeepSupervision, UNet, check_unet_size, smallest_input
from utils.inference import THRESHOLD
from utils.losses import LOSSES, deeply_supervised, make_loss
from utils.metrics import binarize
from utils.training import (
    COMPILE_MODES,
    OPTIMIZERS,
    SCHEDULES,
    TimeEstimate,
    compile_model,
    format_duration,
    learning_rate_factor,
    make_optimizer,
    multi_scale_size,
    resize_batch,
    set_learning_rate,
    training_step,
)
from utils.validation import choose_threshold, validate
from utils.visualization import can_show_windows, panel_figure, save_figure, show_figure, write_curves, write_panels

# ----------------------------------------------------------------------------------------------------------
# Data
DATASETS = ["kvasir"]  # what to train on: kvasir, NAME=FOLDER (with images/, masks/) or NAME=IMAGES:MASKS; mixed
DATA_DIR = "data"  # holds Kvasir-SEG/ or kvasir-seg.zip (downloaded here when neither is present), and the cache
DATA_URL = kvasir.KVASIR_SEG_URL  # where to download the zip from
IMAGE_SIZE = 256  # images and masks are resized to IMAGE_SIZE x IMAGE_SIZE
VAL_FRACTION = 0.1  # share of each dataset's training images (Kvasir-SEG: the official 880) held out for validation
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
LOSS = "bce_dice"  # bce_dice: BCE_WEIGHT * BCE + DICE_WEIGHT * (1 - soft Dice); structure: PraNet's boundary-weighted
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
PANEL_EVERY = 5  # save (and show, where a window can open) input/truth/prediction panels every N epochs
PANEL_IMAGES = 4  # how many fixed validation images the panels show
SHOW_PANELS = True  # also open the panels in a window when matplotlib has an interactive backend
SAVE_EVERY = 60.0  # seconds between saves of the resumable state (also saved at the end and on Ctrl-C/SIGTERM)
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
STOP_CHECK_STEPS = 10  # under torchrun, processes agree every this many steps whether a Ctrl-C/SIGTERM came
RESUME_MAY_CHANGE = (
    "DATA_DIR", "DATA_URL", "CACHE", "NUM_WORKERS", "DEVICE", "COMPILE", "THREADS", "PANEL_EVERY", "PANEL_IMAGES",
    "SHOW_PANELS", "SAVE_EVERY", "OUTPUT_DIR", "CHECKPOINT_PATH", "RESUME", "OVERWRITE", "EPOCHS",
)  # fmt: skip
# ----------------------------------------------------------------------------------------------------------


def check_settings(config: dict) -> None:
    """Refuse impossible settings before any work starts, naming the setting."""
    rules = [
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
        (config["THREADS"] >= 0, "THREADS must be >= 0 (0 keeps PyTorch's default)"),
        (config["NUM_WORKERS"] >= -1, "NUM_WORKERS must be >= 0, or -1 to pick one per CPU core"),
        (0 <= config["SEED"] < 2**32, "SEED must be a whole number from 0 to 2**32 - 1"),
        (config["SAVE_EVERY"] >= 0, "SAVE_EVERY must be >= 0 seconds"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(f"{message}.")
    check_unet_size(config["BASE_CHANNELS"], config["DEPTH"])
    names = [parse_source(spec).name for spec in config["DATASETS"]]
    if len(set(names)) < len(names):
        raise UserError(f"DATASETS names a dataset twice ({', '.join(names)}); give each a name of its own.")


def read_settings() -> tuple[dict, dict | None]:
    """The run's settings (the constants above, then recipe files, then flags), and with --resume the saved state
    it continues, whose recipe it keeps."""
    settings = parse_settings(script_constants(globals()), __file__, choices=CHOICES, recipes=True)
    config = {**settings.values, "RECIPES": settings.recipes}
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


def run_files(output_dir: Path, checkpoint_path: Path) -> list[Path]:
    """The files a run writes that a new run would replace: its best model, resumable state, history and pictures."""
    names = ("last.pth", "history.csv", "summary.json", "curves.png")
    candidates = [checkpoint_path, *(output_dir / name for name in names)]
    return [path for path in candidates if path.is_file()] + sorted((output_dir / "panels").glob("epoch_*.png"))


def check_output_paths(output_dir: Path, checkpoint_path: Path) -> None:
    """Refuse output paths that cannot be written before any work, rather than after the first epoch."""
    writable_folder(output_dir, "OUTPUT_DIR")
    if checkpoint_path.is_dir():
        raise UserError(f"CHECKPOINT_PATH {checkpoint_path} is a folder; give a file path such as {CHECKPOINT_PATH}.")
    writable_folder(checkpoint_path.parent, "CHECKPOINT_PATH's folder")


def claim_run_files(output_dir: Path, checkpoint_path: Path, resuming: bool, overwrite: bool) -> None:
    """Never let a new run silently destroy an earlier one: refuse while the paths hold an earlier run's files,
    unless OVERWRITE, which removes them first (so no old panel is left beside the new ones). Call it holding the
    run's locks, so that it never removes the files of a run still going."""
    earlier = [] if resuming else run_files(output_dir, checkpoint_path)
    if earlier and not overwrite:
        raise UserError(
            f"an earlier run's files are in the way ({', '.join(map(str, earlier[:3]))}"
            + (f" and {len(earlier) - 3} more" if len(earlier) > 3 else "")
            + "); continue that run with --resume, keep it by giving this run another --output-dir and"
            " --checkpoint-path, or replace it with --overwrite."
        )
    for path in earlier:
        path.unlink()


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


# --- the training state: what `save_training_state` writes is exactly what `restore_training_state` reads ---


@dataclass
class Training:
    """What the optimisation changes: the U-Net, the module trained (the U-Net, or it wrapped in DeepSupervision with
    auxiliary heads), the weight average (or None), the optimizer and the loss scaler."""

    model: UNet
    network: torch.nn.Module
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights that are validated, shown in the panels and saved as the best model."""
        return self.ema.module if self.ema else self.model


@dataclass
class Progress:
    """Where the run stands: `step` steps of `epoch` are done, with these losses; the history of finished epochs."""

    epoch: int
    step: int
    step_losses: torch.Tensor  # the loss of each step of `epoch`, on the training device
    history: list[dict] = field(default_factory=list)
    best_dice: float = -1.0


def save_training_state(run: Run, training: Training, progress: Progress, record: DataRecord) -> None:
    """Write everything needed to continue exactly at `progress` (the start of its next step) to last.pth."""
    metrics = progress.history[-1] if progress.history else {}
    state = model_checkpoint(training.model, run.config["IMAGE_SIZE"], progress.epoch, metrics, record, run.config)
    if training.ema:
        state["ema_state"] = cpu_state(training.ema)
    if training.network is not training.model:
        state["auxiliary_heads_state"] = cpu_state(training.network.heads)
    state.update(
        step=progress.step,
        step_losses=progress.step_losses.cpu(),
        history=progress.history,
        best_dice=progress.best_dice,
        optimizer_state=training.optimizer.state_dict(),
        scaler_state=training.scaler.state_dict(),
        rng_state=torch.get_rng_state(),
    )
    save_checkpoint(run.last_path, state)


def restore_training_state(state: dict, training: Training, device: torch.device) -> Progress:
    """Load a state written by `save_training_state` into `training`; return the progress it was saved at."""
    training.model.load_state_dict(state["model_state"])
    if training.ema:
        training.ema.load_state_dict(state["ema_state"])
    if training.network is not training.model:
        training.network.heads.load_state_dict(state["auxiliary_heads_state"])
    training.optimizer.load_state_dict(state["optimizer_state"])
    training.scaler.load_state_dict(state["scaler_state"])
    torch.set_rng_state(state["rng_state"])
    return Progress(
        state["epoch"], state["step"], state["step_losses"].to(device), state["history"], state["best_dice"]
    )


RESUMABLE_KEYS = ("step", "step_losses", "history", "best_dice", "optimizer_state", "scaler_state", "rng_state")


def load_training_state(path: Path) -> dict:
    """The training state saved in `path` by an earlier run, with a clear error when there is none to resume."""
    if not path.is_file():
        raise UserError(
            f"nothing to resume: {path} does not exist (a run writes it while training and when it ends or is"
            " stopped); start without --resume, or pass the --output-dir of the run to continue."
        )
    state = load_checkpoint(path)
    missing = [key for key in RESUMABLE_KEYS if key not in state]
    if missing:
        raise UserError(f"{path} is a model checkpoint, not a resumable training state (no {', '.join(missing)}).")
    return state


# --- setting up --------------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The batches of one run: an augmented stream over all its remaining epochs, the validation batches (kept on
    the device, as they never change), the fixed validation images its panels show, and the record of its data."""

    record: DataRecord
    steps_per_epoch: int
    train_loader: DataLoader
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    panel_images: torch.Tensor
    panel_masks: torch.Tensor


def prepare_data(run: Run, progress_epoch: int, progress_step: int) -> TrainingData:
    """Get and split every dataset of DATASETS, and build the training stream from (epoch, step) on and the
    validation batches of all of them together."""
    config = run.config
    sources, pairs, splits = [parse_source(spec) for spec in config["DATASETS"]], [], []
    for source in sources:
        with main_process_first(run.processes):  # one process downloads and extracts; the others then read
            found = source_pairs(source, config["DATA_DIR"], config["DATA_URL"])
        splits.append(
            source_split(source, [sample_id for sample_id, _, _ in found], config["VAL_FRACTION"], config["SEED"])
        )
        pairs += found
    split = combined_split(splits)
    print(f"split: {len(split.train)} train / {len(split.val)} validation / {len(split.test)} test (held out)")
    by_id = {pair[0]: pair for pair in pairs}
    digests = {sample_id: file_digest(by_id[sample_id][1]) for sample_id in split.train + split.val}
    cache_dir = Path(config["DATA_DIR"]) / "cache" if config["CACHE"] else None
    augment, no_augment = transforms.build_transform(config["AUGMENTATION"]), transforms.build_transform("none")
    with main_process_first(run.processes):  # one process builds the cache; the others then open it
        train_set = PolypDataset([by_id[i] for i in split.train], config["IMAGE_SIZE"], augment, cache_dir)
        val_set = PolypDataset([by_id[i] for i in split.val], config["IMAGE_SIZE"], no_augment, cache_dir)
    if len(train_set) < config["BATCH_SIZE"]:
        raise UserError(f"BATCH_SIZE {config['BATCH_SIZE']} exceeds the {len(train_set)} training images.")
    processes = run.processes
    batches = RunBatchSampler(
        len(train_set), config["BATCH_SIZE"], config["SEED"], progress_epoch, progress_step, config["EPOCHS"],
        processes.rank, processes.world_size,
    )  # fmt: skip
    workers = worker_count(config["NUM_WORKERS"], processes.local_world_size)
    loader = DataLoader(train_set, batch_sampler=batches, **loader_options(workers, run.device))
    val_batches = [
        (images.to(run.device, memory_format=run.memory_format), masks.to(run.device))
        for images, masks in DataLoader(val_set, batch_size=2 * config["BATCH_SIZE"])
    ]
    panel_samples = [val_set[i] for i in range(min(config["PANEL_IMAGES"], len(val_set)))]
    return TrainingData(
        DataRecord(sources, split, digests),
        batches.steps_per_epoch,
        loader,
        val_batches,
        torch.stack([image for image, _ in panel_samples]),
        torch.stack([mask for _, mask in panel_samples]),
    )


def prepare_training(run: Run) -> Training:
    """The seeded U-Net on the device, its weight average when EMA_DECAY > 0, the optimizer and the loss scaler.

    Under torchrun on GPUs, BatchNorm statistics are synchronised over the processes (SyncBatchNorm), so a batch
    split among them normalises as one; PyTorch's SyncBatchNorm does not run on the CPU, where each process
    normalises its own slice.
    """
    config = run.config
    torch.manual_seed(config["SEED"])
    model = build_unet(config["BASE_CHANNELS"], config["DEPTH"])
    network = DeepSupervision(model, levels=min(2, config["DEPTH"] - 1)) if config["DEEP_SUPERVISION"] else model
    if run.processes.distributed and run.device.type == "cuda":
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)  # swaps the layers inside `model` too
    network.to(run.device, memory_format=run.memory_format)
    ema = None
    if config["EMA_DECAY"]:  # a shadow copy; batch-norm statistics are averaged like the weights
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config["EMA_DECAY"]), use_buffers=True)
    optimizer = make_optimizer(
        network,
        config["OPTIMIZER"],
        config["LEARNING_RATE"],
        config["WEIGHT_DECAY"],
        run.device,
        config["DECAY_NORMS_AND_BIASES"],
    )
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.amp_dtype == torch.float16)
    return Training(model, network, ema, optimizer, scaler)


# --- at the end of an epoch ----------------------------------------------------------------------------------------


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite: the weights are spoilt, so nothing is saved from here on."""


def check_finite(progress: Progress, checkpoint_path: Path) -> None:
    """Stop on a NaN/inf loss, naming where it first appeared; checked once per epoch, not with a sync per step."""
    bad = (~torch.isfinite(progress.step_losses[: progress.step])).nonzero()
    if len(bad):
        raise NonFiniteLoss(
            f"the training loss became non-finite at epoch {progress.epoch}, step {int(bad[0]) + 1}; nothing from"
            f" this epoch was saved ({checkpoint_path} keeps the best earlier model)."
            " Try a lower --learning-rate or --no-mixed-precision."
        )


def end_epoch(run: Run, training: Training, data: TrainingData, progress: Progress, loss_fn, writer, seconds) -> dict:
    """Validate, then record the epoch: the best model, panels, history.csv and the curves are written by the
    background `writer`. `seconds` holds the epoch's time so far in training and saving. Returns the history row."""
    config, epoch, started = run.config, progress.epoch, time.perf_counter()
    validation = validate(training.evaluated, data.val_batches, loss_fn, run.device, run.amp_dtype)
    validated = time.perf_counter()
    row = {
        "epoch": epoch,
        "train_loss": progress.step_losses.mean().item(),
        "val_loss": validation["loss"],
        "val_dice": validation["dice"],
        "val_iou": validation["iou"],
        "learning_rate": training.optimizer.param_groups[0]["lr"],
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
    writer.submit("curves", write_curves, list(progress.history), run.output_dir / "curves.png")
    print(epoch_line(row, improved))
    return row


def save_panels(run: Run, model, data: TrainingData, epoch: int, writer) -> None:
    """Predict the fixed validation images and save input / ground truth / prediction panels: drawn by the
    background `writer`, or here when they also open in a window."""
    with torch.inference_mode(), autocast(run.device, run.amp_dtype):
        predictions = binarize(model(data.panel_images.to(run.device, memory_format=run.memory_format))).cpu()
    path, title = run.output_dir / "panels" / f"epoch_{epoch:03d}.png", f"epoch {epoch}: validation images"
    if run.config["SHOW_PANELS"] and can_show_windows():
        figure = panel_figure(data.panel_images, data.panel_masks, predictions, title, window=True)
        save_figure(figure, path)
        show_figure(figure)
    else:
        writer.submit(path.name, write_panels, data.panel_images, data.panel_masks, predictions, path, title)


def epoch_line(row: dict, improved: bool) -> str:
    """The line printed after each epoch."""
    return (
        f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}"
        f"  val Dice {row['val_dice']:.4f}  val IoU {row['val_iou']:.4f}  ({row['seconds']:.1f} s)"
        + ("  * best, saved" if improved else "")
    )


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
    best = max(progress.history, key=lambda row: row["val_dice"])
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


# --- the run -------------------------------------------------------------------------------------------------------


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
            save_training_state(run, training, progress, record)
        raise


# --- the run -------------------------------------------------------------------------------------------------------


def start_run(config: dict) -> Run:
    """Pick the device (each torchrun process its own GPU) and precision, and check the output paths."""
    requested = resolve_device(config["DEVICE"])
    processes = start_processes(requested)
    device = process_device(requested, processes)
    if config["BATCH_SIZE"] % processes.world_size:
        raise UserError(f"BATCH_SIZE {config['BATCH_SIZE']} must divide among the {processes.world_size} processes.")
    amp_dtype = autocast_dtype(device) if config["MIXED_PRECISION"] else None
    if config["THREADS"]:
        torch.set_num_threads(config["THREADS"])
    gpu = f" ({torch.cuda.get_device_name(device)}, autocast {amp_dtype})" if device.type == "cuda" else ""
    print(f"device: {device}{gpu}" + (f", {processes.world_size} processes" if processes.distributed else ""))
    output_dir, checkpoint_path = Path(config["OUTPUT_DIR"]), Path(config["CHECKPOINT_PATH"])
    if processes.is_main:
        check_output_paths(output_dir, checkpoint_path)
    return Run(config, device, amp_dtype, configure_fast_path(device), processes, output_dir, checkpoint_path)


def wrap_for_processes(network: torch.nn.Module, run: Run) -> torch.nn.Module:
    """Under torchrun the network in DistributedDataParallel (gradients averaged over the processes after every
    backward pass, so all keep the same weights), else the network itself."""
    if not run.processes.distributed:
        return network
    return DistributedDataParallel(network, device_ids=[run.device.index] if run.device.type == "cuda" else None)


@contextlib.contextmanager
def run_files_held(run: Run, resuming: bool):
    """Hold the run's output folder and checkpoint against other runs for the block, after tidying what a killed
    run left and claiming the paths (see claim_run_files). Only the main process writes, so only it holds them."""
    if not run.processes.is_main:
        yield
        return
    output_dir, checkpoint_path = run.output_dir, run.checkpoint_path
    with (
        exclusive_lock(output_dir / "train.lock", str(output_dir)),
        exclusive_lock(checkpoint_path.with_suffix(".lock"), str(checkpoint_path)),
    ):
        for folder, name in (
            (output_dir, "*"),
            (output_dir / "panels", "*"),
            (checkpoint_path.parent, checkpoint_path.name),
        ):
            remove_stale_temporaries(folder, name)  # left by a run killed mid-write; never read, only tidied
        claim_run_files(output_dir, checkpoint_path, resuming, overwrite=run.config["OVERWRITE"])
        yield


def stop_now(stop: StopRequest, run: Run, step: int | None = None) -> bool:
    """Whether to stop after `step` (None: at an epoch's end) for a Ctrl-C/SIGTERM: at once for one process; under
    torchrun at an epoch's end and every STOP_CHECK_STEPS steps, where all processes ask together, so that all
    stop after the same step, each then holding the signal one of them received."""
    if not run.processes.distributed:
        return stop.requested
    if step is not None and step % STOP_CHECK_STEPS:
        return False
    agreed = max_over_processes(stop.number, run.processes, run.device)  # a signal arriving later waits for the next
    stop.adopt(agreed)
    return agreed != 0


def train(run: Run, training: Training, data: TrainingData, progress: Progress, stop: StopRequest, writer) -> int:
    """The epoch loop, from `progress` to the last epoch or until a stop is requested; the images trained on."""
    config, device, steps, epochs = run.config, run.device, data.steps_per_epoch, run.config["EPOCHS"]
    train_model = compile_model(wrap_for_processes(training.network, run), config["COMPILE"])  # shares the weights
    loss_fn = make_loss(config["LOSS"], config["BCE_WEIGHT"], config["DICE_WEIGHT"])  # also validation's loss
    train_loss_fn = deeply_supervised(loss_fn, config["DEEP_SUPERVISION"]) if config["DEEP_SUPERVISION"] else loss_fn
    schedule = functools.partial(
        learning_rate_factor,
        warmup_steps=min(config["WARMUP_EPOCHS"] * steps, epochs * steps // 10),
        total_steps=epochs * steps,
        schedule=config["SCHEDULE"],
    )
    images_trained, saved_at, stopping, batches = 0, time.monotonic(), False, iter(data.train_loader)
    estimate = TimeEstimate(device)
    while progress.epoch <= epochs and not stopping:
        seconds, epoch_start = {"train": 0.0, "save": 0.0}, time.perf_counter()
        training.network.train()
        epoch_steps = range(progress.step, steps)
        for _ in tqdm(
            epoch_steps, f"epoch {progress.epoch}/{epochs}", leave=False, unit="step", disable=not run.processes.is_main
        ):
            if run.processes.is_main and time.monotonic() - saved_at >= config["SAVE_EVERY"]:  # what kill -9 loses
                save_started = time.perf_counter()
                save_training_state(run, training, progress, data.record)
                seconds["save"] += time.perf_counter() - save_started
                saved_at = time.monotonic()
            images, masks = next(batches)
            step = (progress.epoch - 1) * steps + progress.step
            set_learning_rate(training.optimizer, config["LEARNING_RATE"] * schedule(step))
            images = images.to(device, non_blocking=True, memory_format=run.memory_format)
            masks = masks.to(device, non_blocking=True)
            if config["MULTI_SCALE"]:
                images, masks = resize_batch(
                    images, masks, multi_scale_size(config["IMAGE_SIZE"], config["SEED"], step)
                )
            loss = training_step(
                train_model,
                images,
                masks,
                train_loss_fn,
                training.optimizer,
                training.scaler,
                run.amp_dtype,
                config["GRAD_CLIP"],
            )
            progress.step_losses[progress.step] = loss
            progress.step += 1
            images_trained += len(images) * run.processes.world_size
            if run.processes.is_main:
                estimate.step_done((epochs - progress.epoch + 1) * steps - progress.step, write=tqdm.write)
            if training.ema:
                training.ema.update_parameters(training.model)
            stopping = stop_now(stop, run, step)
            if stopping:
                break
        progress.step_losses = mean_over_processes(progress.step_losses, run.processes)
        check_finite(progress, run.checkpoint_path)  # waits for the device to finish the epoch's steps
        seconds["train"] = time.perf_counter() - epoch_start - seconds["save"]
        if progress.step < steps:
            break  # stopped mid-epoch: saved by the caller, at this step
        set_learning_rate(training.optimizer, config["LEARNING_RATE"] * schedule(progress.epoch * steps))
        if run.processes.is_main:
            end_epoch(run, training, data, progress, loss_fn, writer, seconds)
        barrier(run.processes)  # the other processes wait for validation
        progress.epoch, progress.step = progress.epoch + 1, 0
        stopping = stop_now(stop, run)
    return images_trained


def full_recipe_on_a_cpu(run: Run) -> bool:
    """True for a GPU-sized run (the default image size and width, or larger) on a CPU: days of training."""
    config = run.config
    return run.device.type == "cpu" and config["IMAGE_SIZE"] ** 2 * config["BASE_CHANNELS"] >= 256**2 * 64


def probed_seconds(training: Training, steps: int, config: dict) -> float:
    """The run's training time on this CPU from one forward and backward pass of two random images through a copy
    of the network (the real weights, statistics and random state stay untouched)."""
    probe = copy.deepcopy(training.network).train()
    size = config["IMAGE_SIZE"]
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    outputs = probe(images)
    started = time.perf_counter()
    outputs = probe(images)
    (outputs[0] if isinstance(outputs, tuple) else outputs).mean().backward()
    return (time.perf_counter() - started) / 2 * config["BATCH_SIZE"] * steps


def main() -> int:
    started = time.perf_counter()
    config, resumed = read_settings()
    check_settings(config)
    run = start_run(config)
    if full_recipe_on_a_cpu(run):
        print(
            f"note: this is the full GPU-sized recipe ({config['IMAGE_SIZE']} px, base width {config['BASE_CHANNELS']},"
            f" {config['EPOCHS']} epochs) on a CPU, where it takes a day or more (an estimate follows once the data is"
            " ready). For a run of minutes: python scripts/train.py configs/cpu_quick.py"
        )
    with run_files_held(run, resuming=resumed is not None):
        training = prepare_training(run)
        progress = restore_training_state(resumed, training, run.device) if resumed else None
        data = prepare_data(run, *((progress.epoch, progress.step) if progress else (1, 0)))
        progress = progress or Progress(1, 0, step_losses=torch.zeros(data.steps_per_epoch, device=run.device))
        parameters, steps = sum(p.numel() for p in training.model.parameters()), data.steps_per_epoch * config["EPOCHS"]
        print(f"training {parameters / 1e6:.2f} M parameters for {steps} steps")
        if full_recipe_on_a_cpu(run):
            estimate = format_duration(probed_seconds(training, steps, config))
            print(f"estimated time on this CPU: {estimate} (from one step of two images)")

        with (
            StopRequest(escalate=not run.processes.distributed) as stop,  # torchrun passes a second signal on
            BackgroundWriter() as writer,
            saved_on_error(run, training, progress, data.record),
        ):
            images_trained = train(run, training, data, progress, stop, writer)
            if run.processes.is_main:
                save_training_state(run, training, progress, data.record)  # at the end, or on Ctrl-C / SIGTERM
        stop_processes(run.processes)
        if stop.requested and progress.epoch <= config["EPOCHS"]:
            where = f"epoch {progress.epoch} step {progress.step}"
            print(f"saved the state at {where} to {run.last_path}; continue with --resume")
            return stop.exit_status
        if not run.processes.is_main:
            return 0
        threshold = choose_and_save_threshold(run, data) if config["THRESHOLD_SEARCH"] else THRESHOLD
        summary = run_summary(progress, time.perf_counter() - started, images_trained, run.device, config, threshold)
        write_text_atomic(run.output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(
        f"done in {summary['wall_seconds']:.1f} s: {summary['images_trained']} training images at"
        f" {summary['images_per_second']:.1f} images/s end to end; best validation Dice {summary['best_val_dice']:.4f}"
        f" (epoch {summary['best_epoch']}), model saved to {run.checkpoint_path}"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
