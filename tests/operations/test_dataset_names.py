"""Datasets by name and folder: one folder however spelt is one dataset, relative folders score from anywhere,
shared images are refused, a checkpoint without a split scores explicit folders, and the messages name them."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.config import script_constants
from common.errors import UserError
from dataset.kvasir import pair_images_and_masks
from dataset.sources import DataRecord, Source, parse_source, source_split
from model import load_checkpoint
from model.checkpoint import Member
from tests.checkpoints import save_untrained_checkpoint
from tests.scripts import REPO, load_script, run_script
from tests.train_runs import error_line, train_in_process


@pytest.mark.parametrize("spelling", ["relative", "dot-slash", "trailing-slash", "symlink", "dot-dot"])
def test_one_folder_however_spelt_is_one_dataset(kvasir_dir, tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(kvasir_dir / "Kvasir-SEG")
    spec = {
        "relative": "data/Kvasir-SEG",
        "dot-slash": "./data/Kvasir-SEG",
        "trailing-slash": "data/Kvasir-SEG/",
        "symlink": "link",
        "dot-dot": "data/../data/Kvasir-SEG",
    }[spelling]
    source = parse_source(f"mine={spec}")
    assert source == parse_source(f"mine={kvasir_dir / 'Kvasir-SEG'}")
    assert Path(source.images).is_absolute()


def test_a_relative_dataset_scores_the_same_folder_from_another_directory(kvasir_dir, tmp_path):
    work = tmp_path / "work"
    (work / "mine").mkdir(parents=True)
    shutil.move(kvasir_dir / "Kvasir-SEG", work / "mine" / "set")
    (tmp_path / "elsewhere" / "mine" / "set").mkdir(parents=True)  # a folder of the same relative name elsewhere
    train_flags = ["--device", "cpu", "--no-show-panels", "--image-size", "32", "--base-channels", "4", "--depth", "2",
                   "--batch-size", "4", "--num-workers", "0", "--epochs", "1", "--datasets", "m=mine/set",
                   "--output-dir", "run", "--checkpoint-path", "run/best.pth"]  # fmt: skip
    trained = subprocess.run(
        [sys.executable, REPO / "scripts" / "train.py", *train_flags], cwd=work, capture_output=True, text=True
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = load_checkpoint(work / "run" / "best.pth")
    assert checkpoint["datasets"][0]["images"] == str(work / "mine" / "set" / "images")
    evaluated = subprocess.run(
        [sys.executable, REPO / "scripts" / "evaluate.py", "--checkpoint", work / "run" / "best.pth", "--device",
         "cpu", "--no-tta", "--csv", "e.csv"],
        cwd=tmp_path / "elsewhere", capture_output=True, text=True,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert f"held-out test split (seeded) of {work / 'mine' / 'set' / 'images'}" in evaluated.stdout


def test_no_dataset_is_named_as_such(tmp_path):
    recipe = tmp_path / "r.py"
    recipe.write_text("DATASETS = []\n")
    status, _, stderr = train_in_process(tmp_path, str(recipe))
    assert status == 2 and "DATASETS is empty; give at least one dataset" in error_line(stderr)


def test_a_folder_whose_name_holds_a_colon_is_one_folder(kvasir_dir, tmp_path):
    folder = tmp_path / "run:2024"
    shutil.copytree(kvasir_dir / "Kvasir-SEG", folder)
    assert parse_source(f"m={folder}").images == str(folder / "images")
    with pytest.raises(UserError, match=r"run:2025 is no folder, and read as IMAGES:MASKS.* is no folder either"):
        parse_source(f"m={tmp_path / 'run:2025'}")


@pytest.mark.parametrize("left", [0, 1])
def test_a_test_list_of_nearly_every_image_names_the_list(kvasir_dir, tmp_path, left):
    root = kvasir_dir / "Kvasir-SEG"
    stems = sorted(path.stem for path in (root / "images").iterdir())
    (root / "test.txt").write_text("\n".join(stems[left:]) + "\n")
    status, _, stderr = train_in_process(tmp_path, "--datasets", f"m={root}", "--epochs", "1")
    line = error_line(stderr)
    assert status == 2 and f"the test list {root / 'test.txt'} holds {16 - left} of the 16 images" in line
    assert "VAL_FRACTION" not in line


def test_a_checkpoint_without_a_split_scores_explicit_folders(kvasir_dir, tmp_path):
    checkpoint = torch.load(save_untrained_checkpoint(tmp_path / "m.pth", kvasir_dir), weights_only=True)
    for key in ("split", "datasets", "digests", "copy_groups"):
        checkpoint.pop(key, None)
    torch.save(checkpoint, tmp_path / "old.pth")
    root = kvasir_dir / "Kvasir-SEG"
    flags = ["--checkpoint", tmp_path / "old.pth", "--device", "cpu", "--no-tta", "--csv", tmp_path / "e.csv"]
    result = run_script("evaluate", *flags, "--images", root / "images", "--masks", root / "masks")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"note: {tmp_path / 'old.pth'} records no training images" in result.stdout
    result = run_script("evaluate", *flags, "--data-dir", kvasir_dir)
    message = error_line(result.stderr)
    assert result.returncode == 2 and f"{tmp_path / 'old.pth'} records no train/val/test split" in message
    assert "Score other data with it (--images and --masks, or --datasets)" in message


@pytest.mark.parametrize("second", ["same folder", "subset", "copied files"])
def test_datasets_that_share_images_are_refused(kvasir_dir, tmp_path, second):
    root = kvasir_dir / "Kvasir-SEG"
    if second == "same folder":
        other = f"b={root}"
    else:
        copy = tmp_path / "copy"
        shutil.copytree(root, copy)
        for path in sorted((copy / "images").iterdir())[: 8 if second == "subset" else 0]:
            path.unlink()
            (copy / "masks" / path.name).unlink()
        other = f"b={copy}"
    status, _, stderr = train_in_process(tmp_path, "--datasets", f"a={root}", other, "--epochs", "1")
    assert status == 2 and "datasets a and b share images" in error_line(stderr)


def folder_record(root: Path, images: str, masks: str) -> DataRecord:
    """A record of training on the folder dataset `mine` at `root`, recorded with these images and masks paths."""
    ids = [f"mine/{stem}" for stem, _, _ in pair_images_and_masks(root / "images", root / "masks")]
    split = source_split(parse_source(f"mine={root}"), ids, 0.1, 42)
    return DataRecord([Source("mine", images, masks)], split, {})


@pytest.mark.parametrize("spec", ["mine=data/Kvasir-SEG", "mine=./data/Kvasir-SEG/", "mine=link"])
def test_evaluate_takes_a_trained_on_folder_however_spelt_as_trained_on(kvasir_dir, tmp_path, monkeypatch, spec):
    evaluate = load_script("evaluate")
    root = kvasir_dir / "Kvasir-SEG"
    (tmp_path / "link").symlink_to(root)
    monkeypatch.chdir(tmp_path)
    record = folder_record(root, str(root / "images"), str(root / "masks"))
    config = {**script_constants(vars(evaluate)), "DATASETS": [spec], "DATA_DIR": str(kvasir_dir)}
    (target,) = evaluate.scoring_targets(config, record)
    assert [pair[0] for pair in target.pairs] == record.split.test
    assert f"the held-out test split (seeded) of {root / 'images'}" in target.description


def test_an_older_checkpoints_relative_folders_are_read_from_here_said_so(kvasir_dir, tmp_path, monkeypatch, capsys):
    evaluate = load_script("evaluate")
    root = kvasir_dir / "Kvasir-SEG"
    monkeypatch.chdir(kvasir_dir)
    checkpoint = folder_record(root, "Kvasir-SEG/images", "Kvasir-SEG/masks").as_dict()
    record = evaluate.checkpoint_record(Member(Path("m.pth"), checkpoint), {"IMAGES": "", "DATASETS": []})
    assert record.datasets[0].images == str(root / "images")
    assert "records dataset mine by the relative path Kvasir-SEG/images" in capsys.readouterr().out
