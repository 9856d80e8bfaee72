"""Metrics against hand-computed values and scikit-learn, including the empty-mask conventions."""

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score

from utils.metrics import binarize, confusion_counts, dice_per_image, iou_per_image, scores_from_counts


def test_hand_computed_example():
    prediction = torch.tensor([[1, 1, 0, 0]]).bool()
    target = torch.tensor([[1, 0, 1, 0]]).bool()
    # tp=1, fp=1, fn=1, tn=1: Dice 2/4, IoU 1/3, precision 1/2, recall 1/2, F2 5/(5+4+1), accuracy 2/4
    scores = scores_from_counts(confusion_counts(prediction, target))
    assert scores["dice"].item() == pytest.approx(0.5)
    assert scores["iou"].item() == pytest.approx(1 / 3)
    assert scores["precision"].item() == pytest.approx(0.5)
    assert scores["recall"].item() == pytest.approx(0.5)
    assert scores["f2"].item() == pytest.approx(0.5)
    assert scores["accuracy"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("size", [(8, 8), (17, 31), (64, 48)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_image_scores_match_sklearn(size, seed):
    generator = torch.Generator().manual_seed(seed)
    predictions = torch.rand(4, 1, *size, generator=generator) > 0.6
    targets = torch.rand(4, 1, *size, generator=generator) > 0.5
    dice, iou = dice_per_image(predictions, targets), iou_per_image(predictions, targets)
    for i in range(4):
        p, t = predictions[i].flatten().numpy(), targets[i].flatten().numpy()
        assert dice[i].item() == pytest.approx(f1_score(t, p))
        assert iou[i].item() == pytest.approx(jaccard_score(t, p))


def test_empty_mask_conventions():
    empty = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    some = empty.clone()
    some[0, 0, 1, 1] = True
    # empty truth, empty prediction: nothing to find and nothing found -> perfect (sklearn with zero_division=1)
    assert dice_per_image(empty, empty).item() == 1.0
    assert iou_per_image(empty, empty).item() == 1.0
    assert f1_score(empty.flatten().numpy(), empty.flatten().numpy(), zero_division=1.0) == 1.0
    # empty truth, any prediction; or a polyp predicted empty: zero
    assert dice_per_image(some, empty).item() == 0.0
    assert iou_per_image(some, empty).item() == 0.0
    assert dice_per_image(empty, some).item() == 0.0
    scores = scores_from_counts(confusion_counts(empty, some))
    assert scores["precision"].item() == 0.0 and scores["recall"].item() == 0.0


def test_binarize_thresholds_probability_at_one_half():
    logits = torch.tensor([-2.0, -1e-3, 1e-3, 3.0])
    assert binarize(logits).tolist() == [False, False, True, True]
    assert binarize(logits, threshold=0.9).tolist() == [False, False, False, True]


def test_scores_are_averaged_per_image_not_pooled():
    big_hit = torch.ones(1, 1, 10, 10, dtype=torch.bool)
    small_target = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    small_target[0, 0, 0, 0] = True
    predictions = torch.cat([big_hit, torch.zeros_like(small_target)])
    targets = torch.cat([big_hit, small_target])
    per_image = dice_per_image(predictions, targets)
    assert per_image.tolist() == [1.0, 0.0]
    assert per_image.mean().item() == 0.5
    assert np.isclose(f1_score(targets.flatten().numpy(), predictions.flatten().numpy()), 200 / 201)
