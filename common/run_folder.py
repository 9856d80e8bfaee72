"""A training run's output folder and best-model path: refused before any work when they cannot be written, locked
against other runs while it trains, and taken over from an earlier run only when asked, so that no run silently
destroys another's files."""

import contextlib
from pathlib import Path

from common.errors import UserError, first_few
from common.files import exclusive_lock, remove_stale_temporaries, same_paths, writable_folder

RUN_FILES = ("last.pth", "history.csv", "summary.json", "curves.png")  # in the output folder, beside panels/
TENSORBOARD_FOLDER = "tensorboard"  # in the output folder: the TensorBoard event files of utils/tensorboard_log.py
SETTINGS_FOLDER = "hparams"  # in the TensorBoard folder: the finished run's settings, for the HParams view
EVENT_FILES = "events.out.tfevents.*"  # the names TensorBoard's writers give their files
OWN_PATHS = (*RUN_FILES, "train.lock", "panels")  # every path of the output folder; the best model is none of them


def run_files(output_dir: Path, checkpoint_path: Path) -> list[Path]:
    """The files a run writes that a new run would replace: its best model, resumable state, history and pictures."""
    candidates = [checkpoint_path, *(output_dir / name for name in RUN_FILES)]
    panels = sorted((output_dir / "panels").glob("epoch_*.png"))
    return (
        [path for path in candidates if path.is_file()]
        + panels
        + sorted((output_dir / TENSORBOARD_FOLDER).glob(EVENT_FILES))
        + sorted((output_dir / TENSORBOARD_FOLDER / SETTINGS_FOLDER).glob(EVENT_FILES))
    )


def check_output_paths(output_dir: Path, checkpoint_path: Path, example: str) -> None:
    """Refuse output paths that cannot be written before any work, rather than after the first epoch; `example` is
    a checkpoint path to suggest."""
    writable_folder(output_dir, "OUTPUT_DIR")
    if checkpoint_path.is_dir():
        raise UserError(f"CHECKPOINT_PATH {checkpoint_path} is a folder; give a file path such as {example}.")
    writable_folder(checkpoint_path.parent, "CHECKPOINT_PATH's folder")
    paths = {f"OUTPUT_DIR's {name}": output_dir / name for name in OWN_PATHS}
    collision = same_paths({"CHECKPOINT_PATH": checkpoint_path, "its lock": checkpoint_lock(checkpoint_path), **paths})
    if collision:
        first, second = collision
        raise UserError(
            f"CHECKPOINT_PATH {checkpoint_path}: {first} would be {second} ({output_dir / second.split()[-1]}), and"
            f" the two would overwrite each other; give the best model a path of its own, e.g. {output_dir}/best.pth."
        )


def checkpoint_lock(checkpoint_path: Path) -> Path:
    """The lock file held while a run writes `checkpoint_path` (models/x.pth -> models/x.pth.lock)."""
    return checkpoint_path.with_name(checkpoint_path.name + ".lock")


def check_resumed_checkpoint_path(saved: str, given: str) -> None:
    """A resumed run keeps its best model where it is: another CHECKPOINT_PATH is refused while the run's own exists
    (it would end with two halves of one run's best model); a run whose model was moved away may name a new path."""
    if Path(given).resolve() != Path(saved).resolve() and Path(saved).is_file():
        raise UserError(
            f"--resume keeps the run's best model at {saved}, where it started it; drop --checkpoint-path {given},"
            " or move that file there first."
        )


def check_checkpoint_owner(checkpoint_path: Path, run_id, output_dir: Path, resuming: bool, read_config) -> None:
    """Refuse a CHECKPOINT_PATH that holds something this run may not replace: a file that is no checkpoint (for
    which `read_config`, reading a checkpoint's config, raises a UserError), or the best model of another run
    (resuming: any run but this one; a new run: one of another OUTPUT_DIR)."""
    if not checkpoint_path.is_file():
        return
    try:
        other = read_config(checkpoint_path)
    except UserError:
        raise UserError(
            f"CHECKPOINT_PATH {checkpoint_path} holds a file that is not a checkpoint of this repository; it is not"
            " replaced. Give another --checkpoint-path, or move that file away."
        ) from None
    if not isinstance(other, dict) or other.get("RUN_ID") == run_id:
        return
    folder = other.get("RUN_FOLDER")
    if resuming or (folder and Path(folder) != output_dir.resolve()):
        raise UserError(
            f"CHECKPOINT_PATH {checkpoint_path} is the best model of another run ({folder or 'an earlier run'}), which"
            " this run would overwrite; give this run its own --checkpoint-path"
            + (", the one it was started with (drop the flag)." if resuming else ".")
        )


def claim_run_files(output_dir: Path, checkpoint_path: Path, resuming: bool, overwrite: bool, describe=None) -> None:
    """Never let a new run silently destroy an earlier one: refuse while the paths hold an earlier run's files,
    unless `overwrite`, which removes them first (so no old panel is left beside the new ones). `describe()`, when
    given, says what the earlier run is and which way on fits. Call it holding the run's locks, so that it never
    removes the files of a run still going."""
    earlier = [] if resuming else run_files(output_dir, checkpoint_path)
    if earlier and not overwrite:
        ways = "continue that run with --resume, keep it by giving this run another --output-dir and --checkpoint-path,"
        raise UserError(
            f"an earlier run's files are in the way ({first_few(earlier, 3)})"
            + (f": {describe()}" if describe else f"; {ways} or replace it with --overwrite.")
        )
    for path in earlier:
        path.unlink()


@contextlib.contextmanager
def locked_run_folder(
    output_dir: Path, checkpoint_path: Path, resuming: bool, overwrite: bool, run_id, read_config, describe=None
):
    """Lock the run's output folder and checkpoint against other runs for the block, after tidying what a killed
    run left and claiming the paths (see check_checkpoint_owner and claim_run_files, which `describe` is passed to)."""
    with (
        exclusive_lock(output_dir / "train.lock", str(output_dir)),
        exclusive_lock(checkpoint_lock(checkpoint_path), str(checkpoint_path)),
    ):
        for folder, name in (
            (output_dir, "*"),
            (output_dir / "panels", "*"),
            (checkpoint_path.parent, checkpoint_path.name),
        ):
            remove_stale_temporaries(folder, name)  # left by a run killed mid-write; never read, only tidied
        check_checkpoint_owner(checkpoint_path, run_id, output_dir, resuming, read_config)
        claim_run_files(output_dir, checkpoint_path, resuming, overwrite, describe)
        yield
