"""Time U-Net training and inference on this machine against a plain reference loop, and a whole train.py run.

    python scripts/benchmark.py                                   # real Kvasir-SEG in data/, the defaults below
    python scripts/benchmark.py --end-to-end-epochs 100           # ... with the default 100-epoch train.py run
    python scripts/benchmark.py --device cpu --image-size 128 --base-channels 16 --num-workers 2
    python scripts/benchmark.py --synthetic 880 --json outputs/benchmark.json   # without the real data

Measured in one run, on one device:
  training     steady-state images/s over TIMED_EPOCHS whole epochs (after one untimed warm-up epoch), three ways:
               "fast" as scripts/train.py trains (cached data augmented in DataLoader workers, pinned asynchronous
               copies, bf16 autocast, channels_last, cuDNN autotuning, fused AdamW on CUDA), "data on device" (the
               same step on one batch already on the device: the model's own speed), and "reference" (a plain loop:
               fp32, default layout, every image decoded from JPEG on every access, no workers, plain Adam);
  end to end   `scripts/train.py` itself for END_TO_END_EPOCHS epochs (validation, panels, curves and saving at
               their default cadence included), its wall time and training images/s from its summary.json;
  inference    the model alone at INFERENCE_BATCH_SIZE, as scripts/evaluate.py and predict.py run it (TTA off),
               against the plain fp32 model;
  pipeline     augmented samples/s of the data pipeline alone, fast and reference.
"""

import functools
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from common.config import flag_name, parse_settings, script_constants
from common.device import (
    autocast,
    autocast_dtype,
    configure_fast_path,
    describe_device,
    resolve_device,
    seconds_per_call,
)
from common.errors import UserError, run_main
from common.files import write_json_atomic
from dataset import kvasir, synthetic, transforms
from dataset.loader import loader_options, worker_count
from dataset.sampler import RunBatchSampler
from dataset.segmentation import PolypDataset
from model import build_network, network_kwargs
from utils.inference import Predictor
from utils.losses import bce_dice_loss
from utils.training import COMPILE_MODES, compile_model, make_optimizer, make_scaler

DATA_DIR = "data"  # the real Kvasir-SEG (folder or zip, as scripts/train.py leaves it), used when SYNTHETIC is 0
SYNTHETIC = 0  # N > 0: time on N generated Kvasir-sized images in a temporary folder instead
IMAGE_SIZE = 256  # as in scripts/train.py
AUGMENTATION = "strong"  # as in scripts/train.py
NUM_WORKERS = -1  # fast-path DataLoader workers; -1 picks min(8, CPU count - 1) like scripts/train.py
BASE_CHANNELS = 64  # as in scripts/train.py
DEPTH = 4  # as in scripts/train.py
BATCH_SIZE = 16  # training batch; scripts/train.py's default
INFERENCE_BATCH_SIZE = 64  # as scripts/evaluate.py and predict.py use on a GPU
TIMED_EPOCHS = 2  # whole epochs (passes over the images) timed per training loop, after one untimed epoch
PIPELINE_BATCHES = 50  # batches of BATCH_SIZE drawn when timing the data pipeline alone
INFERENCE_STEPS = 20  # timed forward passes, after 5 untimed ones
END_TO_END_EPOCHS = 10  # epochs of the scripts/train.py run timed end to end; 0 skips it
DEVICE = "auto"  # auto | cpu | cuda | cuda:N
COMPILE = "off"  # torch.compile mode of the fast path and the end-to-end run (does train.py gain from it?)
JSON = ""  # also write the results to this file


def check_settings(config: dict) -> None:
    """Refuse settings that cannot be timed, naming the setting."""
    positive = ("IMAGE_SIZE", "BASE_CHANNELS", "DEPTH", "BATCH_SIZE", "INFERENCE_BATCH_SIZE", "TIMED_EPOCHS")
    for name in positive + ("PIPELINE_BATCHES", "INFERENCE_STEPS"):
        if config[name] < 1:
            raise UserError(f"{name} must be at least 1.")
    if config["END_TO_END_EPOCHS"] < 0 or config["SYNTHETIC"] < 0:
        raise UserError("END_TO_END_EPOCHS and SYNTHETIC must be >= 0.")
    build_network("unet", unet_kwargs(config), config["IMAGE_SIZE"])  # refuses an IMAGE_SIZE the U-Net cannot take
    for name, allowed in (("AUGMENTATION", transforms.AUGMENTATIONS), ("COMPILE", COMPILE_MODES)):
        if config[name] not in allowed:
            raise UserError(f"{name} must be one of {', '.join(allowed)}.")


def find_data(config: dict, scratch: Path) -> tuple[Path, list, str]:
    """The data folder to time on, its (id, image, mask) pairs, and a description of the data."""
    if config["SYNTHETIC"]:
        synthetic.make_kvasir_folder(scratch, config["SYNTHETIC"], sizes=synthetic.KVASIR_SIZES)
        pairs = kvasir.prepare_kvasir_seg(scratch)
        return scratch, pairs, f"{len(pairs)} synthetic Kvasir-sized images"
    data_dir = Path(config["DATA_DIR"])
    if not (data_dir / kvasir.FOLDER_NAME).is_dir() and not (data_dir / kvasir.ZIP_NAME).is_file():
        raise UserError(
            f"no Kvasir-SEG in {data_dir} (neither {kvasir.FOLDER_NAME}/ nor {kvasir.ZIP_NAME}); run scripts/train.py"
            " once to download it, or time on generated images with --synthetic N."
        )
    pairs = kvasir.prepare_kvasir_seg(data_dir)
    return data_dir, pairs, f"{len(pairs)} Kvasir-SEG images"


def flops_per_image(config: dict, batch_size: int, training: bool) -> float:
    """FLOPs per image of a forward pass, or of forward + loss + backward, counted once on shape-only tensors."""
    size = config["IMAGE_SIZE"]
    with torch.device("meta"):
        model = build_network("unet", unet_kwargs(config)).train(training)
        images, masks = torch.empty(batch_size, 3, size, size), torch.empty(batch_size, 1, size, size)
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(training):
        logits = model(images)
        if training:
            bce_dice_loss(logits, masks).backward()
    return counter.get_total_flops() / batch_size


def new_model(config: dict, device, memory_format):
    """The U-Net under test, identically initialised for every loop."""
    torch.manual_seed(0)
    return build_network("unet", unet_kwargs(config)).to(device, memory_format=memory_format)


def unet_kwargs(config: dict) -> dict:
    """The U-Net's keyword arguments from BASE_CHANNELS and DEPTH."""
    return network_kwargs("unet", config)


def batch_stream(dataset: PolypDataset, config: dict, epochs: int, options: dict):
    """The shuffled, augmented training batches of `epochs` whole epochs, as scripts/train.py draws them."""
    sampler = RunBatchSampler(len(dataset), config["BATCH_SIZE"], 0, 1, 0, epochs)
    return iter(DataLoader(dataset, batch_sampler=sampler, **options)), sampler.steps_per_epoch


def time_training(model, batches, steps_per_epoch: int, config: dict, device, amp_dtype, memory_format, fast: bool):
    """Seconds per training step (next batch, copy to the device, forward, backward, optimizer step) over
    TIMED_EPOCHS whole epochs, after one untimed epoch (worker start-up, cuDNN autotuning, compilation)."""
    model.train()
    optimizer = (
        make_optimizer(model, "adamw", 1e-4, 1e-4, device) if fast else torch.optim.Adam(model.parameters(), lr=1e-4)
    )
    scaler = make_scaler(device, amp_dtype)
    non_blocking = fast and device.type == "cuda"

    def step():  # scripts/train.py's step, without its options
        images, masks = next(batches)
        images = images.to(device, non_blocking=non_blocking, memory_format=memory_format)
        with autocast(device, amp_dtype):
            outputs = model(images)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(bce_dice_loss(outputs, masks.to(device, non_blocking=non_blocking))).backward()
        scaler.step(optimizer)
        scaler.update()

    return seconds_per_call(step, device, steps_per_epoch, calls=config["TIMED_EPOCHS"] * steps_per_epoch)


def time_pipeline(batches, config: dict) -> float:
    """Augmented samples per second delivered by a batch stream, after a few batches to start its workers."""
    for _ in range(5):
        next(batches)
    start = time.perf_counter()
    for _ in range(config["PIPELINE_BATCHES"]):
        next(batches)
    return config["PIPELINE_BATCHES"] * config["BATCH_SIZE"] / (time.perf_counter() - start)


def time_end_to_end(config: dict, data_dir: Path, scratch: Path) -> dict:
    """Run scripts/train.py for END_TO_END_EPOCHS epochs with these settings and return its summary.json."""
    run = scratch / "end-to-end"
    command = [
        sys.executable, str(Path(__file__).with_name("train.py")), "--data-dir", str(data_dir),
        "--output-dir", str(run), "--checkpoint-path", str(run / "best.pth"), "--no-show-panels",
        "--epochs", str(config["END_TO_END_EPOCHS"]), "--device", config["DEVICE"], "--compile", config["COMPILE"],
        *(f"{flag_name(name)}={config[name]}" for name in (
            "IMAGE_SIZE", "AUGMENTATION", "NUM_WORKERS", "BASE_CHANNELS", "DEPTH", "BATCH_SIZE"
        )),
    ]  # fmt: skip
    print(f"end to end: {' '.join(command[1:])}")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"the end-to-end train.py run failed: {result.stderr.strip().splitlines()[-1]}")
    return json.loads((run / "summary.json").read_text())


def time_inference(predict, config: dict, device, memory_format) -> float:
    """Seconds per call of `predict` on INFERENCE_BATCH_SIZE images already on the device (the model alone)."""
    size = config["IMAGE_SIZE"]
    batch = torch.randn(config["INFERENCE_BATCH_SIZE"], 3, size, size, device=device)
    batch = batch.contiguous(memory_format=memory_format)
    return seconds_per_call(lambda: predict(batch), device, 5, calls=config["INFERENCE_STEPS"])


@torch.inference_mode()
def plain_forward(model, batch: torch.Tensor) -> torch.Tensor:
    """The reference inference: the fp32 model in eval mode, nothing else."""
    return model.eval()(batch)


def rate(images_per_second: float, flops: float) -> dict:
    return {"images_per_s": images_per_second, "tflops_per_s": images_per_second * flops / 1e12}


def run_benchmark(config: dict, data_dir: Path, pairs, device: torch.device, scratch: Path) -> dict:
    """All timings of one configuration; the reference loops run first, before cuDNN autotuning is switched on."""
    train_batch, inference_batch = config["BATCH_SIZE"], config["INFERENCE_BATCH_SIZE"]
    train_flops = flops_per_image(config, train_batch, training=True)
    inference_flops = flops_per_image(config, inference_batch, training=False)
    transform = transforms.build_transform(config["AUGMENTATION"])
    workers, epochs = worker_count(config["NUM_WORKERS"]), config["TIMED_EPOCHS"] + 1
    pipeline_epochs = -(-(config["PIPELINE_BATCHES"] + 5) // (len(pairs) // train_batch))  # enough for time_pipeline

    torch.backends.cudnn.benchmark = False
    plain = torch.contiguous_format
    uncached = PolypDataset(pairs, config["IMAGE_SIZE"], transform)
    reference_pipeline = time_pipeline(batch_stream(uncached, config, pipeline_epochs, {})[0], config)
    model = new_model(config, device, plain)
    reference_batches, steps = batch_stream(uncached, config, epochs, {})
    reference_train = time_training(model, reference_batches, steps, config, device, None, plain, fast=False)
    reference_inference = time_inference(functools.partial(plain_forward, model), config, device, plain)

    memory_format, amp_dtype = configure_fast_path(device), autocast_dtype(device)
    cached = PolypDataset(pairs, config["IMAGE_SIZE"], transform, data_dir / "cache")
    options = loader_options(workers, device)
    fast_pipeline = time_pipeline(batch_stream(cached, config, pipeline_epochs, options)[0], config)
    model = new_model(config, device, memory_format)
    fast_model = compile_model(model, config["COMPILE"])
    fast_batches, steps = batch_stream(cached, config, epochs, options)
    fast_train = time_training(fast_model, fast_batches, steps, config, device, amp_dtype, memory_format, fast=True)
    images, masks = next(batch_stream(cached, config, 1, {})[0])
    on_device = itertools.repeat((images.to(device, memory_format=memory_format), masks.to(device)))
    on_device_train = time_training(fast_model, on_device, steps, config, device, amp_dtype, memory_format, fast=True)
    predictor = Predictor(model, {"image_size": config["IMAGE_SIZE"]}, device, amp_dtype)
    fast_inference = time_inference(predictor.predict_batch, config, device, memory_format)
    end_to_end = time_end_to_end(config, data_dir, scratch) if config["END_TO_END_EPOCHS"] else None

    precision = str(amp_dtype or torch.float32).removeprefix("torch.")
    layout = "channels_last" if memory_format == torch.channels_last else "contiguous"
    return {
        "flops_per_image": {"training": train_flops, "inference": inference_flops},
        "fast_path": f"{precision}, {layout}, cached data, DataLoader workers: {workers}"
        + ("" if config["COMPILE"] == "off" else f", torch.compile mode {config['COMPILE']}"),
        "reference_path": "float32, contiguous, JPEG decoded on every access, no workers",
        "steps_per_epoch": steps,
        "training": {
            "fast": rate(train_batch / fast_train, train_flops),
            "data_on_device": rate(train_batch / on_device_train, train_flops),
            "reference": rate(train_batch / reference_train, train_flops),
            "speedup": reference_train / fast_train,
            "loader_share_of_on_device": on_device_train / fast_train,
        },
        "end_to_end": end_to_end,
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
    flops, end_to_end = results["flops_per_image"], results["end_to_end"]

    def row(section: str, name: str, measured: dict) -> str:
        rates = f"{measured['images_per_s']:10.1f} images/s  {measured['tflops_per_s']:8.3f} TFLOP/s"
        return f"{section:<11} {name:<15} {rates}"

    lines = [
        f"device: {results['device']}, torch {torch.__version__}, load average {results['load_average']:.2f}"
        f" before the run, {results['date']}",
        f"data: {results['data']}, {config['IMAGE_SIZE']}x{config['IMAGE_SIZE']}, augmentation"
        f" {config['AUGMENTATION']}",
        f"model: U-Net base {config['BASE_CHANNELS']} depth {config['DEPTH']}; training batch"
        f" {config['BATCH_SIZE']} ({results['steps_per_epoch']} steps per epoch, {config['TIMED_EPOCHS']} epochs"
        f" timed after 1 untimed), inference batch {config['INFERENCE_BATCH_SIZE']}",
        f"work: {flops['training'] / 1e9:.2f} GFLOP per image per training step (forward + backward),"
        f" {flops['inference'] / 1e9:.2f} GFLOP per image for inference",
        f"fast path: {results['fast_path']}",
        f"reference: {results['reference_path']}",
        row("training", "fast", train["fast"]),
        row("training", "data on device", train["data_on_device"]),
        row("training", "reference", train["reference"]),
        f"{'training':<11} {'speed-up':<15} {train['speedup']:10.2f}x",
        f"{'training':<11} {'fast / device':<15} {train['loader_share_of_on_device']:10.1%}",
    ]
    if end_to_end:
        lines.append(
            f"{'end to end':<11} {'train.py':<15} {end_to_end['images_per_second']:10.1f} images/s"
            f"  {end_to_end['wall_seconds']:8.1f} s wall for {end_to_end['epochs']} epochs"
        )
    lines += [
        row("inference", "fast", infer["fast"]),
        row("inference", "reference", infer["reference"]),
        f"{'inference':<11} {'speed-up':<15} {infer['speedup']:10.2f}x",
        f"{'pipeline':<11} {'fast':<15} {pipe['fast_samples_per_s']:10.1f} samples/s",
        f"{'pipeline':<11} {'reference':<15} {pipe['reference_samples_per_s']:10.1f} samples/s",
        f"{'pipeline':<11} {'speed-up':<15} {pipe['speedup']:10.2f}x",
    ]
    return "\n".join(lines)


def main() -> None:
    config = parse_settings(script_constants(globals()), __file__, choices={"COMPILE": COMPILE_MODES}).values
    check_settings(config)
    device = resolve_device(config["DEVICE"])
    started, load_average = datetime.now().isoformat(timespec="seconds"), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="benchmark-") as scratch:
        data_dir, pairs, data = find_data(config, Path(scratch))
        if len(pairs) < config["BATCH_SIZE"]:
            raise UserError(f"BATCH_SIZE {config['BATCH_SIZE']} exceeds the {len(pairs)} images.")
        results = run_benchmark(config, data_dir, pairs, device, Path(scratch))
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
        write_json_atomic(Path(config["JSON"]), results)
        print(f"results written to {config['JSON']}")


if __name__ == "__main__":
    run_main(main)
