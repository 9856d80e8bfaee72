"""Ensembles (utils/inference.py's EnsemblePredictor, model/checkpoint.py's load_members, dataset/sources.py's
ensemble_record): the mean of the members' probabilities, one threshold, checkpoints named or a sweep's folder of
folds, and no image any member saw scored as held out; export.py refuses them."""

import json
import os
import shutil
import time

import numpy as np
import pytest
import torch

from common.errors import UserError
from dataset.sources import DataRecord, Source, ensemble_record
from dataset.splits import Split
from model import build_network
from model.checkpoint import common_record, data_records, load_checkpoint, load_members, save_checkpoint
from tests.checkpoints import save_untrained_checkpoint
from tests.core.test_evaluate import ConstantLogit
from tests.scripts import load_script
from tests.train_runs import lock_held_elsewhere
from utils.inference import THRESHOLD, EnsemblePredictor, Predictor, load_predictor

evaluate = load_script("evaluate")
SETTINGS = {"SPLIT": "test", "IMAGES": "", "MASKS": "", "DATASETS": []}


def preprocessing(size: int, threshold: float | None = None) -> dict:
    extra = {} if threshold is None else {"threshold": threshold}
    return {"image_size": size, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), **extra}


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((37, 53, 3), (60, 41, 3))]


def test_an_ensemble_thresholds_the_mean_of_its_members_probabilities_at_each_image_size():
    torch.manual_seed(0)
    unet = Predictor(
        build_network("unet", {"base_channels": 4, "depth": 2}).eval(), preprocessing(32), tta=True
    )  # a real U-Net, flip TTA
    bright = Predictor(ConstantLogit(1.5), preprocessing(48), tta=True)  # another training size
    ensemble = EnsemblePredictor([unet, bright], ["unet", "bright"])
    inputs = images()
    expected = [(a + b) / 2 for a, b in zip(unet.probabilities(inputs), bright.probabilities(inputs), strict=True)]
    for image, mean, by_hand in zip(inputs, ensemble.probabilities(inputs), expected, strict=True):
        assert tuple(mean.shape) == image.shape[:2]
        torch.testing.assert_close(mean, by_hand)
    constant = EnsemblePredictor(
        [Predictor(ConstantLogit(2.0), preprocessing(32)), Predictor(ConstantLogit(-3.0), preprocessing(64))],
        ["a", "b"],
    )
    by_hand = (1 / (1 + np.exp(-2.0)) + 1 / (1 + np.exp(3.0))) / 2  # 0.4523: one member above 0.5, the mean below
    (probabilities,) = constant.probabilities(inputs[:1])
    np.testing.assert_allclose(probabilities.numpy(), by_hand, rtol=1e-6)
    assert not constant.masks(inputs[:1])[0].any() and constant.threshold == THRESHOLD


@pytest.mark.parametrize(("thresholds", "used", "common"), [((0.4, 0.4), 0.4, True), ((0.4, 0.6), THRESHOLD, False)])
def test_an_ensemble_uses_its_members_common_threshold_else_the_default(thresholds, used, common):
    members = [Predictor(ConstantLogit(0.0), preprocessing(32, threshold)) for threshold in thresholds]
    ensemble = EnsemblePredictor(members, ["a", "b"])
    assert (ensemble.threshold, ensemble.common_threshold) == (used, common)
    assert ensemble.masks(images()[:1])[0].all() == (used < 0.5)  # every probability is 0.5


def fold_checkpoints(tmp_path, kvasir_dir, folds: int = 2, finished: bool = True):
    """The folder a sweep with --folds writes: RUNS/fold<k>/best.pth (and summary.json when `finished`)."""
    folder = tmp_path / "default-seed42-folds2"
    for fold in range(folds):
        save_untrained_checkpoint(folder / f"fold{fold}" / "best.pth", kvasir_dir, folds=2, fold=fold)
        if finished:
            (folder / f"fold{fold}" / "summary.json").write_text("{}")
    return folder


def test_a_folder_of_folds_expands_to_each_folds_best_checkpoint(kvasir_dir, tmp_path):
    folder = fold_checkpoints(tmp_path, kvasir_dir)
    members = load_members([str(folder)])
    assert [member.path for member in members] == [folder / "fold0" / "best.pth", folder / "fold1" / "best.pth"]
    predictor = load_predictor([str(folder)], device="cpu", tta=True)
    assert isinstance(predictor, EnsemblePredictor) and len(predictor.members) == 2
    assert isinstance(load_predictor([str(folder / "fold0" / "best.pth")], device="cpu"), Predictor)


def test_folders_and_files_that_make_no_ensemble_are_refused(kvasir_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no run folders with a best.pth"):
        load_members([str(tmp_path / "empty")])
    folder = fold_checkpoints(tmp_path, kvasir_dir)
    with pytest.raises(UserError, match="is named twice"):
        load_members([str(folder), str(folder / "fold1" / "best.pth")])
    (folder / "fold1" / "summary.json").unlink()  # still training: its best.pth is not final
    with pytest.raises(UserError, match=r"fold1 holds no finished run \(a best.pth with its summary.json\)"):
        load_members([str(folder)])
    shutil.rmtree(folder / "fold1")  # never started
    with pytest.raises(UserError, match=r"holds folds 0 of a 2-fold partition \(missing: 1\)"):
        load_members([str(folder)])
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes((folder / "fold0" / "best.pth").read_bytes()[:2000])
    with pytest.raises(UserError, match="damaged.pth is not a readable checkpoint"):
        load_members([str(folder / "fold0" / "best.pth"), str(damaged)])


def test_the_folds_of_one_partition_leave_only_the_test_images_held_out(kvasir_dir, tmp_path):
    members = load_members([str(fold_checkpoints(tmp_path, kvasir_dir))])
    records = data_records(members)
    record = common_record(records)
    assert record.split.val == [] and record.split.test == records[0].split.test
    assert record.split.train == sorted(records[0].split.train + records[0].split.val)
    (target,) = evaluate.scoring_targets({**SETTINGS, "DATA_DIR": kvasir_dir}, record, records)
    assert [pair[0] for pair in target.pairs] == records[0].split.test
    with pytest.raises(UserError, match="no kvasir image is in the val part of every checkpoint's split"):
        evaluate.scoring_targets({**SETTINGS, "SPLIT": "val", "DATA_DIR": kvasir_dir}, record, records)


def test_an_ensemble_refuses_images_any_member_trained_or_validated_on(kvasir_dir, tmp_path):
    members = load_members([str(fold_checkpoints(tmp_path, kvasir_dir))])
    fold0 = DataRecord.from_checkpoint(members[0].checkpoint)
    copy = tmp_path / "copy"
    for kind in ("images", "masks"):  # fold 0's validation images, which fold 1 trained on
        (copy / kind).mkdir(parents=True)
        for sample_id in fold0.split.val[:2]:
            shutil.copy(kvasir_dir / "Kvasir-SEG" / kind / f"{sample_id}.jpg", copy / kind / f"x_{sample_id}.jpg")
    settings = {**SETTINGS, "DATASETS": [f"copy={copy}"], "DATA_DIR": kvasir_dir}
    records = data_records(members)
    with pytest.raises(UserError, match="2 of the 2 copy images to score are images this model was trained or"):
        evaluate.scoring_targets(settings, common_record(records), records)


def test_members_of_different_data_are_held_out_on_what_none_of_them_saw(kvasir_dir, tmp_path):
    one = save_untrained_checkpoint(tmp_path / "one.pth", kvasir_dir)  # the VAL_FRACTION carve-out
    other = load_checkpoint(save_untrained_checkpoint(tmp_path / "two.pth", kvasir_dir, folds=2, fold=1))
    other_record = DataRecord.from_checkpoint(other)
    other_record.split = Split(other_record.split.train, other_record.split.val, other_record.split.test[:1], False)
    save_checkpoint(tmp_path / "two.pth", {**other, **other_record.as_dict()})  # held out one test image fewer
    record = common_record(data_records(load_members([str(one), str(tmp_path / "two.pth")])))
    assert record.split.test == other_record.split.test[:1]  # held out by both
    assert set(record.split.train) == set(DataRecord.from_checkpoint(load_checkpoint(one)).split.train) | set(
        other_record.split.train + other_record.split.val
    ) - set(record.split.val)


def test_members_that_call_different_datasets_by_one_name_are_refused():
    split = Split([], [], [], False)
    first = DataRecord([Source("clinic", "a/images", "a/masks")], split, {})
    second = DataRecord([Source("clinic", "b/images", "b/masks")], split, {})
    with pytest.raises(UserError, match="name two different datasets clinic"):
        ensemble_record([first, second])


def test_export_refuses_an_ensemble_in_one_line(kvasir_dir, tmp_path):
    export = load_script("export")
    folder = fold_checkpoints(tmp_path, kvasir_dir)
    for names in ([str(folder)], [str(folder / "fold0" / "best.pth"), str(folder / "fold1" / "best.pth")]):
        with pytest.raises(UserError, match="export.py writes one model per ONNX file, not the ensemble"):
            export.single_checkpoint(names)
    assert export.single_checkpoint([str(folder / "fold0" / "best.pth")]) == str(folder / "fold0" / "best.pth")
    shutil.rmtree(folder / "fold1")  # a folder of one run: its model, not an ensemble
    with pytest.raises(UserError, match=r"folds2 is a folder holding one run; export the model of that run by its"):
        export.single_checkpoint([str(folder)])


def test_the_evaluation_report_names_the_members_and_the_threshold():
    members = [
        {"checkpoint": f"f/fold{fold}/best.pth", "epoch": 3, "image_size": 32, "threshold": 0.5} for fold in (0, 1)
    ]
    report = {"members": members, "tta": True, "tta_views": 3, "threshold": 0.5, "common_threshold": True}
    lines = evaluate.describe_model(report)
    assert lines[0].startswith("ensemble of 2 checkpoints: the mean of their probabilities")
    assert "f/fold1/best.pth (epoch 3, trained at 32 px, threshold 0.5)" in lines[2]
    assert lines[3].startswith("threshold 0.5 (the members' common threshold), TTA on (3 views) for each member")
    speed = {"images_per_second": 10.0, "ms_per_image": 100.0, "batch_size": 8}
    line = evaluate.describe_speed({**report, "speed": speed, "device": "cpu"})
    assert "2 models alone, one after another, batches of 8 at 32 px" in line
    assert json.dumps(report)  # the JSON summary holds it as it is


def test_a_fold_checkpoint_scores_its_own_fold_with_split_val(kvasir_dir, tmp_path):
    folder = fold_checkpoints(tmp_path, kvasir_dir)
    records = data_records(load_members([str(folder / "fold1" / "best.pth")]))
    record = common_record(records)
    (target,) = evaluate.scoring_targets({**SETTINGS, "SPLIT": "val", "DATA_DIR": kvasir_dir}, record, records)
    assert [pair[0] for pair in target.pairs] == record.split.val and record.split.fold == 1
    assert target.description.endswith("fold 1 of the 2-fold partition the checkpoint was chosen on")


def test_the_same_weights_twice_are_refused_naming_both(kvasir_dir, tmp_path):
    folder = fold_checkpoints(tmp_path, kvasir_dir)
    copy = tmp_path / "copy.pth"
    shutil.copy(folder / "fold0" / "best.pth", copy)  # a copy, or two runs that ended identical
    with pytest.raises(UserError, match=r"fold0/best.pth and .*copy.pth hold the same weights") as error:
        load_members([str(folder), str(copy)])
    assert "name only one of them" in str(error.value)
    renamed = load_checkpoint(copy)
    renamed["epoch"] = 7  # another record around the same weights: still one model
    save_checkpoint(copy, renamed)
    with pytest.raises(UserError, match="hold the same weights"):
        load_members([str(folder / "fold0" / "best.pth"), str(copy)])


def test_a_folder_mixing_a_carve_out_or_another_partition_with_folds_is_refused_naming_the_odd_run(
    kvasir_dir, tmp_path
):
    folder = fold_checkpoints(tmp_path, kvasir_dir)
    odd = folder / "single"
    save_untrained_checkpoint(odd / "best.pth", kvasir_dir)  # a VAL_FRACTION carve-out run (FOLDS 0)
    (odd / "summary.json").write_text("{}")
    with pytest.raises(UserError, match=r"holds carve-out run\(s\) \(FOLDS 0\) beside the folds .*single/best.pth"):
        load_members([str(folder)])
    save_untrained_checkpoint(odd / "best.pth", kvasir_dir, folds=3, fold=2)  # a fold of a 3-fold partition
    with pytest.raises(UserError, match=r"different partitions: .*single/best.pth differs from the other 2 in FOLDS;"):
        load_members([str(folder)])
    other_seed = load_checkpoint(save_untrained_checkpoint(odd / "best.pth", kvasir_dir, folds=2, fold=1))
    other_seed["config"]["SEED"] = 7
    save_checkpoint(odd / "best.pth", other_seed)
    with pytest.raises(UserError, match=r"single/best.pth differs from the other 2 in SEED; an ensemble of a folder"):
        load_members([str(folder)])


def test_a_fold_still_training_or_resumed_since_it_finished_is_refused_by_name(kvasir_dir, tmp_path):
    folder = fold_checkpoints(tmp_path, kvasir_dir)
    with lock_held_elsewhere(folder / "fold1" / "train.lock") as pid, pytest.raises(UserError) as e:
        load_members([str(folder)])
    assert f"fold1 is still training (process {pid} holds its train.lock)" in str(e.value)
    assert "or name the checkpoint files to use, which are taken as they are" in str(e.value)
    last = folder / "fold0" / "last.pth"
    shutil.copy(folder / "fold0" / "best.pth", last)
    os.utime(last, (time.time() + 60, time.time() + 60))  # written after summary.json: resumed, not finished again
    with pytest.raises(UserError, match=r"fold0 was resumed after it finished and has not finished again"):
        load_members([str(folder)])
    assert len(load_members([str(folder / "fold0" / "best.pth"), str(folder / "fold1" / "best.pth")])) == 2
