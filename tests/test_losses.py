"""BCE + soft Dice loss against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from utils.losses import bce_dice_loss, soft_dice_loss


def test_soft_dice_hand_computed():
    logits = torch.tensor([[[[0.0, 0.0]]]])  # probabilities 0.5, 0.5
    targets = torch.tensor([[[[1.0, 0.0]]]])
    # intersection 0.5, sums 1 + 1; with smooth 1: (2*0.5 + 1) / (2 + 1) = 2/3
    assert soft_dice_loss(logits, targets).item() == pytest.approx(1 - 2 / 3)
    assert soft_dice_loss(logits, targets, smooth=0).item() == pytest.approx(0.5)


def test_bce_dice_is_weighted_sum():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    dice = soft_dice_loss(logits, targets)
    assert bce_dice_loss(logits, targets).item() == pytest.approx((bce + dice).item())
    assert bce_dice_loss(logits, targets, 0.5, 2.0).item() == pytest.approx((0.5 * bce + 2 * dice).item())


def test_perfect_confident_prediction_has_near_zero_loss():
    targets = torch.zeros(1, 1, 4, 4)
    targets[..., :2, :2] = 1
    logits = (targets * 2 - 1) * 20
    assert bce_dice_loss(logits, targets).item() == pytest.approx(0, abs=1e-6)
    assert soft_dice_loss(-20 * torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)).item() == pytest.approx(0, abs=1e-6)


def test_loss_is_per_image_mean_and_differentiable():
    logits = torch.zeros(2, 1, 2, 2, requires_grad=True)
    targets = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    loss = bce_dice_loss(logits, targets)
    loss.backward()
    expected_dice = 1 - ((2 * 2 + 1) / (2 + 4 + 1) + (0 + 1) / (2 + 0 + 1)) / 2
    assert loss.item() == pytest.approx(math.log(2) + expected_dice)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
