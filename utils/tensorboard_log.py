"""A training run as TensorBoard events (OUTPUT_DIR/tensorboard/), so that `tensorboard --logdir` overlays the curves
of many runs. Optional: it needs `pip install -r requirements-tensorboard.txt`.

Every event is placed at a training step (the number of steps done): an epoch's scores at its last step, the
learning rate at each step it recorded. Each method is meant to run on the BackgroundWriter's thread, so that
training never waits for it.
"""

import functools
from pathlib import Path

from common.optional import import_optional
from common.run_folder import EVENT_FILES, SETTINGS_FOLDER, TENSORBOARD_FOLDER
from dataset.images import read_rgb

INSTALL = "pip install -r requirements-tensorboard.txt"
SCALARS = {  # tag: history.csv column, per epoch
    "loss/train": "train_loss",
    "loss/validation": "val_loss",
    "validation/dice": "val_dice",
    "validation/iou": "val_iou",
    "seconds/training": "train_seconds",
    "seconds/validation": "val_seconds",
    "seconds/saving": "save_seconds",
}
LEARNING_RATE = "learning_rate"
PANELS = "panels"
BEST = {"best/val_dice": "val_dice", "best/val_iou": "val_iou"}  # HParams metric tag: history.csv column


def events_folder(output_dir: Path) -> Path:
    """Where a run writing into `output_dir` keeps its event files."""
    return Path(output_dir) / TENSORBOARD_FOLDER


def event_files(output_dir: Path) -> list[Path]:
    """The event files of the run's curves in `output_dir` (none without TENSORBOARD); its settings are in
    settings_folder's."""
    return sorted(events_folder(output_dir).glob(EVENT_FILES))


def settings_folder(output_dir: Path) -> Path:
    """Where a finished run keeps its settings and best scores for TensorBoard's HParams view."""
    return events_folder(output_dir) / SETTINGS_FOLDER


def require_tensorboard() -> None:
    """Refuse, before any work, a TENSORBOARD run where the optional package is missing, naming the install line."""
    import_optional("tensorboard", f"--tensorboard needs `{INSTALL}` (or run without --tensorboard)")


def side_output(method):
    """A TensorBoardLog method whose OSError (a full disk, an unwritable folder) is said in one line and turns the
    log off, instead of ending the run: the events are a side output, and history.csv holds the same scores."""

    @functools.wraps(method)
    def guarded(self, *args):
        if self.failed:
            return
        try:
            method(self, *args)
        except OSError as error:
            self.failed = True
            print(
                f"note: TensorBoard events could not be written to {self.folder} ({error.strerror or error}); the run"
                " goes on without them (history.csv and curves.png hold the same scores)",
                flush=True,
            )

    return guarded


class TensorBoardLog:
    """The event files of one run in `folder`. A resumed run passes `resumed_from`, the first step it trains:
    TensorBoard then hides whatever an earlier process wrote from that step on (a run killed after its last save
    wrote events that the resumed run writes again), so each curve goes on without duplicated or backward steps.
    A write that fails is said once, and the log stops (see side_output)."""

    def __init__(self, folder: Path, resumed_from: int | None = None):
        self.folder, self.failed, self.writer = folder, False, None
        self.open(resumed_from)

    @side_output
    def open(self, resumed_from: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # only here: the package is optional

        self.writer = SummaryWriter(str(self.folder), purge_step=resumed_from)

    @side_output
    def add_epoch(self, row: dict, learning_rates: list[tuple[int, float]], step: int) -> None:
        """One epoch's history.csv row at `step`, and the (step, learning rate) points recorded during it."""
        for tag, column in SCALARS.items():
            self.writer.add_scalar(tag, row[column], step)
        for point_step, learning_rate in learning_rates:
            self.writer.add_scalar(LEARNING_RATE, learning_rate, point_step)
        self.writer.flush()

    @side_output
    def add_panels(self, path: Path, step: int) -> None:
        """The panels picture saved at `path`, as TensorBoard's image of `step`."""
        self.writer.add_image(PANELS, read_rgb(path), step, dataformats="HWC")
        self.writer.flush()

    @side_output
    def add_settings(self, settings: dict, best_row: dict, step: int) -> None:
        """The run's settings with its best epoch's validation Dice and IoU, for TensorBoard's HParams view (a
        sweep's runs sorted and filtered by setting); lists become comma-separated text. They go to a folder of their
        own, whose earlier files (a resumed run's first ending) are removed once the new one is written: TensorBoard
        shows the first settings it reads, and they must be those the run's scores came from."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        values = {
            name: value if isinstance(value, bool | int | float | str) else ", ".join(map(str, value))
            for name, value in settings.items()
        }
        metrics = {tag: best_row[column] for tag, column in BEST.items()}
        folder = self.folder / SETTINGS_FOLDER
        earlier = set(folder.glob(EVENT_FILES))
        with SummaryWriter(str(folder)) as writer:
            for summary in hparams(values, metrics):
                writer.file_writer.add_summary(summary, step)
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, step)
        for path in earlier:  # never the new file, whose name holds this process's id and a counter
            path.unlink(missing_ok=True)

    @side_output
    def close(self) -> None:
        self.writer.close()
