"""A resumed run trains on the images it started with: it refuses when they are gone or changed, and keeps its
split when images were added."""

import cv2
import numpy as np
import pytest
import torch

from dataset.splits import Split
from dataset.synthetic import make_sample
from tests.train_runs import error_line, train_in_process


def folder_dataset(kvasir_dir) -> str:
    """The synthetic Kvasir-SEG of `kvasir_dir` given as a folder dataset."""
    return f"mine={kvasir_dir / 'Kvasir-SEG'}"


def first_epoch(kvasir_dir, tmp_path) -> tuple[Split, str]:
    """A 2-epoch run of the folder dataset stopped after 1 epoch (its last.pth kept); its split and dataset flag."""
    dataset = folder_dataset(kvasir_dir)
    assert train_in_process(tmp_path, "--epochs", "1", "--datasets", dataset)[0] == 0
    return Split.from_checkpoint(torch.load(tmp_path / "run" / "last.pth", weights_only=True)), dataset


@pytest.mark.parametrize("part", ["train", "val"])
@pytest.mark.parametrize("change", ["removed", "changed"])
def test_resume_refuses_when_images_it_trained_on_are_gone_or_changed(kvasir_dir, tmp_path, part, change):
    split, _ = first_epoch(kvasir_dir, tmp_path)
    stem = getattr(split, part)[0].split("/")[1]
    image = kvasir_dir / "Kvasir-SEG" / "images" / f"{stem}.jpg"
    if change == "removed":
        image.unlink()
        (kvasir_dir / "Kvasir-SEG" / "masks" / f"{stem}.jpg").unlink()
    else:
        cv2.imwrite(str(image), cv2.flip(cv2.imread(str(image)), 1))
    status, _, stderr = train_in_process(tmp_path, "--resume", "--epochs", "2")
    how = "are no longer in" if change == "removed" else "have changed in"
    assert status == 2 and f"image(s) of the run saved {how}" in error_line(stderr)
    assert f"mine/{stem}" in stderr


@pytest.mark.parametrize("where", ["images", "test list"])
def test_resume_after_images_were_added_keeps_its_split(kvasir_dir, tmp_path, where):
    split, _ = first_epoch(kvasir_dir, tmp_path)
    root = kvasir_dir / "Kvasir-SEG"
    rng = np.random.default_rng(5)
    for index in range(4):
        image, mask = make_sample(rng, 48, 40)
        cv2.imwrite(str(root / "images" / f"new_{index}.jpg"), image)
        cv2.imwrite(str(root / "masks" / f"new_{index}.jpg"), mask)
    if where == "test list":  # the folder gains a test list that would move trained-on images into the test part
        (root / "test.txt").write_text("\n".join(i.split("/")[1] for i in split.train[:3]) + "\n")
    status, stdout, stderr = train_in_process(tmp_path, "--resume", "--epochs", "2")
    assert status == 0, stderr
    assert "4 image(s) added to the data since the run started" in stdout
    resumed = Split.from_checkpoint(torch.load(tmp_path / "run" / "last.pth", weights_only=True))
    assert resumed == split
