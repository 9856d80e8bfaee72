"""Find or fetch Kvasir-SEG on disk: use an extracted copy, else extract the zip, else download it."""

import os
import shutil
from pathlib import Path

from common.errors import DatasetError, UserError, first_few
from common.files import (
    NO_SPACE_ERRNOS,
    NOT_WRITABLE_ERRNOS,
    make_staging_folder,
    remove_stale_folders,
    stale_folders,
    waiting_lock,
)
from common.progress import format_size
from common.signals import sigterm_cleans_up
from dataset.archive import is_cut_short_zip, require_zip, safe_extract_zip, unpacked_size
from dataset.download import DownloadError, IncompleteDownload, download_file

KVASIR_SEG_URL = "https://datasets.simula.no/downloads/kvasir-seg.zip"
FOLDER_NAME = "Kvasir-SEG"
ZIP_NAME = "kvasir-seg.zip"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
LOCK_NAME = ".kvasir.lock"  # in the data folder: held while downloading and extracting
STAGING_PREFIX = f".{FOLDER_NAME}.extracting-"  # hidden folders that extractions unpack into before the rename
IGNORED_FOLDERS = ("__MACOSX",)  # metadata that macOS's "Compress" adds beside the real folders


def prepare_kvasir_seg(data_dir, url: str = KVASIR_SEG_URL) -> list[tuple[str, Path, Path]]:
    """Return the (id, image path, mask path) pairs of Kvasir-SEG under `data_dir`, fetching it if needed.

    Order of preference: `data_dir/Kvasir-SEG/{images,masks}`; else extract `data_dir/kvasir-seg.zip`;
    else download the zip from `url` first. Fetching runs under a lock in `data_dir`, so that runs sharing the
    folder wait for each other instead of one deleting what another reads; it also removes what killed runs left.
    An extracted copy is only read, so a read-only data folder that holds one works.
    """
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise DatasetError(f"the data folder {data_dir} is a file; give a folder (DATA_DIR) to hold Kvasir-SEG.")
    root = data_dir / FOLDER_NAME
    if not _has_layout(root) or stale_folders(data_dir, f"{STAGING_PREFIX}*"):
        _fetch_under_lock(data_dir, root, url)
    pairs = pair_images_and_masks(root / "images", root / "masks")
    print(f"Kvasir-SEG: {len(pairs)} images with masks in {root}")
    return pairs


def _has_layout(folder: Path) -> bool:
    """True when `folder` holds the `images` and `masks` folders."""
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def _fetch_under_lock(data_dir: Path, root: Path, url: str) -> None:
    """Holding the data folder's lock (waiting for another run that has it): remove the staging folders of killed
    extractions, then download and extract unless the run we waited for did. Refuses an unwritable folder."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with waiting_lock(data_dir / LOCK_NAME, f"extracting {FOLDER_NAME} into {data_dir}"):
            remove_stale_folders(data_dir, f"{STAGING_PREFIX}*")
            if _has_layout(root):
                return
            zip_path = data_dir / ZIP_NAME
            if not zip_path.exists():
                _download(url, zip_path)
            extract_kvasir_zip(zip_path, root)
    except OSError as error:
        if error.errno in NO_SPACE_ERRNOS:
            raise DatasetError(
                f"no space left on device in {data_dir} while fetching {FOLDER_NAME} ({error.strerror}); free space"
                " and run again."
            ) from None
        if error.errno not in NOT_WRITABLE_ERRNOS:
            raise
        raise DatasetError(
            f"cannot write into {data_dir} to fetch {FOLDER_NAME} ({error.strerror}); make it writable, or point"
            f" DATA_DIR at a writable folder or at one that already holds {FOLDER_NAME}/."
        ) from None


def _download(url: str, zip_path: Path) -> None:
    """Download the zip, saying where to put a copy fetched by hand if that fails."""
    print(f"downloading Kvasir-SEG from {url} to {zip_path}")
    try:
        download_file(url, zip_path, validate=lambda part: _require_whole_zip(part, url))
    except UserError as error:
        raise DownloadError(
            f"{error} Download it by hand from {KVASIR_SEG_URL} and save it as {zip_path}, then run again."
        ) from None


def _require_whole_zip(part: Path, url: str) -> None:
    """Accept what `url` sent only if it is a zip; one that begins like a zip but is cut short (a server that closed
    the connection early without announcing a length) is a broken transfer, which download_file retries."""
    if is_cut_short_zip(part):
        raise IncompleteDownload("the connection broke off before the whole file arrived (the zip is cut short)")
    require_zip(part, f"what {url} sent")


def extract_kvasir_zip(zip_path: Path, root: Path) -> None:
    """Extract the zip into a temporary folder and move its Kvasir-SEG folder to `root` in one rename.

    An interrupted extraction (Ctrl-C, SIGTERM, a full disk) leaves nothing behind; one killed outright
    (kill -9, power loss) leaves a hidden temporary folder, which the next run removes. Never a half-filled `root`.
    """
    print(f"extracting {zip_path}")
    with sigterm_cleans_up():
        staging = make_staging_folder(root.parent, STAGING_PREFIX)
        try:
            safe_extract_zip(zip_path, staging)
            extracted = _find_dataset_folder(staging, zip_path)
            _check_extracted_pairs(extracted, staging, zip_path)
            _remove(root)
            os.replace(extracted, root)
        except OSError as error:
            if error.errno not in NO_SPACE_ERRNOS:
                raise
            raise DatasetError(
                f"no space left on device while extracting {zip_path} into {root.parent} ({error.strerror}):"
                f" {FOLDER_NAME} needs {format_size(unpacked_size(zip_path))} there; free space and run again."
            ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _remove(path: Path) -> None:
    """Delete a file or a folder tree at `path`, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _check_extracted_pairs(extracted: Path, staging: Path, zip_path: Path) -> None:
    """Pair the extracted images and masks, naming any problem by its path inside the zip, not the temporary one."""
    try:
        pair_images_and_masks(extracted / "images", extracted / "masks")
    except DatasetError as error:
        inside = str(error).replace(f"{staging}{os.sep}", "")
        raise DatasetError(
            f"in {zip_path}: {inside} To fix it, extract the zip by hand into {zip_path.parent} and correct"
            f" {FOLDER_NAME}/ there, or delete the zip to download a fresh copy."
        ) from None


def _find_dataset_folder(staging: Path, zip_path: Path) -> Path:
    """The folder inside the extracted archive that holds both `images/` and `masks/`, at most two levels down
    (`Kvasir-SEG/`, or `something/Kvasir-SEG/` as re-zipped copies have). The shallowest wins, a folder named
    Kvasir-SEG first among equals; two others at one depth are ambiguous and refused. __MACOSX is skipped."""
    for depth in ([staging], staging.glob("*"), staging.glob("*/*")):
        found = [folder for folder in sorted(depth) if _has_layout(folder) and not _ignored(folder, staging)]
        named = [folder for folder in found if folder.name == FOLDER_NAME]
        if len(named) == 1 or len(found) == 1:
            return (named or found)[0]
        if found:
            places = ", ".join(str(folder.relative_to(staging)) for folder in found)
            raise DatasetError(f"{zip_path} holds several image and mask folders ({places}); keep one and run again.")
    raise DatasetError(
        f"{zip_path} does not have the Kvasir-SEG layout ({FOLDER_NAME}/images and {FOLDER_NAME}/masks);"
        " is it the right file?"
    )


def _ignored(folder: Path, staging: Path) -> bool:
    """True for a folder inside metadata that archivers add (IGNORED_FOLDERS), never the dataset."""
    return bool(set(folder.relative_to(staging).parts) & set(IGNORED_FOLDERS))


def list_images(folder) -> dict[str, Path]:
    """Map file stem -> path for the image files (by suffix) directly inside `folder`.

    Refuses two files with one stem (`x.jpg` and `x.png`: which one is meant?) and a folder named like an image.
    """
    images = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not path.is_file():
            raise DatasetError(f"{path} is a folder (or another non-file) named like an image; remove or rename it.")
        if path.stem in images:
            raise DatasetError(
                f"{images[path.stem]} and {path} have the same name stem, and images and masks are paired by stem;"
                " keep one of them."
            )
        images[path.stem] = path
    return images


def pair_images_and_masks(images_dir, masks_dir) -> list[tuple[str, Path, Path]]:
    """Match images and masks by file stem; every image needs a mask and every mask an image."""
    images, masks = list_images(images_dir), list_images(masks_dir)
    without_mask = sorted(set(images) - set(masks))
    without_image = sorted(set(masks) - set(images))
    problems = []
    if without_mask:
        problems.append(f"{len(without_mask)} image(s) in {images_dir} without a mask: {first_few(without_mask)}")
    if without_image:
        problems.append(f"{len(without_image)} mask(s) in {masks_dir} without an image: {first_few(without_image)}")
    if problems:
        raise DatasetError("; ".join(problems) + ". Every image needs a mask with the same file name stem.")
    if not images:
        raise DatasetError(f"no images found in {images_dir} (looked for {', '.join(IMAGE_SUFFIXES)}).")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]
