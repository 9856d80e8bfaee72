"""Score a trained U-Net on held-out images, at each mask's own size: Kvasir-SEG's test split, or any datasets.

    python scripts/evaluate.py                                   # models/unet_kvasirseg.pth on its held-out images
    python scripts/evaluate.py --split val                       # its validation carve-out, to choose settings
    python scripts/evaluate.py --no-tta --json outputs/evaluation/summary.json   # one forward pass per image
    python scripts/evaluate.py --datasets kvasir CVC-ClinicDB=data/TestDataset/CVC-ClinicDB \\
        ETIS=data/TestDataset/ETIS-LaribPolypDB                  # one table row per dataset
    python scripts/evaluate.py --images other/images --masks other/masks   # every image of one folder pair
    python scripts/evaluate.py --checkpoint outputs/sweep/default-seed42-folds5   # the ensemble of a sweep's folds

Every UPPER_CASE constant below can be edited here or given as a flag (CHECKPOINT -> --checkpoint).
"""

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere

from common.config import parse_settings, script_constants
from common.device import describe_device, inference_threads, use_threads
from common.errors import UserError, first_few, run_main
from common.files import (
    WRITTEN_BY,
    claim_output,
    csv_with_header,
    json_written_by,
    script_mark,
    write_csv_atomic,
    write_json_atomic,
)
from dataset.images import read_rgb
from dataset.sources import (
    SCORED_PARTS,
    DataRecord,
    Source,
    absolute,
    check_held_out,
    held_out_pairs,
    parse_source,
    source_pairs,
)
from dataset.splits import Split
from model.checkpoint import Member, common_record, load_members
from utils import inference
from utils.scoring import GLOBAL_METRICS, METRICS, score_pairs, summarize

CHECKPOINT = ["models/unet_kvasirseg.pth"]  # the model to score; several, or a sweep's folder of folds: their ensemble
DATA_DIR = "data"  # Kvasir-SEG as train.py gets it (downloaded into this folder when missing)
SPLIT = "test"  # which part of a trained-on dataset to score: test (held out) or val (what the model was chosen on)
DATASETS = []  # kvasir, NAME=FOLDER or NAME=IMAGES:MASKS to score; empty: the datasets the model was trained on
IMAGES = ""  # with MASKS: score every image of this folder instead (a one-row DATASETS)
MASKS = ""  # masks with the same file name stems as the images in IMAGES
BATCH_SIZE = 0  # images per forward pass (and of the speed measurement); 0: 64 on a GPU, 8 on the CPU
TTA = True  # average the probabilities of the image and its flips and quarter turns (TTA_VIEWS; chosen on validation)
TTA_VIEWS = 8  # with TTA: 8 (every flip and quarter turn; chosen on validation) or 3 (the image and its 2 flips)
DEVICE = "auto"  # auto | cpu | cuda | cuda:N
THREADS = 0  # PyTorch CPU threads; 0: one on a CPU (fastest on busy shared CPUs), PyTorch's default on a GPU
MIXED_PRECISION = True  # bf16 autocast on CUDA (fp16 on GPUs without bf16); ignored on the CPU
CSV = "outputs/evaluation/per_image.csv"  # one row per image: dataset, id, width, height, metrics, pixel counts
JSON = ""  # when set, also write the summary as JSON to this path

METRIC_LABELS = {  # how the printed table names utils.scoring's METRICS
    "dice": "Dice",
    "iou": "IoU",
    "precision": "precision",
    "recall": "recall",
    "f2": "F2",
    "accuracy": "pixel accuracy",
}


@dataclass
class Target:
    """One dataset to score: its name, its (id, image, mask) pairs, which of its images they are, and those that
    are the same frame as an image some member trained or validated on (id: that image's id)."""

    name: str
    pairs: list
    description: str
    copies: dict[str, str]


def scoring_targets(config: dict, record: DataRecord, records: list[DataRecord] | None = None) -> list[Target]:
    """What to score: IMAGES/MASKS, else each of DATASETS, else the datasets the model was trained on. A dataset the
    model was trained on gives its SPLIT part (held-out test images, or the validation carve-out) of `record`, the
    members' common split; any other dataset all its images. Each member's own record (`records`; by default
    `record` alone) is checked."""
    if bool(config["IMAGES"]) != bool(config["MASKS"]):
        raise UserError("give both --images and --masks (a folder of images and a folder of their masks).")
    if config["IMAGES"]:
        for flag in ("IMAGES", "MASKS"):
            if not Path(config[flag]).is_dir():
                raise UserError(f"--{flag.lower()} {config[flag]} is not a folder.")
        images, masks = absolute(config["IMAGES"]), absolute(config["MASKS"])
        sources = [Source(images.parent.name or "images", str(images), str(masks))]
    else:
        sources = [parse_source(spec) for spec in config["DATASETS"]] or record.datasets
    if config["SPLIT"] not in SCORED_PARTS:
        raise UserError(f"--split must be {' or '.join(SCORED_PARTS)}, not {config['SPLIT']!r}.")
    trained_on = {source.name: source for source in record.datasets}
    targets = []
    for source in sources:
        if trained_on.get(source.name) == source:  # Kvasir-SEG is always Source('kvasir'), a folder its paths
            pairs = held_out_pairs(record, source, config["SPLIT"], config["DATA_DIR"])
            kind = describe_part(source, record, config["SPLIT"]) + (f" of {source.images}" if source.images else "")
        else:
            pairs, kind = source_pairs(source, config["DATA_DIR"]), f"all images of {source.images or source.name}"
        if not pairs:
            raise UserError(
                f"no {source.name} image is in the {config['SPLIT']} part of every checkpoint's split (the folds of"
                " one partition share no validation image: each fold's are the others' training images); score an"
                " ensemble on --split test or on other data."
            )
        copies = check_held_out(source.name, pairs, records or [record], config["SPLIT"], config["DATA_DIR"])
        targets.append(Target(source.name, pairs, f"{len(pairs)} images: {kind}", copies))
    return targets


def checkpoint_record(member: Member, config: dict) -> DataRecord:
    """What the member's checkpoint records of its training data, with relative folder paths (checkpoints written
    before paths were recorded absolute) read from here, said so. A checkpoint that records no split can still score
    other data (IMAGES/MASKS or DATASETS), said so, without the check that its images were not trained on."""
    try:
        record = DataRecord.from_checkpoint(member.checkpoint, str(member.path))
    except UserError as error:
        if not (config["IMAGES"] or config["DATASETS"]):
            raise UserError(
                f"{error} Score other data with it (--images and --masks, or --datasets), without that check."
            ) from None
        print(f"note: {member.path} records no training images, so nothing can check these were not trained on")
        return DataRecord([], Split([], [], [], False), {})
    for index, source in enumerate(record.datasets):
        if source.images and not Path(source.images).is_absolute():
            record.datasets[index] = Source(
                source.name,
                *(str(absolute(path)) if path else "" for path in (source.images, source.masks, source.test_list)),
            )
            print(
                f"note: the checkpoint records dataset {source.name} by the relative path {source.images}, read from"
                f" this working directory as {record.datasets[index].images}"
            )
    return record


def describe_part(source: Source, record: DataRecord, part: str) -> str:
    """How the scored part of a trained-on dataset is described in the report."""
    if part == "val" and record.split.folds:
        return f"fold {record.split.fold} of the {record.split.folds}-fold partition the checkpoint was chosen on"
    if part == "val":
        return "the validation carve-out the checkpoint was chosen on"
    if source.is_kvasir and record.split.official:
        return "the official Kvasir-SEG test split"
    return "the held-out test split (" + ("its test list" if source.test_list else "seeded") + ")"


def rounded(row: dict) -> dict:
    """The row with its float metrics rounded to 6 decimals, for the per-image CSV."""
    return {key: round(value, 6) if isinstance(value, float) else value for key, value in row.items()}


def member_rows(members: list[Member], predictor) -> list[dict]:
    """The report's line for each checkpoint scored: its path, epoch, training size and threshold."""
    predictors = predictor.members if isinstance(predictor, inference.EnsemblePredictor) else [predictor]
    return [
        {
            "checkpoint": str(member.path),
            "epoch": member.checkpoint.get("epoch"),
            "image_size": member_predictor.preprocessing["image_size"],
            "threshold": member_predictor.threshold,
        }
        for member, member_predictor in zip(members, predictors, strict=True)
    ]


def describe_model(report: dict) -> list[str]:
    """The lines that say which model was scored: the checkpoint, or the ensemble's members and threshold."""
    members, tta = report["members"], describe_tta(report)
    if len(members) == 1:
        (member,) = members
        return [
            f"checkpoint {member['checkpoint']} (epoch {member['epoch']}, trained at {member['image_size']} px),"
            f" threshold {report['threshold']}, TTA {tta}, scored at each mask's own size"
        ]
    why = "the members' common threshold" if report["common_threshold"] else "the members' thresholds differ"
    return [
        f"ensemble of {len(members)} checkpoints: the mean of their probabilities, each resized to the image's size",
        *(
            f"  {member['checkpoint']} (epoch {member['epoch']}, trained at {member['image_size']} px, threshold"
            f" {member['threshold']})"
            for member in members
        ),
        f"threshold {report['threshold']} ({why}), TTA {tta} for each member, scored at each mask's own size",
    ]


def describe_speed(report: dict) -> str:
    """The speed line: the model alone, or the ensemble's models one after another."""
    speed, members = report["speed"], report["members"]
    sizes = sorted({member["image_size"] for member in members})
    models = "model alone" if len(members) == 1 else f"{len(members)} models alone, one after another"
    return (
        f"speed: {speed['images_per_second']:.1f} images/s, {speed['ms_per_image']:.2f} ms/image ({models}, batches"
        f" of {speed['batch_size']} at {' / '.join(map(str, sizes))} px, {report['device']})"
    )


def describe_tta(report: dict) -> str:
    """'on (3 views)' or 'off'."""
    return f"on ({report['tta_views']} views)" if report["tta"] else "off"


def format_report(report: dict) -> str:
    """The report as plain text: for one dataset the per-image mean and std of each metric and the global scores;
    for several the cross-dataset table, one row per dataset."""
    lines = [
        *(f"{dataset['name']}: {dataset['source']}" for dataset in report["datasets"]),
        *describe_model(report),
        "",
        *(summary_table(report["datasets"][0]) if len(report["datasets"]) == 1 else dataset_table(report["datasets"])),
        "",
        describe_speed(report),
    ]
    return "\n".join(lines)


def summarize_without_copies(rows: list[dict]) -> dict | None:
    """The summary of the rows whose image is no copy of a training image (None when every one is)."""
    clean = [row for row in rows if not row["copy_of"]]
    return summarize(clean) if clean else None


def dataset_table(datasets: list[dict]) -> list[str]:
    """The table the polyp literature reports: per dataset the images and the per-image mean of each metric
    (mDice, mIoU, ...), and the global Dice (all its pixels pooled); below a dataset whose images include copies of
    training images (the same frame), the same for the rest."""
    header = f"{'dataset':<28}{'images':>7}" + "".join(f"{METRIC_LABELS[name][:9]:>10}" for name in METRICS)
    lines = [header + f"{'global Dice':>12}"]
    for dataset in datasets:
        rows = [(dataset["name"][:27], dataset["summary"])]
        if dataset["copies_in_training"]:
            rows.append(("  no copy in training", dataset["summary_without_copies"]))
        for name, summary in rows:
            if summary is None:
                lines.append(f"{name:<28}{0:>7}  (every image is the same frame as a training image)")
                continue
            means = "".join(f"{summary['mean'][metric]:>10.4f}" for metric in METRICS)
            lines.append(f"{name:<28}{summary['images']:>7}{means}{summary['global']['dice']:>12.4f}")
    return lines


def summary_table(dataset: dict) -> list[str]:
    """Per-image mean and standard deviation of each metric, then the global scores: of all images, and beside
    them of the images that are no copy of a training image (the same frame), where some are."""
    columns = [(f"all {dataset['summary']['images']}", dataset["summary"])]
    lines = []
    if copies := dataset["copies_in_training"]:
        clean = dataset["summary_without_copies"]
        columns.append((f"no copy in training {clean['images'] if clean else 0}", clean))
        lines.append(
            f"{len(copies)} of the {dataset['summary']['images']} images are the same frame as a training image"
            f" ({first_few(sorted(copies))}); the right-hand columns leave them out"
        )
    lines.append(f"{'':<32}" + "".join(f"{title:>28}" for title, _ in columns))
    lines.append(f"{'metric':<32}" + f"{'mean':>20}{'std':>8}" * len(columns))
    for name in METRICS:
        cells = [f"{s['mean'][name]:>20.4f}{s['std'][name]:>8.4f}" if s else f"{'-':>28}" for _, s in columns]
        lines.append(f"{METRIC_LABELS[name] + ' (per image)':<32}" + "".join(cells))
    for name in GLOBAL_METRICS:
        cells = [f"{s['global'][name]:>20.4f}{'':>8}" if s else f"{'-':>28}" for _, s in columns]
        lines.append(f"{METRIC_LABELS[name] + ' (global, pixels pooled)':<32}" + "".join(cells))
    return lines


CSV_COLUMNS = ("dataset", "id")  # how every per-image CSV of this script starts: how an earlier one is recognised


def claim_outputs(config: dict) -> None:
    """Before any scoring: refuse CSV and JSON paths that cannot be written, or that hold a file other than an
    earlier output of this script (a checkpoint, another script's CSV), which is never replaced."""
    claim_output(
        config["CSV"], "--csv", lambda path: csv_with_header(path, CSV_COLUMNS), "a per-image CSV of evaluate.py"
    )
    if config["JSON"]:
        claim_output(
            config["JSON"],
            "--json",
            lambda path: json_written_by(path, script_mark(__file__)),
            "a summary of evaluate.py",
        )
    if config["JSON"] and Path(config["JSON"]).resolve() == Path(config["CSV"]).resolve():
        raise UserError("--json and --csv are one file; give each its own path.")


def write_files(config: dict, rows: list[dict], report: dict) -> None:
    """The per-image CSV and the JSON summary, after the report is on the screen: a failed write loses no scores."""
    try:
        write_csv_atomic(config["CSV"], [rounded(row) for row in rows])
        if config["JSON"]:
            write_json_atomic(config["JSON"], report)
    except OSError as error:
        reason = f"{error.strerror or error}: {error.filename}"
        raise UserError(f"could not write the scores printed above ({reason}).") from None
    print(f"per-image scores: {config['CSV']}" + (f"; summary: {config['JSON']}" if config["JSON"] else ""))


def main() -> None:
    config = parse_settings(script_constants(globals()), __file__).values
    claim_outputs(config)
    config["THREADS"] = inference_threads(config["THREADS"], config["DEVICE"])
    use_threads(config["THREADS"])
    members = load_members(config["CHECKPOINT"])
    predictor = inference.predictor_from_settings(members, config)
    batch_size = inference.inference_batch_size(config["BATCH_SIZE"], predictor.device)
    records = [checkpoint_record(member, config) for member in members]
    record = common_record(records)
    targets = scoring_targets(config, record, records)
    print(f"scoring {', '.join(target.name for target in targets)} on {describe_device(predictor.device)}")

    rows, datasets = [], []
    for target in targets:
        scored = score_pairs(predictor, target.pairs, batch_size, progress=True)
        scored = [{**row, "copy_of": target.copies.get(row["id"], "")} for row in scored]
        rows += [{"dataset": target.name, **row} for row in scored]
        datasets.append(
            {
                "name": target.name,
                "source": target.description,
                "copies_in_training": target.copies,
                "summary": summarize(scored),
                "summary_without_copies": summarize_without_copies(scored),
            }
        )
    speed_images = [read_rgb(image_path) for _, image_path, _ in targets[0].pairs[:batch_size]]
    speed = predictor.speed(speed_images)
    rows_of_members = member_rows(members, predictor)
    single = rows_of_members[0] if len(members) == 1 else {}
    report = {
        WRITTEN_BY: script_mark(__file__),
        **{key: single.get(key) for key in ("checkpoint", "epoch", "image_size")},  # of one checkpoint; else None
        "members": rows_of_members,
        "tta": config["TTA"],
        "tta_views": config["TTA_VIEWS"],
        "threshold": predictor.threshold,
        "common_threshold": not isinstance(predictor, inference.EnsemblePredictor) or predictor.common_threshold,
        "device": describe_device(predictor.device),
        "datasets": datasets,
        "summary": summarize(rows),
        "summary_without_copies": summarize_without_copies(rows),
        "speed": {**speed, "batch_size": len(speed_images)},
    }
    print(format_report(report))
    write_files(config, rows, report)


if __name__ == "__main__":
    run_main(main)
