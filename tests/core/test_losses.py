"""BCE + soft Dice loss against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from utils.losses import LOSSES, bce_dice_loss, deeply_supervised, focal_loss, make_loss, soft_dice_loss, structure_loss


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


def test_structure_loss_hand_computed_without_a_boundary():
    logits, targets = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    # an empty mask has no boundary, so every weight is 1: BCE ln 2, IoU part 1 - (0 + 1) / (16 * 0.5 + 1)
    assert structure_loss(logits, targets).item() == pytest.approx(math.log(2) + 8 / 9)


def test_structure_loss_weighs_the_boundary_more():
    targets = torch.zeros(1, 1, 64, 64)
    targets[..., 16:48, 16:48] = 1
    near_edge, far_inside = targets.clone(), targets.clone()
    near_edge[..., 16, 20:44] = 0  # the same number of wrong pixels, on the boundary or in the middle
    far_inside[..., 32, 20:44] = 0
    confident = lambda mask: (mask * 2 - 1) * 6  # noqa: E731
    assert structure_loss(confident(near_edge), targets) > structure_loss(confident(far_inside), targets)
    assert structure_loss(confident(targets), targets).item() == pytest.approx(0, abs=0.01)


def test_deep_supervision_adds_the_weighted_mean_of_the_auxiliary_losses():
    torch.manual_seed(0)
    targets = (torch.rand(2, 1, 8, 8) > 0.5).float()
    logits, auxiliary = torch.randn(2, 1, 8, 8), [torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)]
    loss = make_loss("bce_dice")
    expected = loss(logits, targets) + 0.4 * (loss(auxiliary[0], targets) + loss(auxiliary[1], targets)) / 2
    assert deeply_supervised(loss, 0.4)((logits, auxiliary), targets).item() == pytest.approx(expected.item())
    assert make_loss("structure").func is structure_loss


def test_a_loss_takes_its_settings_by_name():
    logits, targets = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    weighted = make_loss("bce_dice", {"BCE_WEIGHT": 0.0, "DICE_WEIGHT": 2.0, "FOCAL_GAMMA": 9.0})
    assert weighted(logits, targets).item() == pytest.approx(2 * soft_dice_loss(logits, targets).item())
    assert make_loss("focal", {"FOCAL_ALPHA": 0.5, "FOCAL_GAMMA": 0.0}).keywords == {
        "focal_alpha": 0.5,
        "focal_gamma": 0.0,
    }


def test_the_focal_loss_is_weighted_bce_that_down_weights_easy_pixels():
    logits, targets = torch.tensor([[[[4.0, -4.0, 0.0]]]]), torch.tensor([[[[1.0, 0.0, 1.0]]]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert focal_loss(logits, targets, focal_alpha=0.5, focal_gamma=0.0).item() == pytest.approx(0.5 * bce.item())
    easy, hard = focal_loss(logits[..., :1], targets[..., :1]), focal_loss(logits[..., 2:], targets[..., 2:])
    assert easy < 1e-3 * hard


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_is_near_zero_for_a_confident_right_answer_and_differentiable(name):
    targets = (torch.rand(2, 1, 32, 32) > 0.5).float()
    logits = ((targets * 2 - 1) * 20).requires_grad_()
    loss = make_loss(name)(logits, targets)
    loss.backward()
    assert loss.item() == pytest.approx(0, abs=0.02) and logits.grad is not None
