"""Train a U-Net on Kvasir-SEG: get the data, train with BCE+Dice, validate every epoch, keep the best model.

    python scripts/train.py                          # the defaults below (AdamW 1e-3, cosine, strong augmentation)
    python scripts/train.py --epochs 3 --image-size 128 --device cpu
    python scripts/train.py --preset seed            # the original recipe (lr 1e-5, batch 8, 100 epochs)
    python scripts/train.py --resume                 # continue an interrupted run from OUTPUT_DIR/last.pth

Every UPPER_CASE constant below can be edited here or given as a flag (IMAGE_SIZE -> --image-size).
"""

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import BatchSampler, DataLoader
from tqdm import tqdm

from dataset import kvasir, transforms
from dataset.segmentation import EpochSampler, PolypDataset, loader_options, worker_count
from dataset.splits import make_split
from model import UNet, load_checkpoint, save_checkpoint
from utils.config import parse_config, script_constants
from utils.device import autocast, autocast_dtype, configure_fast_path, resolve_device
from utils.errors import UserError, run_main
from utils.evaluation import evaluate
from utils.files import exclusive_lock, remove_stale_temporaries, write_csv_atomic
from utils.interrupt import StopRequest
from utils.losses import bce_dice_loss
from utils.metrics import binarize
from utils.training import make_optimizer, training_step
from utils.visualization import panel_figure, save_figure

# ----------------------------------------------------------------------------------------------------------
# Data
DATA_DIR = "data"  # holds Kvasir-SEG/ or kvasir-seg.zip; the zip is downloaded here when neither is present
DATA_URL = kvasir.KVASIR_SEG_URL  # where to download the zip from
IMAGE_SIZE = 256  # images and masks are resized to IMAGE_SIZE x IMAGE_SIZE
VAL_FRACTION = 0.1  # share of the 880 official training images held out for validation
AUGMENTATION = "strong"  # none | flips | strong (see dataset/transforms.py)
CACHE = True  # decode and resize each image once into DATA_DIR/cache (memory-mapped afterwards)
NUM_WORKERS = -1  # DataLoader worker processes; -1 picks min(8, CPU count - 1)
# Model
BASE_CHANNELS = 64  # width of the first U-Net level; doubles at each of DEPTH levels
DEPTH = 4  # number of down-sampling steps
# Optimisation (the best recipe measured, see README "Results"; `--preset seed` restores the original one)
EPOCHS = 100
BATCH_SIZE = 16
LEARNING_RATE = 1e-3  # peak learning rate
OPTIMIZER = "adamw"  # adam | adamw
WEIGHT_DECAY = 1e-4
SCHEDULE = "cosine"  # constant | cosine (per step, after warm-up)
WARMUP_EPOCHS = 3  # linear warm-up from 0 to LEARNING_RATE over this many epochs (all of a shorter run)
BCE_WEIGHT = 1.0  # loss = BCE_WEIGHT * BCE + DICE_WEIGHT * (1 - soft Dice)
DICE_WEIGHT = 1.0
EMA_DECAY = 0.0  # 0: off; else validate and save an exponential moving average of the weights, updated every step
# Run
SEED = 42  # seeds the split, initialisation, shuffling and augmentation
DEVICE = "auto"  # auto | cpu | cuda | cuda:N
MIXED_PRECISION = True  # bf16 autocast on CUDA (fp16 with loss scaling on GPUs without bf16); ignored on CPU
COMPILE = False  # torch.compile the training forward pass; off until scripts/benchmark.py --compile shows a gain
THREADS = 0  # PyTorch CPU threads; 0 keeps PyTorch's default (one per core). 1 is far faster on busy shared CPUs
PANEL_EVERY = 5  # save (and show, where a window can open) input/truth/prediction panels every N epochs
PANEL_IMAGES = 4  # how many fixed validation images the panels show
SHOW_PANELS = True  # also open the panels in a window when matplotlib has an interactive backend
OUTPUT_DIR = "outputs"  # history.csv, panels/, last.pth (the resumable state)
CHECKPOINT_PATH = "models/unet_kvasirseg.pth"  # the best model by validation Dice
RESUME = False  # continue from OUTPUT_DIR/last.pth with its saved settings

# Named blocks of settings; `--preset NAME` applies one before any other flag.
PRESETS = {
    "seed": dict(  # the recipe of the original project description
        IMAGE_SIZE=256,
        BATCH_SIZE=8,
        LEARNING_RATE=1e-5,
        EPOCHS=100,
        OPTIMIZER="adam",
        WEIGHT_DECAY=0.0,
        SCHEDULE="constant",
        WARMUP_EPOCHS=0,
        AUGMENTATION="flips",
        BASE_CHANNELS=64,
    ),
    "cpu-quick": dict(IMAGE_SIZE=128, BASE_CHANNELS=16, EPOCHS=5, WARMUP_EPOCHS=1, DEVICE="cpu"),  # a laptop smoke run
}
RUNTIME_SETTINGS = ("DEVICE", "NUM_WORKERS", "COMPILE", "THREADS", "SHOW_PANELS", "RESUME")  # may differ when resuming
RESUMABLE_KEYS = ("step", "optimizer_state", "scheduler_state", "scaler_state", "rng_state", "history", "best_dice")
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
            config["IMAGE_SIZE"] >= 2 ** (config["DEPTH"] + 1),
            f"IMAGE_SIZE must be at least {2 ** (config['DEPTH'] + 1)} for a U-Net of DEPTH {config['DEPTH']}",
        ),
        (
            config["AUGMENTATION"] in transforms.AUGMENTATIONS,
            f"AUGMENTATION must be one of {', '.join(transforms.AUGMENTATIONS)}",
        ),
        (config["OPTIMIZER"] in ("adam", "adamw"), "OPTIMIZER must be adam or adamw"),
        (config["SCHEDULE"] in ("constant", "cosine"), "SCHEDULE must be constant or cosine"),
        (config["WARMUP_EPOCHS"] >= 0, "WARMUP_EPOCHS must be >= 0"),
        (0 <= config["EMA_DECAY"] < 1, "EMA_DECAY must be in [0, 1) (0 turns the moving average off)"),
        (config["PANEL_EVERY"] >= 1 and config["PANEL_IMAGES"] >= 1, "PANEL_EVERY and PANEL_IMAGES must be >= 1"),
        (config["THREADS"] >= 0, "THREADS must be >= 0 (0 keeps PyTorch's default)"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(f"{message}.")


def load_resumable(path: Path) -> dict:
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


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of LEARNING_RATE at a step: linear warm-up, then constant or cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def main() -> None:
    # --- settings ---------------------------------------------------------------------------------------
    defaults = script_constants(globals())  # PRESETS, RUNTIME_SETTINGS and RESUMABLE_KEYS are not settings
    config = parse_config(defaults, description=__doc__, presets=PRESETS)
    output_dir = Path(config["OUTPUT_DIR"])
    last_path = output_dir / "last.pth"
    resumed = None
    if config["RESUME"]:
        resumed = load_resumable(last_path)
        config = {**resumed["config"], **{name: config[name] for name in RUNTIME_SETTINGS}}
        print(f"resuming from {last_path} (epoch {resumed['epoch']}, step {resumed['step']}) with its settings")
    check_settings(config)
    device = resolve_device(config["DEVICE"])
    amp_dtype = autocast_dtype(device) if config["MIXED_PRECISION"] else None
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)}, autocast {amp_dtype})" if amp_dtype else ""))
    memory_format = configure_fast_path(device)
    if config["THREADS"]:
        torch.set_num_threads(config["THREADS"])
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = Path(config["CHECKPOINT_PATH"])

    with (
        exclusive_lock(output_dir / "train.lock", str(output_dir)),
        exclusive_lock(checkpoint_path.with_suffix(".lock"), config["CHECKPOINT_PATH"]),
    ):
        for folder, name in (
            (output_dir, "*"),
            (output_dir / "panels", "*"),
            (checkpoint_path.parent, checkpoint_path.name),
        ):
            remove_stale_temporaries(folder, name)  # left by a run killed mid-write; never read, only tidied
        # --- data -----------------------------------------------------------------------------------------
        pairs = kvasir.prepare_kvasir_seg(config["DATA_DIR"], config["DATA_URL"])
        split = make_split([sample_id for sample_id, _, _ in pairs], config["VAL_FRACTION"], config["SEED"])
        by_id = {pair[0]: pair for pair in pairs}
        print(f"split: {len(split.train)} train / {len(split.val)} validation / {len(split.test)} test (held out)")
        cache_dir = Path(config["DATA_DIR"]) / "cache" if config["CACHE"] else None
        train_set = PolypDataset(
            [by_id[i] for i in split.train],
            config["IMAGE_SIZE"],
            transforms.build_transform(config["AUGMENTATION"]),
            cache_dir,
        )
        val_set = PolypDataset(
            [by_id[i] for i in split.val], config["IMAGE_SIZE"], transforms.build_transform("none"), cache_dir
        )
        if len(train_set) < config["BATCH_SIZE"]:
            raise UserError(f"BATCH_SIZE {config['BATCH_SIZE']} exceeds the {len(train_set)} training images.")
        sampler = EpochSampler(len(train_set), config["SEED"])
        options = loader_options(worker_count(config["NUM_WORKERS"]), device)
        train_loader = DataLoader(
            train_set, batch_sampler=BatchSampler(sampler, config["BATCH_SIZE"], drop_last=True), **options
        )
        val_loader = DataLoader(val_set, batch_size=2 * config["BATCH_SIZE"], **options)
        panel_batch = [val_set[i] for i in range(min(config["PANEL_IMAGES"], len(val_set)))]
        panel_images = torch.stack([image for image, _ in panel_batch])
        panel_masks = torch.stack([mask for _, mask in panel_batch])

        # --- model and optimiser ------------------------------------------------------------------------
        torch.manual_seed(config["SEED"])
        model = UNet(3, 1, config["BASE_CHANNELS"], config["DEPTH"]).to(device, memory_format=memory_format)
        train_model = torch.compile(model) if config["COMPILE"] else model  # shares the weights of `model`
        ema = None
        if config["EMA_DECAY"]:  # a shadow copy; batch-norm statistics are averaged like the weights
            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config["EMA_DECAY"]), use_buffers=True)
        eval_model = ema.module if ema else model  # validated, shown in the panels and saved as the best model
        optimizer = make_optimizer(
            model.parameters(), config["OPTIMIZER"], config["LEARNING_RATE"], config["WEIGHT_DECAY"], device
        )
        steps_per_epoch = len(train_set) // config["BATCH_SIZE"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: learning_rate_factor(
                step, config["WARMUP_EPOCHS"] * steps_per_epoch, config["EPOCHS"] * steps_per_epoch, config["SCHEDULE"]
            ),
        )
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        def loss_fn(logits, masks):
            return bce_dice_loss(logits, masks, config["BCE_WEIGHT"], config["DICE_WEIGHT"])

        start_epoch, start_step, history, best_dice = 1, 0, [], -1.0
        step_losses = torch.zeros(steps_per_epoch, device=device)
        if resumed is not None:
            model.load_state_dict(resumed["model_state"])
            if ema:
                ema.load_state_dict(resumed["ema_state"])
            optimizer.load_state_dict(resumed["optimizer_state"])
            scheduler.load_state_dict(resumed["scheduler_state"])
            scaler.load_state_dict(resumed["scaler_state"])
            torch.set_rng_state(resumed["rng_state"])
            start_epoch, start_step = resumed["epoch"], resumed["step"]
            history, best_dice = resumed["history"], resumed["best_dice"]
            step_losses.copy_(resumed["step_losses"])

        def cpu_state(module: torch.nn.Module) -> dict:
            """The module's state dict as detached CPU tensors, for saving."""
            return {k: v.detach().cpu() for k, v in module.state_dict().items()}

        def model_checkpoint(weights: torch.nn.Module, epoch: int, metrics: dict) -> dict:
            """The portable checkpoint: the weights of `weights` plus everything needed to rebuild and feed it."""
            return {
                "model_state": cpu_state(weights),
                "model_config": model.config,
                "preprocessing": {
                    "image_size": config["IMAGE_SIZE"],
                    "mean": transforms.IMAGENET_MEAN,
                    "std": transforms.IMAGENET_STD,
                },
                "epoch": epoch,
                "metrics": metrics,
                "config": config,
            }

        def save_resumable(epoch: int, step: int) -> None:
            """Everything needed to continue exactly from `step` of `epoch` (the start of the next step)."""
            state = model_checkpoint(model, epoch, history[-1] if history else {})
            if ema:
                state["ema_state"] = cpu_state(ema)
            state.update(
                step=step,
                optimizer_state=optimizer.state_dict(),
                scheduler_state=scheduler.state_dict(),
                scaler_state=scaler.state_dict(),
                rng_state=torch.get_rng_state(),
                history=history,
                best_dice=best_dice,
                step_losses=step_losses.cpu(),
            )
            save_checkpoint(last_path, state)

        def check_finite(epoch: int, steps_done: int) -> None:
            """Stop on a NaN/inf loss, naming where it first appeared; checked without a per-step sync."""
            bad = (~torch.isfinite(step_losses[:steps_done])).nonzero()
            if len(bad):
                raise UserError(
                    f"the training loss became non-finite at epoch {epoch}, step {int(bad[0]) + 1}; nothing from"
                    f" this epoch was saved ({config['CHECKPOINT_PATH']} keeps the best earlier model)."
                    " Try a lower --learning-rate or --no-mixed-precision."
                )

        def save_and_exit(epoch: int, step: int, exit_status: int) -> None:
            """Save the state at the start of `step` of `epoch`, then exit (128 + signal number, by convention)."""
            save_resumable(epoch, step)
            print(f"saved the state at epoch {epoch} step {step} to {last_path}; continue with --resume")
            sys.exit(exit_status)

        # --- training loop ------------------------------------------------------------------------------
        total_steps = steps_per_epoch * config["EPOCHS"]
        print(f"training {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters for {total_steps} steps")
        with StopRequest() as stop:
            for epoch in range(start_epoch, config["EPOCHS"] + 1):
                model.train()
                epoch_start = time.perf_counter()
                sampler.set_epoch(epoch, skip=start_step * config["BATCH_SIZE"])
                progress = tqdm(train_loader, desc=f"epoch {epoch}/{config['EPOCHS']}", leave=False, unit="batch")
                for step, (images, masks) in enumerate(progress, start=start_step):
                    images = images.to(device, non_blocking=True, memory_format=memory_format)
                    masks = masks.to(device, non_blocking=True)
                    step_losses[step] = training_step(train_model, images, masks, loss_fn, optimizer, scaler, amp_dtype)
                    scheduler.step()
                    if ema:
                        ema.update_parameters(model)
                    if step % 10 == 0:
                        progress.set_postfix(loss=f"{step_losses[step].item():.4f}")
                    if stop.requested:
                        check_finite(epoch, step + 1)
                        save_and_exit(epoch, step + 1, stop.exit_status)
                start_step = 0
                check_finite(epoch, steps_per_epoch)

                val = evaluate(eval_model, val_loader, loss_fn, device, amp_dtype)
                history.append(
                    {
                        "epoch": epoch,
                        "train_loss": step_losses.mean().item(),
                        "val_loss": val["loss"],
                        "val_dice": val["dice"],
                        "val_iou": val["iou"],
                        "learning_rate": scheduler.get_last_lr()[0],
                        "seconds": round(time.perf_counter() - epoch_start, 2),
                    }
                )
                row = history[-1]
                improved = row["val_dice"] > best_dice
                print(
                    f"epoch {epoch:3d}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}"
                    f"  val Dice {row['val_dice']:.4f}  val IoU {row['val_iou']:.4f}  ({row['seconds']:.1f} s)"
                    + ("  * best, saved" if improved else "")
                )
                write_csv_atomic(output_dir / "history.csv", history)
                if improved:
                    best_dice = row["val_dice"]
                    save_checkpoint(config["CHECKPOINT_PATH"], model_checkpoint(eval_model, epoch, row))

                if epoch % config["PANEL_EVERY"] == 0 or epoch == config["EPOCHS"]:
                    with torch.inference_mode(), autocast(device, amp_dtype):
                        predictions = binarize(eval_model(panel_images.to(device, memory_format=memory_format)))
                    figure = panel_figure(panel_images, panel_masks, predictions, f"epoch {epoch}: validation images")
                    save_figure(figure, output_dir / "panels" / f"epoch_{epoch:03d}.png", config["SHOW_PANELS"])
                if stop.requested and epoch < config["EPOCHS"]:
                    save_and_exit(epoch + 1, 0, stop.exit_status)
                save_resumable(epoch + 1, 0)

        print(f"best validation Dice {best_dice:.4f}; model saved to {config['CHECKPOINT_PATH']}")


if __name__ == "__main__":
    run_main(main)
