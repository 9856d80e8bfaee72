"""Score a trained U-Net on the Kvasir-SEG test split (or any folder of images with masks), at each mask's own size.

    python scripts/evaluate.py                                   # models/unet_kvasirseg.pth on the 120 test images
    python scripts/evaluate.py --split val                       # its validation carve-out, to choose settings
    python scripts/evaluate.py --no-tta --json outputs/evaluation/summary.json   # one forward pass per image
    python scripts/evaluate.py --images other/images --masks other/masks   # every image of another dataset

Every UPPER_CASE constant below can be edited here or given as a flag (CHECKPOINT -> --checkpoint).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere


from common.config import parse_settings, script_constants
from common.device import describe_device
from common.errors import UserError, run_main
from common.files import write_csv_atomic, write_text_atomic
from dataset import kvasir
from dataset.images import read_rgb
from dataset.splits import Split, part_pairs
from model import load_checkpoint
from utils import inference  # as a module: its THRESHOLD is not a setting of this script
from utils.scoring import GLOBAL_METRICS, METRICS, score_pairs, summarize

CHECKPOINT = "models/unet_kvasirseg.pth"  # the model to score
DATA_DIR = "data"  # Kvasir-SEG as train.py gets it (downloaded into this folder when missing)
SPLIT = "test"  # test: the 120 held-out images | val: the checkpoint's validation carve-out (for choosing settings)
IMAGES = ""  # with MASKS: score every image of this folder instead of a split
MASKS = ""  # masks with the same file name stems as the images in IMAGES
BATCH_SIZE = 8  # images per forward pass (also the batch of the speed measurement)
TTA = True  # average the probabilities of the image and its flips (chosen on validation, see README "Results")
DEVICE = "auto"  # auto | cpu | cuda | cuda:N
MIXED_PRECISION = True  # bf16 autocast on CUDA (fp16 on GPUs without bf16); ignored on the CPU
CSV = "outputs/evaluation/per_image.csv"  # one row per image: id, width, height, metrics, pixel counts
JSON = ""  # when set, also write the summary as JSON to this path

METRIC_LABELS = {  # how the printed table names utils.scoring's METRICS
    "dice": "Dice",
    "iou": "IoU",
    "precision": "precision",
    "recall": "recall",
    "f2": "F2",
    "accuracy": "pixel accuracy",
}


def select_pairs(config: dict, checkpoint: dict) -> tuple[list[tuple[str, Path, Path]], str]:
    """The (id, image, mask) pairs to score and a description of where they come from.

    Without IMAGES/MASKS: the SPLIT part of the split recorded in the checkpoint, found in DATA_DIR.
    """
    if bool(config["IMAGES"]) != bool(config["MASKS"]):
        raise UserError("give both --images and --masks (a folder of images and a folder of their masks).")
    if config["IMAGES"]:
        for flag in ("IMAGES", "MASKS"):
            if not Path(config[flag]).is_dir():
                raise UserError(f"--{flag.lower()} {config[flag]} is not a folder.")
        pairs = kvasir.pair_images_and_masks(config["IMAGES"], config["MASKS"])
        return pairs, f"all {len(pairs)} images of {config['IMAGES']}"
    split = Split.from_checkpoint(checkpoint)
    pairs = part_pairs(kvasir.prepare_kvasir_seg(config["DATA_DIR"]), split, config["SPLIT"])
    if config["SPLIT"] == "val":
        kind = "validation carve-out the checkpoint was chosen on"
    else:
        kind = "official Kvasir-SEG test split" if split.official else "seeded test split"
    return pairs, f"the {len(pairs)} images of the {kind}"


def rounded(row: dict) -> dict:
    """The row with its float metrics rounded to 6 decimals, for the per-image CSV."""
    return {key: round(value, 6) if isinstance(value, float) else value for key, value in row.items()}


def format_report(report: dict) -> str:
    """The summary as a plain-text table: per-image mean and std of each metric, then the global scores."""
    summary, speed = report["summary"], report["speed"]
    lines = [
        f"{report['source']}",
        f"checkpoint {report['checkpoint']} (epoch {report['epoch']}, trained at {report['image_size']} px),"
        f" threshold {report['threshold']}, TTA {'on' if report['tta'] else 'off'}, scored at each mask's own size",
        "",
        f"{'metric':<32}{'mean':>8}{'std':>8}",
    ]
    lines += [
        f"{METRIC_LABELS[name] + ' (per image)':<32}{summary['mean'][name]:>8.4f}{summary['std'][name]:>8.4f}"
        for name in METRICS
    ]
    lines += [
        f"{METRIC_LABELS[name] + ' (global, pixels pooled)':<32}{summary['global'][name]:>8.4f}"
        for name in GLOBAL_METRICS
    ]
    lines += [
        "",
        f"speed: {speed['images_per_second']:.1f} images/s, {speed['ms_per_image']:.2f} ms/image (model alone,"
        f" batches of {speed['batch_size']} at {report['image_size']} px, {report['device']})",
    ]
    return "\n".join(lines)


def main() -> None:
    config = parse_settings(script_constants(globals()), __file__).values
    checkpoint = load_checkpoint(config["CHECKPOINT"])
    predictor = inference.predictor_from_settings(checkpoint, config)
    pairs, source = select_pairs(config, checkpoint)
    print(f"scoring {source} on {describe_device(predictor.device)}")

    rows = score_pairs(predictor, pairs, config["BATCH_SIZE"], progress=True)
    speed_images = [read_rgb(image_path) for _, image_path, _ in pairs[: config["BATCH_SIZE"]]]
    speed = inference.measure_speed(predictor, predictor.prepare(speed_images))
    report = {
        "checkpoint": config["CHECKPOINT"],
        "epoch": checkpoint.get("epoch"),
        "image_size": predictor.preprocessing["image_size"],
        "source": f"Scored {source}.",
        "tta": config["TTA"],
        "threshold": inference.THRESHOLD,
        "device": describe_device(predictor.device),
        "summary": summarize(rows),
        "speed": {**speed, "batch_size": len(speed_images)},
    }
    write_csv_atomic(config["CSV"], [rounded(row) for row in rows])
    if config["JSON"]:
        write_text_atomic(config["JSON"], json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"per-image scores: {config['CSV']}" + (f"; summary: {config['JSON']}" if config["JSON"] else ""))


if __name__ == "__main__":
    run_main(main)
