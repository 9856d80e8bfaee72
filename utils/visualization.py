"""Matplotlib panels of input / ground truth / prediction, saved as PNG and shown only where a window can open."""

import cv2
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends import BackendFilter, backend_registry

from common.files import atomic_path
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD


def denormalize(image: torch.Tensor) -> np.ndarray:
    """A normalised [3, H, W] tensor back to an RGB array [H, W, 3] in [0, 1] for display."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def panel_figure(images, masks, predictions, title: str = "", row_labels=None):
    """One row per sample: input image, ground-truth mask, predicted mask (tensors [N, C, H, W])."""
    return comparison_figure(
        [denormalize(image) for image in images],
        [mask[0].float().cpu().numpy() for mask in masks],
        [prediction[0].float().cpu().numpy() for prediction in predictions],
        title,
        row_labels,
    )


def comparison_figure(images, masks, predictions, title: str = "", row_labels=None):
    """One row per sample: input image, ground-truth mask, predicted mask, as arrays of any (per-row) size.

    Images are RGB [H, W, 3] (uint8, or float in [0, 1]); masks and predictions are [H, W] in {0, 1}.
    """
    rows = len(images)
    figure, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
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
    figure.tight_layout()
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


def save_figure(figure, path, show: bool = True) -> None:
    """Save `figure` as an image at `path`; also show it without blocking when a window can open."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=str(path).rsplit(".", 1)[-1], dpi=100)
    if show and can_show_windows():
        figure.show()
        plt.pause(0.001)
    else:
        plt.close(figure)
