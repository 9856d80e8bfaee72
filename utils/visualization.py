"""Matplotlib panels of input / ground truth / prediction, saved as PNG and shown only where a window can open."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends import BackendFilter, backend_registry

from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD
from utils.files import atomic_path


def denormalize(image: torch.Tensor) -> np.ndarray:
    """A normalised [3, H, W] tensor back to an RGB array [H, W, 3] in [0, 1] for display."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def panel_figure(images, masks, predictions, title: str = "", row_labels=None):
    """One row per sample: input image, ground-truth mask, predicted mask (tensors [N, C, H, W])."""
    rows = len(images)
    figure, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for row in range(rows):
        columns = (
            (denormalize(images[row]), "input"),
            (masks[row][0].float().cpu().numpy(), "ground truth"),
            (predictions[row][0].float().cpu().numpy(), "prediction"),
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
