"""The validation pass of training: loss, Dice and IoU at the training size, every epoch."""

import torch

from common.device import autocast
from utils.metrics import binarize, confusion_counts, scores_from_counts


@torch.inference_mode()
def validate(model, loader, loss_fn, device: torch.device, amp_dtype=None) -> dict[str, float]:
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
