"""Read images and masks with OpenCV as RGB uint8 and {0,1} uint8 arrays, with clear errors for bad files.

Images and masks are both read honouring their EXIF orientation tag, as image viewers show them, so that a tagged
image and its mask stay aligned.
"""

from pathlib import Path

import cv2
import numpy as np

from common.errors import DatasetError
from common.files import atomic_path
from dataset.image_headers import declared_size

# OpenCV's own thread pool does not survive fork(): DataLoader workers that inherit a started pool hang.
# Parallelism comes from the workers instead.
cv2.setNumThreads(1)

# grey or BGR (an alpha channel dropped) at the file's own bit depth, turned as its EXIF tag says (IMREAD_UNCHANGED
# would ignore the tag)
READ_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH
MAX_PIXELS = 50_000_000  # per image; Kvasir-SEG's largest has about 2 million: more is a bomb or a wrong file
FOREGROUND_ABOVE = 127  # a 0-255 mask's foreground level; binarize_mask's threshold
MID_GREY = (32, 223)  # levels that are neither near-black nor near-white (JPEG noise stays outside this range)
GREY_FRACTION_LIMIT = 0.05  # a 0/255 mask's smoothed edges stay far below this share of mid-grey pixels
COLOUR_DISTANCE = 64  # a pixel this far from every shade of a mask's colour is of another colour


def _read_file(path: Path) -> bytes:
    """The bytes of an image file, refusing an empty file and one whose header declares more than MAX_PIXELS."""
    data = path.read_bytes()
    if not data:
        raise DatasetError(f"{path} is empty (0 bytes); replace or remove it and its pair.")
    width, height = declared_size(data) or (0, 0)
    if width * height > MAX_PIXELS:
        raise DatasetError(
            f"{path} declares {width}x{height} pixels, more than the {MAX_PIXELS // 10**6} megapixels allowed for one"
            " image (MAX_PIXELS); refused before decoding it, as a decompression bomb or a wrong file. Replace or"
            " remove it and its pair."
        )
    return data


def _decode(data: bytes, path: Path, flags: int = READ_FLAGS) -> np.ndarray:
    """Decode image bytes to uint8, refusing undecodable files with a message naming them."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise DatasetError(f"{path} cannot be read as an image; replace or remove it and its pair.")
    return _to_uint8(image, path)


def _to_uint8(image: np.ndarray, path: Path) -> np.ndarray:
    """8-bit pixels: 16-bit ones scaled by 1/257, floating-point ones in [0, 1] scaled by 255. Other floating-point
    ranges and integer types are refused: there is no one way to map them to brightness."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image // 257).astype(np.uint8)
    if not np.issubdtype(image.dtype, np.floating):
        raise DatasetError(f"{path} has {image.dtype} pixels; save it as an 8- or 16-bit image.")
    low, high = float(image.min()), float(image.max())
    if not 0 <= low <= high <= 1:
        raise DatasetError(
            f"{path} has floating-point pixels from {low:g} to {high:g}, outside [0, 1], so their brightness is"
            " unknown; save it as an 8- or 16-bit image, or scale it to [0, 1]."
        )
    return np.rint(image * 255).astype(np.uint8)


def read_rgb(path) -> np.ndarray:
    """An image as uint8 RGB [H, W, 3], whatever its channels (grey, BGR or BGRA) and depth (see _to_uint8)."""
    path = Path(path)
    image = _decode(_read_file(path), path)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGR2RGB)


def read_mask(path) -> np.ndarray:
    """A mask as grey uint8 [H, W] whose foreground is above 127 (binarize_mask's threshold).

    0/255 masks (grey, or RGB as Kvasir-SEG's JPEGs are) are read as OpenCV reads them in grey; JPEG noise near
    0 and 255 is harmless. A two-level mask with a dark foreground level (0/1, as many datasets store masks) is
    scaled to 0/255, and a mask of one colour on black (any hue, e.g. pure red) is read as its brightness along
    that colour. An all-black mask is an empty mask. A mask with many mid-grey pixels or several colours has no one
    reading and is refused, naming the file.
    """
    path = Path(path)
    data = _read_file(path)
    mask = _decode(data, path)
    if mask.ndim == 3:
        mask = _colour_levels(mask, data, path)
    return _foreground_levels(mask, path)


def _colour_levels(mask: np.ndarray, data: bytes, path: Path) -> np.ndarray:
    """Grey levels of a BGR mask. A dark one (such as 0/1 in any channel) by its brightest channel, for the grey
    rules to judge; a grey one as OpenCV decodes the file in grey, which keeps earlier versions' result exactly;
    one of a single colour by its brightness along that colour. (Per-channel OpenCV operations: numpy's reductions
    over a 3-long axis are slow.)"""
    channels = cv2.split(mask)
    brightest = cv2.max(cv2.max(channels[0], channels[1]), channels[2])
    if brightest.max() <= FOREGROUND_ABOVE:
        return brightest
    if (brightest - cv2.min(cv2.min(channels[0], channels[1]), channels[2])).max() <= COLOUR_DISTANCE:
        grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        return grey if grey is not None else cv2.cvtColor(mask, cv2.COLOR_BGR2GRAY)  # floating point decodes in colour
    return _shades_of_one_colour([channel.astype(np.float32) for channel in channels], brightest, path)


def _shades_of_one_colour(channels: list[np.ndarray], brightest: np.ndarray, path: Path) -> np.ndarray:
    """0-255 levels of how far along black -> colour each pixel is, the colour being the mean of the bright pixels;
    refuses a mask with more than GREY_FRACTION_LIMIT of its pixels off that line (several colours)."""
    lit = brightest > FOREGROUND_ABOVE
    colour = [float(channel[lit].mean()) for channel in channels]
    shade = np.clip(sum(c * v for c, v in zip(channels, colour, strict=True)) / sum(v * v for v in colour), 0, 1)
    off_line = sum((c - shade * v) ** 2 for c, v in zip(channels, colour, strict=True)) > COLOUR_DISTANCE**2
    if np.count_nonzero(off_line) > GREY_FRACTION_LIMIT * off_line.size:
        raise DatasetError(
            f"{path} has several colours ({np.count_nonzero(off_line) / off_line.size:.0%} of its pixels are not a"
            " shade of its main colour), so it cannot be read as one polyp mask; save it with one colour (e.g."
            " white) on black."
        )
    return np.rint(shade * 255).astype(np.uint8)


def _foreground_levels(mask: np.ndarray, path: Path) -> np.ndarray:
    """A grey mask with its foreground above 127: a 0/255 mask as it is, a two-level mask 0/h with a dark h (such
    as 0/1) scaled to 0/255, all black as empty; refuses masks with other dark levels or many mid-grey pixels."""
    high = int(mask.max())
    if high <= FOREGROUND_ABOVE:
        if np.count_nonzero((mask > 0) & (mask != high)):
            raise DatasetError(
                f"{path} has several dark levels (up to {high}) and nothing brighter, so it is neither a 0/255 nor a"
                " 0/1 mask; save it with 0 for background and 255 (or 1) for polyp."
            )
        return np.where(mask > 0, 255, 0).astype(np.uint8)
    grey = np.count_nonzero((mask >= MID_GREY[0]) & (mask <= MID_GREY[1])) / mask.size
    if grey > GREY_FRACTION_LIMIT:
        raise DatasetError(
            f"{path} is not a binary mask ({grey:.0%} of its pixels are mid-grey, neither near 0 nor near 255), so"
            " it has no one reading; save it with 0 for background and 255 (or 1) for polyp."
        )
    return mask


def write_png(path, image: np.ndarray) -> None:
    """Save a grey [H, W] or RGB [H, W, 3] uint8 array as a PNG, atomically (never a half-written file)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    encoded, data = cv2.imencode(".png", image)
    if not encoded:
        raise DatasetError(f"could not encode {path} as PNG.")
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.tobytes())  # a plain write reports a full disk (ndarray.tofile's error has no errno)


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """{0,1} uint8 mask from a 0-255 mask, foreground where the value exceeds 127."""
    return (mask > FOREGROUND_ABOVE).astype(np.uint8)


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
