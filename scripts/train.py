"""Train a U-Net on Kvasir-SEG: get the data, train with BCE+Dice, validate every epoch, keep the best model.

    python scripts/train.py                              # the defaults below: the best recipe measured
    python scripts/train.py configs/cpu_quick.py         # about a minute on an idle 2-core CPU
    python scripts/train.py configs/seed.py --epochs 3   # a recipe file, then flags on top of it
    python scripts/train.py --name wide --base-channels 96  # a run of its own: outputs/wide/ and outputs/wide/best.pth
    python scripts/train.py --resume                     # continue a stopped run from OUTPUT_DIR/last.pth
    python scripts/train.py --resume --epochs 150        # ... or train a finished one for longer

Every UPPER_CASE constant below can be edited here, set in a recipe file (configs/), or given as a flag
(IMAGE_SIZE -> --image-size); flags win over recipe files, which win over the constants.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from common.config import script_constants
from common.device import autocast
from common.distributed import data_parallel
from common.errors import run_main
from common.progress import progress_bar
from dataset import kvasir
from dataset.sources import DataRecord
from dataset.training_data import prepare_data
from dataset.transforms import AUGMENTATIONS
from model import NETWORKS, build_network, model_checkpoint, network_kwargs, save_checkpoint
from model.unet import DeepSupervision
from utils.losses import LOSSES, deeply_supervised, make_loss
from utils.train_settings import read_settings
from utils.training import (
    COMPILE_MODES,
    OPTIMIZERS,
    SCHEDULES,
    compile_model,
    make_optimizer,
    make_scaler,
    multi_scale_size,
    resize_batch,
)
from utils.training_ops import announce_training, check_fits, finish, locked_outputs, operations, start_run
from utils.training_state import Progress, Training, restore_training, restored_progress
from utils.validation import validate

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
AUGMENTATION = "strong"  # random changes to each training image (dataset/transforms.py's AUGMENTATIONS)
CACHE = True  # decode and resize each image once into DATA_DIR/cache (memory-mapped afterwards)
NUM_WORKERS = -1  # DataLoader worker processes; -1 picks min(8, CPU count - 1)
# Model
MODEL = "unet"  # the network (model/networks.py): unet; with requirements-smp.txt smp_unet, smp_fpn, ...
BASE_CHANNELS = 64  # unet: width of the first level; doubles at each of DEPTH levels
DEPTH = 4  # unet: number of down-sampling steps
ENCODER = "resnet34"  # smp_*: the encoder, any of segmentation_models_pytorch's
ENCODER_WEIGHTS = "none"  # smp_*: the encoder's starting weights: none (from scratch), imagenet (downloaded) or a file
# Optimisation (the best recipe measured, see README "Results"; configs/seed.py is the original one)
EPOCHS = 100  # passes over the training images
BATCH_SIZE = 16  # images per training step
LEARNING_RATE = 1e-3  # peak learning rate
OPTIMIZER = "adamw"  # utils/training.py's OPTIMIZERS: adam, or adamw (weight decay decoupled from the step)
WEIGHT_DECAY = 1e-4  # L2 penalty on the weights (decoupled with adamw)
DECAY_NORMS_AND_BIASES = True  # apply WEIGHT_DECAY to BatchNorm and bias parameters too (False: conv weights only)
SCHEDULE = "cosine"  # learning rate after warm-up (utils/training.py's SCHEDULES): constant, or cosine decay to 0
WARMUP_EPOCHS = 3  # linear warm-up from 0 to LEARNING_RATE over this many epochs, at most a tenth of the run
LOSS = "bce_dice"  # utils/losses.py: bce_dice (BCE_WEIGHT * BCE + DICE_WEIGHT * (1 - soft Dice)), structure, ...
BCE_WEIGHT = 1.0  # bce_dice: weight of the pixel-wise BCE
DICE_WEIGHT = 1.0  # bce_dice: weight of the soft Dice loss
FOCAL_ALPHA = 0.25  # focal: weight of polyp pixels (background: 1 - FOCAL_ALPHA)
FOCAL_GAMMA = 2.0  # focal: how much well-classified pixels are down-weighted, by (1 - p)**FOCAL_GAMMA
TVERSKY_ALPHA = 0.3  # tversky: weight of false positives
TVERSKY_BETA = 0.7  # tversky: weight of false negatives (missed polyp pixels)
DEEP_SUPERVISION = 0.0  # 0: off; else the weight of auxiliary losses on the 2 coarser decoder levels (training only)
MULTI_SCALE = False  # train each batch at about 0.75, 1 or 1.25 x IMAGE_SIZE (seeded per step; validation at size)
GRAD_CLIP = 0.0  # 0: off; else clip the gradients' global norm to this
EMA_DECAY = 0.0  # 0: off; else validate and save an exponential moving average of the weights, updated every step
THRESHOLD_SEARCH = False  # after training, pick the threshold (0.3-0.7) with the best validation Dice, full size, TTA
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
NAME = ""  # a name for the run: its files go to outputs/NAME/, its best model to outputs/NAME/best.pth ("": as below)
OUTPUT_DIR = "outputs"  # history.csv, curves.png, panels/, last.pth (the resumable state), summary.json
CHECKPOINT_PATH = "models/unet_kvasirseg.pth"  # the best model by validation Dice
RESUME = False  # continue the run saved in OUTPUT_DIR/last.pth, with its recipe
OVERWRITE = False  # start a new run even where OUTPUT_DIR or CHECKPOINT_PATH hold an earlier run's files

CHOICES = {
    "MODEL": tuple(NETWORKS),
    "AUGMENTATION": AUGMENTATIONS,
    "LOSS": LOSSES,
    "OPTIMIZER": OPTIMIZERS,
    "SCHEDULE": SCHEDULES,
    "COMPILE": COMPILE_MODES,
}
# ----------------------------------------------------------------------------------------------------------


def get_lr(step: int, steps_per_epoch: int, config: dict) -> float:
    """The learning rate of global step `step`: linear warm-up over WARMUP_EPOCHS (at most a tenth of the run),
    then SCHEDULE from LEARNING_RATE. A function of the step alone, so a resumed run needs no schedule state."""
    total_steps = config["EPOCHS"] * steps_per_epoch
    warmup_steps = min(config["WARMUP_EPOCHS"] * steps_per_epoch, total_steps // 10)
    if step < warmup_steps:
        return config["LEARNING_RATE"] * ((step + 1) / warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return config["LEARNING_RATE"] * SCHEDULES[config["SCHEDULE"]](min(progress, 1.0))


def main() -> int:
    started = time.perf_counter()
    # 1. Settings: the constants above, recipe files, flags; with --resume, the saved run's recipe and state
    defaults = script_constants(globals())
    config, resumed = read_settings(defaults, __file__, CHOICES)
    # 2. Device, processes and output paths, checked before any work; the output folder locked against other runs
    run = start_run(config, example=CHECKPOINT_PATH)
    device, amp_dtype, memory_format = run.device, run.amp_dtype, run.memory_format
    with locked_outputs(run, resumed is not None, defaults):
        # 3. The network, seeded; with DEEP_SUPERVISION trained with auxiliary heads, with EMA_DECAY validated as
        # a moving average of its weights (BatchNorm statistics averaged too)
        torch.manual_seed(config["SEED"])
        network = build_network(config["MODEL"], network_kwargs(config["MODEL"], config), config["IMAGE_SIZE"])
        check_fits(run, network)
        # MULTI_SCALE's other sides: ones that every level of the network halves exactly
        halving = max(network.size_multiple, network.smallest_input // 2)
        trained = DeepSupervision(network) if config["DEEP_SUPERVISION"] else network
        if run.processes.distributed and device.type == "cuda":  # one BatchNorm over the processes' slices
            trained = torch.nn.SyncBatchNorm.convert_sync_batchnorm(trained)  # swaps the layers inside `network` too
        trained.to(device, memory_format=memory_format)
        ema = None
        if config["EMA_DECAY"]:
            ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(config["EMA_DECAY"]), use_buffers=True)
        optimizer = make_optimizer(
            trained, config["OPTIMIZER"], config["LEARNING_RATE"], config["WEIGHT_DECAY"], device,
            config["DECAY_NORMS_AND_BIASES"],
        )  # fmt: skip
        training = Training(network, trained, ema, optimizer, make_scaler(device, amp_dtype))
        if resumed:
            restore_training(resumed, training)
        # 4. The data: split, cached, and the training stream from where the run stands
        first = (resumed["epoch"], resumed["step"]) if resumed else (1, 0)
        saved = DataRecord.from_checkpoint(resumed) if resumed else None  # a resumed run keeps its datasets and split
        data = prepare_data(config, run.processes, device, memory_format, *first, saved)
        steps_per_epoch = data.steps_per_epoch
        progress = (
            restored_progress(resumed, steps_per_epoch, device)
            if resumed
            else Progress(1, 0, steps_per_epoch, step_losses=torch.zeros(steps_per_epoch, device=device))
        )
        announce_training(run, training, progress)
        # 5. The loss (validation's too) and the module stepped: under torchrun in DistributedDataParallel, with
        # COMPILE compiled, the same weights as `trained`
        loss_fn = make_loss(config["LOSS"], config)
        train_loss_fn = (
            deeply_supervised(loss_fn, config["DEEP_SUPERVISION"]) if config["DEEP_SUPERVISION"] else loss_fn
        )
        forward = compile_model(data_parallel(trained, run.processes, device), config["COMPILE"])
        batches, parameters = iter(data.train_loader), [p for group in optimizer.param_groups for p in group["params"]]
        # 6. Train: every step, then every epoch validate and keep the best model; `ops` does the bookkeeping
        with operations(run, training, data, progress) as ops:
            while progress.epoch <= config["EPOCHS"] and not ops.stopping:
                trained.train()
                for _ in progress_bar(
                    range(progress.epoch_step, steps_per_epoch), f"epoch {progress.epoch}/{config['EPOCHS']}",
                    leave=False, unit="step", disable=not ops.is_main,
                ):  # fmt: skip
                    lr = get_lr(progress.global_step, steps_per_epoch, config)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    images, masks = next(batches)
                    images = images.to(device, non_blocking=True, memory_format=memory_format)
                    masks = masks.to(device, non_blocking=True)
                    if config["MULTI_SCALE"]:
                        size = multi_scale_size(config["IMAGE_SIZE"], config["SEED"], progress.global_step, halving)
                        images, masks = resize_batch(images, masks, size)
                    with autocast(device, amp_dtype):
                        outputs = forward(images)
                    loss = train_loss_fn(outputs, masks)
                    optimizer.zero_grad(set_to_none=True)
                    training.scaler.scale(loss).backward()
                    if config["GRAD_CLIP"]:  # on the unscaled gradients
                        training.scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(parameters, config["GRAD_CLIP"], foreach=True)
                    training.scaler.step(optimizer)
                    training.scaler.update()
                    if ema:
                        ema.update_parameters(network)
                    if ops.after_step(loss.detach(), lr):
                        break
                if progress.epoch_step < steps_per_epoch:
                    break  # stopped mid-epoch: the state is saved at this step
                row, improved = None, False
                if ops.is_main:
                    validation = validate(training.evaluated, data.val_batches, loss_fn, device, amp_dtype)
                    row = {
                        "epoch": progress.epoch,
                        "train_loss": progress.step_losses.mean().item(),
                        **{f"val_{name}": value for name, value in validation.items()},
                        "learning_rate": get_lr(progress.global_step, steps_per_epoch, config),  # the next step's
                    }
                    improved = row["val_dice"] > progress.best_dice
                    if improved:
                        progress.best_dice = row["val_dice"]
                        best = model_checkpoint(
                            training.evaluated, config["IMAGE_SIZE"], progress.epoch, row, data.record, config
                        )
                        ops.writer.submit("best model", save_checkpoint, run.checkpoint_path, best)
                ops.after_epoch(row, improved)
        # 7. The end: the way on for a stopped run; else the threshold (with THRESHOLD_SEARCH) and summary.json
        return finish(run, ops, started)


if __name__ == "__main__":
    run_main(main)
