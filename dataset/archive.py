"""Extract a zip archive without trusting it: no paths outside the target, no links, no zip bombs, no names the
file system cannot hold.

Entry names with Windows separators (`Kvasir-SEG\\images\\a.jpg`, written by some Windows tools) are read with `/`
instead: the checks below judge the names in that form, so this is as safe as any other entry.
"""

import stat
import zipfile
from pathlib import Path, PurePosixPath

from common.errors import UserError

MAX_EXPANSION_RATIO = 100  # uncompressed bytes per archive byte; images barely compress, bombs do
MAX_TOTAL_BYTES = 20 * 2**30  # Kvasir-SEG unpacks to about 50 MB; nothing legitimate here nears 20 GiB
MAX_NAME_BYTES = 255  # the longest file or folder name Linux, macOS and Windows file systems hold


class ArchiveError(UserError):
    """The archive is corrupt or unsafe; the message says which entry or why."""


def require_zip(path, label: str | None = None) -> None:
    """Refuse a file that is not a zip archive (a server's HTML error page, a truncated file).

    `label` names the file in the message (e.g. "what the server sent"); the path is used otherwise.
    """
    if not zipfile.is_zipfile(path):
        head = Path(path).read_bytes()[:64].lstrip().lower()
        kind = "an HTML page" if head.startswith((b"<!doctype", b"<html")) else "not a zip archive"
        raise ArchiveError(f"{label or path} is {kind}, not the Kvasir-SEG zip.")


def is_cut_short_zip(path) -> bool:
    """True for a file that begins like a zip archive but is not a whole one: a transfer that broke off."""
    with open(path, "rb") as file:
        return file.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def unpacked_size(zip_path) -> int:
    """The bytes the archive's entries declare they unpack to: the space extracting it needs."""
    with zipfile.ZipFile(zip_path) as archive:
        return sum(entry.file_size for entry in archive.infolist())


def safe_extract_zip(zip_path, target_dir) -> None:
    """Extract every entry of `zip_path` under `target_dir`, after checking all entries are safe.

    Refuses absolute paths, `..` components, symbolic links, names too long for a file system, one name used both
    as a file and as a folder, and archives whose declared or actual uncompressed size is absurd for their size on
    disk. Raises ArchiveError for corrupt archives.
    """
    zip_path, target_dir = Path(zip_path), Path(target_dir)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            entries = archive.infolist()
            budget = _check_entries(entries, zip_path)
            for entry in entries:
                budget -= _extract_entry(archive, entry, target_dir, budget, zip_path)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, NotImplementedError) as error:
        raise ArchiveError(
            f"{zip_path} is corrupt or truncated ({error}); delete it and run again to download a fresh copy."
        ) from None


def _check_entries(entries: list[zipfile.ZipInfo], zip_path: Path) -> int:
    """Validate every entry name and the total size; return the number of bytes extraction may write."""
    for entry in entries:
        name = _entry_path(entry)
        if name.is_absolute() or entry.filename.startswith(("/", "\\")) or ":" in name.parts[0]:
            raise ArchiveError(f"{zip_path} holds an entry with an absolute path ({entry.filename!r}); refused.")
        if ".." in name.parts:
            raise ArchiveError(f"{zip_path} holds an entry that escapes its folder ({entry.filename!r}); refused.")
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise ArchiveError(f"{zip_path} holds a symbolic link ({entry.filename!r}); refused.")
        if any(len(part.encode()) > MAX_NAME_BYTES for part in name.parts):
            raise ArchiveError(
                f"{zip_path} holds an entry with a name longer than {MAX_NAME_BYTES} bytes"
                f" ({entry.filename[:60]!r}...), which no file system holds; refused."
            )
    _check_files_are_not_folders(entries, zip_path)
    declared = sum(entry.file_size for entry in entries)
    limit = min(MAX_TOTAL_BYTES, MAX_EXPANSION_RATIO * max(zip_path.stat().st_size, 1))
    if declared > limit:
        raise ArchiveError(
            f"{zip_path} would unpack to {declared / 2**20:.0f} MiB from {zip_path.stat().st_size / 2**20:.1f} MiB;"
            " refused as a likely zip bomb."
        )
    return limit


def _check_files_are_not_folders(entries: list[zipfile.ZipInfo], zip_path: Path) -> None:
    """Refuse an archive that names one path both as a file and as a folder (e.g. a file `Kvasir-SEG/images`
    beside `Kvasir-SEG/images/a.jpg`): no file system can hold both."""
    files = {_entry_path(entry) for entry in entries if not _is_folder(entry)}
    folders = {parent for entry in entries for parent in _entry_path(entry).parents}
    folders |= {_entry_path(entry) for entry in entries if _is_folder(entry)}
    both = sorted(files & folders)
    if both:
        raise ArchiveError(f"{zip_path} holds {str(both[0])!r} both as a file and as a folder; refused.")


def _entry_path(entry: zipfile.ZipInfo) -> PurePosixPath:
    """An entry's path inside the archive, Windows separators read as `/`."""
    return PurePosixPath(entry.filename.replace("\\", "/"))


def _is_folder(entry: zipfile.ZipInfo) -> bool:
    """True for a folder entry: its name ends with a separator, `/` or (from some Windows tools) `\\`."""
    return entry.filename.endswith(("/", "\\"))


def _extract_entry(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, target_dir: Path, budget: int, zip_path) -> int:
    """Write one entry, stopping if it produces more bytes than the remaining budget; return bytes written."""
    destination = target_dir / _entry_path(entry)
    if _is_folder(entry):
        destination.mkdir(parents=True, exist_ok=True)
        return 0
    destination.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with archive.open(entry) as source, open(destination, "wb") as sink:
        while chunk := source.read(1 << 20):
            written += len(chunk)
            if written > budget:
                raise ArchiveError(f"{zip_path} unpacks to more than its entries declare; refused as a zip bomb.")
            sink.write(chunk)
    return written
