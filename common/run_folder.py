"""A training run's output folder and best-model path: refused before any work when they cannot be written, locked
against other runs while it trains, and taken over from an earlier run only when asked, so that no run silently
destroys another's files."""

import contextlib
import os
import secrets
from pathlib import Path

from common.errors import UserError, first_few
from common.files import exclusive_lock, remove_stale_temporaries, same_paths, writable_folder

RUN_FILES = ("last.pth", "history.csv", "summary.json", "curves.png")  # in the output folder, beside panels/
PANELS_FOLDER = "panels"  # in the output folder: the pictures of predictions
TENSORBOARD_FOLDER = "tensorboard"  # in the output folder: the TensorBoard event files of utils/tensorboard_log.py
SETTINGS_FOLDER = "hparams"  # in the TensorBoard folder: the finished run's settings, for the HParams view
EVENT_FILES = "events.out.tfevents.*"  # the names TensorBoard's writers give their files
OWN_PATHS = (*RUN_FILES, "train.lock", PANELS_FOLDER)  # every path of the output folder; the best model is none of them


def run_files(output_dir: Path, checkpoint_path: Path) -> list[Path]:
    """The files a run writes that a new run would replace: its best model, resumable state, history and pictures."""
    candidates = [checkpoint_path, *(output_dir / name for name in RUN_FILES)]
    panels = sorted((output_dir / PANELS_FOLDER).glob("epoch_*.png"))
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


def run_ids_in(folder: Path, read_config) -> list[str]:
    """The RUN_ID of the run whose resumable state `folder` holds, then those of the runs it was copied from
    (COPY_OF); empty when it holds none (or an unreadable one)."""
    try:
        config = read_config(folder / "last.pth")
    except UserError:
        return []
    return [config["RUN_ID"], *config.get("COPY_OF", [])] if isinstance(config, dict) and "RUN_ID" in config else []


def started_checkpoint(saved: dict) -> Path:
    """The absolute path of a saved run's best model as it was started: RUN_CHECKPOINT, or for a state written before
    that was recorded, its CHECKPOINT_PATH read from the folder the run was started in (RUN_FOLDER less OUTPUT_DIR)."""
    if saved.get("RUN_CHECKPOINT"):
        return Path(saved["RUN_CHECKPOINT"])
    checkpoint, output_dir = Path(saved["CHECKPOINT_PATH"]), Path(os.path.normpath(saved["OUTPUT_DIR"]))
    if checkpoint.is_absolute() or output_dir.is_absolute() or ".." in output_dir.parts:
        return checkpoint.resolve()
    started_in = Path(saved["RUN_FOLDER"]).parents[len(output_dir.parts) - 1] if output_dir.parts else None
    return (started_in or Path(saved["RUN_FOLDER"])) / checkpoint


def relocated_run(saved: dict, output_dir: str, given_checkpoint: str | None, read_config) -> dict:
    """A resumed run's paths and identity when its folder `output_dir` is not the one it was started in: moved (the
    original holds the run no more) it stays the run; copied (the original still holds it) it becomes a run of its
    own, with a new RUN_ID and the old one in COPY_OF, so that the two never pass for each other. A best model that
    lived inside the folder follows it; one outside stays with a moved run, and is refused to a copy, which must
    name its own. Says what happened in one line; returns the settings to update (CHECKPOINT_PATH, RUN_ID,
    COPY_OF). `given_checkpoint` is the --checkpoint-path given, if any."""
    here = Path(output_dir).resolve()
    original = Path(saved.get("RUN_FOLDER") or here)  # a state written before RUN_FOLDER was recorded: as started
    checkpoint = started_checkpoint(saved)
    inside = checkpoint.is_relative_to(original)
    own = Path(output_dir) / checkpoint.relative_to(original) if inside else checkpoint
    copied = here != original and run_ids_in(original, read_config)[:1] == [saved["RUN_ID"]]
    moved_away = given_checkpoint and Path(given_checkpoint).resolve() != own.resolve()
    if moved_away and own.is_file() and not (copied and not inside):  # a copy's outside model is the original's
        raise UserError(
            f"--resume keeps the run's best model at {own}, where it started it; drop --checkpoint-path"
            f" {given_checkpoint}, or move that file there first."
        )
    if copied and not inside and not given_checkpoint:
        raise UserError(
            f"{output_dir} is a copy of the run in {original}, which still holds it, and whose best model {checkpoint}"
            " is that run's; give the copy a --checkpoint-path of its own to resume it."
        )
    if given_checkpoint:
        updates = {"CHECKPOINT_PATH": given_checkpoint}
    elif Path(saved["CHECKPOINT_PATH"]).resolve() == own.resolve():
        updates = {"CHECKPOINT_PATH": saved["CHECKPOINT_PATH"]}
    else:  # moved, or resumed from another working folder than the run's relative CHECKPOINT_PATH was given in
        updates = {"CHECKPOINT_PATH": str(own)}
    if here == original:
        return updates
    if copied:
        updates.update(RUN_ID=secrets.token_hex(8), COPY_OF=[*saved.get("COPY_OF", []), saved["RUN_ID"]])
    what = (
        f"a copy of the run in {original}, resumed as a run of its own"
        if copied
        else f"the run started in {original}, moved here"
    )
    print(f"note: {output_dir} is {what}; its best model: {updates['CHECKPOINT_PATH']}")
    return updates


def shared_folders(output_dir: Path) -> list[Path]:
    """The run's own subfolders (panels, TensorBoard's) that are links to folders elsewhere, where other runs'
    files may be, holding files that a new run would replace."""
    here = output_dir.resolve()
    return [
        output_dir / name
        for name in (PANELS_FOLDER, TENSORBOARD_FOLDER, f"{TENSORBOARD_FOLDER}/{SETTINGS_FOLDER}")
        if (output_dir / name).is_dir()
        and (output_dir / name).resolve() != here / name
        and any(path.is_file() for path in (output_dir / name).iterdir())
    ]


def check_checkpoint_owner(
    checkpoint_path: Path, run_id, output_dir: Path, resuming: bool, read_config, copy_of=()
) -> None:
    """Refuse a CHECKPOINT_PATH that holds something this run may not replace, even with --overwrite: a file that is
    no checkpoint (for which `read_config`, reading a checkpoint's config, raises a UserError), or the best model of
    another run. Resuming, a run replaces only its own (or, for a copied run, listing its originals' RUN_IDs in
    `copy_of`, the one copied into its folder); a new run only that of the earlier run of its own OUTPUT_DIR, which
    still holds it (its last.pth the model's run) or which it lies in."""
    if not checkpoint_path.is_file():
        return
    try:
        other = read_config(checkpoint_path)
    except UserError:
        raise UserError(
            f"CHECKPOINT_PATH {checkpoint_path} holds a file that is not a checkpoint of this repository; it is not"
            " replaced. Give another --checkpoint-path, or move that file away."
        ) from None
    other = other if isinstance(other, dict) else {}
    owner, folder, here = other.get("RUN_ID"), other.get("RUN_FOLDER"), output_dir.resolve()
    if owner is not None and owner == run_id:
        return
    inside = checkpoint_path.resolve().is_relative_to(here)
    started_here = folder is not None and Path(folder) == here
    if resuming:
        if owner in copy_of and inside:
            return
    else:
        held = run_ids_in(output_dir, read_config)  # the run this folder holds, and those it was copied from
        if (inside and (started_here or owner in held)) or (started_here and held[:1] == [owner]):
            return
    if not resuming and started_here:
        raise UserError(
            f"CHECKPOINT_PATH {checkpoint_path} is the best model of the run started in {folder}, which that folder"
            " no longer holds (moved, copied or deleted); it is not replaced, even with --overwrite. Give this run"
            f" its own --checkpoint-path, or delete {checkpoint_path} yourself if that run is gone."
        )
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
    shared = [] if resuming else shared_folders(output_dir)
    if shared:
        raise UserError(
            f"OUTPUT_DIR's {shared[0].name} folder {shared[0]} is a link to {shared[0].resolve()}, which holds files"
            " that may be other runs' and that this run would replace; a run replaces only files of its own folder,"
            " even with --overwrite. Give this run another --output-dir, or make that a folder of its own."
        )
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
    output_dir: Path,
    checkpoint_path: Path,
    resuming: bool,
    overwrite: bool,
    run_id,
    read_config,
    describe=None,
    copy_of=(),
):
    """Lock the run's output folder and checkpoint against other runs for the block, after tidying what a killed
    run left and claiming the paths (see check_checkpoint_owner and claim_run_files, which `describe` is passed to)."""
    with (
        exclusive_lock(output_dir / "train.lock", str(output_dir)),
        exclusive_lock(checkpoint_lock(checkpoint_path), str(checkpoint_path)),
    ):
        for folder, name in (
            (output_dir, "*"),
            (output_dir / PANELS_FOLDER, "*"),
            (checkpoint_path.parent, checkpoint_path.name),
        ):
            remove_stale_temporaries(folder, name)  # left by a run killed mid-write; never read, only tidied
        check_checkpoint_owner(checkpoint_path, run_id, output_dir, resuming, read_config, copy_of)
        claim_run_files(output_dir, checkpoint_path, resuming, overwrite, describe)
        yield
