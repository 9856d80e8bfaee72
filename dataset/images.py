"""Read images and masks with OpenCV as RGB uint8 and {0,1} uint8 arrays, with clear errors for bad files."""

import warnings
from pathlib import Path

import cv2
import numpy as np

from common.errors import DatasetError
from common.files import atomic_path

# OpenCV's own thread pool does not survive fork(): DataLoader workers that inherit a started pool hang.
# Parallelism comes from the workers instead.
cv2.setNumThreads(1)

GREY_FRACTION_WARNING = 0.01  # JPEG masks carry a little grey noise at edges; more than this is not binary


def _decode(path: Path, flags: int) -> np.ndarray:
    """Decode an image file, refusing empty or undecodable files with a message naming them."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise DatasetError(f"{path} is empty (0 bytes); replace or remove it and its pair.")
    image = cv2.imdecode(data, flags)
    if image is None:
        raise DatasetError(f"{path} cannot be read as an image; replace or remove it and its pair.")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    return image


def read_rgb(path) -> np.ndarray:
    """An image as uint8 RGB [H, W, 3], whatever its channels (grey, BGR or BGRA)."""
    image = _decode(Path(path), cv2.IMREAD_UNCHANGED)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path) -> np.ndarray:
    """A mask as grey uint8 [H, W] (0-255), warning when it is clearly not a binary mask."""
    mask = _decode(Path(path), cv2.IMREAD_GRAYSCALE)
    grey = np.count_nonzero((mask > 31) & (mask < 224)) / mask.size
    if grey > GREY_FRACTION_WARNING:
        warnings.warn(f"{path} is not a binary mask ({grey:.1%} grey pixels); binarising it at >127.", stacklevel=2)
    return mask


def write_png(path, image: np.ndarray) -> None:
    """Save a grey [H, W] or RGB [H, W, 3] uint8 array as a PNG, atomically (never a half-written file)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    encoded, data = cv2.imencode(".png", image)
    if not encoded:
        raise DatasetError(f"could not encode {path} as PNG.")
    with atomic_path(path) as temporary:
        data.tofile(temporary)


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """{0,1} uint8 mask from a 0-255 mask, foreground where the value exceeds 127."""
    return (mask > 127).astype(np.uint8)


def load_pair(image_path, mask_path, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its {0,1} mask, optionally resized to `size` x `size`.

    The image is resized with area interpolation; the mask is resized as grey levels, then binarised,
    which gives smoother edges than nearest-neighbour.
    """
    image, mask = read_rgb(image_path), read_mask(mask_path)
    if image.shape[:2] != mask.shape[:2]:
        raise DatasetError(
            f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is"
            f" {image.shape[1]}x{image.shape[0]}; a mask must have its image's size."
        )
    if size is not None:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)
    return image, binarize_mask(mask)
