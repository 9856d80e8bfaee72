"""Write files so that a reader never sees half of one: write beside the target, then rename over it."""

import contextlib
import csv
import fcntl
import io
import os
import tempfile
from pathlib import Path

from common.errors import UserError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; on success rename it onto `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


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


def write_csv_atomic(path, rows: list[dict]) -> None:
    """Replace `path` with `rows` as CSV (header from the first row's keys) in one step."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


@contextlib.contextmanager
def exclusive_lock(path, what: str):
    """Hold an exclusive lock on `path` for the block, refusing (with the holder's pid) if another process has it.

    The operating system drops the lock when the holder exits, even when it is killed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"another run (pid {holder}) is writing {what}; wait for it to finish, or give this run"
                " a different --output-dir and --checkpoint-path."
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(descriptor)
