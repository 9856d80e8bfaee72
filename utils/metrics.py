"""Binary segmentation metrics per image, from the pixel counts of a thresholded prediction.

Convention (as in the polyp-segmentation literature): each image is scored on its own, then scores are
averaged over images. A ratio whose denominator is zero happens only when prediction and ground truth are
both empty for that ratio's pixels; it is 1.0 when the prediction is right to be empty, else 0.0.
For example, an empty mask predicted empty scores Dice 1 and IoU 1; an empty mask with any predicted pixel
scores Dice 0 and IoU 0.
"""

import torch

THRESHOLD = 0.5  # a pixel is polyp when its probability exceeds this, unless the checkpoint chose another threshold


def binarize(logits: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """Boolean mask of pixels whose probability sigmoid(logit) exceeds `threshold`."""
    return torch.sigmoid(logits.float()) > threshold


def confusion_counts(predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """True/false positive/negative pixel counts per image for boolean (or {0,1}) masks [N, ...]."""
    predictions = predictions.bool().flatten(1)
    targets = targets.bool().flatten(1)
    return {
        "tp": (predictions & targets).sum(dim=1).double(),
        "fp": (predictions & ~targets).sum(dim=1).double(),
        "fn": (~predictions & targets).sum(dim=1).double(),
        "tn": (~predictions & ~targets).sum(dim=1).double(),
    }


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor, empty_is_correct: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, with 0/0 scored 1.0 where the empty prediction is correct, else 0.0."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, empty_is_correct.double())


def scores_from_counts(counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dice, IoU, precision, recall, F2 and pixel accuracy per image from `confusion_counts` output."""
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    nothing_to_find = (tp + fp + fn) == 0
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, nothing_to_find),
        "iou": _ratio(tp, tp + fp + fn, nothing_to_find),
        "precision": _ratio(tp, tp + fp, nothing_to_find),
        "recall": _ratio(tp, tp + fn, nothing_to_find),
        "f2": _ratio(5 * tp, 5 * tp + 4 * fn + fp, nothing_to_find),
        "accuracy": (tp + tn) / (tp + fp + fn + tn),
    }


def dice_per_image(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice coefficient 2|P∩T| / (|P|+|T|) of each image's boolean masks."""
    return scores_from_counts(confusion_counts(predictions, targets))["dice"]


def iou_per_image(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Intersection over union |P∩T| / |P∪T| (Jaccard index) of each image's boolean masks."""
    return scores_from_counts(confusion_counts(predictions, targets))["iou"]
