"""The pictures: panels that name each image and its Dice and draw the prediction over it at the image's own aspect
ratio, with the column titles once; the curves with the learning rate as it ran; the Dice histogram."""

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from utils.visualization import (
    OUTCOME_COLOURS,
    comparison_figure,
    curves_figure,
    dice_histogram_figure,
    outcome_overlay,
    panel_figure,
)


def test_outcome_overlay_tells_true_and_false_pixels_apart():
    image = np.full((40, 40, 3), 128, dtype=np.uint8)
    truth, prediction = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    truth[5:20, 5:35], prediction[5:20, 5:20] = True, True  # found on the left, missed on the right
    prediction[30:38, 5:15] = True  # predicted where there is no polyp
    overlay = outcome_overlay(image, truth, prediction)
    inside = {"true positive": overlay[12, 12], "false negative": overlay[12, 28], "false positive": overlay[34, 10]}
    for name, pixel in inside.items():  # each region tinted towards its own colour, the others' not
        closest = min(OUTCOME_COLOURS, key=lambda other: np.abs(pixel.astype(int) - OUTCOME_COLOURS[other]).sum())
        assert closest == name
    assert (overlay[25:28, 25:38] == 128).all()  # true negatives stay as they are


def test_panels_name_each_image_with_its_dice_at_its_aspect_ratio_and_titles_once():
    images = torch.zeros(2, 3, 32, 32)  # normalised: the mean colour
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1
    predictions = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    predictions[0, :, 8:24, 8:16] = True  # half the polyp: Dice 2/3
    figure = panel_figure(images, masks, predictions, ["first_id", "second_id"], [0.5, 1.25], "epoch 3")
    axes = figure.axes
    assert [axis.get_ylabel() for axis in axes[::2]] == ["first_id\nDice 0.667", "second_id\nDice 0.000"]
    assert [axis.get_title() for axis in axes] == ["image", "prediction over the image", "", ""]
    shapes = [axis.get_images()[0].get_array().shape[:2] for axis in axes]
    assert shapes == [(16, 32), (16, 32), (40, 32), (40, 32)]  # height / width as the original images
    assert [text.get_text() for text in figure.legends[0].get_texts()] == list(OUTCOME_COLOURS)


def test_comparison_keeps_each_images_own_size():
    images = [np.zeros((30, 50, 3), np.uint8), np.zeros((60, 20, 3), np.uint8)]
    masks = [np.zeros(image.shape[:2], np.uint8) for image in images]
    figure = comparison_figure(images, masks, masks, "test", row_labels=["a", "b"])
    assert [axis.get_images()[0].get_array().shape[:2] for axis in figure.axes] == [(30, 50)] * 2 + [(60, 20)] * 2


def test_curves_draw_the_learning_rate_as_it_ran():
    history = [
        {"epoch": epoch, "train_loss": 1 / epoch, "val_loss": 1.1 / epoch, "val_dice": dice, "val_iou": dice / 2}
        for epoch, dice in [(1, 0.2), (2, 0.5), (3, 0.4)]
    ]
    learning_rates = [(step, 1e-3 * min(1, step / 4)) for step in range(1, 13)]  # a 1-epoch warm-up, 4 steps/epoch
    figure = curves_figure(history, learning_rates, steps_per_epoch=4)
    loss_axis, score_axis, rate_axis = figure.axes
    (line,) = rate_axis.get_lines()
    assert list(line.get_xdata()) == pytest.approx([step / 4 for step in range(1, 13)])
    assert list(line.get_ydata()) == pytest.approx([rate for _, rate in learning_rates])
    FigureCanvasAgg(figure).draw()
    assert rate_axis.yaxis.get_offset_text().get_text() == ""  # no "1e-3" label for the best-epoch line to cross
    for axis in (loss_axis, score_axis):
        assert any(list(line.get_xdata()) == [2, 2] for line in axis.get_lines())  # the best epoch marked


def test_dice_histogram_counts_every_image():
    figure = dice_histogram_figure([0.0, 0.02, 0.5, 0.97, 1.0], "5 images")
    (axis,) = figure.axes
    counts = [patch.get_height() for patch in axis.patches]
    assert len(counts) == 20 and sum(counts) == 5 and counts[0] == 2 and counts[-1] == 2
