"""Export a trained network to ONNX for deployment, kept only when ONNX Runtime reproduces PyTorch's probabilities.

    python scripts/export.py                    # models/unet_kvasirseg.pth -> models/unet_kvasirseg.onnx
    python scripts/export.py --checkpoint run/best.pth --output run/best.onnx --json run/export_check.json

The ONNX model maps a normalised float32 batch `image` [N, 3, H, W] to `logits` [N, 1, H, W], with N, H and W
dynamic (H and W of at least the network's smallest input); a pixel is polyp where sigmoid(logit) > threshold. Its
metadata_props hold the JSON of `preprocessing` (image_size, mean, std, threshold) and `builder`, which
`scripts/predict.py --onnx` reads to resize, normalise and threshold as with the checkpoint.
The check feeds synthetic polyp images to PyTorch and to ONNX Runtime on the CPU, at the training size and at each of
CHECK_SIZES, and writes OUTPUT (replacing an earlier export) only when their probabilities differ by at most
TOLERANCE; otherwise it exits with status 2 and writes no file. It then times both at the training size.
An ensemble (several checkpoints, or a sweep's folder of folds) is refused: export each member on its own, and run
the ensemble from its checkpoints with scripts/evaluate.py or scripts/predict.py.
Needs the optional packages: pip install -r requirements-export.txt
Every UPPER_CASE constant below can be edited here or given as a flag (CHECK_SIZES -> --check-sizes).
"""

import functools
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere

import cv2
import numpy as np
import torch
from torch.export import Dim

from common.config import parse_settings, script_constants
from common.device import describe_device, interleaved_seconds, ratio_spread, spread
from common.errors import UserError, run_main
from common.files import WRITTEN_BY, atomic_path, claim_output, json_written_by, script_mark, write_json_atomic
from common.progress import format_size
from dataset.synthetic import make_sample
from model import load_checkpoint
from model.checkpoint import fold_checkpoints
from utils import inference

CHECKPOINT = ["models/unet_kvasirseg.pth"]  # the trained model to export (one: ensembles are refused)
OUTPUT = "models/unet_kvasirseg.onnx"  # the ONNX file, written only when the check passes
OPSET = 18  # ONNX opset of the exported graph (18, the oldest torch's exporter writes, runs on the most runtimes)
TOLERANCE = 1e-4  # the largest difference of probabilities (0..1) between ONNX Runtime and PyTorch that passes
CHECK_SIZES = ["320x288"]  # WIDTHxHEIGHT sizes checked besides the training size (dynamic, non-square height/width)
CHECK_BATCH = 2  # images per checked size (a batch above 1 checks the dynamic batch axis too)
SPEED_BATCH = 8  # images per batch when timing PyTorch and ONNX Runtime (same thread count) at the training size
SPEED_ROUNDS = 5  # rounds that time PyTorch and ONNX Runtime in turn, so a change of load falls on both alike
JSON = ""  # when set, also write the check's results (differences, speeds, versions) as JSON to this path


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (height, width)."""
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match:
        raise UserError(f"check size {text!r} is not WIDTHxHEIGHT (e.g. 320x288).")
    return int(match[2]), int(match[1])


def single_checkpoint(names: list[str]) -> str:
    """The one checkpoint file to export, refusing an ensemble (several checkpoints, or a folder of folds) and a
    folder of one run, whose checkpoint file it names."""
    runs = fold_checkpoints(Path(names[0])) if len(names) == 1 and Path(names[0]).is_dir() else []
    if len(runs) == 1:
        raise UserError(
            f"{names[0]} is a folder holding one run; export the model of that run by its checkpoint file:"
            f" --checkpoint {runs[0]}."
        )
    if len(names) > 1 or runs:
        raise UserError(
            f"export.py writes one model per ONNX file, not the ensemble {' '.join(names)}; export each checkpoint"
            " on its own (--checkpoint a.pth --output a.onnx), and score or run the ensemble from its checkpoints"
            " with evaluate.py or predict.py --checkpoint a.pth b.pth."
        )
    return names[0]


def sizes_to_check(config: dict, image_size: int, model: torch.nn.Module) -> list[tuple[int, int]]:
    """The (height, width) sizes to check, the training size first, after refusing settings that cannot work."""
    if config["OPSET"] < 18:
        raise UserError(f"OPSET {config['OPSET']} is too old: torch's ONNX exporter writes opset 18 and later.")
    if not config["TOLERANCE"] >= 0:
        raise UserError("TOLERANCE must be a difference of probabilities of 0 or more.")
    if min(config["CHECK_BATCH"], config["SPEED_BATCH"], config["SPEED_ROUNDS"]) < 1:
        raise UserError("CHECK_BATCH, SPEED_BATCH and SPEED_ROUNDS must be at least 1.")
    sizes = [(image_size, image_size), *map(parse_size, config["CHECK_SIZES"])]
    smallest, multiple = model.smallest_input, model.size_multiple
    for height, width in sizes:
        if min(height, width) < smallest or height % multiple or width % multiple:
            sides = f"at least {smallest} px" + (f", multiples of {multiple}" if multiple > 1 else "")
            raise UserError(f"check size {width}x{height} does not fit the network, whose sides are {sides}.")
    return sizes


def is_export(path: Path) -> bool:
    """Whether `path` holds an ONNX model written by this script (its metadata_props hold preprocessing and
    builder): the only file OUTPUT may replace."""
    onnx = inference.import_export_package("onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises protobuf's and its own errors for files that are not ONNX models
        return False
    return {"preprocessing", "builder"} <= {prop.key for prop in model.metadata_props}


def claim_outputs(config: dict) -> None:
    """Before any work: refuse OUTPUT and JSON paths that cannot be written or hold a file of another kind (a
    checkpoint, say), which is never replaced; and the two being one file."""
    claim_output(config["OUTPUT"], "--output", is_export, "an ONNX model of export.py")
    if config["JSON"]:
        claim_output(
            config["JSON"], "--json", lambda path: json_written_by(path, script_mark(__file__)), "a report of export.py"
        )
        if Path(config["JSON"]).resolve() == Path(config["OUTPUT"]).resolve():
            raise UserError("--json and --output are one file; give each its own path.")


def synthetic_batch(preprocessing: dict, height: int, width: int, count: int, rng: np.random.Generator) -> torch.Tensor:
    """`count` synthetic polyp images (dataset/synthetic.py) of this size, normalised as in training: [N, 3, H, W]."""
    images = [cv2.cvtColor(make_sample(rng, width, height)[0], cv2.COLOR_BGR2RGB) for _ in range(count)]
    return torch.from_numpy(np.stack([inference.normalise(image, preprocessing) for image in images]))


def export_onnx(model: torch.nn.Module, preprocessing: dict, path: Path, opset: int) -> None:
    """Write `model` to `path` as one ONNX file with dynamic batch, height and width, and its preprocessing and
    builder as JSON metadata_props (what predict.py --onnx and other runtimes need to feed it)."""
    side, smallest = preprocessing["image_size"], model.smallest_input
    batch, height, width = Dim("batch"), Dim("height", min=smallest), Dim("width", min=smallest)
    example = torch.zeros(2, 3, side, side)  # a batch of 2: torch.export would fix a batch axis of 1
    try:
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=opset, dynamic_shapes=({0: batch, 2: height, 3: width},),
            input_names=["image"], output_names=["logits"], verbose=False,
        )  # fmt: skip
    except Exception as error:  # the exporter raises many types, e.g. for an opset it cannot write
        reason = (str(error) or type(error).__name__).splitlines()[0]
        raise UserError(f"torch.onnx.export failed at opset {opset}: {reason}") from None
    written = program.model.opset_imports.get("")
    if written != opset:  # the exporter falls back to its own opset when it cannot convert to the one asked for
        raise UserError(f"torch's exporter cannot write opset {opset} (it wrote {written}); give --opset {written}.")
    metadata = {"preprocessing": preprocessing, "builder": model.builder}
    program.model.metadata_props.update({key: json.dumps(value) for key, value in metadata.items()})
    program.save(path, external_data=False)


def compare_probabilities(expected: inference.ImagePredictor, found: inference.ImagePredictor, batch) -> dict:
    """The largest difference between two predictors' probabilities on a prepared batch, and the mask pixels
    (at the threshold of `expected`) on which they disagree."""
    wanted, got = expected.predict_batch(batch), found.predict_batch(batch)
    masks_differ = (wanted > expected.threshold) != (got > expected.threshold)
    batch_size, _, height, width = batch.shape
    return {
        "batch": batch_size,
        "width": width,
        "height": height,
        "max_abs_difference": (got - wanted).abs().max().item(),
        "mask_pixels_differing": int(masks_differ.sum()),
    }


def compare_speed(pytorch: inference.ImagePredictor, onnxruntime: inference.ImagePredictor, batch, rounds: int) -> dict:
    """Images/s of both predictors on the same prepared batch (model alone), timed in `rounds` interleaved rounds
    (PyTorch after one untimed call each round; the correctness check has run both before): the median and range of
    each, and of the rounds' own ONNX Runtime / PyTorch ratios."""
    calls = {name: functools.partial(predictor.predict_batch, batch) for name, predictor in
             (("pytorch", pytorch), ("onnxruntime", onnxruntime))}  # fmt: skip
    seconds = interleaved_seconds(calls, torch.device("cpu"), rounds, calls_per_round=3, untimed={"pytorch": 1})
    speeds = {name: spread([len(batch) / each for each in values]) for name, values in seconds.items()}
    return {
        "batch_size": len(batch),
        "image_size": batch.shape[-1],
        "device": describe_device(torch.device("cpu")),
        "rounds": rounds,
        **{
            name: {"images_per_second": speed["median"], "images_per_second_range": [speed["min"], speed["max"]]}
            for name, speed in speeds.items()
        },  # fmt: skip
        "speedup": ratio_spread(seconds["pytorch"], seconds["onnxruntime"]),  # = ONNX Runtime's images/s / PyTorch's
    }


def format_check(check: dict) -> str:
    """One line of the check: size, largest difference of probabilities and mask pixels that differ."""
    return (
        f"  {check['batch']} x {check['width']}x{check['height']}: max |probability difference|"
        f" {check['max_abs_difference']:.2e}, {check['mask_pixels_differing']} mask pixel(s) differ"
    )


def format_speed(speed: dict) -> str:
    """The speed comparison as one line: medians over the rounds, with their ranges."""

    def rate(name: str) -> str:
        low, high = speed[name]["images_per_second_range"]
        return f"{speed[name]['images_per_second']:.2f} images/s ({low:.2f}-{high:.2f})"

    speedup = speed["speedup"]
    return (
        f"speed at {speed['image_size']} px, batches of {speed['batch_size']}, {speed['device']}, median of"
        f" {speed['rounds']} rounds timed in turn: PyTorch {rate('pytorch')}, ONNX Runtime {rate('onnxruntime')};"
        f" ONNX Runtime {speedup['median']:.2f}x PyTorch ({speedup['min']:.2f}-{speedup['max']:.2f}x)"
    )


def check_export(pytorch: inference.Predictor, onnxruntime: inference.OnnxPredictor, sizes, config: dict) -> dict:
    """Compare the two predictors' probabilities on synthetic polyp images of each size (printing each result),
    and, when all are within TOLERANCE, their speed at the training size."""
    rng = np.random.default_rng(0)
    preprocessing = pytorch.preprocessing
    report = {"tolerance": config["TOLERANCE"], "threshold": pytorch.threshold, "checks": []}
    for height, width in sizes:
        batch = synthetic_batch(preprocessing, height, width, config["CHECK_BATCH"], rng)
        report["checks"].append(compare_probabilities(pytorch, onnxruntime, batch))
        print(format_check(report["checks"][-1]))
    report["max_abs_difference"] = max(check["max_abs_difference"] for check in report["checks"])
    report["passed"] = report["max_abs_difference"] <= config["TOLERANCE"]
    if report["passed"]:
        speed_batch = synthetic_batch(preprocessing, *sizes[0], config["SPEED_BATCH"], rng)
        report["speed"] = compare_speed(pytorch, onnxruntime, speed_batch, config["SPEED_ROUNDS"])
    return report


def main() -> None:
    config = parse_settings(script_constants(globals()), __file__).values
    config["CHECKPOINT"] = single_checkpoint(config["CHECKPOINT"])
    packages = {name: inference.import_export_package(name) for name in ("onnx", "onnxscript", "onnxruntime")}
    if Path(config["OUTPUT"]).resolve() == Path(config["CHECKPOINT"]).resolve():
        raise UserError("OUTPUT is the checkpoint itself; give the ONNX file another path.")
    claim_outputs(config)
    checkpoint = load_checkpoint(config["CHECKPOINT"])
    pytorch = inference.Predictor.from_checkpoint(checkpoint, device="cpu", mixed_precision=False)
    pytorch.preprocessing = {**pytorch.preprocessing, "threshold": pytorch.threshold}  # the ONNX file carries it
    sizes = sizes_to_check(config, pytorch.preprocessing["image_size"], pytorch.model)
    output = Path(config["OUTPUT"])
    with atomic_path(output) as temporary:
        export_onnx(pytorch.model, pytorch.preprocessing, temporary, config["OPSET"])
        onnxruntime = inference.OnnxPredictor.from_file(temporary, threads=torch.get_num_threads())
        print(f"exported {config['CHECKPOINT']} at opset {config['OPSET']}; ONNX Runtime against PyTorch on the CPU:")
        report = {WRITTEN_BY: script_mark(__file__), "checkpoint": config["CHECKPOINT"], "output": config["OUTPUT"]}
        report["opset"] = config["OPSET"]
        report |= check_export(pytorch, onnxruntime, sizes, config)
        report["versions"] = {"torch": torch.__version__} | {name: p.__version__ for name, p in packages.items()}
        if config["JSON"]:
            write_json_atomic(config["JSON"], report)
        if not report["passed"]:
            raise UserError(
                f"ONNX Runtime's probabilities differ from PyTorch's by up to {report['max_abs_difference']:.2e},"
                f" more than TOLERANCE {config['TOLERANCE']:g}; {output} was not written."
            )
    print(format_speed(report["speed"]))
    print(f"check passed: max difference {report['max_abs_difference']:.2e} <= TOLERANCE {config['TOLERANCE']:g}")
    print(f"wrote {output} ({format_size(output.stat().st_size)}): dynamic batch, height and width")


if __name__ == "__main__":
    run_main(main)
