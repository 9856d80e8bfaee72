"""The validation pass of training: loss, Dice and IoU at the training size, every epoch; and the choice of the
probability threshold on the validation images."""

import torch

from common.device import autocast
from utils.metrics import THRESHOLD, binarize, confusion_counts, scores_from_counts


@torch.inference_mode()
def validate(model, loader, loss_fn, device: torch.device, amp_dtype=None) -> dict[str, float]:
    """Per-image Dice and IoU of predictions thresholded at probability THRESHOLD, averaged over all images,
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


THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))  # 0.30, 0.35, ..., 0.70


@torch.inference_mode()
def choose_threshold(model, batches, device: torch.device, amp_dtype=None) -> tuple[float, dict[float, float]]:
    """The probability threshold among THRESHOLDS with the best per-image validation Dice, and the Dice of each.

    THRESHOLD is kept unless another threshold scores strictly higher, so a threshold is only moved when it wins.
    """
    model.eval()
    totals = torch.zeros(len(THRESHOLDS), dtype=torch.float64, device=device)
    count = 0
    for images, masks in batches:
        with autocast(device, amp_dtype):
            probabilities = torch.sigmoid(model(images.to(device)).float())
        for index, threshold in enumerate(THRESHOLDS):
            counts = confusion_counts(probabilities > threshold, masks.to(device))
            totals[index] += scores_from_counts(counts)["dice"].sum()
        count += len(images)
    dice = dict(zip(THRESHOLDS, (totals / max(count, 1)).tolist(), strict=True))
    best = max(THRESHOLDS, key=lambda threshold: (dice[threshold], threshold == THRESHOLD))
    return best, dice
