"""A run never destroys what a user made: another run's model, a foreign file at the checkpoint path, a
recipe file's destructive switch, a second sweep on one folder (troubleshooting rows on run folders)."""

import shutil

import pytest
import torch

from common.config import read_recipe, script_constants
from common.errors import UserError
from tests.scripts import REPO, load_script, run_script
from tests.train_runs import TINY, error_line, lock_held_elsewhere, run_in_process, train_in_process, train_script

sweep = load_script("sweep")
TRAIN_DEFAULTS = script_constants(vars(train_script))


@pytest.mark.parametrize("line", ["OVERWRITE = True", "OVERWRITE = False"])
def test_a_recipe_file_may_not_hold_a_destructive_switch(tmp_path, line):
    recipe = tmp_path / "shared.py"
    recipe.write_text(f'"""A shared recipe."""\nEPOCHS = 1\n{line}\n')
    with pytest.raises(UserError, match="line 3: OVERWRITE may not be set in a recipe file.*--overwrite"):
        read_recipe(recipe, TRAIN_DEFAULTS)


def test_a_recipe_with_overwrite_leaves_the_earlier_run_intact(kvasir_dir, tmp_path):
    assert train_in_process(tmp_path, "--epochs", "1")[0] == 0
    before = (tmp_path / "run" / "best.pth").read_bytes()
    recipe = tmp_path / "recipe.py"
    recipe.write_text("OVERWRITE = True\n")
    status, _, stderr = train_in_process(tmp_path, str(recipe), "--epochs", "1")
    assert status == 2 and "OVERWRITE may not be set in a recipe file" in error_line(stderr)
    assert (tmp_path / "run" / "best.pth").read_bytes() == before


@pytest.fixture
def run_a(kvasir_dir, tmp_path):
    """A finished 1-epoch run in tmp_path/a; returns its best model's bytes."""
    assert train_in_process(tmp_path, "--epochs", "1", name="a")[0] == 0
    return (tmp_path / "a" / "best.pth").read_bytes()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--resume", "--epochs", "2"], "--resume keeps the run's best model at"),
        (["--epochs", "1", "--overwrite"], "is the best model of another run"),
        (["--epochs", "1"], "is the best model of another run"),
    ],
    ids=["resume", "new-run-overwrite", "new-run"],
)
def test_another_runs_best_model_is_never_replaced(run_a, tmp_path, flags, message):
    assert train_in_process(tmp_path, "--epochs", "1", name="b")[0] == 0
    b_args = ["--checkpoint-path", str(tmp_path / "a" / "best.pth")]
    status, _, stderr = train_in_process(tmp_path, *flags, *b_args, name="b")
    assert status == 2 and message in error_line(stderr)
    assert (tmp_path / "a" / "best.pth").read_bytes() == run_a


def test_resuming_onto_another_runs_model_is_refused_even_when_its_own_is_gone(run_a, tmp_path):
    assert train_in_process(tmp_path, "--epochs", "1", name="b")[0] == 0
    (tmp_path / "b" / "best.pth").unlink()  # moved away: a new path may be named, but not another run's model
    flags = ["--resume", "--epochs", "2", "--checkpoint-path", str(tmp_path / "a" / "best.pth")]
    status, _, stderr = train_in_process(tmp_path, *flags, name="b")
    assert status == 2 and "is the best model of another run" in error_line(stderr)
    assert (tmp_path / "a" / "best.pth").read_bytes() == run_a


@pytest.mark.parametrize("content", [b"my notes\n", b"", b"PK\x03\x04 not a checkpoint"], ids=["text", "empty", "zip"])
def test_a_checkpoint_path_holding_a_foreign_file_is_never_replaced(kvasir_dir, tmp_path, content):
    target = tmp_path / "precious.txt"
    target.write_bytes(content)
    status, _, stderr = train_in_process(tmp_path, "--epochs", "1", "--overwrite", "--checkpoint-path", str(target))
    assert status == 2 and "holds a file that is not a checkpoint" in error_line(stderr)
    assert target.read_bytes() == content


@pytest.mark.parametrize(
    "name", ["last.pth", "history.csv", "summary.json", "curves.png", "train", "panels/best.pth", "."]
)
def test_a_runs_own_paths_never_collide(tmp_path, name):
    status, _, stderr = train_in_process(tmp_path, "--checkpoint-path", str(tmp_path / "run" / name))
    line = error_line(stderr)
    assert status == 2 and "another run" not in line
    assert "would overwrite each other" in line or "is a folder" in line


def test_a_checkpoint_named_like_the_run_lock_trains(kvasir_dir, tmp_path):
    status, stdout, stderr = train_in_process(
        tmp_path, "--epochs", "1", "--checkpoint-path", str(tmp_path / "run" / "train.pth")
    )
    assert status == 0, stderr
    assert f"model saved to {tmp_path / 'run' / 'train.pth'}" in stdout


def test_a_second_sweep_on_one_sweep_dir_is_refused(tmp_path):
    recipe = tmp_path / "a.py"
    recipe.write_text("EPOCHS = 1\n")
    sweep_dir = tmp_path / "sweep"
    with lock_held_elsewhere(sweep_dir / "sweep.lock") as holder:
        result = run_script("sweep", recipe, "--sweep-dir", sweep_dir, "--data-dir", tmp_path / "nodata")
    assert result.returncode == 2
    assert f"another run (pid {holder}) is writing {sweep_dir}" in error_line(result.stderr)
    assert "another --sweep-dir" in result.stderr and not (sweep_dir / "a-seed42").exists()


def run_with(tmp_path, *flags) -> tuple[int, str, str]:
    """train.py on the synthetic data with only these paths and flags (no --checkpoint-path unless given)."""
    fixed = ["--data-dir", str(tmp_path / "data"), "--device", "cpu", "--no-show-panels", *TINY]
    return run_in_process([*fixed, *flags])


def run_id(path) -> str:
    return torch.load(path, weights_only=True, mmap=True)["config"]["RUN_ID"]


@pytest.mark.parametrize("how", ["copy", "move"])
def test_a_copied_or_moved_run_folder_resumes_with_the_model_inside_it(kvasir_dir, tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)  # relative paths, as typed
    assert run_with(tmp_path, "--epochs", "1", "--output-dir", "a", "--checkpoint-path", "a/best.pth")[0] == 0
    original = (tmp_path / "a" / "best.pth").read_bytes()
    (shutil.copytree if how == "copy" else shutil.move)("a", "b")
    status, stdout, stderr = run_with(tmp_path, "--resume", "--epochs", "2", "--output-dir", "b")
    assert status == 0, stderr[-2000:]
    what = (
        "a copy of the run in {}, resumed as a run of its own" if how == "copy" else "the run started in {}, moved here"
    )
    assert f"note: b is {what.format(tmp_path / 'a')}; its best model: b/best.pth\n" in stdout
    assert "model saved to b/best.pth" in stdout
    if how == "move":
        assert not (tmp_path / "a").exists()  # not made again for a model that moved with its run
        return
    assert (tmp_path / "a" / "best.pth").read_bytes() == original
    assert run_id(tmp_path / "b" / "last.pth") != run_id(tmp_path / "a" / "last.pth")  # never passes for the original
    status, _, stderr = run_with(
        tmp_path, "--resume", "--epochs", "2", "--output-dir", "b", "--checkpoint-path", "a/best.pth"
    )
    assert status == 2 and "--resume keeps the run's best model at b/best.pth" in error_line(stderr)
    assert (tmp_path / "a" / "best.pth").read_bytes() == original
    assert run_with(tmp_path, "--resume", "--epochs", "2", "--output-dir", "a")[0] == 0  # the original goes on
    assert run_with(tmp_path, "--epochs", "1", "--output-dir", "b", "--overwrite")[0] == 0  # the copy's own files


def test_a_copy_whose_best_model_lies_outside_its_folder_must_name_its_own(kvasir_dir, tmp_path):
    models = tmp_path / "models"
    assert (
        run_with(
            tmp_path, "--epochs", "1", "--output-dir", str(tmp_path / "a"), "--checkpoint-path", str(models / "a.pth")
        )[0]
        == 0
    )
    original = (models / "a.pth").read_bytes()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    status, _, stderr = run_with(tmp_path, "--resume", "--epochs", "2", "--output-dir", str(tmp_path / "b"))
    assert status == 2 and error_line(stderr) == (
        f"error: {tmp_path / 'b'} is a copy of the run in {tmp_path / 'a'}, which still holds it, and whose best model"
        f" {models / 'a.pth'} is that run's; give the copy a --checkpoint-path of its own to resume it."
    )
    status, stdout, _ = run_with(tmp_path, "--resume", "--epochs", "2", "--output-dir", str(tmp_path / "b"),
                                 "--checkpoint-path", str(models / "b.pth"))  # fmt: skip
    assert status == 0 and f"its best model: {models / 'b.pth'}" in stdout
    assert (models / "a.pth").read_bytes() == original


@pytest.mark.parametrize("way", ["symlink", "relative-from-elsewhere"])
def test_a_run_resumed_by_another_path_to_its_folder_stays_itself(kvasir_dir, tmp_path, monkeypatch, way):
    monkeypatch.chdir(tmp_path)
    assert run_with(tmp_path, "--epochs", "1", "--output-dir", "a", "--checkpoint-path", "models/a.pth")[0] == 0
    (tmp_path / "elsewhere").mkdir()
    if way == "symlink":
        (tmp_path / "link").symlink_to(tmp_path / "a")
        output_dir = "link"
    else:
        monkeypatch.chdir(tmp_path / "elsewhere")  # where models/a.pth would be another file
        output_dir = str(tmp_path / "a")
    status, stdout, stderr = run_with(tmp_path, "--resume", "--epochs", "2", "--output-dir", output_dir)
    assert status == 0, stderr[-2000:]
    assert "note:" not in stdout and run_id(tmp_path / "a" / "last.pth") == run_id(tmp_path / "models" / "a.pth")
    assert not (tmp_path / "elsewhere" / "models").exists()


def test_overwrite_never_replaces_the_model_of_a_run_that_moved_away(kvasir_dir, tmp_path):
    paths = ["--output-dir", str(tmp_path / "a"), "--checkpoint-path", str(tmp_path / "models" / "a.pth")]
    assert run_with(tmp_path, "--epochs", "1", *paths)[0] == 0
    original = (tmp_path / "models" / "a.pth").read_bytes()
    shutil.move(tmp_path / "a", tmp_path / "a2")
    status, _, stderr = run_with(tmp_path, "--epochs", "1", "--overwrite", *paths)
    assert status == 2 and error_line(stderr) == (
        f"error: CHECKPOINT_PATH {tmp_path / 'models' / 'a.pth'} is the best model of the run started in"
        f" {tmp_path / 'a'}, which that folder no longer holds (moved, copied or deleted); it is not replaced, even"
        f" with --overwrite. Give this run its own --checkpoint-path, or delete {tmp_path / 'models' / 'a.pth'}"
        " yourself if that run is gone."
    )
    assert (tmp_path / "models" / "a.pth").read_bytes() == original


@pytest.mark.parametrize("folder", ["tensorboard", "panels"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_a_linked_events_or_panels_folder_holding_files_is_never_cleared(kvasir_dir, tmp_path, folder, overwrite):
    assert train_in_process(tmp_path, "--epochs", "1", "--tensorboard", name="a")[0] == 0
    shared = tmp_path / "a" / folder
    before = {path: path.read_bytes() for path in shared.iterdir() if path.is_file()}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / folder).symlink_to(shared)  # one events folder for every run, say
    status, _, stderr = train_in_process(tmp_path, "--epochs", "1", "--tensorboard", *overwrite, name="b")
    line = error_line(stderr)
    assert status == 2 and line == (
        f"error: OUTPUT_DIR's {folder} folder {tmp_path / 'b' / folder} is a link to {shared}, which holds files"
        " that may be other runs' and that this run would replace; a run replaces only files of its own folder,"
        " even with --overwrite. Give this run another --output-dir, or make that a folder of its own."
    )
    assert {path: path.read_bytes() for path in shared.iterdir() if path.is_file()} == before


def test_a_named_run_keeps_its_own_folder_and_model_and_resumes_by_name(kvasir_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default paths, as a new user has them
    status, stdout, stderr = run_with(tmp_path, "--name", "quick", "--epochs", "1")
    assert status == 0, stderr[-2000:]
    assert "model saved to outputs/quick/best.pth" in stdout and (tmp_path / "outputs" / "quick" / "last.pth").is_file()
    assert not (tmp_path / "models").exists()
    assert run_with(tmp_path, "--epochs", "1")[0] == 0  # the plain run beside it: models/unet_kvasirseg.pth, outputs/
    status, stdout, _ = run_with(tmp_path, "--resume", "--name", "quick", "--epochs", "2")
    assert (
        status == 0
        and "resuming outputs/quick at epoch 2" in stdout
        and "model saved to outputs/quick/best.pth" in stdout
    )
    status, stdout, _ = run_with(tmp_path, "--name", "other", "--output-dir", "mine", "--epochs", "1")
    assert status == 0 and "model saved to mine/best.pth" in stdout  # an explicit path wins


def test_the_quick_recipe_a_plain_run_and_the_tensorboard_command_never_block_each_other(
    kvasir_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    quick = [str(REPO / "configs" / "cpu_quick.py"), "--epochs", "1"]
    assert run_with(tmp_path, *quick)[0] == 0
    assert (tmp_path / "outputs" / "cpu_quick" / "best.pth").is_file() and not (tmp_path / "models").exists()
    assert run_with(tmp_path, "--epochs", "1")[0] == 0  # python scripts/train.py
    assert run_with(tmp_path, *quick, "--name", "quick_tensorboard", "--tensorboard")[0] == 0  # docs/outputs.md's


@pytest.mark.parametrize("name", ["", "a/b", "..", "../x", "a b", ".hidden", "x" * 101, "/abs", "a\\b", "é"])
def test_a_name_that_is_no_plain_folder_name_is_refused(tmp_path, name):
    status, _, stderr = run_with(tmp_path, "--name", name)
    assert status == 2 and error_line(stderr) == (
        f"error: NAME {name!r} is not a plain folder name; give letters, digits, '.', '_' or '-' (at most 100,"
        " starting with a letter or digit; no '/', '..' or spaces), e.g. --name cpu_quick."
    )
