"""Albumentations pipelines. Images arrive already resized (see dataset/cache.py), so these only augment
and normalise; geometric transforms move image and mask together."""

import albumentations as A
import cv2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def flips() -> list:
    """Random horizontal and vertical flips: the seed recipe."""
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]


def strong() -> list:
    """Flips, 90-degree rotations, a random affine transform (rotate +-45 deg, scale 0.75-1.25, shift 10%) and
    brightness/contrast jitter."""
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(
            rotate=(-45, 45), scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_CONSTANT, p=0.7
        ),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ]


def heavy() -> list:
    """`strong` without its flips, plus hue/saturation jitter, Gaussian blur and coarse dropout (rectangles blanked in
    the image only, so the model must infer the hidden polyp); measured in this form (README "Results")."""
    return [
        A.RandomRotate90(p=0.5),
        A.Affine(
            rotate=(-45, 45), scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_CONSTANT, p=0.7
        ),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.3),
        A.GaussianBlur(sigma_limit=(0.1, 1.5), p=0.2),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), p=0.3),
    ]


def wide() -> list:
    """The ranges a from-scratch U-Net reached 0.866 Dice with on Kvasir-SEG (DUCK-Net, Sci. Reports 2023): flips,
    then an affine transform with rotation +-180 deg, scale 0.5-1.5, shift 12.5% and shear +-22.5 deg on every
    image, and colour jitter (brightness 0.6-1.6, contrast and saturation +-20%/10%, hue +-0.01)."""
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Affine(
            rotate=(-180, 180),
            scale=(0.5, 1.5),
            translate_percent=(-0.125, 0.125),
            shear=(-22.5, 22.5),
            border_mode=cv2.BORDER_CONSTANT,
            p=1.0,
        ),
        A.ColorJitter(brightness=(0.6, 1.6), contrast=(0.8, 1.2), saturation=(0.9, 1.1), hue=(-0.01, 0.01), p=1.0),
    ]


# Each AUGMENTATION mode: the random changes applied to a training image, in this order, before normalising.
# A function per mode, so that every pipeline gets transforms of its own (each holds its own random state).
AUGMENTATIONS = {"none": list, "flips": flips, "strong": strong, "heavy": heavy, "wide": wide}


def build_transform(augmentation: str = "none") -> A.Compose:
    """The pipeline of an AUGMENTATION mode (see AUGMENTATIONS; `none`: normalise only, for evaluation)."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}; choose one of {', '.join(AUGMENTATIONS)}")
    return A.Compose([*AUGMENTATIONS[augmentation](), A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])
