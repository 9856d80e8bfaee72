"""Albumentations pipelines. Images arrive already resized (see dataset/cache.py), so these only augment
and normalise; geometric transforms move image and mask together."""

import albumentations as A
import cv2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUGMENTATIONS = ("none", "flips", "strong", "heavy")


def build_transform(augmentation: str = "none") -> A.Compose:
    """`none`: normalise only (evaluation). `flips`: random horizontal and vertical flips (the seed recipe).
    `strong`: flips, 90-degree rotations, random affine (rotate +-45 deg, scale 0.75-1.25, shift 10%)
    and brightness/contrast jitter. `heavy`: `strong` without its flips (90-degree rotations, affine and
    brightness/contrast only), plus hue/saturation jitter, Gaussian blur and coarse dropout (rectangles blanked
    in the image only, so the model must infer the hidden polyp); measured in this form (README "Results")."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}; choose one of {AUGMENTATIONS}")
    steps = []
    if augmentation in ("flips", "strong"):
        steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if augmentation in ("strong", "heavy"):
        steps += [
            A.RandomRotate90(p=0.5),
            A.Affine(
                rotate=(-45, 45),
                scale=(0.75, 1.25),
                translate_percent=(-0.1, 0.1),
                border_mode=cv2.BORDER_CONSTANT,
                p=0.7,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        ]
    if augmentation == "heavy":
        steps += [
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.3),
            A.GaussianBlur(sigma_limit=(0.1, 1.5), p=0.2),
            A.CoarseDropout(
                num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), p=0.3
            ),
        ]
    steps.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    return A.Compose(steps)
