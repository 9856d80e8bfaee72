"""Segmentation losses on raw logits: BCE, soft Dice and their sum (the loss this repository trains with)."""

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
