"""The validation pass of training: loss, Dice and IoU at the training size, every epoch; and the choice of the
probability threshold on the validation images, at their own size and with TTA, as they are scored."""

import torch

from common.device import autocast
from dataset.images import load_pair
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


def choose_threshold(predictor, pairs, batch_size: int = 8) -> tuple[float, dict[float, float]]:
    """The probability threshold among THRESHOLDS with the best per-image Dice on the validation `pairs` (id, image
    path, mask path), and the Dice of each: scored as evaluate.py scores, through `predictor` (a utils.inference
    Predictor, with its TTA) at each mask's own size, so the threshold is chosen on what will be reported.

    THRESHOLD is kept unless another threshold scores strictly higher, so a threshold is only moved when it wins.
    """
    totals = torch.zeros(len(THRESHOLDS), dtype=torch.float64)
    for start in range(0, len(pairs), batch_size):
        loaded = [load_pair(image, mask) for _, image, mask in pairs[start : start + batch_size]]
        for probabilities, (_, mask) in zip(
            predictor.probabilities([image for image, _ in loaded]), loaded, strict=True
        ):
            target = torch.from_numpy(mask.astype(bool))[None]
            for index, threshold in enumerate(THRESHOLDS):
                totals[index] += scores_from_counts(confusion_counts(probabilities[None] > threshold, target))[
                    "dice"
                ].sum()
    dice = dict(zip(THRESHOLDS, (totals / max(len(pairs), 1)).tolist(), strict=True))
    best = max(THRESHOLDS, key=lambda threshold: (dice[threshold], threshold == THRESHOLD))
    return best, dice
