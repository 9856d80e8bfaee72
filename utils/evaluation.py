"""Scoring predictions: the validation pass of training (at the training size), and scoring images against
their masks at the masks' own resolution (scripts/evaluate.py and the notebook)."""

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset.images import load_pair
from dataset.kvasir import prepare_kvasir_seg
from dataset.splits import Split, make_split
from utils.device import autocast
from utils.errors import UserError
from utils.metrics import binarize, confusion_counts, scores_from_counts

METRICS = ("dice", "iou", "precision", "recall", "f2", "accuracy")
COUNTS = ("tp", "fp", "fn", "tn")
GLOBAL_METRICS = ("dice", "iou")  # also reported with all pixels of all images pooled
SPLIT_PARTS = ("test", "val")  # the parts of a checkpoint's split that can be scored
METRIC_LABELS = {  # for reports
    "dice": "Dice",
    "iou": "IoU",
    "precision": "precision",
    "recall": "recall",
    "f2": "F2",
    "accuracy": "pixel accuracy",
}


@torch.inference_mode()
def evaluate(model, loader, loss_fn, device: torch.device, amp_dtype=None) -> dict[str, float]:
    """Per-image Dice and IoU of predictions thresholded at probability 0.5, averaged over all images,
    and the loss averaged over images. Puts the model in eval mode."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    count = 0
    for images, masks in loader:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        scores = scores_from_counts(confusion_counts(binarize(logits), masks))
        totals += torch.stack([loss_fn(logits, masks) * len(images), scores["dice"].sum(), scores["iou"].sum()])
        count += len(images)
    loss, dice, iou = (totals / max(count, 1)).tolist()
    return {"loss": loss, "dice": dice, "iou": iou}


def checkpoint_split_pairs(
    data_dir, checkpoint: dict, part: str = "test"
) -> tuple[list[tuple[str, Path, Path]], Split]:
    """The (id, image, mask) pairs of one part ("test" or "val") of the data in `data_dir`, exactly those
    train.py used for this checkpoint (the split remade with its saved VAL_FRACTION and SEED), and the split."""
    if part not in SPLIT_PARTS:
        raise ValueError(f"part must be one of {SPLIT_PARTS}, not {part!r}")
    training = checkpoint.get("config", {})
    if "VAL_FRACTION" not in training or "SEED" not in training:
        raise UserError("the checkpoint does not record its split settings (VAL_FRACTION, SEED).")
    by_id = {pair[0]: pair for pair in prepare_kvasir_seg(data_dir)}
    split = make_split(sorted(by_id), training["VAL_FRACTION"], training["SEED"])
    return [by_id[sample_id] for sample_id in getattr(split, part)], split


def score_mask(sample_id: str, prediction: np.ndarray, mask: np.ndarray) -> dict:
    """One image's row: id, width, height, pixel counts and METRICS of a boolean prediction against its mask."""
    counts = confusion_counts(torch.from_numpy(prediction)[None], torch.from_numpy(mask)[None])
    scores = scores_from_counts(counts)
    height, width = mask.shape
    return {
        "id": sample_id,
        "width": width,
        "height": height,
        **{name: scores[name].item() for name in METRICS},
        **{name: int(counts[name].item()) for name in COUNTS},
    }


def score_pairs(predictor, pairs, batch_size: int = 8, progress: bool = False) -> list[dict]:
    """Predict every (id, image path, mask path) with a utils.inference.Predictor and score it with `score_mask`
    at the mask's own size (the prediction is made at the training size and resized back before thresholding)."""
    rows = []
    with tqdm(total=len(pairs), desc="evaluating", unit="img", disable=not progress) as bar:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            loaded = [load_pair(image_path, mask_path) for _, image_path, mask_path in chunk]
            predictions = predictor.masks([image for image, _ in loaded])
            for (sample_id, _, _), (_, mask), prediction in zip(chunk, loaded, predictions, strict=True):
                rows.append(score_mask(sample_id, prediction, mask.astype(bool)))
            bar.update(len(chunk))
    return rows


def summarize(rows: list[dict]) -> dict:
    """Per-image mean and standard deviation of each metric, and Dice and IoU of all pixels pooled (global)."""
    per_image = {name: np.array([row[name] for row in rows]) for name in METRICS}
    pooled = {name: torch.tensor([sum(row[name] for row in rows)], dtype=torch.float64) for name in COUNTS}
    global_scores = scores_from_counts(pooled)
    return {
        "images": len(rows),
        "mean": {name: float(values.mean()) for name, values in per_image.items()},
        "std": {name: float(values.std()) for name, values in per_image.items()},
        "global": {name: global_scores[name].item() for name in GLOBAL_METRICS},
    }
