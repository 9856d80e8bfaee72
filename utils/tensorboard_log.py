"""A training run as TensorBoard events (OUTPUT_DIR/tensorboard/), so that `tensorboard --logdir` overlays the curves
of many runs. Optional: it needs `pip install -r requirements-tensorboard.txt`.

Every event is placed at a training step (the number of steps done): an epoch's scores at its last step, the
learning rate at each step it recorded. Each method is meant to run on the BackgroundWriter's thread, so that
training never waits for it.
"""

from pathlib import Path

from common.optional import import_optional
from common.run_folder import EVENT_FILES, TENSORBOARD_FOLDER
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
    """The event files of the run in `output_dir` (none without TENSORBOARD)."""
    return sorted(events_folder(output_dir).glob(EVENT_FILES))


def require_tensorboard() -> None:
    """Refuse, before any work, a TENSORBOARD run where the optional package is missing, naming the install line."""
    import_optional("tensorboard", f"--tensorboard needs `{INSTALL}` (or run without --tensorboard)")


class TensorBoardLog:
    """The event files of one run in `folder`. A resumed run passes `resumed_from`, the first step it trains:
    TensorBoard then hides whatever an earlier process wrote from that step on (a run killed after its last save
    wrote events that the resumed run writes again), so each curve goes on without duplicated or backward steps."""

    def __init__(self, folder: Path, resumed_from: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # only here: the package is optional

        self.writer = SummaryWriter(str(folder), purge_step=resumed_from)

    def add_epoch(self, row: dict, learning_rates: list[tuple[int, float]], step: int) -> None:
        """One epoch's history.csv row at `step`, and the (step, learning rate) points recorded during it."""
        for tag, column in SCALARS.items():
            self.writer.add_scalar(tag, row[column], step)
        for point_step, learning_rate in learning_rates:
            self.writer.add_scalar(LEARNING_RATE, learning_rate, point_step)
        self.writer.flush()

    def add_panels(self, path: Path, step: int) -> None:
        """The panels picture saved at `path`, as TensorBoard's image of `step`."""
        self.writer.add_image(PANELS, read_rgb(path), step, dataformats="HWC")
        self.writer.flush()

    def add_settings(self, settings: dict, best_row: dict, step: int) -> None:
        """The run's settings with its best epoch's validation Dice and IoU, for TensorBoard's HParams view (a
        sweep's runs sorted and filtered by setting); lists become comma-separated text."""
        from torch.utils.tensorboard.summary import hparams

        values = {
            name: value if isinstance(value, bool | int | float | str) else ", ".join(map(str, value))
            for name, value in settings.items()
        }
        metrics = {tag: best_row[column] for tag, column in BEST.items()}
        for summary in hparams(values, metrics):
            self.writer.file_writer.add_summary(summary, step)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
