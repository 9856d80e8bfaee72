"""A run never destroys what a user made: another run's model, a foreign file at the checkpoint path, a
recipe file's destructive switch, a second sweep on one folder (troubleshooting rows on run folders)."""

import pytest

from common.config import read_recipe, script_constants
from common.errors import UserError
from tests.scripts import load_script, run_script
from tests.train_runs import error_line, lock_held_elsewhere, train_in_process, train_script

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
