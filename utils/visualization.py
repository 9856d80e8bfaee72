"""Pictures of a run: input / ground truth / prediction panels, training curves, and mask overlays.

Figures are plain matplotlib `Figure`s, outside pyplot's global state, so they can be drawn and saved on a
background thread while training goes on; only a figure meant for a window goes through pyplot.
"""

import cv2
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends import BackendFilter, backend_registry
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from common.files import atomic_path
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD


def denormalize(image: torch.Tensor) -> np.ndarray:
    """A normalised [3, H, W] tensor back to an RGB array [H, W, 3] in [0, 1] for display."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def new_figure(rows: int, columns: int, size: tuple[float, float], window: bool = False):
    """A figure and its [rows, columns] axes: through pyplot when it is to open in a window, else a plain Figure."""
    if window:
        return plt.subplots(rows, columns, figsize=size, squeeze=False, layout="constrained")
    figure = Figure(figsize=size, layout="constrained")  # constrained: titles never overlap the axes
    return figure, figure.subplots(rows, columns, squeeze=False)


def panel_figure(images, masks, predictions, title: str = "", window: bool = False):
    """One row per sample: input image, ground-truth mask, predicted mask (tensors [N, C, H, W])."""
    return comparison_figure(
        [denormalize(image) for image in images],
        [mask[0].float().cpu().numpy() for mask in masks],
        [prediction[0].float().cpu().numpy() for prediction in predictions],
        title,
        window=window,
    )


def comparison_figure(images, masks, predictions, title: str = "", row_labels=None, window: bool = False):
    """One row per sample: input image, ground-truth mask, predicted mask, as arrays of any (per-row) size.

    Images are RGB [H, W, 3] (uint8, or float in [0, 1]); masks and predictions are [H, W] in {0, 1}.
    `row_labels` name each row above its prediction.
    """
    rows = len(images)
    figure, axes = new_figure(rows, 3, (9, 3 * rows + 0.5), window)
    for row in range(rows):
        columns = (
            (images[row], "input"),
            (np.asarray(masks[row], dtype=np.float32), "ground truth"),
            (np.asarray(predictions[row], dtype=np.float32), "prediction"),
        )
        for axis, (picture, name) in zip(axes[row], columns, strict=True):
            axis.imshow(picture, cmap=None if picture.ndim == 3 else "gray", vmin=0, vmax=1)
            label = f"{name}: {row_labels[row]}" if row_labels and name == "prediction" else name
            axis.set_title(label, fontsize=9)
            axis.axis("off")
    if title:
        figure.suptitle(title)
    return figure


def curves_figure(history: list[dict]):
    """Training curves from history.csv's rows: train and validation loss with the learning rate on a second axis,
    and validation Dice and IoU; the best epoch (by validation Dice) is marked on both. One look tells whether
    training converged (flat validation curves), over-fit (validation loss rising while training loss falls)
    or diverged (losses jumping up)."""
    epochs = [row["epoch"] for row in history]
    best = max(history, key=lambda row: row["val_dice"])
    figure, axes = new_figure(1, 2, (11, 4))
    loss_axis, score_axis = axes[0]
    rate_axis = loss_axis.twinx()
    loss_axis.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], label="validation loss")
    rate_axis.plot(epochs, [row["learning_rate"] for row in history], ":", color="grey", label="learning rate (right)")
    score_axis.plot(epochs, [row["val_dice"] for row in history], label="validation Dice")
    score_axis.plot(epochs, [row["val_iou"] for row in history], label="validation IoU")
    for axis in (loss_axis, score_axis):
        axis.axvline(best["epoch"], color="black", linewidth=0.8, linestyle="--", label=f"best epoch ({best['epoch']})")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    loss_axis.set(xlabel="epoch", ylabel="loss", title="training and validation loss")
    rate_axis.set_ylabel("learning rate")
    rate_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    score_axis.set(
        xlabel="epoch",
        ylabel="per-image mean, at the training size",
        title=f"validation scores (best Dice {best['val_dice']:.3f}, epoch {best['epoch']})",
    )
    loss_axis.legend(handles=loss_axis.lines + rate_axis.lines, loc="upper right", fontsize=8)
    score_axis.legend(loc="lower right", fontsize=8)
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


def write_panels(images, masks, predictions, path, title: str) -> None:
    """Draw input / ground truth / prediction panels and save them at `path` (safe on a background thread)."""
    save_figure(panel_figure(images, masks, predictions, title), path)


def write_curves(history: list[dict], path) -> None:
    """Draw the training curves of `history` and save them at `path` (safe on a background thread)."""
    save_figure(curves_figure(history), path)


def show_figure(figure) -> None:
    """Open a pyplot figure in a window without blocking the caller."""
    figure.show()
    plt.pause(0.001)
