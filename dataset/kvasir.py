"""Find or fetch Kvasir-SEG on disk: use an extracted copy, else extract the zip, else download it."""

import os
import shutil
import tempfile
from pathlib import Path

from common.errors import DatasetError, UserError
from dataset.archive import require_zip, safe_extract_zip
from dataset.download import DownloadError, download_file

KVASIR_SEG_URL = "https://datasets.simula.no/downloads/kvasir-seg.zip"
FOLDER_NAME = "Kvasir-SEG"
ZIP_NAME = "kvasir-seg.zip"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def prepare_kvasir_seg(data_dir, url: str = KVASIR_SEG_URL) -> list[tuple[str, Path, Path]]:
    """Return the (id, image path, mask path) pairs of Kvasir-SEG under `data_dir`, fetching it if needed.

    Order of preference: `data_dir/Kvasir-SEG/{images,masks}`; else extract `data_dir/kvasir-seg.zip`;
    else download the zip from `url` first.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    root = data_dir / FOLDER_NAME
    if not (root / "images").is_dir() or not (root / "masks").is_dir():
        zip_path = data_dir / ZIP_NAME
        if not zip_path.exists():
            print(f"downloading Kvasir-SEG from {url} to {zip_path}")
            try:
                download_file(url, zip_path, validate=lambda part: require_zip(part, f"what {url} sent"))
            except UserError as error:
                raise DownloadError(
                    f"{error} Download it by hand from {KVASIR_SEG_URL} and save it as {zip_path}, then run again."
                ) from None
        extract_kvasir_zip(zip_path, root)
    pairs = pair_images_and_masks(root / "images", root / "masks")
    print(f"Kvasir-SEG: {len(pairs)} images with masks in {root}")
    return pairs


def extract_kvasir_zip(zip_path: Path, root: Path) -> None:
    """Extract the zip into a temporary folder and move its Kvasir-SEG folder to `root` in one rename.

    An interrupted extraction leaves only a hidden temporary folder, never a half-filled `root`.
    """
    print(f"extracting {zip_path}")
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.extracting-"))
    try:
        safe_extract_zip(zip_path, staging)
        extracted = _find_dataset_folder(staging, zip_path)
        pair_images_and_masks(extracted / "images", extracted / "masks")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(extracted, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _find_dataset_folder(staging: Path, zip_path: Path) -> Path:
    """The folder inside the extracted archive that holds both `images/` and `masks/`."""
    candidates = [staging / FOLDER_NAME, staging, *sorted(p for p in staging.iterdir() if p.is_dir())]
    for folder in candidates:
        if (folder / "images").is_dir() and (folder / "masks").is_dir():
            return folder
    raise DatasetError(
        f"{zip_path} does not have the Kvasir-SEG layout ({FOLDER_NAME}/images and {FOLDER_NAME}/masks);"
        " is it the right file?"
    )


def list_images(folder) -> dict[str, Path]:
    """Map file stem -> path for the image files (by suffix) directly inside `folder`."""
    return {p.stem: p for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def pair_images_and_masks(images_dir, masks_dir) -> list[tuple[str, Path, Path]]:
    """Match images and masks by file stem; every image needs a mask and every mask an image."""
    images, masks = list_images(images_dir), list_images(masks_dir)
    without_mask = sorted(set(images) - set(masks))
    without_image = sorted(set(masks) - set(images))
    problems = []
    if without_mask:
        problems.append(f"{len(without_mask)} image(s) in {images_dir} without a mask: {_some(without_mask)}")
    if without_image:
        problems.append(f"{len(without_image)} mask(s) in {masks_dir} without an image: {_some(without_image)}")
    if problems:
        raise DatasetError("; ".join(problems) + ". Every image needs a mask with the same file name stem.")
    if not images:
        raise DatasetError(f"no images found in {images_dir} (looked for {', '.join(IMAGE_SUFFIXES)}).")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def _some(names: list[str], shown: int = 5) -> str:
    """The first few names, with a count of the rest."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
