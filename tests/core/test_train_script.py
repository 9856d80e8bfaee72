"""`python scripts/train.py` end to end on synthetic data, as a user runs it: in a subprocess."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dataset.kvasir import prepare_kvasir_seg
from dataset.splits import make_split
from dataset.synthetic import make_kvasir_folder
from model import build_network, load_model
from tests.scripts import REPO, run_script
from tests.train_runs import TINY, error_line, read_history, run_in_process, train, train_in_process
from utils.losses import LOSSES
from utils.training import probed_seconds
from utils.validation import THRESHOLDS


@pytest.fixture(params=[[], ["--ema-decay", "0.9"]], ids=["weights", "moving-average"])
def trained(kvasir_dir, tmp_path, request):
    flags = ["--epochs", "3", "--panel-every", "2", *request.param]
    return tmp_path, train(tmp_path, *flags), flags


@pytest.mark.slow
def test_run_writes_checkpoint_panels_and_history(trained):
    tmp_path, result, _ = trained
    run = tmp_path / "run"
    assert "device: cpu" in result.stdout and "val Dice" in result.stdout
    assert "estimated time left: " in result.stdout and "steps left" in result.stdout
    assert sorted(p.name for p in (run / "panels").iterdir()) == ["epoch_002.png", "epoch_003.png"]
    history = read_history(run / "history.csv")
    assert [row["epoch"] for row in history] == ["1", "2", "3"]
    checkpoint = torch.load(run / "best.pth", weights_only=True)
    assert checkpoint["builder"] == {"name": "unet", "kwargs": {"base_channels": 4, "depth": 2}}
    assert checkpoint["preprocessing"]["image_size"] == 32
    best = max(history, key=lambda row: float(row["val_dice"]))
    assert checkpoint["epoch"] == int(best["epoch"])
    assert checkpoint["metrics"]["val_dice"] == pytest.approx(float(best["val_dice"]))
    assert checkpoint["config"]["LEARNING_RATE"] == 1e-3 and checkpoint["config"]["EPOCHS"] == 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["best_epoch"] == checkpoint["epoch"]
    assert summary["images_trained"] == 3 * (len(checkpoint["split"]["train"]) // 4) * 4 and summary["wall_seconds"] > 0
    assert f"training images at {summary['images_per_second']:.1f} images/s end to end" in result.stdout


@pytest.mark.slow
def test_checkpoint_reproduces_its_validation_dice_in_a_fresh_process(trained):
    tmp_path, _, _ = trained
    script = textwrap.dedent(f"""
        import torch
        from torch.utils.data import DataLoader
        from dataset.kvasir import prepare_kvasir_seg
        from dataset.segmentation import PolypDataset
        from dataset.splits import make_split
        from dataset.transforms import build_transform
        from model import load_checkpoint, load_model
        from utils.validation import validate
        from utils.losses import bce_dice_loss

        path = {str(tmp_path / "run" / "best.pth")!r}
        checkpoint, model = load_checkpoint(path), load_model(path)
        config = checkpoint["config"]
        pairs = {{p[0]: p for p in prepare_kvasir_seg(config["DATA_DIR"])}}
        split = make_split(sorted(pairs), config["VAL_FRACTION"], config["SEED"])
        val = PolypDataset([pairs[i] for i in split.val], config["IMAGE_SIZE"], build_transform("none"))
        scores = validate(model, DataLoader(val, batch_size=3), bce_dice_loss, torch.device("cpu"))
        print(repr(scores["dice"]), repr(checkpoint["metrics"]["val_dice"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    reproduced, recorded = map(float, result.stdout.split()[-2:])
    assert reproduced == pytest.approx(recorded, abs=1e-6)


@pytest.mark.slow
def test_same_settings_give_the_same_history(trained):
    tmp_path, _, flags = trained
    train(tmp_path, *flags, name="again")
    assert read_history(tmp_path / "again" / "history.csv") == read_history(tmp_path / "run" / "history.csv")


def test_moving_average_is_kept_beside_the_trained_weights(kvasir_dir, tmp_path):
    status, _, stderr = train_in_process(tmp_path, "--epochs", "2", "--ema-decay", "0.5")
    assert status == 0, stderr[-2000:]
    last = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    train_ids = make_split(sorted(sample_id for sample_id, _, _ in prepare_kvasir_seg(kvasir_dir)), 0.1, 42).train
    assert last["ema_state"]["n_averaged"] == 2 * (len(train_ids) // 4)  # updated after every step (batch size 4)
    averaged = {key.removeprefix("module."): value for key, value in last["ema_state"].items() if key != "n_averaged"}
    assert averaged.keys() == last["model_state"].keys()
    assert not all(torch.equal(averaged[key], last["model_state"][key]) for key in averaged)


@pytest.mark.slow
def test_bad_setting_is_refused_by_the_script_before_any_work(tmp_path):
    result = train(tmp_path, "--batch-size", "0", check=False)
    assert result.returncode == 2
    assert "BATCH_SIZE must be at least 1" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was downloaded or written


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learning-rate", "0"], "LEARNING_RATE must be > 0"),
        (["--learning-rate", "-0.1"], "LEARNING_RATE must be > 0"),
        (["--learning-rate", "nan"], "LEARNING_RATE must be > 0"),
        (["--val-fraction", "0"], "VAL_FRACTION must be between 0 and 1"),
        (["--val-fraction", "1"], "VAL_FRACTION must be between 0 and 1"),
        (["--val-fraction", "1.5"], "VAL_FRACTION must be between 0 and 1"),
        (["--image-size", "4"], "IMAGE_SIZE must be at least 8"),
        (["--augmentation", "wild"], "AUGMENTATION must be one of"),
        (["--threads", "-1"], "THREADS must be >= 0"),
        (
            ["--image-size", "16", "--depth", "4"],
            "IMAGE_SIZE must be at least 32 for MODEL unet (base_channels 4, depth 4)",
        ),
        (["--bce-weight", "inf"], "BCE_WEIGHT and DICE_WEIGHT must be finite"),
        (["--dice-weight", "-1"], "BCE_WEIGHT and DICE_WEIGHT must be finite, >= 0"),
        (["--device", "cuda"], "DEVICE='cuda' but no CUDA GPU is visible"),
        (["--seed", "-1"], "SEED must be a whole number from 0 to 2**32 - 1"),
        (["--num-workers=-5"], "NUM_WORKERS must be >= 0, or -1 to pick one per CPU core"),
        (["--base-channels", "100000", "--depth", "4"], "has 75,740,023 M parameters, more than the 2,000 M"),
        (["--save-every=-1"], "SAVE_EVERY must be >= 0 seconds"),
        (["--stop-check-steps", "0"], "STOP_CHECK_STEPS must be at least 1"),
        (["--grad-clip", "nan"], "GRAD_CLIP must be >= 0"),
        (["--loss", "wild"], f"LOSS must be one of {', '.join(LOSSES)}"),
        (["--loss", "focal", "--focal-gamma", "inf"], "FOCAL_ALPHA, FOCAL_GAMMA (LOSS focal) must be finite numbers"),
        (["--folds", "1"], "FOLDS 1 gives no cross-validation"),
        (["--folds", "5", "--fold", "5"], "FOLD 5 is not a fold of FOLDS 5; give 0 to 4."),
        (["--fold", "2"], "FOLD 2 is not a fold of FOLDS 0"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, monkeypatch, flags, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    status, _, stderr = train_in_process(tmp_path, *flags)
    assert status == 2 and message in error_line(stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no data, output or checkpoint folder


@pytest.mark.slow
@pytest.mark.parametrize("fraction", ["0.999", "0.95"])
def test_a_validation_fraction_that_leaves_a_part_empty_is_refused(kvasir_dir, tmp_path, fraction):
    status, _, stderr = train_in_process(tmp_path, "--epochs", "1", "--val-fraction", fraction)
    assert status == 2 and f"VAL_FRACTION {fraction} leaves" in error_line(stderr)


def test_failed_download_exits_with_one_line_saying_where_to_put_the_zip(tmp_path):
    result = train(tmp_path, "--data-url", "http://127.0.0.1:9/x.zip", check=False)
    assert result.returncode == 2
    message = error_line(result.stderr)
    assert "could not download http://127.0.0.1:9/x.zip: could not connect (no network?)" in message
    assert f"save it as {tmp_path / 'data' / 'kvasir-seg.zip'}, then run again" in message
    assert [p.name for p in (tmp_path / "data").iterdir()] == [".kvasir.lock"]  # nothing to take for the dataset


@pytest.mark.slow
def test_recipe_file_applies_before_flags(kvasir_dir, tmp_path):
    recipe = str(REPO / "configs" / "seed.py")
    train(tmp_path, recipe, "--epochs", "1", *TINY)
    config = torch.load(tmp_path / "run" / "best.pth", weights_only=True)["config"]
    assert config["RECIPES"] == [recipe] and config["EPOCHS"] == 1 and config["LEARNING_RATE"] == 1e-5


def test_a_new_run_does_not_replace_an_earlier_one_unless_told(kvasir_dir, tmp_path):
    assert train_in_process(tmp_path, "--epochs", "2", "--panel-every", "1")[0] == 0
    run = tmp_path / "run"
    before = {path.name: path.read_bytes() for path in [run / "best.pth", run / "last.pth", run / "history.csv"]}
    status, _, stderr = train_in_process(tmp_path, "--epochs", "1")
    assert status == 2
    message = error_line(stderr)
    assert f"an earlier run's files are in the way ({run / 'best.pth'}, {run / 'last.pth'}, {run / 'history.csv'}" in (
        message
    )
    assert message.endswith(
        f"{run / 'last.pth'} holds a finished run of the defaults (2 epochs) with this run's recipe: train it longer"
        " with --resume --epochs 3 or more, or keep it by giving this run another --output-dir and --checkpoint-path,"
        " or replace it with --overwrite."
    )
    assert {name: (run / name).read_bytes() for name in before} == before
    status, _, stderr = train_in_process(tmp_path, "--epochs", "1", "--panel-every", "1", "--overwrite")
    assert status == 0, stderr[-2000:]
    assert [row["epoch"] for row in read_history(run / "history.csv")] == ["1"]
    assert sorted(path.name for path in (run / "panels").iterdir()) == ["epoch_001.png"]  # no old panel left


def test_the_refusal_says_what_the_earlier_run_is_and_which_way_on_fits(kvasir_dir, tmp_path):
    assert train_in_process(tmp_path, "--epochs", "2")[0] == 0
    last = tmp_path / "run" / "last.pth"
    state = torch.load(last, weights_only=True)
    state.update(epoch=2, step=1, history=state["history"][:1])  # as if stopped by Ctrl-C in its second epoch
    torch.save(state, last)
    status, _, stderr = train_in_process(tmp_path, "--epochs", "2")
    assert status == 2 and (
        f"{last} holds a run of the defaults stopped at epoch 2 step 1 (1 of 2 epochs done) with this run's recipe:"
        " continue it with --resume, or keep it" in error_line(stderr)
    )
    status, _, stderr = train_in_process(tmp_path, "--epochs", "2", "--warmup-epochs", "1")
    assert status == 2 and (
        f"{last} holds a run of the defaults stopped at epoch 2 step 1 (1 of 2 epochs done), not this run's recipe"
        " (--warmup-epochs differs); keep it by giving this run another --output-dir" in error_line(stderr)
    )


def test_resume_trains_longer_but_refuses_to_change_the_recipe(kvasir_dir, tmp_path):
    assert train_in_process(tmp_path, "--epochs", "2")[0] == 0
    status, _, stderr = train_in_process(tmp_path, "--resume")
    assert status == 2 and "has finished 2 of its 2 epochs; give --epochs above 2" in error_line(stderr)
    status, _, stderr = train_in_process(tmp_path, "--resume", "--learning-rate", "0.01", "--seed", "42")
    assert status == 2
    assert "which --learning-rate 0.01 (the run has 0.001) would change" in error_line(stderr)
    history = read_history(tmp_path / "run" / "history.csv")
    status, stdout, stderr = train_in_process(tmp_path, "--resume", "--epochs", "3", "--no-cache")
    assert status == 0, stderr[-2000:]
    assert "now for 3 epochs" in stdout
    longer = read_history(tmp_path / "run" / "history.csv")
    assert longer[:2] == history and longer[2]["epoch"] == "3"
    assert float(longer[2]["learning_rate"]) == 0.0  # the stretched cosine ends at zero, as a 3-epoch run's does


@pytest.mark.parametrize("broken", ["output-is-a-file", "checkpoint-is-a-folder"])
def test_unwritable_output_paths_are_refused_before_any_work(tmp_path, broken):
    if broken == "output-is-a-file":
        (tmp_path / "run").write_text("not a folder")
        expected = f"OUTPUT_DIR {tmp_path / 'run'} is a file, not a folder"
    else:
        (tmp_path / "run" / "best.pth").mkdir(parents=True)
        expected = f"CHECKPOINT_PATH {tmp_path / 'run' / 'best.pth'} is a folder"
    status, _, stderr = train_in_process(tmp_path, "--epochs", "1")
    assert status == 2 and expected in error_line(stderr)
    assert not (tmp_path / "data").exists()  # refused before the data was looked for


def test_every_lever_trains_and_leaves_a_plain_unet_with_its_threshold(kvasir_dir, tmp_path):
    levers = ["--loss", "structure", "--deep-supervision", "0.5", "--multi-scale", "--grad-clip", "1.0",
              "--augmentation", "wide", "--ema-decay", "0.5", "--threshold-search", "--image-size", "48"]  # fmt: skip
    status, stdout, stderr = train_in_process(tmp_path, "--epochs", "4", "--learning-rate", "3e-3", *levers)
    assert status == 0, stderr[-2000:]
    history = read_history(tmp_path / "run" / "history.csv")
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])  # it learns
    checkpoint = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert set(checkpoint["model_state"]) == set(
        build_network("unet", {"base_channels": 4, "depth": 2}).state_dict()
    )  # no auxiliary heads kept
    assert checkpoint["preprocessing"]["threshold"] in THRESHOLDS and "threshold" in stdout
    assert "auxiliary_heads_state" in torch.load(tmp_path / "run" / "last.pth", weights_only=True)


@pytest.mark.slow
def test_kvasir_and_folder_datasets_train_together_and_evaluate_scores_each_held_out_part(kvasir_dir, tmp_path):
    clinic = make_kvasir_folder(tmp_path / "clinic", count=10, seed=3)  # NAME=FOLDER with images/ and masks/
    (clinic / "test.txt").write_text("sample_001\nsample_004\n")  # its own held-out images
    extra = make_kvasir_folder(tmp_path / "extra", count=8, seed=4)  # NAME=IMAGES:MASKS, split at random
    datasets = ["--datasets", "kvasir", f"clinic={clinic}", f"extra={extra / 'images'}:{extra / 'masks'}"]
    status, stdout, stderr = train_in_process(tmp_path, "--epochs", "1", *datasets)
    assert status == 0, stderr[-2000:]
    checkpoint = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert [source["name"] for source in checkpoint["datasets"]] == ["kvasir", "clinic", "extra"]
    split = checkpoint["split"]
    assert [i for i in split["test"] if i.startswith("clinic/")] == ["clinic/sample_001", "clinic/sample_004"]
    assert {i.split("/")[0] for i in split["train"] if "/" in i} == {"clinic", "extra"}
    assert set(checkpoint["digests"]) == set(split["train"] + split["val"])
    result = run_script(
        "evaluate", "--checkpoint", tmp_path / "run" / "best.pth", "--data-dir", kvasir_dir, "--device", "cpu",
        "--csv", tmp_path / "per_image.csv",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("dataset"))
    test_counts = [["kvasir", str(sum("/" not in i for i in split["test"]))], ["clinic", "2"]]
    assert [line.split()[:2] for line in lines[header + 1 : header + 3]] == test_counts
    assert lines[header + 3].split()[0] == "extra"


@pytest.mark.parametrize(
    ("datasets", "message"),
    [
        (["kvasir", "kvasir"], "DATASETS names a dataset twice"),
        (["mine"], "dataset 'mine' is not 'kvasir', NAME=FOLDER or NAME=IMAGES:MASKS[:TEST_LIST]"),
        (["a=x:y:z:w"], "give NAME=IMAGES:MASKS or NAME=IMAGES:MASKS:TEST_LIST"),
    ],
)
def test_malformed_dataset_specs_are_refused_before_any_work(tmp_path, datasets, message):
    status, _, stderr = train_in_process(tmp_path, "--datasets", *datasets)
    assert status == 2 and message in error_line(stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_full_recipe_on_a_cpu_is_announced_with_the_quick_alternative(tmp_path):
    full_size = ["--image-size", "256", "--base-channels", "64", "--depth", "4"]  # after TINY: the defaults again
    status, stdout, _ = train_in_process(tmp_path, *full_size, "--data-url", "http://127.0.0.1:9/kvasir-seg.zip")
    assert status == 2  # stopped by the download; the note came first, before any data or training
    assert "note: this is the full GPU-sized recipe (256 px, 31.04 M parameters, 100 epochs) on a CPU" in stdout
    assert "python scripts/train.py configs/cpu_quick.py" in stdout


def test_after_a_stopped_full_run_the_quick_recipe_runs_in_its_own_folder(kvasir_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default OUTPUT_DIR and CHECKPOINT_PATH, as a new user has them
    where = ["--data-dir", str(kvasir_dir), "--no-show-panels", *TINY]
    assert run_in_process(["--device", "cpu", *where, "--epochs", "1"])[0] == 0
    Path("models/unet_kvasirseg.pth").unlink()  # as after Ctrl-C in the first epoch: only outputs/last.pth
    for path in Path("outputs").rglob("*"):
        if path.is_file() and path.name != "last.pth":
            path.unlink()
    stopped = Path("outputs/last.pth").read_bytes()
    status, stdout, stderr = run_in_process([str(REPO / "configs" / "cpu_quick.py"), *where, "--epochs", "1"])
    assert status == 0, stderr[-2000:]
    assert Path("outputs/cpu_quick/last.pth").is_file() and Path("outputs/cpu_quick/history.csv").is_file()
    assert Path("outputs/last.pth").read_bytes() == stopped  # the stopped run is kept, resumable


def test_the_time_probe_leaves_the_weights_statistics_and_random_state_alone():
    torch.manual_seed(0)
    model = build_network("unet", {"base_channels": 4, "depth": 2})
    before, random_state = {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()
    seconds = probed_seconds(model, image_size=32, batch_size=4, steps=10)
    assert seconds > 0
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), random_state) and all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_swapping_the_network_is_one_setting(kvasir_dir, tmp_path):
    status, _, stderr = train_in_process(
        tmp_path, "--model", "smp_unet", "--encoder", "resnet18", "--image-size", "64", "--epochs", "1"
    )
    assert status == 0, stderr[-2000:]
    checkpoint = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert checkpoint["builder"] == {"name": "smp_unet", "kwargs": {"encoder": "resnet18"}}
    assert load_model(tmp_path / "run" / "best.pth")(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
