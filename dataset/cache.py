"""Decode and resize every image once: an on-disk cache of uint8 arrays, memory-mapped when read.

The cache folder name holds a hash of the file names, sizes and modification times and of the image size,
so editing, adding or removing a source file, or changing the size, makes a new cache instead of a stale hit.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dataset.images import load_pair

CACHE_VERSION = 2  # bump when load_pair's reading or resizing changes (2: 0/1 and colour masks, EXIF orientation)


def cache_key(pairs: list[tuple[str, Path, Path]], size: int) -> str:
    """Hash of what the cached arrays depend on."""
    entries = []
    for sample_id, image_path, mask_path in pairs:
        for path in (image_path, mask_path):
            info = Path(path).stat()
            entries.append([sample_id, str(Path(path).resolve()), info.st_size, info.st_mtime_ns])
    payload = json.dumps({"version": CACHE_VERSION, "size": size, "files": entries})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def cache_folder(pairs, size: int, cache_dir) -> Path:
    """The folder holding the cached arrays of `pairs` at `size`, building it on a miss."""
    folder = Path(cache_dir) / f"{size}px-{cache_key(pairs, size)}"
    if not (folder / "masks.npy").exists():
        _build(pairs, size, folder)
    return folder


def open_cache(folder) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, size, size, 3] and {0,1} masks [N, size, size] as read-only memory maps: processes that
    open the same folder share one copy in the page cache instead of each holding its own."""
    return np.load(Path(folder) / "images.npy", mmap_mode="r"), np.load(Path(folder) / "masks.npy", mmap_mode="r")


def cached_arrays(pairs, size: int, cache_dir) -> tuple[np.ndarray, np.ndarray]:
    """The memory-mapped cached arrays of `pairs` at `size`, building them once."""
    return open_cache(cache_folder(pairs, size, cache_dir))


def _build(pairs, size: int, folder: Path) -> None:
    """Decode and resize all pairs, writing the arrays into a temporary folder renamed into place at the end."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        images = np.lib.format.open_memmap(staging / "images.npy", "w+", np.uint8, (len(pairs), size, size, 3))
        masks = np.lib.format.open_memmap(staging / "masks.npy", "w+", np.uint8, (len(pairs), size, size))
        for index, (_, image_path, mask_path) in enumerate(tqdm(pairs, desc=f"caching {size}px", unit="img")):
            images[index], masks[index] = load_pair(image_path, mask_path, size)
        images.flush()
        masks.flush()
        del images, masks
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / "masks.npy").exists():  # another process did not win the race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
