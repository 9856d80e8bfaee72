"""Augmentation through the dataset class: each transform fires at its own probability, independently of the
others, a sample's augmentation is fixed by its seed, and image and mask move together."""

import itertools

import cv2
import numpy as np
import pytest
import torch

from dataset.segmentation import PolypDataset
from dataset.transforms import AUGMENTATIONS, build_transform

SIZE = 32
SEEDS = range(2000)


@pytest.fixture
def corner_pair(tmp_path):
    """One pair whose mask (and the image's red channel) marks the top-left corner only."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:6, :6] = 255
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[..., 0] = mask
    cv2.imwrite(str(tmp_path / "image.png"), image[..., ::-1])
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    return [("corner", tmp_path / "image.png", tmp_path / "mask.png")]


def corner_of(mask: torch.Tensor) -> str:
    """Which corner of a [1, S, S] mask holds the marker: tl, tr, bl or br."""
    rows, columns = torch.nonzero(mask[0], as_tuple=True)
    return ("t" if rows.float().mean() < SIZE / 2 else "b") + ("l" if columns.float().mean() < SIZE / 2 else "r")


def test_flips_are_independent_quarter_each(corner_pair):
    """Horizontal and vertical flips at p=0.5 each: no flip, either alone, and both, each about a quarter."""
    dataset = PolypDataset(corner_pair, SIZE, build_transform("flips"))
    corners = [corner_of(dataset[(0, seed)][1]) for seed in SEEDS]
    shares = {corner: corners.count(corner) / len(corners) for corner in ("tl", "tr", "bl", "br")}
    assert all(0.21 < share < 0.29 for share in shares.values()), shares


def record_firing(dataset: PolypDataset) -> list[list[bool]]:
    """Make each random transform of the dataset's pipeline note whether it fired; returns the notes, one list
    per transform (filled as samples are drawn)."""
    notes = []
    for transform in dataset.transform.transforms:
        fired = []
        original = transform.should_apply

        def noting(force_apply=False, original=original, fired=fired):
            decision = original(force_apply=force_apply)
            fired.append(decision)
            return decision

        transform.should_apply = noting
        notes.append(fired)
    return notes


@pytest.mark.parametrize("augmentation", [mode for mode in AUGMENTATIONS if mode != "none"])
def test_each_transform_fires_at_its_probability_independently(corner_pair, augmentation):
    dataset = PolypDataset(corner_pair, SIZE, build_transform(augmentation))
    notes = record_firing(dataset)
    for seed in SEEDS:
        dataset[(0, seed)]
    probabilities = [transform.p for transform in dataset.transform.transforms]
    fired = [np.array(note) for note in notes]
    for transform, probability, decisions in zip(dataset.transform.transforms, probabilities, fired, strict=True):
        assert len(decisions) == len(SEEDS)
        assert abs(decisions.mean() - probability) < 0.04, (type(transform).__name__, decisions.mean(), probability)
    random_ones = [index for index, probability in enumerate(probabilities) if 0 < probability < 1]
    for first, second in itertools.combinations(random_ones, 2):
        together = (fired[first] & fired[second]).mean()
        assert abs(together - probabilities[first] * probabilities[second]) < 0.04, (first, second, together)


@pytest.mark.parametrize("augmentation", AUGMENTATIONS)
def test_the_same_seed_gives_the_same_sample_and_other_seeds_differ(corner_pair, augmentation):
    dataset = PolypDataset(corner_pair, SIZE, build_transform(augmentation))
    first, again = dataset[(0, 7)], dataset[(0, 7)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    if augmentation != "none":
        assert any(not torch.equal(first[0], dataset[(0, seed)][0]) for seed in range(8, 20))


@pytest.mark.parametrize("augmentation", ["flips", "strong", "wide"])
def test_image_and_mask_stay_aligned(corner_pair, augmentation):
    """The marker drawn in the image's red channel lands where the mask's does: same centre, to within a pixel
    (interpolation blurs the image's edges, nearest-neighbour keeps the mask's)."""
    dataset = PolypDataset(corner_pair, SIZE, build_transform(augmentation))
    black = (0 - 0.485) / 0.229  # the red channel's value for a black pixel after normalisation
    for seed in range(200):
        image, mask = dataset[(0, seed)]
        marker = image[0] > black + 2  # far brighter than black, whatever the brightness/contrast jitter did
        truth = mask[0] > 0.5
        if truth.sum() < 4 or marker.sum() < 4:
            continue  # moved (almost) out of the frame by the affine transform
        centres = [torch.nonzero(part).float().mean(0) for part in (marker, truth)]
        assert torch.dist(*centres) < 1.0, (seed, centres)
