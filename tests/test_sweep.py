"""scripts/sweep.py: what each run still needs, the shared workers and threads, what a run was trained with (its
data too), the executors' settings and the SLURM job script submitit writes, a job's steps, the ranking tables, and
(slow) real sweeps of tiny recipes on the CPU through submitit's local and debug executors: stopped by Ctrl-C,
continued with a failing recipe, re-run, scored on test, and killed with kill -9 then continued."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.errors import UserError
from dataset.synthetic import make_kvasir_folder
from tests.scripts import REPO, load_script, run_script

sweep = load_script("sweep")

TINY_RECIPE = "IMAGE_SIZE = 32\nBASE_CHANNELS = 4\nDEPTH = 2\nBATCH_SIZE = 4\nPANEL_EVERY = 100\n"
RECIPES = {  # long enough to be stopped mid-run; one epoch; refused by train.py (exit 2)
    "long": TINY_RECIPE + "EPOCHS = 30\n",
    "short": TINY_RECIPE + "EPOCHS = 1\nLEARNING_RATE = 0.01\n",
    "broken": TINY_RECIPE + "EPOCHS = 1\nLEARNING_RATE = 0\n",
}
EPOCH_LINE = re.compile(r"epoch +\d+  train loss")


def settings(**changes) -> dict:
    """The sweep's default settings, as read_settings leaves them, with `changes`."""
    config = {**sweep.script_constants(vars(sweep)), "TRAIN_FLAGS": [], **changes}
    return config


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")


# --- fast: the pieces, in this process ---------------------------------------------------------------------------


def test_next_step_trains_resumes_then_scores_each_missing_evaluation(tmp_path):
    run = sweep.RecipeRun(Path("configs/a.py"), 43, tmp_path / "a-seed43")
    config = settings(DATA_DIR="d", DEVICE="cpu", NUM_WORKERS=0, TRAIN_FLAGS=["--epochs", "3"])
    step = sweep.next_step(run, config)
    assert step.label == "training" and step.writes == run.folder / "summary.json"
    assert step.command[1:] == [
        str(REPO / "scripts" / "train.py"), "configs/a.py", "--seed", "43", "--output-dir", str(run.folder),
        "--checkpoint-path", str(run.folder / "best.pth"), "--data-dir", "d", "--device", "cpu", "--num-workers", "0",
        "--no-show-panels", "--overwrite", "--epochs", "3",
    ]  # fmt: skip
    touch(run.folder / "last.pth")
    step = sweep.next_step(run, config)
    assert step.label == "resuming" and "--resume" in step.command and "--overwrite" not in step.command
    touch(run.folder / "summary.json")
    labels = []
    while step := sweep.next_step(run, config):
        assert step.command[1] == str(REPO / "scripts" / "evaluate.py")
        assert step.command[-4:] == ["--json", str(step.writes), "--csv", str(step.writes.with_suffix(".csv"))]
        labels.append((step.label, step.command[4:7]))
        touch(step.writes)
    assert labels == [("scoring val_tta", ["--split", "val", "--tta"]), ("scoring val", ["--split", "val", "--no-tta"])]
    step = sweep.next_step(run, {**config, "TEST": True})
    assert step.label == "scoring test_tta" and step.command[4:7] == ["--split", "test", "--tta"]


@pytest.mark.parametrize(
    ("executor", "cpus", "parallel", "num_workers", "workers", "threads"),
    [
        ("local", 16, 3, -1, 5, "5"), ("local", 16, 1, -1, 8, "16"), ("local", 2, 2, -1, 1, "1"),
        ("local", 16, 3, 2, 2, "5"), ("debug", 16, 3, -1, 8, "16"), ("slurm", 2, 3, -1, 3, "4"),
    ],
)  # fmt: skip
def test_workers_and_threads_are_shared_among_the_runs_at_once(
    monkeypatch, executor, cpus, parallel, num_workers, workers, threads
):
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: cpus)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    config = settings(EXECUTOR=executor, PARALLEL=parallel, NUM_WORKERS=num_workers, SLURM_CPUS=4)
    assert sweep.workers_per_run(config) == workers
    environment = sweep.job_environment(config)
    assert environment["OMP_NUM_THREADS"] == threads and environment["PYTHONUNBUFFERED"] == "1"
    # submitit's local executor empties CUDA_VISIBLE_DEVICES; SLURM sets the job's own
    assert environment.get("CUDA_VISIBLE_DEVICES", "slurm's") == ("slurm's" if executor == "slurm" else "1,2")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert sweep.job_environment(config)["OMP_NUM_THREADS"] == "3"  # the user's own setting wins


def test_local_runs_take_one_gpu_each_when_there_are_several(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert sweep.pinned_gpus(settings(PARALLEL=3)) == ["2", "5"]
    assert sweep.job_environment(settings(PARALLEL=3), "5")["CUDA_VISIBLE_DEVICES"] == "5"
    for changes in ({"PARALLEL": 1}, {"DEVICE": "cuda:1"}, {"DEVICE": "cpu"}, {"EXECUTOR": "slurm"}):
        assert sweep.pinned_gpus(settings(**{"PARALLEL": 3, **changes})) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert sweep.pinned_gpus(settings(PARALLEL=3)) == []  # one GPU: every run on it
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert sweep.job_environment(settings())["CUDA_VISIBLE_DEVICES"] is None  # unset in the job, as here
    assert "CUDA_VISIBLE_DEVICES" not in sweep.merged_environment({"CUDA_VISIBLE_DEVICES": None, "A": "1"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("--epochs 5 --output-dir x", "TRAIN_FLAGS may not hold --output-dir: the sweep sets it for each run"),
        ("--seed=3", "TRAIN_FLAGS may not hold --seed=3"),
        ("--epochs '5", "cannot be split into flags: No closing quotation"),
        ("--see 7", "TRAIN_FLAGS may not hold --see (argparse reads it as --seed)"),
        ("--epochs 2 --no-t", "TRAIN_FLAGS may not hold --no-t (argparse reads it as --no-tensorboard)"),
        ("--dev=cpu", "TRAIN_FLAGS may not hold --dev=cpu (argparse reads it as --device)"),
        ("--fo 3", "TRAIN_FLAGS may not hold --fo (argparse reads it as --folds or --fold)"),
    ],
)
def test_train_flags_that_cannot_work_are_refused(text, message):
    with pytest.raises(UserError, match=re.escape(message)):
        sweep.train_flags(text)


def test_train_flags_of_other_settings_pass():
    flags = "--epochs 3 --resume-may-change --datasets kvasir --lr-x"
    assert sweep.train_flags(flags) == flags.split()


def test_missing_or_same_named_recipes_are_refused(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    for path in (tmp_path / "one" / "a.py", tmp_path / "two" / "a.py"):
        path.write_text("EPOCHS = 1\n")
    config = settings(SWEEP_DIR=str(tmp_path / "sweep"), SEEDS=[1, 2])
    with pytest.raises(UserError, match="recipe file .*missing.py not found"):
        sweep.plan_runs({**config, "recipe_files": [str(tmp_path / "missing.py")]})
    with pytest.raises(UserError, match="two recipes share a file name"):
        sweep.plan_runs({**config, "recipe_files": [str(tmp_path / "one" / "a.py"), str(tmp_path / "two" / "a.py")]})
    runs = sweep.plan_runs({**config, "recipe_files": [str(tmp_path / "one" / "a.py")]})
    assert [run.folder.name for run in runs] == ["a-seed1", "a-seed2"]


def test_a_run_that_an_earlier_sweeps_job_still_holds_is_busy_and_not_submitted(tmp_path, capsys):
    run = sweep.RecipeRun(Path("a.py"), 1, tmp_path / "a-seed1")
    with sweep.exclusive_lock(run.folder / sweep.JOB_LOCK, "x"):  # a job of a sweep killed with kill -9
        assert sweep.startable(run, settings(DATA_DIR="d"), {}) is False
    assert run.status == "busy" and f"still going in process {os.getpid()}, which an earlier sweep" in run.note
    assert "a seed 1: busy after" in capsys.readouterr().out
    touch(run.folder / "summary.json", run.folder / "val_tta.json", run.folder / "val.json")
    assert sweep.startable(run, settings(), {}) is False and run.status == "done"


def test_the_last_line_of_a_log_skips_progress_bars_and_blanks(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("$ train.py\nepoch 1/2:  50%|#  | 1/2\repoch 1/2: 100%\r   \rerror: EPOCHS must be at least 1.\n\n")
    assert sweep.last_line(log) == "error: EPOCHS must be at least 1."


def one_step_job(tmp_path, monkeypatch, code: str) -> tuple:
    """A run whose one step is `python -c code` (training, to write summary.json), and its job's config."""
    run = sweep.RecipeRun(Path("a.py"), 1, tmp_path / "a-seed1")
    run.folder.mkdir(exist_ok=True)
    command = [sys.executable, "-c", code]
    steps = iter([sweep.Step("training", command, run.folder / "summary.json")])
    monkeypatch.setattr(sweep, "next_step", lambda *_: next(steps, None))
    return run, settings()


@pytest.mark.parametrize(
    ("code", "status", "note"),
    [
        ("import os, signal; print('epoch 3'); os.kill(os.getpid(), signal.SIGKILL)", "failed",
         "training was killed by SIGKILL: epoch 3"),
        ("print('error: boom'); raise SystemExit(2)", "failed", "training exited 2: error: boom"),
        ("pass", "failed", "training exited 0: wrote no summary.json"),
        ("open('summary.json', 'w')", "done", ""),
    ],
    ids=["killed", "error", "no-output", "done"],
)  # fmt: skip
def test_a_job_settles_its_run_by_how_its_steps_ended(tmp_path, monkeypatch, code, status, note):
    run, config = one_step_job(tmp_path, monkeypatch, f"import os; os.chdir({str(tmp_path / 'a-seed1')!r}); {code}")
    outcome = sweep.run_job(run, config, {"PYTHONUNBUFFERED": "1"}, os.getpid())
    assert outcome == {"status": status, "note": note}
    assert f"$ {sys.executable} -c" in run.log.read_text()


def test_a_job_passes_each_stop_request_on_once_and_stops_the_run(tmp_path, monkeypatch):
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *_: print('got SIGINT', flush=True) or sys.exit(130))\n"
        "print('ready', flush=True)\ntime.sleep(60)"
    )
    run, config = one_step_job(tmp_path, monkeypatch, code)

    def ask_to_stop():
        # lines of the step's own output: the log's first line, the command, holds the words too
        wait_for(lambda: run.log.is_file() and "ready" in run.log.read_text().splitlines(), "the step", timeout=30)
        (run.folder / sweep.STOP_FILE).write_text("SIGINT\n")  # as the sweep writes it (Submitted.send_signal)

    asker = threading.Thread(target=ask_to_stop)
    asker.start()
    outcome = sweep.run_job(run, config, {}, os.getpid())
    asker.join()
    assert outcome == {"status": "stopped", "note": "training stopped; run the sweep again to continue"}
    assert run.log.read_text().splitlines().count("got SIGINT") == 1
    run, config = one_step_job(tmp_path, monkeypatch, code)
    assert sweep.run_job(run, config, {}, os.getpid()) == {  # a stop request left: the next step never starts
        "status": "stopped", "note": "training left; run the sweep again to continue",
    }  # fmt: skip


def test_a_job_whose_run_is_going_elsewhere_is_busy_and_a_folder_that_cannot_take_its_log_fails(tmp_path):
    run = sweep.RecipeRun(Path("a.py"), 1, tmp_path / "a-seed1")
    run.folder.mkdir()
    with sweep.exclusive_lock(run.folder / sweep.JOB_LOCK, "x"):
        outcome = sweep.run_job(run, settings(), {}, os.getpid())
        assert outcome["status"] == "busy" and sweep.lock_holder(run.folder / sweep.JOB_LOCK) == str(os.getpid())
    run.log.mkdir()  # run.log a folder: the log cannot be written
    outcome = sweep.run_job(run, settings(), {}, os.getpid())
    assert outcome["status"] == "failed" and str(run.log) in outcome["note"]


# --- what a run was trained with -----------------------------------------------------------------------------------


def test_a_run_trained_on_other_data_or_with_other_flags_is_refused(tmp_path):
    recipe = tmp_path / "a.py"
    recipe.write_text("EPOCHS = 1\n")
    make_kvasir_folder(tmp_path / "data", 4)
    config = settings(recipe_files=[str(recipe)], SWEEP_DIR=str(tmp_path / "sweep"), DATA_DIR=str(tmp_path / "data"))
    (run,) = sweep.plan_runs(config)
    digests = sweep.data_digests([run], config)
    assert list(digests) == ["kvasir"] and sweep.fingerprint_mismatch(run, config, digests) is None  # nothing yet
    run.folder.mkdir()
    (run.folder / "summary.json").write_text("{}")
    assert "no readable record" in sweep.fingerprint_mismatch(run, config, digests)
    fingerprint = sweep.run_fingerprint(run, config, digests)
    sweep.fingerprint_path(run).write_text(json.dumps(fingerprint))
    assert sweep.fingerprint_mismatch(run, config, digests) is None
    other = {**config, "DATA_DIR": str(tmp_path / "other")}
    make_kvasir_folder(tmp_path / "other", 5)
    with pytest.raises(UserError, match=r"a-seed42 was trained on other data than kvasir in this sweep's --data-dir"):
        sweep.refuse_foreign_runs([run], other, sweep.data_digests([run], other))
    image = next((tmp_path / "data" / "Kvasir-SEG" / "masks").iterdir())
    image.write_bytes(image.read_bytes() + b"edited")  # an edited mask
    assert "other data" in sweep.fingerprint_mismatch(run, config, sweep.data_digests([run], config))
    sweep.fingerprint_path(run).write_text(json.dumps({**fingerprint, "data": None}))  # an older sweep's record
    assert "predates data fingerprints" in sweep.fingerprint_mismatch(run, config, digests)
    sweep.fingerprint_path(run).write_text(json.dumps({**fingerprint, "seed": 7}))
    assert "and seed 7, not '' and seed 42" in sweep.fingerprint_mismatch(run, config, digests)


def test_the_data_of_a_folder_dataset_is_its_images_masks_and_test_list(tmp_path):
    make_kvasir_folder(tmp_path / "own", 4)
    folder = tmp_path / "own" / "Kvasir-SEG"
    spec = f"own={folder}"
    recipe = tmp_path / "a.py"
    recipe.write_text(f"DATASETS = [{spec!r}]\n")
    run = sweep.RecipeRun(recipe, 1, tmp_path / "run")
    assert sweep.run_datasets(run, settings()) == [spec] and not sweep.uses_kvasir(run, settings())
    assert sweep.run_datasets(run, settings(TRAIN_FLAGS=["--datasets", "kvasir", "--epochs", "2"])) == ["kvasir"]
    before = sweep.data_digest(spec, "unused")
    (folder / "test.txt").write_text("1\n")
    assert sweep.data_digest(spec, "unused") != before
    with pytest.raises(UserError, match="is no folder"):
        sweep.data_digest(f"own={tmp_path / 'missing'}:x", "unused")


# --- the executors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"EXECUTOR": "cloud"}, "EXECUTOR must be one of local, slurm, debug, not 'cloud'."),
        ({"SLURM_TIME": 0}, "SLURM_TIME (minutes) and SLURM_CPUS must be at least 1, SLURM_GPUS at least 0."),
        ({"SLURM_GPUS": -1}, "SLURM_GPUS at least 0"),
        ({"EXECUTOR": "slurm"}, "EXECUTOR slurm needs SLURM's sbatch and srun, which are not on this machine's PATH"),
    ],
)
def test_executor_settings_that_cannot_work_are_refused(monkeypatch, changes, message):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match=re.escape(message)):
        sweep.check_executor(settings(**changes))


def test_a_jobs_dir_that_is_a_file_or_read_only_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # make_executor sets it; restored after
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="JOBS_DIR .*file is a file, not a folder"):
        sweep.make_executor(settings(JOBS_DIR=str(tmp_path / "file")))
    with pytest.raises(UserError, match=r"cannot write into /sys/jobs \(JOBS_DIR\): (Operation not permitted|Perm)"):
        sweep.make_executor(settings(JOBS_DIR="/sys/jobs"))  # read-only, also for root


def test_a_bad_executor_setting_is_one_line_of_error(tmp_path):
    (tmp_path / "a.py").write_text("EPOCHS = 1\n")
    result = run_script("sweep", tmp_path / "a.py", "--executor", "cloud", "--sweep-dir", tmp_path / "sweep")
    assert (result.returncode, result.stderr) == (
        2,
        "error: EXECUTOR must be one of local, slurm, debug, not 'cloud'.\n",
    )
    result = run_script("sweep", tmp_path / "a.py", "--slurm-time", "a day")
    assert result.returncode == 2 and "argument --slurm-time: invalid int value: 'a day'" in result.stderr


def test_slurm_submission_writes_one_job_array_script(tmp_path, monkeypatch):
    """Up to sbatch, with stand-ins for sbatch and srun (no cluster here): the job script submitit generates."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", "echo Submitted batch job 4242"), ("srun", "exit 0")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{text}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    config = settings(
        EXECUTOR="slurm", SWEEP_DIR=str(tmp_path / "sweep"), PARALLEL=2, SLURM_PARTITION="gpu", SLURM_TIME=90,
        SLURM_CPUS=6, SLURM_SETUP=["module load cuda", "source .venv/bin/activate"],
    )  # fmt: skip
    sweep.check_executor(config)
    runs = [sweep.RecipeRun(Path("a.py"), seed, tmp_path / "sweep" / f"a-seed{seed}") for seed in (1, 2, 3)]
    submitted = sweep.submit(sweep.make_executor(config), runs, [None] * 3, config)
    assert [item.job.job_id for item in submitted] == ["4242_0", "4242_1", "4242_2"]
    script = submitted[0].job.paths.submission_file.read_text()
    folder = submitted[0].job.paths.folder
    for line in (
        "#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=6", "#SBATCH --ntasks-per-node=1", "#SBATCH --job-name=sweep-sweep",
        f"#SBATCH --output={folder}/%A_%a_0_log.out", "# setup\nmodule load cuda\nsource .venv/bin/activate\n",
        f"srun --unbuffered --output {folder}/%A_%a_%t_log.out {sys.executable} -u -m submitit.core._submit {folder}",
    ):  # fmt: skip
        assert line in script, script
    assert folder.parent == tmp_path / "sweep" / "jobs" and all(run.status == "running" for run in runs)


def fake_run(tmp_path, recipe: str, seed: int, dice: float | None, status="done"):
    """A run whose folder holds a summary.json and evaluation JSONs around `dice` (none when None); every number
    is a binary fraction, so that the tables' values can be compared exactly."""
    run = sweep.RecipeRun(Path(f"configs/{recipe}.py"), seed, tmp_path / f"{recipe}-seed{seed}", status=status)
    run.folder.mkdir()
    if dice is None:
        return run
    summary = {"best_epoch": seed, "best_val_dice": dice - 0.25, "wall_seconds": 60.0 * seed, "images_per_second": 9.5}
    (run.folder / "summary.json").write_text(json.dumps(summary))
    for name, offset in (("val_tta", 0.0), ("val", -0.125)):
        report = {"summary": {"mean": {"dice": dice + offset, "iou": (dice + offset) / 2}}}
        (run.folder / f"{name}.json").write_text(json.dumps(report))
    return run


def test_ranking_tables_rank_runs_and_recipe_means_by_val_dice_with_tta(tmp_path):
    runs = [
        fake_run(tmp_path, "a", 1, 0.5),
        fake_run(tmp_path, "a", 2, 0.875),
        fake_run(tmp_path, "b", 1, 0.75),
        fake_run(tmp_path, "b", 2, 0.5625),
        fake_run(tmp_path, "c", 1, None, status="failed"),
    ]
    runs[-1].note = "training exited 2: error: x | y"
    markdown = sweep.write_ranking(runs, settings(SWEEP_DIR=str(tmp_path)))
    rows = read_csv(tmp_path / "ranking.csv")
    assert [(row["rank"], row["recipe"], row["seed"], row["val_tta_dice"]) for row in rows] == [
        ("1", "a", "2", "0.875"), ("2", "b", "1", "0.75"), ("3", "b", "2", "0.5625"), ("4", "a", "1", "0.5"),
        ("", "c", "1", ""),
    ]  # fmt: skip
    assert (rows[0]["val_dice"], rows[0]["val_dice_train_size"], rows[0]["minutes"]) == ("0.75", "0.625", "2.0")
    recipes = read_csv(tmp_path / "ranking_recipes.csv")
    assert [(row["rank"], row["recipe"], row["runs"]) for row in recipes] == [
        ("1", "a", "2/2"), ("2", "b", "2/2"), ("", "c", "0/1"),
    ]  # fmt: skip
    assert float(recipes[0]["val_tta_dice"]) == 0.6875 and float(recipes[1]["best_epoch"]) == 1.5
    assert float(recipes[0]["val_tta_dice_std"]) == pytest.approx(0.375 / 2**0.5)  # the sample std over seeds
    assert recipes[2]["val_tta_dice"] == ""
    assert (tmp_path / "ranking.md").read_text() == markdown
    assert "| 1 | a | 2 | done | 2 | 0.8750 | 0.4375 | 0.7500 | 0.3750 | 0.6250 | 2.0 | 9.5 |  |" in markdown
    assert "|  | c | 1 | failed |  |  |  |  |  |  |  |  | training exited 2: error: x \\| y |" in markdown
    assert "| 1 | a | 2/2 | 1.5 | 0.6875 | 0.2652 | 0.3438 |" in markdown
    assert "with TTA (8 views: flips and quarter turns, averaged) and without" in markdown


def test_folds_give_one_run_per_recipe_seed_and_fold_in_the_folder_of_its_partition(tmp_path):
    (tmp_path / "a.py").write_text("")
    config = settings(recipe_files=[str(tmp_path / "a.py")], SWEEP_DIR=str(tmp_path / "sweep"), SEEDS=[1, 2], FOLDS=3)
    runs = sweep.plan_runs(config)
    assert [(run.seed, run.fold, run.folder.relative_to(tmp_path / "sweep").as_posix()) for run in runs] == [
        (seed, fold, f"a-seed{seed}-folds3/fold{fold}") for seed in (1, 2) for fold in range(3)
    ]
    assert runs[4].name == "a seed 2 fold 1"
    command = sweep.next_step(runs[4], {**config, "TRAIN_FLAGS": ["--epochs", "3"]}).command
    assert command[command.index("--folds") : command.index("--folds") + 4] == ["--folds", "3", "--fold", "1"]
    with pytest.raises(UserError, match="FOLDS 1 gives no cross-validation"):
        sweep.check_folds(1, 0)
    with pytest.raises(UserError, match="TRAIN_FLAGS may not hold --fold"):
        sweep.train_flags("--fold 2")


def test_ranking_of_folds_takes_the_mean_and_spread_over_folds(tmp_path):
    runs = []
    for fold, dice in enumerate((0.5, 0.75, 0.625)):
        run = fake_run(tmp_path, f"a-fold{fold}", 42, dice)
        run.recipe, run.fold = Path("configs/a.py"), fold
        runs.append(run)
    runs.append(fake_run(tmp_path, "b", 42, 0.6875))
    runs[-1].fold = 0  # one fold of b finished, of three
    runs.append(sweep.RecipeRun(Path("configs/b.py"), 42, tmp_path / "b-1", fold=1, status="failed"))
    markdown = sweep.write_ranking(runs, settings(SWEEP_DIR=str(tmp_path), FOLDS=3))
    recipes = read_csv(tmp_path / "ranking_recipes.csv")
    assert [(row["recipe"], row["runs"]) for row in recipes] == [("b", "1/2"), ("a", "3/3")]
    assert float(recipes[1]["val_tta_dice"]) == 0.625 and float(recipes[1]["val_tta_dice_std"]) == 0.125
    assert [row["fold"] for row in read_csv(tmp_path / "ranking.csv")][:4] == ["1", "0", "2", "0"]
    assert "## Recipes: mean over folds of the completed runs, ranked by mean full-size val Dice with TTA" in markdown
    assert "± std over folds" in markdown and "its own fold of a 3-fold partition" in markdown
    sweep.write_ranking(runs, settings(SWEEP_DIR=str(tmp_path), FOLDS=3, SEEDS=[42, 43]))
    assert "mean over seeds and folds" in (tmp_path / "ranking.md").read_text()


# --- slow: a real sweep on the CPU ----------------------------------------------------------------------------------


def sweep_command(tmp_path, *recipes: str, seeds=("42", "43"), flags=()) -> list[str]:
    """The arguments of a CPU sweep of tmp_path/<recipe>.py on the synthetic data in tmp_path/data."""
    return [
        *(str(tmp_path / f"{recipe}.py") for recipe in recipes), "--seeds", *seeds, "--parallel", "2",
        "--sweep-dir", str(tmp_path / "sweep"), "--data-dir", str(tmp_path / "data"), "--device", "cpu",
        "--num-workers", "0", *flags,
    ]  # fmt: skip


def wait_for(condition, what: str, timeout: float = 120):
    """The first true value of `condition()`, polled every 50 ms."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def read_csv(path) -> list[dict]:
    with open(path) as file:
        return list(csv.DictReader(file))


def interrupted_sweep(tmp_path, command: list[str]) -> dict:
    """Start the sweep in its own session, press Ctrl-C (SIGINT to its group) as soon as one of the two `long` runs
    has finished an epoch, and return the sweep's exit status and output, which run that was, and the state left."""
    output = open(tmp_path / "interrupted.txt", "w+")  # noqa: SIM115
    environment = {**os.environ, "MPLBACKEND": "Agg", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "sweep.py"), *command],
        stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=environment,
    )  # fmt: skip
    logs = {seed: tmp_path / "sweep" / f"long-seed{seed}" / "run.log" for seed in ("42", "43")}
    try:
        trained = wait_for(
            lambda: [seed for seed, log in logs.items() if log.is_file() and EPOCH_LINE.search(log.read_text())],
            "an epoch line in a log",
        )
        os.killpg(process.pid, signal.SIGINT)
        status = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output.seek(0)
    return {
        "status": status,
        "output": output.read(),
        "trained": trained[0],  # the seed of the run known to be inside its epochs when the signal came
        "logs": {seed: log.read_text() for seed, log in logs.items()},
        "files": {seed: {path.name for path in log.parent.iterdir()} for seed, log in logs.items()},
        "ranking": read_csv(tmp_path / "sweep" / "ranking.csv"),
    }


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Two tiny recipes and a broken one x seeds 42 and 43, two runs at a time: stopped by Ctrl-C during the first
    runs, run again to the end, then again (nothing left to do), then once more for one run with --test."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    make_kvasir_folder(tmp_path / "data", 12)
    for name, text in RECIPES.items():
        (tmp_path / f"{name}.py").write_text(text)
    command = sweep_command(tmp_path, "long", "short", "broken")
    results = {"interrupted": interrupted_sweep(tmp_path, command)}
    finished = run_script("sweep", *command)
    results["finished"] = {
        "result": finished,
        "runs": read_csv(tmp_path / "sweep" / "ranking.csv"),
        "recipes": read_csv(tmp_path / "sweep" / "ranking_recipes.csv"),
        "markdown": (tmp_path / "sweep" / "ranking.md").read_text(),
        "logs": {path.parent.name: path.read_text() for path in (tmp_path / "sweep").glob("*/run.log")},
    }
    results["again"] = run_script("sweep", *sweep_command(tmp_path, "long", "short"))
    results["test"] = run_script("sweep", *sweep_command(tmp_path, "short", seeds=["42"], flags=["--test"]))
    return tmp_path, results


@pytest.mark.slow
def test_ctrl_c_stops_the_running_runs_which_save_their_state(sweeps):
    _, results = sweeps
    interrupted = results["interrupted"]
    assert interrupted["status"] == 130, interrupted["output"][-3000:]
    assert "SIGINT received: stopping 2 running process(es), no new runs" in interrupted["output"]
    trained = interrupted["trained"]  # train.py got the signal once, inside its epochs: it saved and stopped
    assert "SIGINT received: saving after this step" in interrupted["logs"][trained]
    assert "continue with --resume" in interrupted["logs"][trained] and "Traceback" not in interrupted["logs"][trained]
    assert "last.pth" in interrupted["files"][trained]
    statuses = {(row["recipe"], row["seed"]): (row["status"], row["note"]) for row in interrupted["ranking"]}
    for seed in ("42", "43"):  # the other run too, though maybe before its first epoch
        status, note = statuses[("long", seed)]  # the other run's job may not have started its step yet
        assert status == "stopped" and re.fullmatch(r"training (stopped|left); run the sweep again to continue", note)
        assert "summary.json" not in interrupted["files"][seed]
    assert statuses[("short", "42")] == ("pending", "not started; run the sweep again to continue")
    assert "# Recipe ranking: 6 runs in" in interrupted["output"]  # the table of what finished, printed


@pytest.mark.slow
def test_running_again_resumes_the_stopped_runs_and_reports_the_failed_one(sweeps):
    tmp_path, results = sweeps
    finished = results["finished"]
    result = finished["result"]
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # the broken recipe failed
    log = finished["logs"][f"long-seed{results['interrupted']['trained']}"]
    assert "--resume" in log.split("\n$ ")[2] and "resuming" in log  # the second command continued the run
    for seed in ("42", "43"):
        history = read_csv(tmp_path / "sweep" / f"long-seed{seed}" / "history.csv")
        assert [int(row["epoch"]) for row in history] == list(range(1, 31))
        assert f"broken seed {seed}: failed after" in result.stdout
    statuses = {(row["recipe"], row["seed"]): (row["status"], row["note"]) for row in finished["runs"]}
    assert statuses[("broken", "42")] == ("failed", "training exited 2: error: LEARNING_RATE must be > 0.")
    assert [status for (recipe, _), (status, _) in statuses.items() if recipe != "broken"] == ["done"] * 4


@pytest.mark.slow
def test_ranking_tables_hold_the_evaluation_scores_in_order(sweeps):
    tmp_path, results = sweeps
    runs, recipes = results["finished"]["runs"], results["finished"]["recipes"]
    assert len(runs) == 6 and sorted(row["recipe"] for row in recipes[:2]) == ["long", "short"]
    assert recipes[2]["recipe"] == "broken"
    done = [row for row in runs if row["status"] == "done"]
    assert [int(row["rank"]) for row in done] == [1, 2, 3, 4] and runs[4]["rank"] == runs[5]["rank"] == ""
    scores = [float(row["val_tta_dice"]) for row in done]
    assert scores == sorted(scores, reverse=True)
    for row in done:
        folder = Path(row["folder"])
        summary = json.loads((folder / "summary.json").read_text())
        assert (int(row["best_epoch"]), float(row["val_dice_train_size"])) == (
            summary["best_epoch"], summary["best_val_dice"]
        )  # fmt: skip
        assert float(row["images_per_second"]) == summary["images_per_second"]
        for name in ("val_tta", "val"):
            mean = json.loads((folder / f"{name}.json").read_text())["summary"]["mean"]
            assert (float(row[f"{name}_dice"]), float(row[f"{name}_iou"])) == (mean["dice"], mean["iou"])
        assert "test_tta_dice" not in row  # the test split only with --test
    for recipe in recipes[:2]:
        seeds = [float(row["val_tta_dice"]) for row in done if row["recipe"] == recipe["recipe"]]
        assert recipe["runs"] == "2/2" and float(recipe["val_tta_dice"]) == pytest.approx(sum(seeds) / 2)
    assert float(recipes[0]["val_tta_dice"]) >= float(recipes[1]["val_tta_dice"])
    markdown = results["finished"]["markdown"]
    assert "## Recipes: mean over seeds of the completed runs, ranked by mean full-size val Dice with TTA" in markdown
    assert markdown in results["finished"]["result"].stdout


@pytest.mark.slow
def test_running_again_reuses_finished_runs_and_test_scores_only_with_the_flag(sweeps):
    tmp_path, results = sweeps
    again, test = results["again"], results["test"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier, its scores are reused") == 4 and "training" not in again.stdout
    logs = results["finished"]["logs"]
    assert (tmp_path / "sweep" / "long-seed42" / "run.log").read_text() == logs["long-seed42"]  # nothing ran
    assert test.returncode == 0, test.stderr[-3000:]
    log = (tmp_path / "sweep" / "short-seed42" / "run.log").read_text()
    new_commands = log.removeprefix(logs["short-seed42"]).split("\n$ ")[1:]
    assert len(new_commands) == 1 and "--split test --tta" in new_commands[0]  # no training, val scores reused
    (row,) = read_csv(tmp_path / "sweep" / "ranking.csv")
    mean = json.loads((tmp_path / "sweep" / "short-seed42" / "test_tta.json").read_text())["summary"]["mean"]
    assert (float(row["test_tta_dice"]), float(row["test_tta_iou"])) == (mean["dice"], mean["iou"])
    assert "test Dice TTA" in test.stdout and "never used to rank" in test.stdout


def session_processes(session: int) -> list[int]:
    """The processes of a session (the sweep's, started with start_new_session: its jobs and their steps too)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[3]) == session:  # after the state, ppid and pgrp
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """A sweep of a 30-epoch recipe (saving every epoch) then a one-epoch one through the local executor, one run at
    a time, killed with kill -9 with all its jobs and their steps as a crash would, once the long run has saved an
    epoch; then run again to the end, and once more through the debug executor, with --test."""
    tmp_path = tmp_path_factory.mktemp("crash")
    make_kvasir_folder(tmp_path / "data", 12)
    (tmp_path / "saving.py").write_text(RECIPES["long"] + "SAVE_EVERY = 0.0\n")
    (tmp_path / "short.py").write_text(RECIPES["short"])
    command = sweep_command(tmp_path, "saving", "short", seeds=["42"], flags=["--parallel", "1"])
    environment = {**os.environ, "MPLBACKEND": "Agg", "NO_ALBUMENTATIONS_UPDATE": "1"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "sweep.py"), *command], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True, env=environment,
    )  # fmt: skip
    log = tmp_path / "sweep" / "saving-seed42" / "run.log"
    try:
        wait_for(lambda: log.is_file() and len(EPOCH_LINE.findall(log.read_text())) >= 2, "two epoch lines")
    finally:
        for pid in session_processes(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.wait()
    killed_at = {"last.pth": (log.parent / "last.pth").is_file()}
    rerun = run_script("sweep", *command)
    killed_at["ranking"] = read_csv(tmp_path / "sweep" / "ranking.csv")
    flags = ["--executor", "debug", "--test"]
    return tmp_path, killed_at, rerun, run_script("sweep", *sweep_command(tmp_path, "short", seeds=["42"], flags=flags))


@pytest.mark.slow
def test_a_sweep_killed_with_kill_9_is_completed_by_running_it_again(crashed):
    tmp_path, killed_at, rerun, _ = crashed
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert killed_at["last.pth"] and "saving seed 42: resuming" in rerun.stdout
    history = read_csv(tmp_path / "sweep" / "saving-seed42" / "history.csv")
    assert [int(row["epoch"]) for row in history] == list(range(1, 31))  # the killed epochs trained again, once
    assert [row["status"] for row in killed_at["ranking"]] == ["done", "done"]
    assert len(list((tmp_path / "sweep" / "jobs").iterdir())) == 3  # a folder of submitit's files per sweep started


@pytest.mark.slow
def test_the_debug_executor_runs_the_jobs_in_the_sweeps_own_process(crashed):
    tmp_path, _, _, debug = crashed
    assert debug.returncode == 0, debug.stdout[-3000:] + debug.stderr[-3000:]
    assert "short seed 42: scoring test_tta" in debug.stdout and "test Dice TTA" in debug.stdout
    (row,) = read_csv(tmp_path / "sweep" / "ranking.csv")
    assert row["status"] == "done" and row["test_tta_dice"] != ""
