"""scripts/sweep.py never reuses a run of another recipe, fetches Kvasir-SEG only for runs that need it, runs
offline on own data, and does not call a still-running run failed."""

import json

import pytest

from common.config import script_constants
from common.errors import UserError
from common.files import lock_holder
from tests.scripts import load_script, run_script
from tests.train_runs import lock_held_elsewhere

sweep = load_script("sweep")


def sweep_settings(tmp_path, **changes) -> dict:
    recipe = tmp_path / "a.py"
    if not recipe.exists():
        recipe.write_text("EPOCHS = 1\n")
    config = {**script_constants(vars(sweep)), "TRAIN_FLAGS": [], "recipe_files": [str(recipe)]}
    return {**config, "SWEEP_DIR": str(tmp_path / "sweep"), **changes}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("recipe edited", "was trained with another content of a.py"),
        ("train flags", "was trained with --train-flags '' and seed 42, not '--epochs 2'"),
        ("no record", "holds a run with no readable record of its recipe"),
        ("record damaged", "holds a run with no readable record of its recipe"),
    ],
)
def test_a_sweep_never_reuses_a_run_of_another_recipe(tmp_path, change, message):
    config = sweep_settings(tmp_path)
    (run,) = sweep.plan_runs(config)
    run.folder.mkdir(parents=True)
    digests = {"kvasir": "digest of its files"}  # the data's, as sweep.data_digests gives it
    (run.folder / "recipe.json").write_text(json.dumps(sweep.run_fingerprint(run, config, digests)))
    (run.folder / "summary.json").write_text("{}")
    sweep.refuse_foreign_runs([run], config, digests)  # the same recipe, seed, flags and data: reused
    if change == "recipe edited":
        run.recipe.write_text("EPOCHS = 2\n")
    elif change == "train flags":
        config["TRAIN_FLAGS"] = ["--epochs", "2"]
    elif change == "no record":
        (run.folder / "recipe.json").unlink()
    else:
        (run.folder / "recipe.json").write_text("{not json")
    with pytest.raises(UserError, match="another --sweep-dir, or delete that folder") as refused:
        sweep.refuse_foreign_runs([run], config, digests)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("recipe", "flags", "fetches"),
    [
        ("DATASETS = ['mine=/data/mine']\n", [], False),
        ("EPOCHS = 1\n", ["--datasets", "mine=/data/mine", "--epochs", "2"], False),
        ("EPOCHS = 1\n", ["--datasets=mine=/data/mine"], False),
        ("EPOCHS = 1\n", [], True),
        ("DATASETS = ['kvasir', 'mine=/data/mine']\n", [], True),
        ("DATASETS = ['mine=/data/mine']\n", ["--datasets", "KVASIR"], True),
    ],
)
def test_a_sweep_fetches_kvasir_only_for_runs_that_train_on_it(tmp_path, recipe, flags, fetches):
    (tmp_path / "a.py").write_text(recipe)
    (run,) = sweep.plan_runs(sweep_settings(tmp_path))
    assert sweep.uses_kvasir(run, sweep_settings(tmp_path, TRAIN_FLAGS=flags)) is fetches


def test_a_sweep_of_own_data_runs_offline(kvasir_dir, tmp_path):
    recipe = tmp_path / "own.py"
    recipe.write_text(f"DATASETS = ['mine={kvasir_dir / 'Kvasir-SEG'}']\nEPOCHS = 0\n")
    result = run_script(
        "sweep", recipe, "--sweep-dir", tmp_path / "sweep", "--data-dir", tmp_path / "empty", "--device", "cpu",
        "--num-workers", "0",
    )  # fmt: skip
    assert "downloading" not in result.stdout and not (tmp_path / "empty").exists()
    assert "EPOCHS must be at least 1" in result.stdout  # the run itself started (and failed on its recipe)


def test_a_run_still_going_from_a_killed_sweep_is_not_called_failed(tmp_path, capsys):
    config = sweep_settings(tmp_path)
    (run,) = sweep.plan_runs(config)
    with lock_held_elsewhere(run.folder / "train.lock") as holder:
        assert lock_holder(run.folder / "train.lock") == str(holder)
        assert sweep.startable(run, config, {}) is False
    assert run.status == "busy" and f"still going in process {holder}" in run.note
    assert f"kill {holder}" in capsys.readouterr().out
    assert lock_holder(run.folder / "train.lock") is None
