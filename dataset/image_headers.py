"""Image dimensions read from file headers without decoding, so that an image too large to decode safely (a
decompression bomb: a small file that claims a gigapixel) is refused before any memory is spent on it."""

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers, which carry the dimensions: C0-CF except DHT (C4), JPG (C8) and DAC (CC)
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})  # markers without a length: TEM, RSTn, SOI
TIFF_WIDTH, TIFF_LENGTH = 256, 257  # the first IFD's ImageWidth and ImageLength tags
TIFF_VALUE_FORMATS = {3: "H", 4: "I"}  # SHORT and LONG, the types those tags may have


def declared_size(data: bytes) -> tuple[int, int] | None:
    """The (width, height) a PNG, JPEG, BMP or TIFF header declares; None for another format or a header too
    damaged to read, which the decoder then judges (OpenCV refuses above a gigapixel on its own)."""
    for reader in (_png_size, _jpeg_size, _bmp_size, _tiff_size):
        try:
            size = reader(data)
        except (struct.error, IndexError):
            return None
        if size is not None:
            return size
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the IHDR chunk, which the PNG standard puts first."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack_from(">II", data, 16)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first start-of-frame segment, walking the segments before it by their lengths."""
    if not data.startswith(b"\xff\xd8"):
        return None
    position = 2
    while True:
        if data[position] != 0xFF:
            return None
        while data[position] == 0xFF:  # fill bytes may pad before a marker
            position += 1
        marker = data[position]
        position += 1
        if marker in JPEG_STANDALONE_MARKERS:
            continue
        if marker in JPEG_FRAME_MARKERS:
            height, width = struct.unpack_from(">HH", data, position + 3)  # after the length and the precision
            return width, height
        if marker in (0xD9, 0xDA):  # the end of the image, or the scan data, before any frame header
            return None
        (length,) = struct.unpack_from(">H", data, position)
        position += length


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the DIB header: 16-bit in the old OS/2 core header, else signed 32-bit (a negative
    height means rows stored top-down)."""
    if not data.startswith(b"BM"):
        return None
    (header_size,) = struct.unpack_from("<I", data, 14)
    width, height = struct.unpack_from("<HH" if header_size == 12 else "<ii", data, 18)
    return abs(width), abs(height)


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of the first image file directory (IFD), in the file's byte order."""
    byte_order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(data[:4])
    if byte_order is None:
        return None
    (directory,) = struct.unpack_from(byte_order + "I", data, 4)
    (count,) = struct.unpack_from(byte_order + "H", data, directory)
    values = {}
    for entry in range(directory + 2, directory + 2 + 12 * count, 12):
        tag, value_type = struct.unpack_from(byte_order + "HH", data, entry)
        if tag in (TIFF_WIDTH, TIFF_LENGTH) and value_type in TIFF_VALUE_FORMATS:
            (values[tag],) = struct.unpack_from(byte_order + TIFF_VALUE_FORMATS[value_type], data, entry + 8)
    if TIFF_WIDTH not in values or TIFF_LENGTH not in values:
        return None
    return values[TIFF_WIDTH], values[TIFF_LENGTH]
