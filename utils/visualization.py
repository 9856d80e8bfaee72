"""Pictures of a run: panels of predictions over their images, training curves, Dice histograms and mask overlays.

Figures are plain matplotlib `Figure`s, outside pyplot's global state, so they can be drawn and saved on a
background thread while training goes on; only a figure meant for a window goes through pyplot.
"""

from pathlib import Path

import cv2
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends import BackendFilter, backend_registry
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from common.files import atomic_path
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD
from model.checkpoint import load_checkpoint
from utils.metrics import dice_per_image


def denormalize(image: torch.Tensor) -> np.ndarray:
    """A normalised [3, H, W] tensor back to an RGB array [H, W, 3] in [0, 1] for display."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def blank_figure(size: tuple[float, float], window: bool = False, layout: str | None = "constrained"):
    """An empty figure: through pyplot when it is to open in a window, else a plain Figure (constrained layout: titles
    never overlap the axes)."""
    return plt.figure(figsize=size, layout=layout) if window else Figure(figsize=size, layout=layout)


def new_figure(rows: int, columns: int, size: tuple[float, float], window: bool = False):
    """A figure and its [rows, columns] axes (see blank_figure)."""
    figure = blank_figure(size, window)
    return figure, figure.subplots(rows, columns, squeeze=False)


OUTCOME_COLOURS = {  # RGB of each kind of pixel in a prediction drawn over its image
    "true positive": (0, 200, 0),
    "false positive": (255, 40, 40),
    "false negative": (40, 120, 255),
}


def panel_figure(images, masks, predictions, names, aspects, title: str = "", window: bool = False):
    """The panels of train.py: one row per validation image (tensors [N, C, H, W] at the training size), named
    with its id and Dice, drawn at its own aspect ratio (`aspects`: each original image's height / width)."""
    dice = dice_per_image(predictions.bool(), masks.bool())
    size = images.shape[-1]

    def at_aspect(picture: np.ndarray, aspect: float, interpolation: int) -> np.ndarray:
        return cv2.resize(picture, (size, round(size * aspect)), interpolation=interpolation)

    rows = [
        (
            at_aspect(denormalize(image), aspect, cv2.INTER_AREA),
            at_aspect(mask[0].cpu().numpy().astype(np.uint8), aspect, cv2.INTER_NEAREST),
            at_aspect(prediction[0].cpu().numpy().astype(np.uint8), aspect, cv2.INTER_NEAREST),
        )
        for image, mask, prediction, aspect in zip(images, masks, predictions, aspects, strict=True)
    ]
    return comparison_figure(
        *zip(*rows, strict=True),
        title,
        row_labels=[f"{name}\nDice {score:.3f}" for name, score in zip(names, dice.tolist(), strict=True)],
        window=window,
    )


def outcome_overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The RGB image with each pixel's outcome filled and outlined in its OUTCOME_COLOURS (see overlay_mask): true
    positives (found), false positives (predicted but not polyp) and false negatives (polyp missed)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    truth, prediction = np.asarray(truth).astype(bool), np.asarray(prediction).astype(bool)
    outcomes = {"true positive": truth & prediction, "false positive": ~truth & prediction}
    outcomes["false negative"] = truth & ~prediction
    for name, pixels in outcomes.items():
        image = overlay_mask(image, pixels, OUTCOME_COLOURS[name], opacity=0.4)
    return image


def comparison_figure(images, masks, predictions, title: str = "", row_labels=None, window: bool = False):
    """One row per sample: the image, and the prediction over it with true positives, false positives and false
    negatives told apart (outcome_overlay); each row at its image's own aspect ratio, its label on the left.

    Images are RGB [H, W, 3] (uint8, or float in [0, 1]) of any (per-row) size; masks and predictions [H, W] in
    {0, 1}, the size of their image. The column titles (at the top) and the colour key (at the bottom) appear once.
    """
    longest = max((len(line) for label in row_labels or [] for line in label.split("\n")), default=0)
    label_width = 0.1 + 0.09 * longest  # inches: about the width of a character at 10 points
    image_width, gap, top, bottom = 3.4, 0.08, 0.75, 0.45  # inches
    heights = [image_width * image.shape[0] / image.shape[1] for image in images]
    width, height = label_width + 2 * image_width + gap + 0.1, top + sum(heights) + gap * (len(images) - 1) + bottom
    figure = blank_figure((width, height), window, layout=None)  # placed by hand: rows as tall as their images
    lower = height - top
    for row, (image, mask, prediction) in enumerate(zip(images, masks, predictions, strict=True)):
        lower -= heights[row]
        pictures = (np.asarray(image), outcome_overlay(image, mask, prediction))
        for column, picture in enumerate(pictures):
            left = label_width + column * (image_width + gap)
            axis = figure.add_axes((left / width, lower / height, image_width / width, heights[row] / height))
            axis.imshow(picture, aspect="auto")
            axis.set(xticks=[], yticks=[])
            if row == 0:
                axis.set_title(("image", "prediction over the image")[column], fontsize=11)
            if row_labels and column == 0:
                axis.set_ylabel(row_labels[row], fontsize=10, rotation=0, ha="right", va="center", labelpad=6)
        lower -= gap
    key = [Patch(color=np.array(colour) / 255, label=name) for name, colour in OUTCOME_COLOURS.items()]
    figure.legend(handles=key, loc="lower center", ncols=3, fontsize=10, frameon=False)
    if title:
        figure.suptitle(title, fontsize=12, y=1 - 0.12 / height)
    return figure


def curves_figure(history: list[dict], learning_rates: list[tuple[int, float]], steps_per_epoch: int):
    """Training curves from history.csv's rows: train and validation loss, validation Dice and IoU (the best epoch,
    by validation Dice, marked on both), and the learning rate as it ran (the (step, rate) points the run
    recorded several times per epoch, so a warm-up shows). One look tells whether training converged (flat
    validation curves), over-fit (validation loss rising while training loss falls) or diverged (losses jumping)."""
    epochs = [row["epoch"] for row in history]
    best = max(history, key=lambda row: row["val_dice"])
    figure, axes = new_figure(1, 3, (15, 4))
    loss_axis, score_axis, rate_axis = axes[0]
    loss_axis.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], label="validation loss")
    score_axis.plot(epochs, [row["val_dice"] for row in history], label="validation Dice")
    score_axis.plot(epochs, [row["val_iou"] for row in history], label="validation IoU")
    for axis in (loss_axis, score_axis):
        axis.axvline(best["epoch"], color="black", linewidth=0.8, linestyle="--", label=f"best epoch ({best['epoch']})")
    rate_axis.plot(
        [step / steps_per_epoch for step, _ in learning_rates], [rate for _, rate in learning_rates], color="grey"
    )
    rate_axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.1e}" if value else "0"))
    for axis in (loss_axis, score_axis, rate_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlim(0, epochs[-1] + max(0.2, epochs[-1] / 50))  # a margin: the best epoch may be the last
        axis.grid(alpha=0.3)
    loss_axis.set(xlabel="epoch", ylabel="loss", title="training and validation loss")
    score_axis.set(
        xlabel="epoch",
        ylabel="per-image mean, at the training size",
        title=f"validation scores (best Dice {best['val_dice']:.3f}, epoch {best['epoch']})",
    )
    rate_axis.set(xlabel="epoch", ylabel="learning rate", title="learning rate as it ran")
    loss_axis.legend(loc="upper right", fontsize=8)
    score_axis.legend(loc="lower right", fontsize=8)
    return figure


def dice_histogram_figure(dice: list[float], title: str):
    """How per-image Dice spreads: a histogram over [0, 1] in steps of 0.05, the mean marked."""
    figure, axes = new_figure(1, 1, (7, 3.5))
    axis = axes[0][0]
    axis.hist(dice, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    mean = float(np.mean(dice))
    axis.axvline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(xlim=(0, 1), xlabel="per-image Dice", ylabel="images", title=title)
    axis.legend(loc="upper left")
    return figure


def overlay_mask(image: np.ndarray, mask: np.ndarray, colour=(0, 255, 0), opacity: float = 0.35) -> np.ndarray:
    """The RGB uint8 image with the mask filled translucently and outlined in `colour` (same size as the image)."""
    overlay = image.copy()
    overlay[mask] = ((1 - opacity) * image[mask] + opacity * np.array(colour)).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(min(mask.shape) / 250))
    return cv2.drawContours(overlay, contours, -1, colour, thickness)


def can_show_windows() -> bool:
    """True when matplotlib's backend can open a window (never for Agg and other file backends)."""
    return matplotlib.get_backend().lower() in backend_registry.list_builtin(BackendFilter.INTERACTIVE)


def save_figure(figure, path) -> None:
    """Save `figure` as an image at `path`, atomically (a reader never sees half a file)."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=str(path).rsplit(".", 1)[-1], dpi=100)


def write_panels(images, masks, predictions, names, aspects, path, title: str) -> None:
    """Draw the panels (see panel_figure) and save them at `path` (safe on a background thread)."""
    save_figure(panel_figure(images, masks, predictions, names, aspects, title), path)


def write_curves(history: list[dict], learning_rates: list[tuple[int, float]], steps_per_epoch: int, path) -> None:
    """Draw the training curves (see curves_figure) and save them at `path` (safe on a background thread)."""
    save_figure(curves_figure(history, learning_rates, steps_per_epoch), path)


def show_figure(figure) -> None:
    """Open a pyplot figure in a window without blocking the caller."""
    figure.show()
    plt.pause(0.001)


def run_curves(checkpoint: dict, run_folder: str | None = None) -> tuple[Path | None, str]:
    """The curves.png of the run that trained `checkpoint` (in `run_folder` when given, else its recorded
    RUN_FOLDER) and a line saying whose it is; None, with a line saying why, when they are not there or the folder
    now holds another run (its last.pth has another RUN_ID): never the curves of some other run."""
    config = checkpoint.get("config", {})
    folder = run_folder or config.get("RUN_FOLDER")
    if not folder:
        return None, (
            "its run folder is not recorded (no RUN_FOLDER: an older checkpoint), so its training curves are not shown;"
            " set KVASIR_OUTPUT_DIR to that run's folder"
        )
    curves, last = Path(folder) / "curves.png", Path(folder) / "last.pth"
    if not curves.is_file():
        return None, f"no {curves}: its run folder was moved or deleted (set KVASIR_OUTPUT_DIR to where it is now)"
    other = load_checkpoint(last).get("config", {}).get("RUN_ID") if last.is_file() else None
    if other and config.get("RUN_ID") and other != config["RUN_ID"]:
        return None, f"{folder} now holds another run (RUN_ID {other}, not {config['RUN_ID']}): no curves shown"
    return curves, f"the training curves of its run, {folder}"
