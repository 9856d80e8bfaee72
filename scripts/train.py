"""Train a U-Net on Kvasir-SEG: get the data, train with BCE+Dice, validate every epoch, keep the best model.

    python scripts/train.py                              # the defaults below: the best recipe measured
    python scripts/train.py configs/cpu_quick.py         # a few minutes on a laptop CPU
    python scripts/train.py configs/seed.py --epochs 3   # a recipe file, then flags on top of it
    python scripts/train.py --resume                     # continue a stopped run from OUTPUT_DIR/last.pth
    python scripts/train.py --resume --epochs 150        # ... or train a finished one for longer

Every UPPER_CASE constant below can be edited here, set in a recipe file (configs/), or given as a flag
(IMAGE_SIZE -> --image-size); flags win over recipe files, which win over the constants.
"""

import functools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import BatchSampler, DataLoader
from tqdm import tqdm

from common.config import Settings, flag_name, parse_settings, script_constants
from common.device import autocast, autocast_dtype, configure_fast_path, describe_device, resolve_device
from common.errors import UserError, run_main
from common.files import exclusive_lock, remove_stale_temporaries, writable_folder, write_csv_atomic, write_text_atomic
from common.interrupt import StopRequest
from dataset import kvasir, transforms
from dataset.segmentation import EpochSampler, PolypDataset, loader_options, worker_count
from dataset.splits import Split, make_split
from model import build_unet, load_checkpoint, model_checkpoint, save_checkpoint
from model.checkpoint import cpu_state
from model.unet import smallest_input
from utils.losses import bce_dice_loss
from utils.metrics import binarize
from utils.training import OPTIMIZERS, SCHEDULES, learning_rate_factor, make_optimizer, set_learning_rate, training_step
from utils.validation import validate
from utils.visualization import panel_figure, save_figure

# ----------------------------------------------------------------------------------------------------------
# Data
DATA_DIR = "data"  # holds Kvasir-SEG/ or kvasir-seg.zip; the zip is downloaded here when neither is present
DATA_URL = kvasir.KVASIR_SEG_URL  # where to download the zip from
IMAGE_SIZE = 256  # images and masks are resized to IMAGE_SIZE x IMAGE_SIZE
VAL_FRACTION = 0.1  # share of the 880 official training images held out for validation
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
SCHEDULE = "cosine"  # learning rate after warm-up: constant, or cosine decay to zero (per step)
WARMUP_EPOCHS = 3  # linear warm-up from 0 to LEARNING_RATE over this many epochs, at most a tenth of the run
BCE_WEIGHT = 1.0  # loss = BCE_WEIGHT * BCE + DICE_WEIGHT * (1 - soft Dice)
DICE_WEIGHT = 1.0  # see BCE_WEIGHT
EMA_DECAY = 0.0  # 0: off; else validate and save an exponential moving average of the weights, updated every step
# Run
SEED = 42  # seeds the split, initialisation, shuffling and augmentation
DEVICE = "auto"  # auto (the GPU when there is one) | cpu | cuda | cuda:N
MIXED_PRECISION = True  # bf16 autocast on CUDA (fp16 with loss scaling on GPUs without bf16); ignored on CPU
COMPILE = False  # torch.compile the training forward pass; off until scripts/benchmark.py --compile shows a gain
THREADS = 0  # PyTorch CPU threads; 0 keeps PyTorch's default (one per core). 1 is far faster on busy shared CPUs
PANEL_EVERY = 5  # save (and show, where a window can open) input/truth/prediction panels every N epochs
PANEL_IMAGES = 4  # how many fixed validation images the panels show
SHOW_PANELS = True  # also open the panels in a window when matplotlib has an interactive backend
OUTPUT_DIR = "outputs"  # history.csv, panels/, last.pth (the resumable state)
CHECKPOINT_PATH = "models/unet_kvasirseg.pth"  # the best model by validation Dice
RESUME = False  # continue the run saved in OUTPUT_DIR/last.pth, with its recipe
OVERWRITE = False  # start a new run even where OUTPUT_DIR or CHECKPOINT_PATH hold an earlier run's files

CHOICES = {"AUGMENTATION": transforms.AUGMENTATIONS, "OPTIMIZER": OPTIMIZERS, "SCHEDULE": SCHEDULES}
# What --resume may change: how the run is carried out, and EPOCHS (train longer); never the recipe.
RESUME_MAY_CHANGE = (
    "DATA_DIR", "DATA_URL", "CACHE", "NUM_WORKERS", "DEVICE", "COMPILE", "THREADS", "PANEL_EVERY", "PANEL_IMAGES",
    "SHOW_PANELS", "OUTPUT_DIR", "CHECKPOINT_PATH", "RESUME", "OVERWRITE", "EPOCHS",
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
        (config["PANEL_EVERY"] >= 1 and config["PANEL_IMAGES"] >= 1, "PANEL_EVERY and PANEL_IMAGES must be >= 1"),
        (config["THREADS"] >= 0, "THREADS must be >= 0 (0 keeps PyTorch's default)"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(f"{message}.")


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
    candidates = [checkpoint_path, *(output_dir / name for name in ("last.pth", "history.csv", "summary.json"))]
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


# --- the training state: what `save_training_state` writes is exactly what `restore_training_state` reads ---


@dataclass
class Training:
    """What the optimisation changes: the weights, their moving average (or None), the optimizer, the loss scaler."""

    model: torch.nn.Module
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


def save_training_state(path: Path, training: Training, progress: Progress, image_size: int, split, config) -> None:
    """Write everything needed to continue exactly at `progress` (the start of its next step) to `path`."""
    history = progress.history
    state = model_checkpoint(training.model, image_size, progress.epoch, history[-1] if history else {}, split, config)
    if training.ema:
        state["ema_state"] = cpu_state(training.ema)
    state.update(
        step=progress.step,
        step_losses=progress.step_losses.cpu(),
        history=history,
        best_dice=progress.best_dice,
        optimizer_state=training.optimizer.state_dict(),
        scaler_state=training.scaler.state_dict(),
        rng_state=torch.get_rng_state(),
    )
    save_checkpoint(path, state)


def restore_training_state(state: dict, training: Training, device: torch.device) -> Progress:
    """Load a state written by `save_training_state` into `training`; return the progress it was saved at."""
    training.model.load_state_dict(state["model_state"])
    if training.ema:
        training.ema.load_state_dict(state["ema_state"])
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
            f"nothing to resume: {path} does not exist (a run writes it after every epoch and when stopped);"
            " start without --resume, or pass the --output-dir of the run to continue."
        )
    state = load_checkpoint(path)
    missing = [key for key in RESUMABLE_KEYS if key not in state]
    if missing:
        raise UserError(f"{path} is a model checkpoint, not a resumable training state (no {', '.join(missing)}).")
    return state


# --- setting up --------------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The loaders of one run and the fixed validation images its panels show."""

    split: Split
    sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader
    panel_images: torch.Tensor
    panel_masks: torch.Tensor

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader.batch_sampler.sampler) // self.train_loader.batch_sampler.batch_size


def prepare_data(config: dict, device: torch.device) -> TrainingData:
    """Get Kvasir-SEG, split it, and build the augmented training loader and the validation loader."""
    pairs = kvasir.prepare_kvasir_seg(config["DATA_DIR"], config["DATA_URL"])
    split = make_split([sample_id for sample_id, _, _ in pairs], config["VAL_FRACTION"], config["SEED"])
    print(f"split: {len(split.train)} train / {len(split.val)} validation / {len(split.test)} test (held out)")
    by_id = {pair[0]: pair for pair in pairs}
    cache_dir = Path(config["DATA_DIR"]) / "cache" if config["CACHE"] else None
    augment, no_augment = transforms.build_transform(config["AUGMENTATION"]), transforms.build_transform("none")
    train_set = PolypDataset([by_id[i] for i in split.train], config["IMAGE_SIZE"], augment, cache_dir)
    val_set = PolypDataset([by_id[i] for i in split.val], config["IMAGE_SIZE"], no_augment, cache_dir)
    if len(train_set) < config["BATCH_SIZE"]:
        raise UserError(f"BATCH_SIZE {config['BATCH_SIZE']} exceeds the {len(train_set)} training images.")
    sampler = EpochSampler(len(train_set), config["SEED"])
    options = loader_options(worker_count(config["NUM_WORKERS"]), device)
    batches = BatchSampler(sampler, config["BATCH_SIZE"], drop_last=True)
    panel_samples = [val_set[i] for i in range(min(config["PANEL_IMAGES"], len(val_set)))]
    return TrainingData(
        split,
        sampler,
        DataLoader(train_set, batch_sampler=batches, **options),
        DataLoader(val_set, batch_size=2 * config["BATCH_SIZE"], **options),
        torch.stack([image for image, _ in panel_samples]),
        torch.stack([mask for _, mask in panel_samples]),
    )


def prepare_training(config: dict, device: torch.device, memory_format, amp_dtype) -> Training:
    """The seeded U-Net on `device`, its weight average when EMA_DECAY > 0, the optimizer and the loss scaler."""
    torch.manual_seed(config["SEED"])
    model = build_unet(config["BASE_CHANNELS"], config["DEPTH"]).to(device, memory_format=memory_format)
    ema = None
    if config["EMA_DECAY"]:  # a shadow copy; batch-norm statistics are averaged like the weights
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config["EMA_DECAY"]), use_buffers=True)
    optimizer = make_optimizer(
        model.parameters(), config["OPTIMIZER"], config["LEARNING_RATE"], config["WEIGHT_DECAY"], device
    )
    return Training(model, ema, optimizer, torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16))


# --- at the end of an epoch ----------------------------------------------------------------------------------------


def check_finite(progress: Progress, checkpoint_path) -> None:
    """Stop on a NaN/inf loss, naming where it first appeared; checked once per epoch, not with a sync per step."""
    bad = (~torch.isfinite(progress.step_losses[: progress.step])).nonzero()
    if len(bad):
        raise UserError(
            f"the training loss became non-finite at epoch {progress.epoch}, step {int(bad[0]) + 1}; nothing from"
            f" this epoch was saved ({checkpoint_path} keeps the best earlier model)."
            " Try a lower --learning-rate or --no-mixed-precision."
        )


def history_row(progress: Progress, validation: dict, learning_rate: float, seconds: float) -> dict:
    """One line of history.csv for the epoch `progress` has just finished."""
    return {
        "epoch": progress.epoch,
        "train_loss": progress.step_losses.mean().item(),
        "val_loss": validation["loss"],
        "val_dice": validation["dice"],
        "val_iou": validation["iou"],
        "learning_rate": learning_rate,
        "seconds": round(seconds, 2),
    }


def epoch_line(row: dict, improved: bool) -> str:
    """The line printed after each epoch."""
    return (
        f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}"
        f"  val Dice {row['val_dice']:.4f}  val IoU {row['val_iou']:.4f}  ({row['seconds']:.1f} s)"
        + ("  * best, saved" if improved else "")
    )


def save_panels(model, data: TrainingData, device, memory_format, amp_dtype, path: Path, epoch: int, show: bool):
    """Predict the fixed validation images and save input / ground truth / prediction panels."""
    with torch.inference_mode(), autocast(device, amp_dtype):
        predictions = binarize(model(data.panel_images.to(device, memory_format=memory_format)))
    figure = panel_figure(data.panel_images, data.panel_masks, predictions, f"epoch {epoch}: validation images")
    save_figure(figure, path, show)


# --- the run -------------------------------------------------------------------------------------------------------


def run_summary(progress: Progress, wall_seconds: float, images_trained: int, device, config: dict) -> dict:
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
        "recipes": config["RECIPES"],
    }


def main() -> int:
    started = time.perf_counter()
    config, resumed = read_settings()
    check_settings(config)
    output_dir, checkpoint_path = Path(config["OUTPUT_DIR"]), Path(config["CHECKPOINT_PATH"])
    last_path = output_dir / "last.pth"
    device = resolve_device(config["DEVICE"])
    amp_dtype = autocast_dtype(device) if config["MIXED_PRECISION"] else None
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)}, autocast {amp_dtype})" if amp_dtype else ""))
    memory_format = configure_fast_path(device)
    if config["THREADS"]:
        torch.set_num_threads(config["THREADS"])
    check_output_paths(output_dir, checkpoint_path)

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
        claim_run_files(output_dir, checkpoint_path, resuming=resumed is not None, overwrite=config["OVERWRITE"])
        data = prepare_data(config, device)
        training = prepare_training(config, device, memory_format, amp_dtype)
        train_model = torch.compile(training.model) if config["COMPILE"] else training.model  # shares the weights
        loss_fn = functools.partial(bce_dice_loss, bce_weight=config["BCE_WEIGHT"], dice_weight=config["DICE_WEIGHT"])
        steps_per_epoch, epochs = data.steps_per_epoch, config["EPOCHS"]
        schedule = functools.partial(
            learning_rate_factor,
            warmup_steps=min(config["WARMUP_EPOCHS"] * steps_per_epoch, epochs * steps_per_epoch // 10),
            total_steps=epochs * steps_per_epoch,
            schedule=config["SCHEDULE"],
        )
        if resumed:
            progress = restore_training_state(resumed, training, device)
        else:
            progress = Progress(epoch=1, step=0, step_losses=torch.zeros(steps_per_epoch, device=device))
        images_trained = 0
        parameters = sum(p.numel() for p in training.model.parameters())
        print(f"training {parameters / 1e6:.2f} M parameters for {steps_per_epoch * epochs} steps")

        with StopRequest() as stop:
            while progress.epoch <= epochs and not stop.requested:
                epoch_start = time.perf_counter()
                training.model.train()
                data.sampler.set_epoch(progress.epoch, skip=progress.step * config["BATCH_SIZE"])
                bar = tqdm(data.train_loader, desc=f"epoch {progress.epoch}/{epochs}", leave=False, unit="batch")
                for images, masks in bar:
                    step = (progress.epoch - 1) * steps_per_epoch + progress.step
                    set_learning_rate(training.optimizer, config["LEARNING_RATE"] * schedule(step))
                    images = images.to(device, non_blocking=True, memory_format=memory_format)
                    masks = masks.to(device, non_blocking=True)
                    loss = training_step(
                        train_model, images, masks, loss_fn, training.optimizer, training.scaler, amp_dtype
                    )
                    progress.step_losses[progress.step] = loss
                    progress.step += 1
                    images_trained += len(images)
                    if training.ema:
                        training.ema.update_parameters(training.model)
                    if stop.requested:
                        break
                check_finite(progress, checkpoint_path)
                if progress.step < steps_per_epoch:
                    break  # stopped mid-epoch: saved below, at this step

                validation = validate(training.evaluated, data.val_loader, loss_fn, device, amp_dtype)
                learning_rate = config["LEARNING_RATE"] * schedule(progress.epoch * steps_per_epoch)
                row = history_row(progress, validation, learning_rate, time.perf_counter() - epoch_start)
                improved = row["val_dice"] > progress.best_dice
                progress.history.append(row)
                print(epoch_line(row, improved))
                write_csv_atomic(output_dir / "history.csv", progress.history)
                if improved:
                    progress.best_dice = row["val_dice"]
                    checkpoint = model_checkpoint(
                        training.evaluated, config["IMAGE_SIZE"], progress.epoch, row, data.split, config
                    )
                    save_checkpoint(checkpoint_path, checkpoint)
                if progress.epoch % config["PANEL_EVERY"] == 0 or progress.epoch == epochs:
                    panel_path = output_dir / "panels" / f"epoch_{progress.epoch:03d}.png"
                    save_panels(
                        training.evaluated,
                        data,
                        device,
                        memory_format,
                        amp_dtype,
                        panel_path,
                        progress.epoch,
                        config["SHOW_PANELS"],
                    )
                progress.epoch, progress.step = progress.epoch + 1, 0
                if not stop.requested:  # a stop saves once, below
                    save_training_state(last_path, training, progress, config["IMAGE_SIZE"], data.split, config)

        if stop.requested:  # Ctrl-C or SIGTERM: keep the state after the last step taken
            save_training_state(last_path, training, progress, config["IMAGE_SIZE"], data.split, config)
            if progress.epoch <= epochs:
                print(
                    f"saved the state at epoch {progress.epoch} step {progress.step} to {last_path};"
                    " continue with --resume"
                )
                return stop.exit_status
        summary = run_summary(progress, time.perf_counter() - started, images_trained, device, config)
        write_text_atomic(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(
        f"done in {summary['wall_seconds']:.1f} s: {summary['images_trained']} training images at"
        f" {summary['images_per_second']:.1f} images/s end to end; best validation Dice {summary['best_val_dice']:.4f}"
        f" (epoch {summary['best_epoch']}), model saved to {checkpoint_path}"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
