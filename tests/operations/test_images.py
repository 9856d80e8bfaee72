"""Reading images and masks: mask encodings of other datasets, EXIF orientation, bit depths and decompression bombs."""

import re
import struct
import zlib

import cv2
import numpy as np
import pytest

from common.errors import DatasetError
from dataset.image_headers import declared_size
from dataset.images import MAX_PIXELS, load_pair, read_mask, read_rgb
from dataset.synthetic import KVASIR_SIZES, make_kvasir_folder

POLYP = np.zeros((120, 160), np.uint8)
cv2.ellipse(POLYP, (60, 50), (30, 20), 0, 0, 360, 255, -1)  # a 0/255 mask, off-centre so that turns show


def bgr(blue, green, red) -> np.ndarray:
    """POLYP in one BGR colour on black."""
    return np.stack([POLYP // 255 * blue, POLYP // 255 * green, POLYP // 255 * red], axis=2).astype(np.uint8)


def encoded(extension: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(extension, image)
    assert ok
    return data.tobytes()


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """A JPEG with an EXIF APP1 segment holding only the Orientation tag (0x0112), written by hand."""
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + bytes(4)
    segment = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + jpeg[2:]


@pytest.mark.parametrize(
    ("mask", "extension"),
    [
        (POLYP, ".png"),  # 0/255
        (POLYP // 255, ".png"),  # 0/1, as many datasets store masks: read as empty before
        (np.stack([POLYP // 255] * 3, axis=2), ".png"),  # 0/1 in RGB
        (bgr(0, 0, 1), ".png"),  # 0/1 in the red channel only
        (bgr(0, 0, 255), ".png"),  # pure red: read as dark grey, then erased, before
        (bgr(0, 0, 255), ".jpg"),  # and with JPEG's colour noise
        (bgr(0, 255, 0), ".jpg"),
        (bgr(255, 0, 0), ".png"),
        (bgr(0, 255, 255), ".jpg"),  # yellow
        (bgr(255, 255, 255), ".jpg"),  # white on black in RGB, as Kvasir-SEG's masks are
    ],
    ids=["0-255", "0-1", "0-1-rgb", "0-1-red", "red", "red-jpeg", "green-jpeg", "blue", "yellow-jpeg", "white-jpeg"],
)
def test_masks_of_any_common_encoding_give_the_polyp(tmp_path, mask, extension):
    (tmp_path / f"m{extension}").write_bytes(encoded(extension, mask))
    assert np.array_equal(read_mask(tmp_path / f"m{extension}") > 127, POLYP > 0)


def test_an_all_black_mask_is_an_empty_mask(tmp_path):
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((12, 10), np.uint8))
    assert read_mask(tmp_path / "m.png").max() == 0


def test_kvasir_like_jpeg_masks_read_exactly_as_before(tmp_path):
    """Kvasir-SEG's masks are RGB JPEGs of white on black: they must read as OpenCV's grey decoding read them."""
    root = make_kvasir_folder(tmp_path, count=3, sizes=KVASIR_SIZES)
    for path in sorted((root / "masks").glob("*.jpg")):
        assert np.array_equal(read_mask(path), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1)), "is not a binary mask (75% of its pixels are mid"),
        (POLYP // 255 * np.where(np.arange(160) < 60, 1, 2).astype(np.uint8), "has several dark levels (up to 2)"),
        (
            np.where((POLYP > 0)[:, :, None] & (np.arange(160) < 60)[:, None], bgr(0, 0, 255), bgr(0, 255, 0)),
            "has several colours",
        ),
    ],
    ids=["grey-levels", "class-labels", "red-and-green"],
)
def test_masks_without_one_reading_are_refused(tmp_path, mask, message):
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    with pytest.raises(DatasetError, match=re.escape(f"m.png {message}")):
        read_mask(tmp_path / "m.png")


@pytest.mark.parametrize("orientation", [3, 6, 8])  # turned 180°, 90° clockwise, 90° anticlockwise
def test_exif_orientation_turns_the_image_and_its_mask_alike(tmp_path, orientation):
    image = cv2.cvtColor(POLYP, cv2.COLOR_GRAY2BGR)
    (tmp_path / "image.jpg").write_bytes(with_exif_orientation(encoded(".jpg", image), orientation))
    (tmp_path / "mask.jpg").write_bytes(with_exif_orientation(encoded(".jpg", POLYP), orientation))
    turned, mask = load_pair(tmp_path / "image.jpg", tmp_path / "mask.jpg")
    assert turned.shape[:2] == mask.shape == (POLYP.shape if orientation == 3 else POLYP.shape[::-1])
    assert np.array_equal(turned[:, :, 0] > 127, mask > 0)
    assert not np.array_equal(mask, POLYP > 0)  # as a viewer shows them, not as stored


def test_sixteen_bit_and_unit_float_images_are_scaled(tmp_path):
    levels = np.array([[0, 0.5, 1.0]], np.float32)
    cv2.imwrite(str(tmp_path / "sixteen.png"), (levels * 65535).astype(np.uint16))
    cv2.imwrite(str(tmp_path / "float.tiff"), levels)
    assert read_rgb(tmp_path / "sixteen.png")[0, :, 0].tolist() == [0, 127, 255]
    assert read_rgb(tmp_path / "float.tiff")[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.array([[0, 100, 255]], np.float32), "has floating-point pixels from 0 to 255, outside"),
        (np.array([[-1, 0, 1]], np.float32), "has floating-point pixels from -1 to 1, outside"),
        (np.array([[0, 7, 9]], np.int32), "has int32 pixels"),
    ],
)
def test_images_of_unknown_brightness_scale_are_refused(tmp_path, pixels, message):
    cv2.imwrite(str(tmp_path / "x.tiff"), pixels)
    with pytest.raises(DatasetError, match=f"x.tiff {message}"):
        read_rgb(tmp_path / "x.tiff")


@pytest.mark.parametrize("extension", [".png", ".jpg", ".bmp", ".tiff"])
def test_header_sizes_are_read_without_decoding(extension):
    assert declared_size(encoded(extension, np.zeros((10, 12, 3), np.uint8))) == (12, 10)


def claiming(extension: str, width: int, height: int) -> bytes:
    """A small, otherwise valid file whose header claims `width` x `height` pixels."""
    data = bytearray(encoded(extension, np.zeros((8, 8, 3), np.uint8)))
    if extension == ".png":
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # a correct checksum: only the size lies
    elif extension == ".jpg":
        frame = data.index(b"\xff\xc0")
        data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    elif extension == ".bmp":
        data[18:26] = struct.pack("<ii", width, height)
    else:  # a TIFF directory with just the two size tags
        entries = struct.pack("<HHII", 256, 4, 1, width) + struct.pack("<HHII", 257, 4, 1, height)
        return b"II*\x00" + struct.pack("<IH", 8, 2) + entries + bytes(4)
    return bytes(data)


@pytest.mark.parametrize(
    ("extension", "width", "height"),
    [(".jpg", 10_000, 10_000), (".png", 40_000, 30_000), (".bmp", 20_000, 20_000), (".tiff", 65_000, 65_000)],
)
def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch, extension, width, height):
    (tmp_path / f"bomb{extension}").write_bytes(claiming(extension, width, height))
    monkeypatch.setattr(cv2, "imdecode", lambda *args: pytest.fail("a bomb was decoded"))
    with pytest.raises(DatasetError) as error:
        read_rgb(tmp_path / f"bomb{extension}")
    assert f"bomb{extension} declares {width}x{height} pixels, more than the {MAX_PIXELS // 10**6} megapixels" in str(
        error.value
    )
