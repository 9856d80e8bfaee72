"""utils/inference.py: training-identical preprocessing, predictions back at each image's size, flip TTA."""

import sys

import cv2
import numpy as np
import pytest
import torch

from common.config import script_constant
from common.errors import UserError
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from model import UNet, load_checkpoint
from tests.checkpoints import save_untrained_checkpoint
from tests.scripts import REPO
from utils.inference import (
    DEFAULT_TTA_VIEWS,
    THRESHOLD,
    TTA_VIEWS,
    OnnxPredictor,
    Predictor,
    inference_batch_size,
    predictor_from_settings,
    prepare_image,
)
from utils.visualization import overlay_mask

PREPROCESSING = {"image_size": 32, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


class ColumnRamp(torch.nn.Module):
    """Logits rising from -3 at the left column to +3 at the right, whatever the input: not flip-invariant."""

    def forward(self, x):
        ramp = torch.linspace(-3, 3, x.shape[3])
        return ramp.expand(x.shape[0], 1, x.shape[2], x.shape[3])


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(("height", "width"), [(37, 53), (53, 37), (32, 32), (300, 417)])
def test_prepare_image_matches_the_training_preprocessing(height, width):
    image = random_image(height, width)
    training = build_transform("none")(image=cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA))["image"]
    prepared = prepare_image(image, PREPROCESSING)
    assert prepared.shape == (3, 32, 32) and prepared.dtype == np.float32
    np.testing.assert_allclose(prepared, training.transpose(2, 0, 1), atol=1e-5)


@pytest.mark.parametrize("tta", [False, True])
def test_probabilities_and_masks_come_back_at_each_image_size(tta):
    torch.manual_seed(0)
    predictor = Predictor(UNet(3, 1, 4, 2), PREPROCESSING, tta=tta)
    images = [random_image(37, 53), random_image(53, 37, seed=1), random_image(31, 31, seed=2)]
    probabilities = predictor.probabilities(images)
    masks = predictor.masks(images)
    for image, probability, mask in zip(images, probabilities, masks, strict=True):
        assert tuple(probability.shape) == image.shape[:2] == mask.shape
        assert 0 <= probability.min() <= probability.max() <= 1
        assert mask.dtype == bool and np.array_equal(mask, probability.numpy() > 0.5)


def test_tta_averages_the_probabilities_of_the_image_and_its_flips():
    batch = torch.zeros(2, 3, 8, 12)
    plain = Predictor(ColumnRamp(), PREPROCESSING).predict_batch(batch)
    averaged = Predictor(ColumnRamp(), PREPROCESSING, tta=True, tta_views=3).predict_batch(batch)
    # identity p, horizontal flip 1 - p (the ramp reversed), vertical flip p (rows are all equal): mean (1 + p) / 3
    torch.testing.assert_close(averaged, (1 + plain) / 3)
    assert not torch.allclose(averaged, plain)


class FixedPattern(torch.nn.Module):
    """The same asymmetric logits at every position of every input, whatever the input."""

    def __init__(self, size: int):
        super().__init__()
        self.pattern = torch.randn(size, size, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.pattern.expand(x.shape[0], 1, *self.pattern.shape)


class FirstChannel(torch.nn.Module):
    """Logits that are the input's first channel: it turns and mirrors with its input."""

    def forward(self, x):
        return x[:, :1]


def test_eight_view_tta_averages_every_flip_and_quarter_turn_turned_back():
    """A fixed pattern p: the mean over the 8 symmetries g of g^-1(sigmoid(p)), the same as the mean over g of
    g(sigmoid(p)) (the group is closed under inverses), computed here with numpy's own rot90 and fliplr."""
    probabilities = torch.sigmoid(FixedPattern(6).pattern).numpy()
    by_hand = np.mean(
        [np.rot90(np.fliplr(probabilities) if m else probabilities, k) for k in range(4) for m in (0, 1)], 0
    )
    averaged = Predictor(FixedPattern(6), PREPROCESSING, tta=True, tta_views=8).predict_batch(torch.zeros(2, 3, 6, 6))
    torch.testing.assert_close(averaged[:, 0], torch.from_numpy(by_hand.copy()).float().expand(2, 6, 6))


@pytest.mark.parametrize("views", [3, 8])
def test_tta_views_are_turned_back_before_averaging(views):
    """A model that turns with its input gives the same probabilities with every view as without TTA."""
    batch = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    plain = Predictor(FirstChannel(), PREPROCESSING).predict_batch(batch)
    averaged = Predictor(FirstChannel(), PREPROCESSING, tta=True, tta_views=views).predict_batch(batch)
    torch.testing.assert_close(averaged, plain)


def test_an_unknown_number_of_tta_views_is_refused():
    with pytest.raises(UserError, match=r"TTA_VIEWS is 4; it must be one of \[3, 8\]"):
        Predictor(FirstChannel(), PREPROCESSING, tta=True, tta_views=4)


@pytest.mark.parametrize(("chosen", "given", "used"), [(None, None, THRESHOLD), (0.7, None, 0.7), (0.7, 0.3, 0.3)])
def test_masks_use_the_checkpoint_threshold_unless_another_is_given(tmp_path, chosen, given, used):
    checkpoint = load_checkpoint(save_untrained_checkpoint(tmp_path / "model.pth", tmp_path / "data"))
    if chosen is not None:
        checkpoint["preprocessing"]["threshold"] = chosen
    assert Predictor.from_checkpoint(checkpoint, device="cpu").threshold == (THRESHOLD if chosen is None else chosen)
    # the notebook builds a Predictor from the checkpoint's preprocessing directly: it follows the threshold too
    predictor = Predictor(ColumnRamp(), checkpoint["preprocessing"], threshold=given)
    image = random_image(32, 64)
    probabilities, mask = predictor.probabilities([image])[0].numpy(), predictor.masks([image])[0]
    assert predictor.threshold == used and np.array_equal(mask, probabilities > used)
    assert np.array_equal(mask, probabilities > THRESHOLD) == (used == THRESHOLD)  # the ramp tells them apart


@pytest.mark.parametrize("threshold", [0, 1, 1.5, -0.1, float("nan"), "0.5", True])
def test_a_threshold_that_is_not_a_probability_is_refused(threshold):
    with pytest.raises(UserError, match="strictly between 0 and 1"):
        Predictor(ColumnRamp(), {**PREPROCESSING, "threshold": threshold})


def test_onnx_inference_without_onnxruntime_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"^onnxruntime is not installed; .*`pip install -r requirements-export.txt`"):
        OnnxPredictor.from_file("model.onnx")


def test_an_onnx_model_is_refused_on_a_gpu():
    settings = {"BATCH_SIZE": 8, "DEVICE": "cuda", "MIXED_PRECISION": True, "TTA": True}
    with pytest.raises(UserError, match="runs on the CPU with ONNX Runtime; drop --device cuda"):
        predictor_from_settings("model.pth", settings, onnx_model="model.onnx")


@pytest.mark.parametrize(("height", "width"), [(37, 53), (120, 90)])
def test_overlay_marks_the_mask_and_leaves_the_rest(height, width):
    image = random_image(height, width)
    mask = np.zeros((height, width), bool)
    mask[height // 4 : height // 2, width // 3 : 2 * width // 3] = True
    overlay = overlay_mask(image, mask)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    assert np.array_equal(overlay[~mask], image[~mask])
    assert np.all(np.any(overlay[mask] != image[mask], axis=1))


@pytest.mark.parametrize(("requested", "device", "expected"), [(0, "cuda", 64), (0, "cpu", 8), (5, "cuda", 5)])
def test_batch_size_zero_picks_one_for_the_device(requested, device, expected):
    assert inference_batch_size(requested, torch.device(device)) == expected


def test_one_tta_default_for_the_library_and_the_scripts():
    for script in ("evaluate", "predict"):
        assert script_constant(REPO / "scripts" / f"{script}.py", "TTA_VIEWS") == DEFAULT_TTA_VIEWS
    assert Predictor(FirstChannel(), PREPROCESSING, tta=True).tta_views == DEFAULT_TTA_VIEWS == len(TTA_VIEWS[8])
