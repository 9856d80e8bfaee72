"""train.py --tensorboard, read back with TensorBoard's own reader: the curves of history.csv, the learning rate of a
warm-up as it ran, the panels, and the run's settings for the HParams view; the refusals before any work."""

import csv
import errno
import sys

import pytest
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from tests.scripts import load_script
from tests.train_runs import error_line, read_events, train_in_process, train_script
from utils.tensorboard_log import SCALARS, event_files, events_folder, settings_folder

sweep = load_script("sweep")
MISSING = (
    "error: tensorboard is not installed; --tensorboard needs `pip install -r requirements-tensorboard.txt`"
    " (or run without --tensorboard)."
)


def history_rows(run_folder) -> list[dict]:
    with open(run_folder / "history.csv") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def warmed_up_run(tmp_path_factory):
    """A 10-epoch run with a 1-epoch warm-up, panels every 5 epochs, and TensorBoard events."""
    from dataset.synthetic import make_kvasir_folder

    tmp_path = tmp_path_factory.mktemp("tensorboard")
    make_kvasir_folder(tmp_path / "data")
    flags = ["--epochs", "10", "--warmup-epochs", "1", "--panel-every", "5", "--schedule", "cosine", "--tensorboard"]
    status, stdout, stderr = train_in_process(tmp_path, *flags)
    assert status == 0, stderr[-2000:]
    return tmp_path / "run"


def test_events_hold_history_csv_per_epoch(warmed_up_run):
    events, history = read_events(warmed_up_run), history_rows(warmed_up_run)
    steps_per_epoch = events.Scalars("validation/dice")[0].step
    for tag, column in SCALARS.items():
        logged = events.Scalars(tag)
        assert [event.step for event in logged] == [int(row["epoch"]) * steps_per_epoch for row in history]
        assert [event.value for event in logged] == pytest.approx([float(row[column]) for row in history], rel=1e-6)


def test_learning_rate_is_logged_as_it_ran_through_the_warm_up(warmed_up_run):
    events = read_events(warmed_up_run)
    steps_per_epoch = events.Scalars("validation/dice")[0].step
    total = 10 * steps_per_epoch
    rates = events.Scalars("learning_rate")
    assert [event.step for event in rates] == list(range(1, total + 1))  # under 20 steps an epoch: every step
    config = {"EPOCHS": 10, "WARMUP_EPOCHS": 1, "LEARNING_RATE": 1e-3, "SCHEDULE": "cosine"}
    expected = [train_script.get_lr(step - 1, steps_per_epoch, config) for step in range(1, total + 1)]
    assert [event.value for event in rates] == pytest.approx(expected, rel=1e-6)
    warm_up = [event.value for event in rates[:steps_per_epoch]]
    assert warm_up == sorted(warm_up) and warm_up[0] < warm_up[-1] == pytest.approx(1e-3)  # a ramp within epoch 1


def test_panels_are_images_of_their_epochs(warmed_up_run):
    events = read_events(warmed_up_run)
    steps_per_epoch = events.Scalars("validation/dice")[0].step
    panels = events.Images("panels")
    assert [image.step for image in panels] == [5 * steps_per_epoch, 10 * steps_per_epoch]
    assert all(image.width > 100 and image.height > 100 for image in panels)
    assert sorted(path.name for path in (warmed_up_run / "panels").iterdir()) == ["epoch_005.png", "epoch_010.png"]


def hparams_of(run_folder):
    """The settings of the run in `run_folder` as TensorBoard's HParams view reads them, and their events."""
    events = read_events(run_folder, settings_folder)
    content = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
    return HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info.hparams, events


def test_settings_and_best_scores_are_an_hparams_entry(warmed_up_run):
    (hparams, events), history = hparams_of(warmed_up_run), history_rows(warmed_up_run)
    assert hparams["LEARNING_RATE"].number_value == pytest.approx(1e-3) and hparams["EPOCHS"].number_value == 10
    assert hparams["SCHEDULE"].string_value == "cosine" and hparams["DATASETS"].string_value == "kvasir"
    assert "TENSORBOARD" not in hparams and "OUTPUT_DIR" not in hparams  # how the run was carried out: not a recipe
    best = max(history, key=lambda row: float(row["val_dice"]))
    assert events.Scalars("best/val_dice")[0].value == pytest.approx(float(best["val_dice"]), rel=1e-6)
    assert events.Scalars("best/val_iou")[0].value == pytest.approx(float(best["val_iou"]), rel=1e-6)


def test_without_the_package_tensorboard_is_refused_before_any_work(kvasir_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now raises ImportError
    status, _, stderr = train_in_process(tmp_path, "--epochs", "1", "--tensorboard")
    assert status == 2 and error_line(stderr) == MISSING
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(
        sys, "argv", ["sweep.py", "configs/seed.py", "--sweep-dir", str(tmp_path / "s"), "--tensorboard"]
    )
    with pytest.raises(sweep.UserError, match="tensorboard is not installed; --tensorboard needs `pip install"):
        sweep.read_settings()


def test_an_earlier_runs_events_are_in_the_way_and_overwrite_removes_them(kvasir_dir, tmp_path):
    assert train_in_process(tmp_path, "--epochs", "1", "--tensorboard")[0] == 0
    (earlier,) = event_files(tmp_path / "run")
    (settings,) = settings_folder(tmp_path / "run").iterdir()
    for name in ("last.pth", "history.csv", "summary.json", "curves.png", "best.pth"):
        (tmp_path / "run" / name).unlink()
    for panel in (tmp_path / "run" / "panels").iterdir():
        panel.unlink()
    status, _, stderr = train_in_process(tmp_path, "--epochs", "1")
    assert status == 2 and f"an earlier run's files are in the way ({earlier}, {settings})" in error_line(stderr)
    assert train_in_process(tmp_path, "--epochs", "1", "--tensorboard", "--overwrite")[0] == 0
    (new,) = event_files(tmp_path / "run")
    (new_settings,) = settings_folder(tmp_path / "run").iterdir()
    assert (
        new != earlier
        and new_settings != settings
        and len(read_events(tmp_path / "run").Scalars("validation/dice")) == 1
    )


def test_a_tensorboard_folder_that_is_a_file_is_refused(kvasir_dir, tmp_path):
    events_folder(tmp_path / "run").parent.mkdir()
    events_folder(tmp_path / "run").write_text("not a folder")
    status, _, stderr = train_in_process(tmp_path, "--epochs", "1", "--tensorboard")
    assert status == 2
    assert error_line(stderr).endswith(
        f"{events_folder(tmp_path / 'run')} is a file, not a folder; give the path of a folder."
    )


def test_a_resumed_run_hides_what_a_killed_process_wrote_after_its_last_save(kvasir_dir, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    assert train_in_process(tmp_path, "--epochs", "2", "--tensorboard")[0] == 0
    steps_per_epoch = read_events(tmp_path / "run").Scalars("validation/dice")[0].step
    with SummaryWriter(str(events_folder(tmp_path / "run"))) as killed:  # as if written after the last save
        for tag in ("validation/dice", "learning_rate"):
            killed.add_scalar(tag, 7.0, 2 * steps_per_epoch + 1)
    assert train_in_process(tmp_path, "--resume", "--epochs", "3")[0] == 0  # TENSORBOARD comes with the run
    events = read_events(tmp_path / "run")
    dice = events.Scalars("validation/dice")
    assert [event.step for event in dice] == [steps_per_epoch, 2 * steps_per_epoch, 3 * steps_per_epoch]
    assert 7.0 not in [event.value for event in dice]
    rates = events.Scalars("learning_rate")
    assert [event.step for event in rates] == list(range(1, 3 * steps_per_epoch + 1))
    assert 7.0 not in [event.value for event in rates]


def test_a_resumed_runs_hparams_are_the_settings_its_scores_came_from(kvasir_dir, tmp_path):
    assert train_in_process(tmp_path, "--epochs", "2", "--tensorboard")[0] == 0
    assert hparams_of(tmp_path / "run")[0]["EPOCHS"].number_value == 2
    assert train_in_process(tmp_path, "--resume", "--epochs", "4")[0] == 0
    hparams, events = hparams_of(tmp_path / "run")
    assert hparams["EPOCHS"].number_value == 4  # not the first ending's 2, beside the 4-epoch run's scores
    best = max(history_rows(tmp_path / "run"), key=lambda row: float(row["val_dice"]))
    assert [event.value for event in events.Scalars("best/val_dice")] == pytest.approx([float(best["val_dice"])])
    assert len(list(settings_folder(tmp_path / "run").iterdir())) == 1


@pytest.mark.parametrize("failing", ["close", "flush"], ids=["final-write", "every-write"])
def test_a_full_disk_under_tensorboard_is_said_and_the_run_still_ends(kvasir_dir, tmp_path, monkeypatch, failing):
    from torch.utils.tensorboard import SummaryWriter

    def no_space(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SummaryWriter, failing, no_space)
    status, stdout, stderr = train_in_process(tmp_path, "--epochs", "2", "--tensorboard")
    assert status == 0, stderr[-2000:]
    note = (
        f"note: TensorBoard events could not be written to {events_folder(tmp_path / 'run')} (No space left on"
        " device); the run goes on without them (history.csv and curves.png hold the same scores)"
    )
    assert stdout.count(note) == 1
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "best.pth").is_file()
