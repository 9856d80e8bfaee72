"""Decode and resize every image once: an on-disk cache of uint8 arrays, memory-mapped when read.

The cache folder name holds a hash of the file names, sizes and modification times and of the image size,
so editing, adding or removing a source file, or changing the size, makes a new cache instead of a stale hit.
Runs sharing a cache folder build it once, under a lock; one that cannot write there reads the image files instead.
A cache folder whose arrays are missing or cut short (a file deleted, a disk that filled up) is rebuilt; its folders
and files get the permissions of the umask, so users sharing DATA_DIR share the cache.
"""

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from common.errors import DatasetError
from common.files import (
    NO_SPACE_ERRNOS,
    NOT_WRITABLE_ERRNOS,
    file_identity,
    make_staging_folder,
    remove_stale_folders,
    stale_folders,
    waiting_lock,
)
from common.progress import format_size, progress_bar
from common.signals import sigterm_cleans_up
from dataset.images import load_pair

CACHE_VERSION = 2  # bump when load_pair's reading or resizing changes (2: 0/1 and colour masks, EXIF orientation)
LOCK_NAME = ".lock"  # in the cache folder: held while building
STAGING_PATTERN = ".*px-*"  # the hidden folders that builds write into before the rename


def cache_key(pairs: list[tuple[str, Path, Path]], size: int) -> str:
    """Hash of what the cached arrays depend on."""
    entries = [file_identity(sample_id, path) for sample_id, *paths in pairs for path in paths]
    payload = json.dumps({"version": CACHE_VERSION, "size": size, "files": entries})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def cache_folder(pairs, size: int, cache_dir) -> Path | None:
    """The folder holding the cached arrays of `pairs` at `size`, building it on a miss; None, after a one-line
    note, when `cache_dir` cannot be written (e.g. a read-only data folder): the caller then reads the files.

    Builds run under a lock in `cache_dir`, waiting for another run that holds it (which may build the same cache),
    and remove the staging folders of builds that were killed. A full disk raises a DatasetError with the space the
    cache needs, and leaves no half-built cache.
    """
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"{size}px-{cache_key(pairs, size)}"
    if is_complete(folder, len(pairs), size) and not stale_folders(cache_dir, STAGING_PATTERN):
        return folder
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with waiting_lock(cache_dir / LOCK_NAME, f"caching images in {cache_dir}"):
            remove_stale_folders(cache_dir, STAGING_PATTERN)
            if not is_complete(folder, len(pairs), size):
                if folder.exists():
                    print(f"note: the image cache {folder} is incomplete (a file missing or cut short); rebuilding it")
                    shutil.rmtree(folder)
                check_space(cache_dir, len(pairs), size)
                _build(pairs, size, folder)
    except OSError as error:
        if error.errno in NO_SPACE_ERRNOS:
            raise DatasetError(
                f"no space left on device while caching images in {cache_dir} ({error.strerror}): the cache needs"
                f" {format_size(_cache_bytes(len(pairs), size))} there; free space, or run with --no-cache."
            ) from None
        if error.errno not in NOT_WRITABLE_ERRNOS:
            raise
        _note_unwritable(cache_dir, error.strerror)
        return None
    return folder


def is_complete(folder: Path, count: int, size: int) -> bool:
    """Whether `folder` holds both arrays of a finished cache of `count` images at `size`, each file as long as its
    header says (a deleted or truncated file is not)."""
    shapes = {"images.npy": (count, size, size, 3), "masks.npy": (count, size, size)}
    try:
        return all(np.load(folder / name, mmap_mode="r").shape == shape for name, shape in shapes.items())
    except (OSError, ValueError, EOFError):
        return False


def check_space(cache_dir: Path, count: int, size: int) -> None:
    """Refuse, before decoding anything, a cache larger than the free space of `cache_dir`'s disk."""
    need, free = _cache_bytes(count, size), shutil.disk_usage(cache_dir).free
    if need > free:
        raise DatasetError(
            f"the image cache of {count} images at {size} px needs {format_size(need)} in {cache_dir}, where"
            f" {format_size(free)} are free; lower --image-size, free space, or run with --no-cache."
        )


@functools.cache
def _note_unwritable(cache_dir: Path, reason: str) -> None:
    """Say once per run (not for each dataset of it) that `cache_dir` cannot be written and the files are read."""
    print(f"note: cannot write the image cache in {cache_dir} ({reason}); reading the image files instead")


def open_cache(folder) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, size, size, 3] and {0,1} masks [N, size, size] as read-only memory maps: processes that
    open the same folder share one copy in the page cache instead of each holding its own."""
    return np.load(Path(folder) / "images.npy", mmap_mode="r"), np.load(Path(folder) / "masks.npy", mmap_mode="r")


def cached_arrays(pairs, size: int, cache_dir) -> tuple[np.ndarray, np.ndarray] | None:
    """The memory-mapped cached arrays of `pairs` at `size`, building them once; None where no cache can be written."""
    folder = cache_folder(pairs, size, cache_dir)
    return None if folder is None else open_cache(folder)


def _cache_bytes(count: int, size: int) -> int:
    """The disk space the cache of `count` images at `size` takes: RGB images and one-byte masks, plus headers."""
    return count * size * size * 4 + 2 * 128


def _build(pairs, size: int, folder: Path) -> None:
    """Decode and resize all pairs into a hidden staging folder, written with plain writes (a full disk raises an
    OSError, where writing through a memory map would crash with SIGBUS), flushed to disk and renamed into place.
    Ctrl-C, SIGTERM and errors remove the staging folder; kill -9 leaves it to the next build."""
    with sigterm_cleans_up():
        staging = make_staging_folder(folder.parent, f".{folder.name}.")
        try:
            with open(staging / "images.npy", "wb") as images, open(staging / "masks.npy", "wb") as masks:
                _write_npy_header(images, (len(pairs), size, size, 3))
                _write_npy_header(masks, (len(pairs), size, size))
                for _, image_path, mask_path in progress_bar(pairs, f"caching {size}px", unit="img"):
                    image, mask = load_pair(image_path, mask_path, size)
                    images.write(image.tobytes())  # C order, as the header says
                    masks.write(mask.tobytes())
                for file in (images, masks):
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _write_npy_header(file, shape: tuple[int, ...]) -> None:
    """Start a .npy file of uint8 values in C order with `shape`; the values follow as raw bytes."""
    np.lib.format.write_array_header_1_0(file, {"descr": "|u1", "fortran_order": False, "shape": shape})
