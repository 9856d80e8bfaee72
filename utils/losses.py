"""Segmentation losses on raw logits: BCE, soft Dice and their sum (the loss this repository trains with), PraNet's
structure loss, and deep supervision over auxiliary outputs."""

import functools

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - Dice of sigmoid probabilities, computed per image and averaged over the batch.

    `smooth` keeps the ratio defined for empty masks (an empty prediction of an empty mask scores 0 loss).
    """
    probabilities = torch.sigmoid(logits.float()).flatten(1)
    targets = targets.float().flatten(1)
    intersection = (probabilities * targets).sum(dim=1)
    total = probabilities.sum(dim=1) + targets.sum(dim=1)
    dice = (2 * intersection + smooth) / (total + smooth)
    return 1 - dice.mean()


def bce_dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0
) -> torch.Tensor:
    """Weighted sum of pixel-wise BCE-with-logits and soft Dice loss (both weights 1 by default)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float())
    return bce_weight * bce + dice_weight * soft_dice_loss(logits, targets)


def structure_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """PraNet's structure loss: BCE plus IoU loss, both weighted towards the polyp's boundary.

    Each pixel weighs 1 + 5 |avgpool31(mask) - mask|: up to 6 near an edge, 1 far from one, so hard pixels count
    more. The IoU part is computed on sigmoid probabilities per image, smoothed by 1, and averaged over the batch.
    """
    logits, targets = logits.float(), targets.float()
    weights = 1 + 5 * torch.abs(F.avg_pool2d(targets, kernel_size=31, stride=1, padding=15) - targets)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    weighted_bce = (weights * bce).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * targets * weights).sum(dim=(2, 3))
    union = ((probabilities + targets) * weights).sum(dim=(2, 3))
    weighted_iou = 1 - (intersection + 1) / (union - intersection + 1)
    return (weighted_bce + weighted_iou).mean()


LOSSES = ("bce_dice", "structure")


def make_loss(name: str, bce_weight: float = 1.0, dice_weight: float = 1.0):
    """The loss `name` as a function of (logits, targets): "bce_dice" (with its weights) or "structure"."""
    if name == "structure":
        return structure_loss
    return functools.partial(bce_dice_loss, bce_weight=bce_weight, dice_weight=dice_weight)


def deeply_supervised(loss, auxiliary_weight: float):
    """A loss of (logits, auxiliary logits) for model.unet.DeepSupervision's outputs: `loss` of the logits plus
    `auxiliary_weight` times the mean `loss` of the auxiliary logits (all at the targets' size)."""
    return functools.partial(_deep_supervision_loss, loss=loss, auxiliary_weight=auxiliary_weight)


def _deep_supervision_loss(outputs, targets: torch.Tensor, loss, auxiliary_weight: float) -> torch.Tensor:
    logits, auxiliary = outputs
    auxiliary_loss = torch.stack([loss(extra, targets) for extra in auxiliary]).mean()
    return loss(logits, targets) + auxiliary_weight * auxiliary_loss
