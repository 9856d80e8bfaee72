"""Write files so that a reader never sees half of one: write beside the target, then rename over it; and the
locks and clean-up that let several processes share a folder."""

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from common.errors import UserError

# disk full, quota used up, file size limit (`ulimit -f`)
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# read-only disk, no permission, a file where a folder should be
NOT_WRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR})


def file_identity(label: str, path) -> list:
    """What a cache built from a file is keyed on: `label`, the file's resolved path, size and modification time,
    so that a changed or moved file gets a new key."""
    info = Path(path).stat()
    return [label, str(Path(path).resolve()), info.st_size, info.st_mtime_ns]


def os_error_in(error: BaseException, errnos: frozenset) -> OSError | None:
    """The OSError with one of `errnos` that is `error` or caused it (libraries such as torch.save report a failed
    write as their own exception raised while handling the OSError), else None."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in errnos:
            return error
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; on success rename it onto `path`, else delete it.

    The file is flushed to disk before the rename and the folder after it, so that after a power loss `path` holds
    the old or the new content, never half. It gets the permissions a plain `open` would (0644 under the usual
    umask 022), not mkstemp's private 0600. A full disk leaves the old file intact and raises a UserError naming it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the kernel applies the umask
            yield temporary
            _flush_to_disk(temporary)
        except Exception as error:
            if (full := os_error_in(error, NO_SPACE_ERRNOS)) is None:
                raise
            raise UserError(
                f"no space left on device while writing {path} ({full.strerror}); free space and run again."
            ) from None
        os.replace(temporary, path)
        _flush_to_disk(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _flush_to_disk(path: Path) -> None:
    """fsync a file's content or a folder's entries; a file system that cannot sync a folder is left as it was."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if path.is_dir():
            with contextlib.suppress(OSError):
                os.fsync(descriptor)
        else:
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_text_file(path, what: str) -> str:
    """The text of `path` (`what` it is, e.g. "recipe file"), read as UTF-8 with or without a byte-order mark;
    a missing path, a folder, an unreadable file or other bytes (UTF-16, Latin-1) are refused in one line."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file; give the path of the file.")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found; check the path.") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {path} ({error.strerror or error}).") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{what} {path} is UTF-16 text; save it as UTF-8 (plain text) and run again.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); save it as"
            " UTF-8 (plain text) and run again."
        ) from None


def make_staging_folder(parent, prefix: str) -> Path:
    """A new hidden folder `parent/PREFIXrandom` with the permissions of the umask (tempfile.mkdtemp's are 0700,
    which would lock other users out of a shared folder once it is renamed into place)."""
    while True:
        folder = Path(parent) / f"{prefix}{secrets.token_hex(6)}"
        try:
            folder.mkdir(0o777)  # the kernel applies the umask
            return folder
        except FileExistsError:
            continue


def writable_folder(folder, setting: str) -> Path:
    """Create `folder` if needed and check that a file can be written in it, before any long work; refuse with
    the setting's name when it is a file, or cannot be created or written (read-only disk, no permission)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{setting} {folder} is a file, not a folder; give the path of a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"cannot write into {folder} ({setting}): {error.strerror or error}.") from None
    return folder


def writable_file(path, setting: str) -> Path:
    """Check, before any work, that `path` can be written as a file: not a folder, in a folder that can be written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{setting} {path} is a folder; give the path of a file.")
    writable_folder(path.parent, f"{setting}'s folder")
    return path


def claim_output(path, setting: str, is_own_kind, kind: str) -> Path:
    """Check, before any work, that `path` can be written and holds nothing but an earlier output of this kind
    (`is_own_kind(path)` says whether it does): a file of any other kind (a checkpoint, a CSV of another script)
    is refused rather than replaced."""
    path = writable_file(path, setting)
    if path.exists() and not is_own_kind(path):
        raise UserError(
            f"{setting} {path} already holds a file that is not {kind}; it is not replaced. Give another path, or"
            " move that file away."
        )
    return path


WRITTEN_BY = "written_by"  # the key of a JSON output that names the script that wrote it (see claim_output)


def script_mark(script_file) -> str:
    """The WRITTEN_BY value of a script's JSON outputs: 'scripts/NAME.py' for the script at `script_file`."""
    return f"scripts/{Path(script_file).name}"


def json_written_by(path, script: str) -> bool:
    """Whether `path` holds a JSON object that `script` wrote (its WRITTEN_BY key names it)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get(WRITTEN_BY) == script


def csv_with_header(path, columns) -> bool:
    """Whether `path` is a CSV file whose header starts with `columns`."""
    try:
        with open(path, encoding="utf-8", newline="") as file:
            header = next(csv.reader(file), [])
    except (OSError, ValueError):
        return False
    return header[: len(columns)] == list(columns)


def same_paths(paths: dict[str, Path]) -> tuple[str, str] | None:
    """The names of two of `paths` (by name) that are one file, or one inside the other (a folder), else None:
    the outputs of one command must never overwrite each other."""
    resolved = {name: Path(path).resolve() for name, path in paths.items()}
    for first, path in resolved.items():
        for second, other in resolved.items():
            if first != second and (path == other or path.is_relative_to(other)):
                return first, second
    return None


def remove_stale_temporaries(folder, name: str = "*") -> list[Path]:
    """Delete the temporary files that `atomic_path(folder / name)` left when its process was killed.

    Call only while holding the lock that guards those files, so no live writer's temporary file is removed.
    """
    stale = sorted(Path(folder).glob(f".{name}.*.tmp"))
    for temporary in stale:
        temporary.unlink(missing_ok=True)
    return stale


def write_text_atomic(path, text: str) -> None:
    """Replace `path` with `text` in one step."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json_atomic(path, value) -> None:
    """Replace `path` with `value` as indented JSON (and a final newline) in one step."""
    write_text_atomic(path, json.dumps(value, indent=2) + "\n")


def write_csv_atomic(path, rows: list[dict]) -> None:
    """Replace `path` with `rows` as CSV (header from the first row's keys) in one step."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def stale_folders(folder, pattern: str) -> list[Path]:
    """The folders matching `pattern` in `folder` when this process may delete them (none in a read-only folder)."""
    folder = Path(folder)
    return sorted(folder.glob(pattern)) if os.access(folder, os.W_OK) else []


def remove_stale_folders(folder, pattern: str) -> list[Path]:
    """Delete the staging folders matching `pattern` that processes killed mid-work (kill -9, power loss) left.

    Call only while holding the lock that guards those folders, so no live process's staging folder is removed.
    """
    stale = stale_folders(folder, pattern)
    for leftover in stale:
        shutil.rmtree(leftover, ignore_errors=True)
    return stale


RUN_PATHS_ADVICE = "give this run a different --output-dir and --checkpoint-path"


@contextlib.contextmanager
def exclusive_lock(path, what: str, advice: str = RUN_PATHS_ADVICE):
    """Hold an exclusive lock on `path` for the block, refusing (with the holder's pid, and `advice`) if another
    process has it. The operating system drops the lock when the holder exits, even when it is killed.
    """

    def refuse(holder: str):
        if holder == str(os.getpid()):  # this process holds it already: two of its own paths are one file
            raise UserError(f"{path} is locked twice by this run: two of its paths name one file; give each its own.")
        raise UserError(f"another run (pid {holder}) is writing {what}; wait for it to finish, or {advice}.")

    with _lock(path, refuse):
        yield


@contextlib.contextmanager
def waiting_lock(path, activity: str):
    """Hold an exclusive lock on `path` for the block, first waiting for another process that has it (saying so,
    with its pid and `activity`, e.g. "extracting Kvasir-SEG into data"). Dropped when the holder exits or dies."""

    def announce(holder: str):
        print(f"waiting for another process {activity} (pid {holder})")

    with _lock(path, announce):
        yield


@contextlib.contextmanager
def _lock(path, when_held):
    """Lock `path` (created if needed) exclusively, calling `when_held(holder pid)` first if another process has
    it: that call either raises (to refuse) or returns (to wait). The holder's pid is written into the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the kernel applies the umask
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            when_held(_holder(descriptor))
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(descriptor)


def _holder(descriptor: int) -> str:
    """The pid written into a lock file by its holder ("unknown" when it has not written it yet)."""
    return os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"


def lock_holder(path) -> str | None:
    """The pid of the process holding the lock `path` (see exclusive_lock), or None when no process holds it."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(descriptor)
    finally:
        os.close(descriptor)
    return None
