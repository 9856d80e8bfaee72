"""utils/training.py, utils/validation.py and train.py's get_lr: optimizers, schedule, multi-scale resizing,
threshold choice."""

import cv2
import numpy as np
import pytest
import torch

from model import UNet
from tests.train_runs import train_script
from utils.training import (
    SCHEDULES,
    TimeEstimate,
    format_duration,
    make_optimizer,
    multi_scale_size,
    resize_batch,
)
from utils.validation import THRESHOLDS, choose_threshold


@pytest.mark.parametrize("decay_norms_and_biases", [True, False])
def test_weight_decay_leaves_norms_and_biases_alone_when_asked(decay_norms_and_biases):
    """With zero gradients AdamW's step is the decay alone: w <- w * (1 - lr * decay). Convolution weights always
    shrink; BatchNorm scales and shifts and biases shrink only when decay_norms_and_biases is on."""
    model = UNet(3, 1, 4, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0)
    optimizer = make_optimizer(model, "adamw", 0.1, 0.5, torch.device("cpu"), decay_norms_and_biases)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    for name, parameter in model.named_parameters():
        decayed = parameter.ndim > 1 or decay_norms_and_biases
        assert torch.allclose(parameter, torch.full_like(parameter, 0.95 if decayed else 1.0)), name
    assert any(parameter.ndim <= 1 for parameter in model.parameters())


def test_schedule_warms_up_then_decays_to_zero():
    config = {"EPOCHS": 10, "WARMUP_EPOCHS": 1, "LEARNING_RATE": 1.0, "SCHEDULE": "cosine"}  # 10 steps an epoch
    rates = [train_script.get_lr(step, 10, config) for step in range(100)]
    assert rates[:10] == pytest.approx([(step + 1) / 10 for step in range(10)])
    assert rates[10] == 1.0 and rates[55] == pytest.approx(0.5) and rates[-1] == pytest.approx(0.0, abs=1e-3)
    assert train_script.get_lr(50, 10, {**config, "SCHEDULE": "constant"}) == 1.0
    assert set(SCHEDULES) == set(train_script.CHOICES["SCHEDULE"])


@pytest.mark.parametrize(
    ("image_size", "multiple", "expected"),
    [(256, 16, {192, 256, 320}), (352, 32, {256, 352, 448}), (64, 16, {48, 64, 80}), (96, 16, {80, 96, 128})],
)
def test_multi_scale_sizes_are_three_seeded_multiples_around_the_size(image_size, multiple, expected):
    sizes = [multi_scale_size(image_size, 42, step, multiple) for step in range(200)]
    assert set(sizes) == expected  # three sizes, never collapsed into one; the others multiples of `multiple`
    assert sizes == [multi_scale_size(image_size, 42, step, multiple) for step in range(200)]  # resumable
    assert sizes != [multi_scale_size(image_size, 43, step, multiple) for step in range(200)]


def test_resized_masks_stay_binary_and_images_keep_their_layout():
    images = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(2, 1, 32, 32) > 0.5).float()
    resized, resized_masks = resize_batch(images, masks, 64)
    assert resized.shape == (2, 3, 64, 64) and resized.is_contiguous(memory_format=torch.channels_last)
    assert resized_masks.shape == (2, 1, 64, 64) and set(resized_masks.unique().tolist()) <= {0.0, 1.0}
    assert resize_batch(images, masks, 32)[0] is images


class BrightnessPredictor:
    """Stands in for a utils.inference Predictor: the probability of a pixel is its red level / 255, at the
    image's own size, so a test controls what each threshold finds."""

    def probabilities(self, images):
        return [torch.from_numpy(image[..., 0] / 255.0) for image in images]


def write_validation_pair(folder, name: str, red: np.ndarray, mask: np.ndarray):
    """An image whose red channel is `red` and its 0/255 mask, as PNGs; returns the (id, image, mask) pair."""
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    image = np.zeros((*red.shape, 3), np.uint8)
    image[..., 2] = red  # OpenCV writes BGR: the red channel last
    cv2.imwrite(str(folder / "images" / f"{name}.png"), image)
    cv2.imwrite(str(folder / "masks" / f"{name}.png"), mask * 255)
    return name, folder / "images" / f"{name}.png", folder / "masks" / f"{name}.png"


def test_threshold_is_chosen_through_the_predictor_at_each_masks_size_and_moves_only_when_it_wins(tmp_path):
    mask = np.zeros((5, 7), np.uint8)
    mask[:, :3] = 1
    low = np.where(mask, 102, 25).astype(np.uint8)  # the polyp at probability 0.4: found only below 0.4
    pairs = [write_validation_pair(tmp_path / "low", "a", low, mask)]
    threshold, dice = choose_threshold(BrightnessPredictor(), pairs)
    assert set(dice) == set(THRESHOLDS) and dice[0.35] == 1.0 and dice[0.5] == 0.0 and threshold in (0.3, 0.35)
    exact = np.where(mask, 230, 25).astype(np.uint8)  # every threshold scores 1: keep 0.5
    pairs = [write_validation_pair(tmp_path / "exact", "b", exact, mask)]
    assert choose_threshold(BrightnessPredictor(), pairs)[0] == 0.5


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(45, "45 s"), (12 * 60, "12 min"), (3 * 3600 + 12 * 60, "3 h 12 min"), (53 * 3600, "2 days 5 h")],
)
def test_durations_read_as_a_person_says_them(seconds, text):
    assert format_duration(seconds) == text


class FakeClock:
    """A clock that a test moves forward by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_estimate_comes_after_30_s_of_steps_then_at_doubling_times_at_the_recent_pace():
    clock, written = FakeClock(), []
    estimate = TimeEstimate(torch.device("cpu"), steps_per_epoch=1000, clock=clock)
    messages = []
    for step, seconds in enumerate([5.0] + [1.0] * 30 + [3.0] * 20 + [1.0] * 60):  # the first step: start-up
        clock.now += seconds
        messages.append(estimate.step_done(1000 - step - 1, write=written.append))
    readings = [(step, message) for step, message in enumerate(messages) if message]
    assert [step for step, _ in readings] == [30, 40, 80]  # 30, 60 and 120 s after the first step
    assert written == [message for _, message in readings]
    assert readings[0][1].startswith("estimated time left: 16 min for the 969 steps left (1.00 s each over the last")
    assert "48 min for the 959 steps left (3.00 s each over the last 30 s; validation" in readings[1][1]  # busier
    assert "23 min for the 919 steps left (1.50 s each over the last 60 s" in readings[2][1]


def test_a_short_first_epoch_gives_its_estimate_at_its_end_including_validation_afterwards():
    clock, written = FakeClock(), []
    estimate = TimeEstimate(torch.device("cpu"), steps_per_epoch=4, clock=clock)
    for steps_left in (11, 10, 9, 8, 7, 6, 5, 4):
        clock.now += 1.0 if steps_left % 4 != 3 else 11.0  # each epoch's first step also pays for validation
        estimate.step_done(steps_left, write=written.append)
    assert written == [
        "estimated time left: 8 s for the 8 steps left (1.00 s each over the last 3 s; validation comes on top)"
    ]
    clock.now += 60
    assert "validation included" in estimate.step_done(3, write=written.append)
