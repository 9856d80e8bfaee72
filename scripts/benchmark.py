"""Time U-Net training and inference on this machine against a plain reference loop, and the data pipeline alone.

    python scripts/benchmark.py                                   # real Kvasir-SEG in data/, the defaults below
    python scripts/benchmark.py --device cpu --image-size 128 --base-channels 16 --num-workers 2
    python scripts/benchmark.py --synthetic 880 --json outputs/benchmark.json   # without the real data

The fast path is what scripts/train.py does: images decoded and resized once into a memory-mapped cache,
augmented in DataLoader workers, pinned and copied asynchronously, and on CUDA bf16 autocast, channels_last,
cuDNN autotuning and fused Adam. The reference is a plain loop with the same model, batch and number of timed
steps: fp32, default layout, every image decoded from JPEG on every access, no workers. Training and pipeline
timings include the data loading; inference times the model alone on a batch already on the device.
"""

import itertools
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere

import torch
from torch.utils.data import BatchSampler, DataLoader
from torch.utils.flop_counter import FlopCounterMode

from common.config import parse_settings, script_constants
from common.device import autocast, autocast_dtype, configure_fast_path, describe_device, resolve_device, synchronize
from common.errors import UserError, run_main
from common.files import write_text_atomic
from dataset import kvasir, synthetic, transforms
from dataset.segmentation import EpochSampler, PolypDataset, loader_options, worker_count
from model import build_unet
from model.unet import smallest_input
from utils.losses import bce_dice_loss
from utils.training import make_optimizer, training_step

DATA_DIR = "data"  # the real Kvasir-SEG (folder or zip, as scripts/train.py leaves it), used when SYNTHETIC is 0
SYNTHETIC = 0  # N > 0: time on N generated Kvasir-sized images in a temporary folder instead
IMAGE_SIZE = 256
AUGMENTATION = "strong"  # as in scripts/train.py
NUM_WORKERS = -1  # fast-path DataLoader workers; -1 picks min(8, CPU count - 1) like scripts/train.py
BASE_CHANNELS = 64
DEPTH = 4
BATCH_SIZE = 16  # training batch; scripts/train.py's default
INFERENCE_BATCH_SIZE = 64
WARMUP_STEPS = 5  # untimed steps first (worker start-up, cuDNN autotuning, compilation)
STEPS = 20  # timed steps, the same for every loop
PIPELINE_BATCHES = 50  # batches of BATCH_SIZE drawn when timing the data pipeline alone
DEVICE = "auto"  # auto | cpu | cuda | cuda:N
COMPILE = False  # torch.compile the fast path's model, to see whether scripts/train.py should
JSON = ""  # also write the results to this file


def check_settings(config: dict) -> None:
    """Refuse settings that cannot be timed, naming the setting."""
    positive = ("IMAGE_SIZE", "BASE_CHANNELS", "DEPTH", "BATCH_SIZE", "INFERENCE_BATCH_SIZE", "STEPS")
    for name in positive + ("PIPELINE_BATCHES",):
        if config[name] < 1:
            raise UserError(f"{name} must be at least 1.")
    if config["WARMUP_STEPS"] < 0 or config["SYNTHETIC"] < 0:
        raise UserError("WARMUP_STEPS and SYNTHETIC must be >= 0.")
    if config["IMAGE_SIZE"] < smallest_input(config["DEPTH"]):
        raise UserError(
            f"IMAGE_SIZE must be at least {smallest_input(config['DEPTH'])} for a U-Net of DEPTH {config['DEPTH']}."
        )
    if config["AUGMENTATION"] not in transforms.AUGMENTATIONS:
        raise UserError(f"AUGMENTATION must be one of {', '.join(transforms.AUGMENTATIONS)}.")


def find_pairs(config: dict, scratch: Path) -> tuple[list, Path, str]:
    """The (id, image, mask) pairs to time on, the folder for their cache, and a description of the data."""
    if config["SYNTHETIC"]:
        synthetic.make_kvasir_folder(scratch, config["SYNTHETIC"], sizes=synthetic.KVASIR_SIZES)
        pairs = kvasir.prepare_kvasir_seg(scratch)
        return pairs, scratch / "cache", f"{len(pairs)} synthetic Kvasir-sized images"
    data_dir = Path(config["DATA_DIR"])
    if not (data_dir / kvasir.FOLDER_NAME).is_dir() and not (data_dir / kvasir.ZIP_NAME).is_file():
        raise UserError(
            f"no Kvasir-SEG in {data_dir} (neither {kvasir.FOLDER_NAME}/ nor {kvasir.ZIP_NAME}); run scripts/train.py"
            " once to download it, or time on generated images with --synthetic N."
        )
    pairs = kvasir.prepare_kvasir_seg(data_dir)
    return pairs, data_dir / "cache", f"{len(pairs)} Kvasir-SEG images"


def flops_per_image(config: dict, batch_size: int, training: bool) -> float:
    """FLOPs per image of a forward pass, or of forward + loss + backward, counted once on shape-only tensors."""
    image_size = config["IMAGE_SIZE"]
    with torch.device("meta"):
        model = build_unet(config["BASE_CHANNELS"], config["DEPTH"]).train(training)
        images = torch.empty(batch_size, 3, image_size, image_size)
        masks = torch.empty(batch_size, 1, image_size, image_size)
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(training):
        logits = model(images)
        if training:
            bce_dice_loss(logits, masks).backward()
    return counter.get_total_flops() / batch_size


def endless(loader: DataLoader, sampler: EpochSampler):
    """The loader's batches, epoch after epoch, each epoch in a new order."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from loader


def make_batches(dataset: PolypDataset, batch_size: int, options: dict):
    """An endless stream of shuffled, augmented training batches, as scripts/train.py draws them."""
    sampler = EpochSampler(len(dataset), seed=0)
    loader = DataLoader(dataset, batch_sampler=BatchSampler(sampler, batch_size, drop_last=True), **options)
    return endless(loader, sampler)


def seconds_per_step(run_step, warmup: int, steps: int, device: torch.device) -> float:
    """Wall-clock seconds per call of `run_step` over `steps` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        run_step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        run_step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def time_training(model, batches, config: dict, device, amp_dtype, memory_format, fast: bool) -> float:
    """Seconds per training step: next batch, copy to the device, forward, backward, Adam step. The fast
    step copies asynchronously and uses train.py's optimizer (fused on CUDA); the reference plain Adam."""
    model.train()
    if fast:
        optimizer = make_optimizer(model.parameters(), "adam", 1e-5, 0.0, device)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    non_blocking = fast and device.type == "cuda"

    def step():
        images, masks = next(batches)
        images = images.to(device, non_blocking=non_blocking, memory_format=memory_format)
        masks = masks.to(device, non_blocking=non_blocking)
        training_step(model, images, masks, bce_dice_loss, optimizer, scaler, amp_dtype)

    return seconds_per_step(step, config["WARMUP_STEPS"], config["STEPS"], device)


def time_inference(model, config: dict, device, amp_dtype, memory_format) -> float:
    """Seconds per forward pass of INFERENCE_BATCH_SIZE images already on the device."""
    model.eval()
    size = config["IMAGE_SIZE"]
    images = torch.randn(config["INFERENCE_BATCH_SIZE"], 3, size, size, device=device)
    images = images.contiguous(memory_format=memory_format)
    with torch.inference_mode(), autocast(device, amp_dtype):
        return seconds_per_step(lambda: model(images), config["WARMUP_STEPS"], config["STEPS"], device)


def time_pipeline(batches, config: dict) -> float:
    """Augmented samples per second delivered by a batch stream, after a few batches to start its workers."""
    for _ in range(config["WARMUP_STEPS"]):
        next(batches)
    start = time.perf_counter()
    for _ in range(config["PIPELINE_BATCHES"]):
        next(batches)
    return config["PIPELINE_BATCHES"] * config["BATCH_SIZE"] / (time.perf_counter() - start)


def new_model(config: dict, device, memory_format):
    """The U-Net under test, identically initialised for every loop."""
    torch.manual_seed(0)
    return build_unet(config["BASE_CHANNELS"], config["DEPTH"]).to(device, memory_format=memory_format)


def rate(images_per_second: float, flops: float) -> dict:
    return {"images_per_s": images_per_second, "tflops_per_s": images_per_second * flops / 1e12}


def run_benchmark(config: dict, pairs, cache_dir: Path, device: torch.device) -> dict:
    """All timings of one configuration; the reference loops run first, before cuDNN autotuning is switched on."""
    train_batch, inference_batch = config["BATCH_SIZE"], config["INFERENCE_BATCH_SIZE"]
    train_flops = flops_per_image(config, train_batch, training=True)
    inference_flops = flops_per_image(config, inference_batch, training=False)
    transform = transforms.build_transform(config["AUGMENTATION"])
    workers = worker_count(config["NUM_WORKERS"])

    torch.backends.cudnn.benchmark = False
    plain = torch.contiguous_format
    reference_batches = make_batches(PolypDataset(pairs, config["IMAGE_SIZE"], transform), train_batch, {})
    reference_pipeline = time_pipeline(reference_batches, config)
    model = new_model(config, device, plain)
    reference_train = time_training(model, reference_batches, config, device, None, plain, fast=False)
    reference_inference = time_inference(model, config, device, None, plain)

    memory_format, amp_dtype = configure_fast_path(device), autocast_dtype(device)
    cached = PolypDataset(pairs, config["IMAGE_SIZE"], transform, cache_dir)
    fast_batches = make_batches(cached, train_batch, loader_options(workers, device))
    fast_pipeline = time_pipeline(fast_batches, config)
    model = new_model(config, device, memory_format)
    fast_model = torch.compile(model) if config["COMPILE"] else model
    fast_train = time_training(fast_model, fast_batches, config, device, amp_dtype, memory_format, fast=True)
    images, masks = next(fast_batches)
    on_device = itertools.repeat((images.to(device, memory_format=memory_format), masks.to(device)))
    on_device_train = time_training(fast_model, on_device, config, device, amp_dtype, memory_format, fast=True)
    fast_inference = time_inference(fast_model, config, device, amp_dtype, memory_format)

    fast_precision = str(amp_dtype or torch.float32).removeprefix("torch.")
    layout = "channels_last" if memory_format == torch.channels_last else "contiguous"
    return {
        "flops_per_image": {"training": train_flops, "inference": inference_flops},
        "fast_path": f"{fast_precision}, {layout}, cached data, DataLoader workers: {workers}"
        + (", torch.compile" if config["COMPILE"] else ""),
        "reference_path": "float32, contiguous, JPEG decoded on every access, no workers",
        "training": {
            "fast": rate(train_batch / fast_train, train_flops),
            "data_on_device": rate(train_batch / on_device_train, train_flops),
            "reference": rate(train_batch / reference_train, train_flops),
            "speedup": reference_train / fast_train,
        },
        "inference": {
            "fast": rate(inference_batch / fast_inference, inference_flops),
            "reference": rate(inference_batch / reference_inference, inference_flops),
            "speedup": reference_inference / fast_inference,
        },
        "pipeline": {
            "fast_samples_per_s": fast_pipeline,
            "reference_samples_per_s": reference_pipeline,
            "speedup": fast_pipeline / reference_pipeline,
        },
    }


def report(results: dict) -> str:
    """The results as aligned lines, one per measurement."""
    config, train, infer, pipe = results["settings"], results["training"], results["inference"], results["pipeline"]
    flops = results["flops_per_image"]

    def row(section: str, name: str, measured: dict) -> str:
        rates = f"{measured['images_per_s']:10.1f} images/s  {measured['tflops_per_s']:8.3f} TFLOP/s"
        return f"{section:<10} {name:<15} {rates}"

    return "\n".join(
        [
            f"device: {results['device']}, torch {torch.__version__}, load average {results['load_average']:.2f}"
            f" before the run, {results['date']}",
            f"data: {results['data']}, {config['IMAGE_SIZE']}x{config['IMAGE_SIZE']}, augmentation"
            f" {config['AUGMENTATION']}",
            f"model: U-Net base {config['BASE_CHANNELS']} depth {config['DEPTH']}; training batch"
            f" {config['BATCH_SIZE']}, inference batch {config['INFERENCE_BATCH_SIZE']};"
            f" {config['WARMUP_STEPS']} warm-up + {config['STEPS']} timed steps",
            f"work: {flops['training'] / 1e9:.2f} GFLOP per image per training step (forward + backward),"
            f" {flops['inference'] / 1e9:.2f} GFLOP per image for inference",
            f"fast path: {results['fast_path']}",
            f"reference: {results['reference_path']}",
            row("training", "fast", train["fast"]),
            row("training", "data on device", train["data_on_device"]),
            row("training", "reference", train["reference"]),
            f"{'training':<10} {'speed-up':<15} {train['speedup']:10.2f}x",
            row("inference", "fast", infer["fast"]),
            row("inference", "reference", infer["reference"]),
            f"{'inference':<10} {'speed-up':<15} {infer['speedup']:10.2f}x",
            f"{'pipeline':<10} {'fast':<15} {pipe['fast_samples_per_s']:10.1f} samples/s",
            f"{'pipeline':<10} {'reference':<15} {pipe['reference_samples_per_s']:10.1f} samples/s",
            f"{'pipeline':<10} {'speed-up':<15} {pipe['speedup']:10.2f}x",
        ]
    )


def main() -> None:
    config = parse_settings(script_constants(globals()), __file__).values
    check_settings(config)
    device = resolve_device(config["DEVICE"])
    started, load_average = datetime.now().isoformat(timespec="seconds"), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="benchmark-") as scratch:
        pairs, cache_dir, data = find_pairs(config, Path(scratch))
        if len(pairs) < config["BATCH_SIZE"]:
            raise UserError(f"BATCH_SIZE {config['BATCH_SIZE']} exceeds the {len(pairs)} images.")
        results = run_benchmark(config, pairs, cache_dir, device)
    results = {
        "device": describe_device(device),
        "date": started,
        "load_average": load_average,
        "data": data,
        "settings": config,
        **results,
    }
    print(report(results))
    if config["JSON"]:
        write_text_atomic(Path(config["JSON"]), json.dumps(results, indent=2) + "\n")
        print(f"results written to {config['JSON']}")


if __name__ == "__main__":
    run_main(main)
