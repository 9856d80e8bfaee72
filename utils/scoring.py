"""Scoring predictions against masks at the masks' own resolution (scripts/evaluate.py and the notebook):
one row of metrics and pixel counts per image, and their summary."""

import numpy as np
import torch

from common.progress import progress_bar
from dataset.images import load_pair
from utils.metrics import confusion_counts, scores_from_counts

METRICS = ("dice", "iou", "precision", "recall", "f2", "accuracy")
COUNTS = ("tp", "fp", "fn", "tn")
GLOBAL_METRICS = ("dice", "iou")  # also reported with all pixels of all images pooled


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
    with progress_bar(description="evaluating", total=len(pairs), unit="img", disable=not progress) as bar:
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
