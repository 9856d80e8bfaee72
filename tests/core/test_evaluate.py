"""scripts/evaluate.py and utils/scoring.py: hand-computed scores at each mask's own (odd, non-square) size."""

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from common.errors import UserError
from dataset.kvasir import pair_images_and_masks, prepare_kvasir_seg
from dataset.sources import DataRecord
from dataset.splits import Split, make_split
from dataset.synthetic import make_kvasir_folder
from model.checkpoint import data_records, load_members
from tests.checkpoints import save_untrained_checkpoint
from tests.scripts import load_script, run_script
from utils.inference import Predictor
from utils.scoring import score_pairs, summarize

PREPROCESSING = {"image_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


class ConstantLogit(torch.nn.Module):
    """Predicts the same logit everywhere: every pixel polyp (positive) or none (negative)."""

    def __init__(self, logit: float):
        super().__init__()
        self.logit = logit

    def forward(self, x):
        return torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), self.logit)


class LeftHalf(torch.nn.Module):
    """Predicts polyp on the left half of the model-sized output, background on the right."""

    def forward(self, x):
        logits = torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), -10.0)
        logits[..., : x.shape[3] // 2] = 10.0
        return logits


def write_pair(folder, name: str, mask: np.ndarray, image_suffix: str, mask_suffix: str) -> None:
    """A random image with `mask` (0/255), saved in the given formats under folder/{images,masks}."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "images" / f"{name}{image_suffix}"), image)
    cv2.imwrite(str(folder / "masks" / f"{name}{mask_suffix}"), mask)


@pytest.fixture
def odd_pairs(tmp_path):
    """`box`: 37x53 (h x w) with a 10x20 polyp (200 px) in TIFF/BMP; `clean`: 29x41 without polyp in JPEG/PNG."""
    box = np.zeros((37, 53), np.uint8)
    box[5:15, 10:30] = 255
    write_pair(tmp_path, "box", box, ".tiff", ".bmp")
    write_pair(tmp_path, "clean", np.zeros((29, 41), np.uint8), ".jpg", ".png")
    return pair_images_and_masks(tmp_path / "images", tmp_path / "masks")


BOX_PIXELS, CLEAN_PIXELS, POLYP = 37 * 53, 29 * 41, 200
EXPECTED = {
    "everything": {  # every pixel predicted polyp
        "box": dict(dice=400 / (400 + BOX_PIXELS - POLYP), iou=POLYP / BOX_PIXELS, precision=POLYP / BOX_PIXELS,
                    recall=1.0, f2=1000 / (1000 + BOX_PIXELS - POLYP), accuracy=POLYP / BOX_PIXELS),
        "clean": dict(dice=0.0, iou=0.0, precision=0.0, recall=0.0, f2=0.0, accuracy=0.0),
        "global": dict(dice=400 / (400 + BOX_PIXELS - POLYP + CLEAN_PIXELS), iou=POLYP / (BOX_PIXELS + CLEAN_PIXELS)),
    },
    "nothing": {  # an empty prediction: misses the polyp, is right about the clean image
        "box": dict(dice=0.0, iou=0.0, precision=0.0, recall=0.0, f2=0.0, accuracy=1 - POLYP / BOX_PIXELS),
        "clean": dict(dice=1.0, iou=1.0, precision=1.0, recall=1.0, f2=1.0, accuracy=1.0),
        "global": dict(dice=0.0, iou=0.0),
    },
}  # fmt: skip


@pytest.mark.parametrize(("prediction", "logit"), [("everything", 10.0), ("nothing", -10.0)])
def test_scores_match_hand_computed_values(odd_pairs, prediction, logit):
    rows = score_pairs(Predictor(ConstantLogit(logit), PREPROCESSING), odd_pairs, batch_size=2)
    expected = EXPECTED[prediction]
    assert [(row["id"], row["width"], row["height"]) for row in rows] == [("box", 53, 37), ("clean", 41, 29)]
    for row in rows:
        assert row["tp"] + row["fp"] + row["fn"] + row["tn"] == row["width"] * row["height"]
        assert {name: row[name] for name in expected[row["id"]]} == pytest.approx(expected[row["id"]])
    summary = summarize(rows)
    assert summary["images"] == 2
    assert summary["global"] == pytest.approx(expected["global"])
    for name in expected["box"]:
        assert summary["mean"][name] == pytest.approx((expected["box"][name] + expected["clean"][name]) / 2)


@pytest.mark.parametrize(("height", "width"), [(37, 53), (53, 37), (45, 45)])
def test_predictions_are_resized_back_before_scoring(tmp_path, height, width):
    left, right = np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint8)
    left[:, : width // 2] = 255
    right[:, width // 2 :] = 255
    write_pair(tmp_path, "left", left, ".png", ".png")
    write_pair(tmp_path, "right", right, ".png", ".png")
    pairs = pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    left_row, right_row = score_pairs(Predictor(LeftHalf(), PREPROCESSING), pairs)
    assert (left_row["width"], left_row["height"]) == (width, height)
    # only the column on the midline of an odd width may go either way
    assert left_row["dice"] >= 1 - 1 / width - 1e-9
    assert right_row["dice"] < 0.1


SETTINGS = {"SPLIT": "test", "IMAGES": "", "MASKS": "", "DATASETS": []}


def record_of(data_dir) -> DataRecord:
    """What scoring_targets reads from a checkpoint: the data record train.py makes of Kvasir-SEG in `data_dir`."""
    return DataRecord.from_checkpoint(torch.load(save_untrained_checkpoint(data_dir.parent / "m.pth", data_dir)))


def test_images_without_masks_are_refused(tmp_path):
    evaluate = load_script("evaluate")
    record = DataRecord([], Split([], [], [], False), {})
    with pytest.raises(UserError, match="give both --images and --masks"):
        evaluate.scoring_targets({**SETTINGS, "IMAGES": str(tmp_path)}, record)
    with pytest.raises(UserError, match="is not a folder"):
        evaluate.scoring_targets({**SETTINGS, "IMAGES": str(tmp_path), "MASKS": str(tmp_path / "missing")}, record)


@pytest.mark.parametrize("part", ["test", "val"])
def test_split_setting_selects_the_checkpoints_own_split(kvasir_dir, part):
    evaluate = load_script("evaluate")
    (target,) = evaluate.scoring_targets({**SETTINGS, "SPLIT": part, "DATA_DIR": kvasir_dir}, record_of(kvasir_dir))
    split = make_split(sorted(sample_id for sample_id, _, _ in prepare_kvasir_seg(kvasir_dir)), 0.1, 42)
    assert [sample_id for sample_id, _, _ in target.pairs] == getattr(split, part)
    assert ("validation carve-out" in target.description) == (part == "val")


def test_unknown_split_is_refused(kvasir_dir):
    evaluate = load_script("evaluate")
    with pytest.raises(UserError, match="--split must be test or val"):
        evaluate.scoring_targets({**SETTINGS, "SPLIT": "train", "DATA_DIR": kvasir_dir}, record_of(kvasir_dir))


def test_training_images_are_never_scored_as_held_out_even_renamed_in_another_copy(kvasir_dir, tmp_path):
    evaluate = load_script("evaluate")
    record = record_of(kvasir_dir)
    copy = tmp_path / "copy"
    for kind in ("images", "masks"):
        (copy / kind).mkdir(parents=True)
        for sample_id in record.split.train[:3] + record.split.test[:2]:
            shutil.copy(kvasir_dir / "Kvasir-SEG" / kind / f"{sample_id}.jpg", copy / kind / f"renamed_{sample_id}.jpg")
    with pytest.raises(UserError, match=r"3 of the 5 copy images to score are images this model was trained or"):
        evaluate.scoring_targets({**SETTINGS, "DATASETS": [f"copy={copy}"], "DATA_DIR": kvasir_dir}, record)
    (target,) = evaluate.scoring_targets({**SETTINGS, "DATASETS": ["kvasir"], "DATA_DIR": kvasir_dir}, record)
    assert [pair[0] for pair in target.pairs] == record.split.test  # the trained-on dataset: its held-out part


def evaluate_with_files(checkpoint, kvasir_dir, tmp_path, tta: str):
    """evaluate.py on `checkpoint` with TTA `--tta` or `--no-tta`, writing outputs/per_image.csv and summary.json
    under tmp_path/out; returns the finished process and the two paths, after checking it succeeded."""
    csv_path, json_path = tmp_path / "out" / "per_image.csv", tmp_path / "out" / "summary.json"
    result = run_script(
        "evaluate", "--checkpoint", checkpoint, "--data-dir", kvasir_dir, "--device", "cpu", tta,
        "--csv", csv_path, "--json", json_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result, csv_path, json_path


@pytest.mark.slow
def test_script_writes_table_csv_and_json_that_agree(kvasir_dir, tmp_path):
    checkpoint = save_untrained_checkpoint(tmp_path / "model.pth", kvasir_dir)
    result, csv_path, json_path = evaluate_with_files(checkpoint, kvasir_dir, tmp_path, "--tta")
    for text in (
        "held-out test split (seeded)",
        "Dice (per image)",
        "Dice (global, pixels pooled)",
        "images/s",
        "TTA on",
    ):
        assert text in result.stdout
    with open(csv_path) as file:
        rows = list(csv.DictReader(file))
    summary = json.loads(json_path.read_text())
    assert summary["summary"]["images"] == len(rows) == 2  # 12% of the 16 synthetic images
    assert summary["summary"]["mean"]["dice"] == pytest.approx(np.mean([float(row["dice"]) for row in rows]), abs=1e-6)
    tp, fp, fn = (sum(int(row[name]) for row in rows) for name in ("tp", "fp", "fn"))
    assert summary["summary"]["global"]["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert summary["speed"]["images_per_second"] > 0 and summary["device"].startswith("cpu")
    sizes = {(row["width"], row["height"]) for row in rows}
    assert sizes <= {("48", "40"), ("56", "44"), ("40", "40")}  # the synthetic images' own sizes


@pytest.mark.slow
def test_several_datasets_give_one_table_row_each(kvasir_dir, tmp_path):
    checkpoint = save_untrained_checkpoint(tmp_path / "model.pth", kvasir_dir)
    make_kvasir_folder(tmp_path / "other", count=5, seed=7)
    make_kvasir_folder(tmp_path / "third", count=3, seed=8)
    json_path = tmp_path / "summary.json"
    result = run_script(
        "evaluate", "--checkpoint", checkpoint, "--data-dir", kvasir_dir, "--device", "cpu", "--no-tta",
        "--datasets", "kvasir", f"other={tmp_path / 'other' / 'Kvasir-SEG'}",
        f"third={tmp_path / 'third' / 'Kvasir-SEG' / 'images'}:{tmp_path / 'third' / 'Kvasir-SEG' / 'masks'}",
        "--csv", tmp_path / "per_image.csv", "--json", json_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("dataset"))
    assert "global Dice" in lines[header]
    assert [line.split()[:2] for line in lines[header + 1 : header + 4]] == [
        ["kvasir", "2"],
        ["other", "5"],
        ["third", "3"],
    ]
    names = [dataset["name"] for dataset in json.loads(json_path.read_text())["datasets"]]
    assert names == ["kvasir", "other", "third"]


@pytest.mark.slow
def test_threads_sets_the_cpu_threads_evaluate_runs_on_and_a_negative_count_is_refused(kvasir_dir, tmp_path):
    checkpoint = save_untrained_checkpoint(tmp_path / "model.pth", kvasir_dir)
    common = ["--checkpoint", checkpoint, "--data-dir", kvasir_dir, "--device", "cpu", "--csv", tmp_path / "out.csv"]
    refused = run_script("evaluate", *common, "--threads=-1")
    assert refused.returncode == 2 and "error: THREADS must be >= 0" in refused.stderr
    assert not (tmp_path / "out.csv").exists()
    result = run_script("evaluate", *common, "--threads", "1", "--json", tmp_path / "summary.json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["device"].endswith(" cores, 1 threads)")


def with_copy_groups(path, groups) -> None:
    """Rewrite the checkpoint at `path` with these copy groups in its data record."""
    checkpoint = torch.load(path, weights_only=True)
    torch.save({**checkpoint, "copy_groups": groups}, path)


@pytest.mark.slow
def test_test_images_with_a_training_copy_are_scored_and_reported_apart(kvasir_dir, tmp_path):
    checkpoint = save_untrained_checkpoint(tmp_path / "model.pth", kvasir_dir)
    record = DataRecord.from_checkpoint(torch.load(checkpoint, weights_only=True))
    copied = record.split.test[0]
    with_copy_groups(checkpoint, [[copied, record.split.train[0]]])
    result, csv_path, json_path = evaluate_with_files(checkpoint, kvasir_dir, tmp_path, "--no-tta")
    assert f"1 of the 2 images are the same frame as a training image ({copied})" in result.stdout
    assert "all 2" in result.stdout and "no copy in training 1" in result.stdout
    summary = json.loads(json_path.read_text())
    assert summary["datasets"][0]["copies_in_training"] == {copied: record.split.train[0]}
    assert summary["summary"]["images"] == 2 and summary["summary_without_copies"]["images"] == 1
    with open(csv_path) as file:
        rows = {row["id"]: row for row in csv.DictReader(file)}
    assert rows[copied]["copy_of"] == record.split.train[0] and rows[record.split.test[1]]["copy_of"] == ""
    clean = float(rows[record.split.test[1]]["dice"])
    assert summary["summary_without_copies"]["mean"]["dice"] == pytest.approx(clean, abs=1e-6)


def test_when_every_test_image_has_a_training_copy_the_clean_column_says_so(kvasir_dir):
    evaluate = load_script("evaluate")
    row = {"id": "a", "copy_of": "b", "dice": 0.5}
    assert evaluate.summarize_without_copies([row]) is None
    summary = {"images": 1, "mean": dict.fromkeys(evaluate.METRICS, 0.5), "std": dict.fromkeys(evaluate.METRICS, 0)}
    summary["global"] = {"dice": 0.5, "iou": 0.3}
    dataset = {"name": "kvasir", "summary": summary, "summary_without_copies": None, "copies_in_training": {"a": "b"}}
    assert "no copy in training 0" in "\n".join(evaluate.summary_table(dataset))
    assert "every image is the same frame as a training image" in "\n".join(evaluate.dataset_table([dataset] * 2))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("copy_groups"), "m.pth records no copy groups"),
        (lambda c: c.update(copy_groups="a b"), r"m.pth has a damaged record: its copy_groups is a str, not a list"),
        (lambda c: c.update(copy_groups=[["a", 3]]), r"its copy_groups\[0\]\[1\] is the int 3, not text"),
        (lambda c: c.update(digests=[1, 2]), "its digests is a list, not a dict"),
        (lambda c: c.update(datasets=[{"name": "x", "colour": "red"}]), "its datasets.0..colour is not a field"),
        (lambda c: c.update(left_out="a"), "its left_out is a str, not a list"),
    ],
)
def test_a_checkpoint_without_or_with_a_damaged_data_record_is_refused_in_one_line(kvasir_dir, change, message):
    path = save_untrained_checkpoint(kvasir_dir.parent / "m.pth", kvasir_dir)
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)
    with pytest.raises(UserError, match=message):
        data_records(load_members([str(path)]))
