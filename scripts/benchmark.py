"""Time U-Net training and inference on this machine against a plain reference loop, and a whole train.py run.

    python scripts/benchmark.py                                   # real Kvasir-SEG in data/, the defaults below
    python scripts/benchmark.py --end-to-end-epochs 100           # ... with the default 100-epoch train.py run
    python scripts/benchmark.py --device cpu --image-size 128 --base-channels 16 --num-workers 2
    python scripts/benchmark.py --synthetic 880 --json outputs/benchmark.json   # without the real data

Measured in one run, on one device, each comparison in ROUNDS interleaved rounds (reference, fast, reference, fast,
...: a change of the machine's load falls on every path alike), reported as the median and range over the rounds,
the speed-ups as the median and range of the rounds' own ratios:
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
    interleaved_seconds,
    ratio_spread,
    resolve_device,
    spread,
)
from common.errors import UserError, run_main
from common.files import write_json_atomic
from dataset import kvasir, synthetic, transforms
from dataset.loader import PREFETCH_BATCHES, loader_options, worker_count
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
TIMED_EPOCHS = 2  # whole epochs (passes over the images) timed per training loop over the rounds, after one untimed
PIPELINE_BATCHES = 50  # batches of BATCH_SIZE drawn per data pipeline over the rounds, timing the pipeline alone
INFERENCE_STEPS = 20  # timed forward passes per inference path over the rounds, after 5 untimed ones
ROUNDS = 5  # interleaved rounds: the paths compared are timed in turn, this many times each
END_TO_END_EPOCHS = 10  # epochs of the scripts/train.py run timed end to end; 0 skips it
DEVICE = "auto"  # auto | cpu | cuda | cuda:N
COMPILE = "off"  # torch.compile mode of the fast path and the end-to-end run (does train.py gain from it?)
JSON = ""  # also write the results to this file


def check_settings(config: dict) -> None:
    """Refuse settings that cannot be timed, naming the setting."""
    positive = ("IMAGE_SIZE", "BASE_CHANNELS", "DEPTH", "BATCH_SIZE", "INFERENCE_BATCH_SIZE", "TIMED_EPOCHS", "ROUNDS")
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
    return iter(DataLoader(dataset, batch_sampler=sampler, **options))


def training_step(model, batches, device, amp_dtype, memory_format, fast: bool):
    """One training step (next batch, copy to the device, forward, backward, optimizer step) as a call: as
    scripts/train.py takes it when `fast`, otherwise as a plain loop does (plain Adam, synchronous copies)."""
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

    return step


def without_autotuning(call):
    """`call` run with cuDNN autotuning off, as the reference paths run, whatever the fast path switched on."""

    def plain_call():
        autotuning, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
        try:
            return call()
        finally:
            torch.backends.cudnn.benchmark = autotuning

    return plain_call


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


@torch.inference_mode()
def plain_forward(model, batch: torch.Tensor) -> torch.Tensor:
    """The reference inference: the fp32 model in eval mode, nothing else."""
    return model.eval()(batch)


def warm_up(calls: dict, repeats: int) -> None:
    """Make each of `calls` {name: call} `repeats` times, untimed."""
    for call in calls.values():
        for _ in range(repeats):
            call()


def rates(seconds: list[float], images: int, flops: float) -> dict:
    """Images/s from the rounds' seconds per call of `images` images: the median, its range, and TFLOP/s at the
    median."""
    per_second = spread([images / each for each in seconds])
    return {
        "images_per_s": per_second["median"],
        "images_per_s_range": [per_second["min"], per_second["max"]],
        "tflops_per_s": per_second["median"] * flops / 1e12,
    }


def run_benchmark(config: dict, data_dir: Path, pairs, device: torch.device, scratch: Path) -> dict:
    """All timings of one configuration: each comparison's paths warmed up, then timed in interleaved rounds."""
    train_batch, inference_batch, rounds = config["BATCH_SIZE"], config["INFERENCE_BATCH_SIZE"], config["ROUNDS"]
    train_flops = flops_per_image(config, train_batch, training=True)
    inference_flops = flops_per_image(config, inference_batch, training=False)
    transform = transforms.build_transform(config["AUGMENTATION"])
    workers, steps = worker_count(config["NUM_WORKERS"]), len(pairs) // train_batch
    prefetched = workers * PREFETCH_BATCHES  # drawn untimed before each fast round: the workers filled them meanwhile
    train_per_round = max(1, config["TIMED_EPOCHS"] * steps // rounds)
    train_epochs = 1 + -(-rounds * (train_per_round + prefetched) // steps)
    pipeline_per_round = max(1, config["PIPELINE_BATCHES"] // rounds)
    pipeline_epochs = -(-(5 + rounds * (pipeline_per_round + prefetched)) // steps)
    inference_per_round = max(1, config["INFERENCE_STEPS"] // rounds)

    plain, memory_format, amp_dtype = torch.contiguous_format, configure_fast_path(device), autocast_dtype(device)
    uncached = PolypDataset(pairs, config["IMAGE_SIZE"], transform)
    cached = PolypDataset(pairs, config["IMAGE_SIZE"], transform, data_dir / "cache")
    options = loader_options(workers, device)
    reference_model, model = new_model(config, device, plain), new_model(config, device, memory_format)
    fast_model = compile_model(model, config["COMPILE"])
    images, masks = next(batch_stream(cached, config, 1, {}))
    on_device = itertools.repeat((images.to(device, memory_format=memory_format), masks.to(device)))
    training = {
        "reference": without_autotuning(
            training_step(reference_model, batch_stream(uncached, config, train_epochs, {}), device, None, plain,
                          fast=False)
        ),
        "fast": training_step(fast_model, batch_stream(cached, config, train_epochs, options), device, amp_dtype,
                              memory_format, fast=True),
        "data on device": training_step(fast_model, on_device, device, amp_dtype, memory_format, fast=True),
    }  # fmt: skip
    warm_up(training, steps)  # one untimed epoch each: worker start-up, cuDNN autotuning, compilation
    train_seconds = interleaved_seconds(training, device, rounds, train_per_round, untimed={"fast": prefetched})

    size = config["IMAGE_SIZE"]
    batch = torch.randn(inference_batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    predictor = Predictor(model, {"image_size": size}, device, amp_dtype)
    inference = {
        "reference": without_autotuning(lambda: plain_forward(reference_model, batch)),
        "fast": lambda: predictor.predict_batch(batch),
    }
    warm_up(inference, 5)
    inference_seconds = interleaved_seconds(inference, device, rounds, inference_per_round)

    streams = {
        "reference": batch_stream(uncached, config, pipeline_epochs, {}),
        "fast": batch_stream(cached, config, pipeline_epochs, options),
    }
    pipelines = {name: functools.partial(next, stream) for name, stream in streams.items()}
    warm_up(pipelines, 5)  # starts the workers
    pipeline_seconds = interleaved_seconds(pipelines, device, rounds, pipeline_per_round, untimed={"fast": prefetched})
    end_to_end = time_end_to_end(config, data_dir, scratch) if config["END_TO_END_EPOCHS"] else None

    precision = str(amp_dtype or torch.float32).removeprefix("torch.")
    layout = "channels_last" if memory_format == torch.channels_last else "contiguous"
    return {
        "flops_per_image": {"training": train_flops, "inference": inference_flops},
        "fast_path": f"{precision}, {layout}, cached data, DataLoader workers: {workers}"
        + ("" if config["COMPILE"] == "off" else f", torch.compile mode {config['COMPILE']}"),
        "reference_path": "float32, contiguous, JPEG decoded on every access, no workers",
        "steps_per_epoch": steps,
        "rounds": {"training_steps": train_per_round, "inference_batches": inference_per_round,
                   "pipeline_batches": pipeline_per_round},
        "training": {
            "fast": rates(train_seconds["fast"], train_batch, train_flops),
            "data_on_device": rates(train_seconds["data on device"], train_batch, train_flops),
            "reference": rates(train_seconds["reference"], train_batch, train_flops),
            "speedup": ratio_spread(train_seconds["reference"], train_seconds["fast"]),
            "loader_share_of_on_device": ratio_spread(train_seconds["data on device"], train_seconds["fast"]),
        },
        "end_to_end": end_to_end,
        "inference": {
            "fast": rates(inference_seconds["fast"], inference_batch, inference_flops),
            "reference": rates(inference_seconds["reference"], inference_batch, inference_flops),
            "speedup": ratio_spread(inference_seconds["reference"], inference_seconds["fast"]),
        },
        "pipeline": {
            "fast": rates(pipeline_seconds["fast"], train_batch, 0.0),
            "reference": rates(pipeline_seconds["reference"], train_batch, 0.0),
            "speedup": ratio_spread(pipeline_seconds["reference"], pipeline_seconds["fast"]),
        },
    }  # fmt: skip


def report(results: dict) -> str:
    """The results as aligned lines, one per measurement: the median over the rounds, then its range."""
    config, train, infer, pipe = results["settings"], results["training"], results["inference"], results["pipeline"]
    flops, end_to_end, rounds = results["flops_per_image"], results["end_to_end"], results["rounds"]

    def row(section: str, name: str, measured: dict, unit: str = "images/s") -> str:
        low, high = measured["images_per_s_range"]
        line = f"{section:<11} {name:<15} {measured['images_per_s']:10.1f} {unit} ({low:.1f}-{high:.1f})"
        return line + (f"  {measured['tflops_per_s']:8.3f} TFLOP/s" if measured["tflops_per_s"] else "")

    def ratio_row(section: str, name: str, ratio: dict, form: str, suffix: str = "") -> str:
        median, low, high = (format(ratio[key], form) for key in ("median", "min", "max"))
        return f"{section:<11} {name:<15} {median:>10}{suffix} ({low}-{high})"

    lines = [
        f"device: {results['device']}, torch {torch.__version__}, load average {results['load_average']:.2f}"
        f" before the run, {results['date']}",
        f"data: {results['data']}, {config['IMAGE_SIZE']}x{config['IMAGE_SIZE']}, augmentation"
        f" {config['AUGMENTATION']}",
        f"model: U-Net base {config['BASE_CHANNELS']} depth {config['DEPTH']}; training batch"
        f" {config['BATCH_SIZE']} ({results['steps_per_epoch']} steps per epoch), inference batch"
        f" {config['INFERENCE_BATCH_SIZE']}",
        f"rounds: {config['ROUNDS']}, the paths compared timed in turn in each (per path and round:"
        f" {rounds['training_steps']} training steps after 1 untimed epoch, {rounds['inference_batches']} inference"
        f" batches, {rounds['pipeline_batches']} pipeline batches); each figure is the median over the rounds, the"
        " range in brackets; a speed-up is the median of the rounds' own ratios",
        f"work: {flops['training'] / 1e9:.2f} GFLOP per image per training step (forward + backward),"
        f" {flops['inference'] / 1e9:.2f} GFLOP per image for inference",
        f"fast path: {results['fast_path']}",
        f"reference: {results['reference_path']}",
        row("training", "fast", train["fast"]),
        row("training", "data on device", train["data_on_device"]),
        row("training", "reference", train["reference"]),
        ratio_row("training", "speed-up", train["speedup"], ".2f", "x"),
        ratio_row("training", "fast / device", train["loader_share_of_on_device"], ".1%"),
    ]
    if end_to_end:
        lines.append(
            f"{'end to end':<11} {'train.py':<15} {end_to_end['images_per_second']:10.1f} images/s"
            f"  {end_to_end['wall_seconds']:8.1f} s wall for {end_to_end['epochs']} epochs"
        )
    lines += [
        row("inference", "fast", infer["fast"]),
        row("inference", "reference", infer["reference"]),
        ratio_row("inference", "speed-up", infer["speedup"], ".2f", "x"),
        row("pipeline", "fast", pipe["fast"], "samples/s"),
        row("pipeline", "reference", pipe["reference"], "samples/s"),
        ratio_row("pipeline", "speed-up", pipe["speedup"], ".2f", "x"),
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
