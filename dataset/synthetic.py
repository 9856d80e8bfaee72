"""Synthetic stand-ins for Kvasir-SEG: coloured ellipses ("polyps") on textured backgrounds, saved as JPEG
images and JPEG masks in the Kvasir-SEG folder layout, optionally zipped like the published archive.
Used by the tests (tiny images) and by scripts/benchmark.py (Kvasir-sized images) when the real data is absent."""

import zipfile
from pathlib import Path

import cv2
import numpy as np

TINY_SIZES = ((48, 40), (56, 44), (40, 40))  # (width, height): several sizes, like the real data
KVASIR_SIZES = ((622, 529), (576, 512), (720, 576))  # typical sizes of the real images, for timing


def make_sample(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """One BGR image with a smooth textured background and a lighter ellipse, and its 0/255 mask."""
    noise = rng.random((height // 4 + 1, width // 4 + 1, 3)).astype(np.float32)
    background = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    image = (60 + 80 * background).clip(0, 255).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    center = (int(rng.integers(width // 4, 3 * width // 4)), int(rng.integers(height // 4, 3 * height // 4)))
    axes = (int(rng.integers(width // 8, width // 4)), int(rng.integers(height // 8, height // 4)))
    cv2.ellipse(mask, center, axes, float(rng.integers(0, 180)), 0, 360, 255, -1)
    colour = np.array([120, 150, 230], np.uint8)  # a pinkish polyp in BGR
    image[mask > 0] = (0.3 * image[mask > 0] + 0.7 * colour).astype(np.uint8)
    return image, mask


def make_kvasir_folder(data_dir, count: int = 16, seed: int = 0, sizes=TINY_SIZES) -> Path:
    """Write `count` pairs to data_dir/Kvasir-SEG/{images,masks}/sample_NNN.jpg, cycling through the
    (width, height) `sizes`; return the Kvasir-SEG folder."""
    root = Path(data_dir) / "Kvasir-SEG"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        image, mask = make_sample(rng, width, height)
        cv2.imwrite(str(root / "images" / f"sample_{index:03d}.jpg"), image)
        cv2.imwrite(str(root / "masks" / f"sample_{index:03d}.jpg"), cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR))
    return root


def zip_folder(folder, zip_path) -> Path:
    """Zip `folder` so that its own name is the top-level entry (as in kvasir-seg.zip)."""
    folder, zip_path = Path(folder), Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder.parent).as_posix())
    return zip_path
