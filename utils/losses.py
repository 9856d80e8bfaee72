"""Segmentation losses on raw logits, one table LOSSES {LOSS name: function}: BCE + soft Dice (the loss this
repository trains with), PraNet's structure loss, the focal loss; and deep supervision over auxiliary outputs.

A loss is a function of (logits, targets) whose keyword parameters are settings of scripts/train.py of the same name
in upper case (`bce_weight` is BCE_WEIGHT): a new loss is a function here, its line in LOSSES and its constants.
"""

import functools

import torch
import torch.nn.functional as F

from common.config import keyword_settings


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


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, focal_alpha: float = 0.25, focal_gamma: float = 2.0
) -> torch.Tensor:
    """The focal loss (Lin et al., 2017): pixel-wise BCE scaled by (1 - p_t)**focal_gamma, so that pixels already
    classified well count less, and weighted focal_alpha on polyp pixels, 1 - focal_alpha on background."""
    logits, targets = logits.float(), targets.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    probability_of_truth = torch.exp(-bce)
    weights = focal_alpha * targets + (1 - focal_alpha) * (1 - targets)
    return (weights * (1 - probability_of_truth) ** focal_gamma * bce).mean()


def tversky_loss(
    logits: torch.Tensor, targets: torch.Tensor, tversky_alpha: float = 0.3, tversky_beta: float = 0.7
) -> torch.Tensor:
    """1 - Tversky index (Salehi et al., 2017) of sigmoid probabilities per image, TP / (TP + alpha FP + beta FN),
    smoothed by 1 and averaged over the batch: beta > alpha weighs missed polyp pixels more than false alarms."""
    probabilities, targets = torch.sigmoid(logits.float()).flatten(1), targets.float().flatten(1)
    true_positives = (probabilities * targets).sum(dim=1)
    false_positives, false_negatives = (
        (probabilities * (1 - targets)).sum(dim=1),
        ((1 - probabilities) * targets).sum(dim=1),
    )
    index = (true_positives + 1) / (
        true_positives + tversky_alpha * false_positives + tversky_beta * false_negatives + 1
    )
    return 1 - index.mean()


LOSSES = {"bce_dice": bce_dice_loss, "structure": structure_loss, "focal": focal_loss, "tversky": tversky_loss}


def make_loss(name: str, config: dict | None = None):
    """LOSSES[name] as a function of (logits, targets), its keyword parameters bound to the settings in `config`
    (their defaults without it)."""
    return functools.partial(LOSSES[name], **keyword_settings(LOSSES[name], config or {}))


def deeply_supervised(loss, auxiliary_weight: float):
    """A loss of (logits, auxiliary logits) for model.unet.DeepSupervision's outputs: `loss` of the logits plus
    `auxiliary_weight` times the mean `loss` of the auxiliary logits (all at the targets' size)."""
    return functools.partial(_deep_supervision_loss, loss=loss, auxiliary_weight=auxiliary_weight)


def _deep_supervision_loss(outputs, targets: torch.Tensor, loss, auxiliary_weight: float) -> torch.Tensor:
    logits, auxiliary = outputs
    auxiliary_loss = torch.stack([loss(extra, targets) for extra in auxiliary]).mean()
    return loss(logits, targets) + auxiliary_weight * auxiliary_loss
