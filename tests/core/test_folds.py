"""Cross-validation end to end (slow): a 2-fold sweep of a tiny recipe on synthetic data, each fold scored on its own
validation images, the recipe ranked by the fold mean, the folds' ensemble scored on the test images and used by
predict.py, and the surfaces that must refuse (an ensemble's validation split, resuming another fold, exporting)."""

import csv
import json
import statistics

import pytest

from dataset.kvasir import prepare_kvasir_seg
from dataset.splits import fold_partition, make_split
from dataset.synthetic import make_kvasir_folder
from model import load_checkpoint
from tests.scripts import run_script
from tests.train_runs import error_line

RECIPE = "IMAGE_SIZE = 32\nBASE_CHANNELS = 4\nDEPTH = 2\nBATCH_SIZE = 4\nPANEL_EVERY = 100\nEPOCHS = 1\n"


def read_csv(path) -> list[dict]:
    with open(path) as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """A finished 2-fold sweep of the tiny recipe on 12 synthetic images: (tmp_path, the folds' folder, its result)."""
    tmp_path = tmp_path_factory.mktemp("folds")
    make_kvasir_folder(tmp_path / "data", 12)
    (tmp_path / "tiny.py").write_text(RECIPE)
    result = run_script(
        "sweep", tmp_path / "tiny.py", "--folds", "2", "--sweep-dir", tmp_path / "sweep", "--data-dir",
        tmp_path / "data", "--device", "cpu", "--num-workers", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp_path, tmp_path / "sweep" / "tiny-seed42-folds2", result


@pytest.mark.slow
def test_each_fold_is_scored_on_its_own_validation_images_and_the_recipe_by_their_mean(folds):
    tmp_path, folder, result = folds
    ids = sorted(sample_id for sample_id, _, _ in prepare_kvasir_seg(tmp_path / "data"))
    train_ids = make_split(ids, 0.1, 42).train + make_split(ids, 0.1, 42).val
    partition = fold_partition(train_ids, 2, 42)
    scores = []
    for fold in (0, 1):
        split = load_checkpoint(folder / f"fold{fold}" / "best.pth")["split"]
        assert (split["folds"], split["fold"], split["val"]) == (2, fold, partition[fold])
        assert split["train"] == partition[1 - fold]
        assert [row["id"] for row in read_csv(folder / f"fold{fold}" / "val_tta.csv")] == partition[fold]
        scores.append(json.loads((folder / f"fold{fold}" / "val_tta.json").read_text())["summary"]["mean"]["dice"])
    (recipe,) = read_csv(tmp_path / "sweep" / "ranking_recipes.csv")
    assert recipe["runs"] == "2/2" and float(recipe["val_tta_dice"]) == pytest.approx(statistics.fmean(scores))
    assert float(recipe["val_tta_dice_std"]) == pytest.approx(statistics.stdev(scores))
    assert "mean over folds of the completed runs" in result.stdout and "± std over folds" in result.stdout


@pytest.mark.slow
def test_the_ensemble_of_the_folds_scores_the_test_images_and_refuses_validation(folds):
    tmp_path, folder, _ = folds
    report_path = tmp_path / "ensemble.json"
    result = run_script(
        "evaluate", "--checkpoint", folder, "--data-dir", tmp_path / "data", "--device", "cpu", "--json", report_path,
        "--csv", tmp_path / "ensemble.csv",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert [member["checkpoint"] for member in report["members"]] == [
        str(folder / "fold0" / "best.pth"), str(folder / "fold1" / "best.pth")
    ]  # fmt: skip
    test_ids = load_checkpoint(folder / "fold0" / "best.pth")["split"]["test"]
    assert [row["id"] for row in read_csv(tmp_path / "ensemble.csv")] == test_ids
    assert report["threshold"] == 0.5 and report["common_threshold"] and report["speed"]["ms_per_image"] > 0
    assert "ensemble of 2 checkpoints" in result.stdout and "2 models alone, one after another" in result.stdout
    refused = run_script("evaluate", "--checkpoint", folder, "--split", "val", "--data-dir", tmp_path / "data")
    assert refused.returncode == 2
    assert "no kvasir image is in the val part of every checkpoint's split" in error_line(refused.stderr)


@pytest.mark.slow
def test_predict_uses_the_ensemble_and_export_refuses_it(folds):
    tmp_path, folder, _ = folds
    image = next((tmp_path / "data" / "Kvasir-SEG" / "images").iterdir())
    result = run_script("predict", image, "--checkpoint", folder, "--output", tmp_path / "predicted", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"the ensemble of {folder / 'fold0' / 'best.pth'}, {folder / 'fold1' / 'best.pth'}" in result.stdout
    assert (tmp_path / "predicted" / f"{image.stem}_mask.png").is_file()
    refused = run_script("export", "--checkpoint", folder, "--output", tmp_path / "x.onnx")
    assert refused.returncode == 2 and "not the ensemble" in error_line(refused.stderr)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_resuming_a_fold_keeps_its_fold(folds):
    tmp_path, folder, _ = folds
    run = folder / "fold1"
    result = run_script(
        "train", "--resume", "--fold", "0", "--output-dir", run, "--checkpoint-path", run / "best.pth",
        "--data-dir", tmp_path / "data", "--device", "cpu", "--epochs", "2",
    )  # fmt: skip
    assert result.returncode == 2
    assert "--fold 0 (the run has 1) would change" in error_line(result.stderr)
