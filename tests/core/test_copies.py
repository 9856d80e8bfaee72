"""Same-frame copies (dataset/copies.py): the detector finds re-encodings, resizes, re-crops and overlays of an image
and nothing else; its features and results are cached safely; the groups file format; Kvasir-SEG's shipped groups."""

import os
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from common.errors import UserError
from dataset import copies
from dataset.kvasir import pair_images_and_masks, prepare_kvasir_seg
from dataset.sources import (
    KVASIR_COPIES,
    DataRecord,
    Source,
    check_held_out,
    file_digest,
    source_copy_groups,
    training_copies,
)
from dataset.splits import Split, official_split
from dataset.synthetic import make_kvasir_folder
from tests.scripts import run_script
from tests.train_runs import train

FRAME_SIZE = ((160, 128),)  # large enough for keypoints at many places, small enough to be quick


def with_overlay(image: np.ndarray) -> np.ndarray:
    """The image with an on-screen box and a clock, as endoscopes print them."""
    height, width = image.shape[:2]
    shown = image.copy()
    cv2.rectangle(shown, (0, height - height // 4), (width // 4, height), (40, 160, 40), -1)
    cv2.putText(shown, "12:01:33", (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
    return shown


EDITS = {  # how one frame may come back under another name; each is found
    "png": lambda image: (".png", image, []),
    "jpeg-q70": lambda image: (".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70]),
    "half-size": lambda image: (".jpg", cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA), []),
    "larger": lambda image: (".jpg", cv2.resize(image, None, fx=1.7, fy=1.3, interpolation=cv2.INTER_CUBIC), []),
    "re-cropped": lambda image: (".jpg", image[12:, 20:-16], []),
    "overlay": lambda image: (".jpg", with_overlay(image), []),
}


@pytest.fixture
def frames(tmp_path) -> Path:
    """Twelve different synthetic frames (textured backgrounds, one ellipse each) in frames/images and masks."""
    root = make_kvasir_folder(tmp_path / "frames", 12, seed=3, sizes=FRAME_SIZE)
    return root


def add_copy(root: Path, name: str, edit: str, original: str = "sample_003") -> None:
    """Write `original`, edited as EDITS[edit] says, as image `name` with the original's mask."""
    suffix, image, params = EDITS[edit](cv2.imread(str(root / "images" / f"{original}.jpg")))
    cv2.imwrite(str(root / "images" / f"{name}{suffix}"), image, params)
    shutil.copy(root / "masks" / f"{original}.jpg", root / "masks" / f"{name}.jpg")


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_reencoded_resized_recropped_or_overlaid_frame_is_found_and_nothing_else(frames, edit):
    add_copy(frames, "copy", edit)
    found = copies.find_copies(pair_images_and_masks(frames / "images", frames / "masks"))
    assert [(pair.first, pair.second) for pair in found] == [("copy", "sample_003")]
    assert found[0].inliers >= copies.MIN_INLIERS and found[0].cells >= copies.MIN_CELLS


def test_frames_that_share_only_an_overlay_are_not_copies(frames):
    for name in ("sample_004", "sample_005"):  # two different frames, with the same box and clock
        path = frames / "images" / f"{name}.jpg"
        cv2.imwrite(str(path), with_overlay(cv2.imread(str(path))))
    assert copies.find_copies(pair_images_and_masks(frames / "images", frames / "masks")) == []


def test_low_contrast_noise_images_have_no_copies(tmp_path):
    """Grey noise with a faint coloured ellipse at random places: no two are one frame, however alike they look."""
    folder = low_contrast_dataset(tmp_path / "alike", 24, seed=0)
    assert copies.find_copies(pair_images_and_masks(folder / "images", folder / "masks")) == []


def test_many_images_are_searched_through_retrieval_and_copies_still_found(tmp_path):
    root = make_kvasir_folder(tmp_path / "many", 40, seed=5, sizes=FRAME_SIZE)
    add_copy(root, "copy_a", "re-cropped", "sample_007")
    add_copy(root, "copy_b", "overlay", "sample_031")
    features = copies.all_features(pair_images_and_masks(root / "images", root / "masks"))
    assert len(copies.candidate_pairs(features)) < 42 * 41 // 2  # not every pair is verified
    found = copies.find_copies(pair_images_and_masks(root / "images", root / "masks"))
    assert [(pair.first, pair.second) for pair in found] == [("copy_a", "sample_007"), ("copy_b", "sample_031")]


def test_an_image_without_keypoints_has_no_copy(tmp_path):
    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
        for name in ("flat1", "flat2"):  # the same flat grey twice: no keypoint, so nothing to call a copy
            cv2.imwrite(str(tmp_path / kind / f"{name}.png"), np.full((64, 64), 128, np.uint8))
    assert copies.find_copies(pair_images_and_masks(tmp_path / "images", tmp_path / "masks")) == []


# --- the cache ------------------------------------------------------------------------------------------------------


def test_features_and_results_are_cached_and_a_changed_file_is_searched_again(frames, tmp_path, monkeypatch):
    add_copy(frames, "copy", "png")
    pairs = pair_images_and_masks(frames / "images", frames / "masks")
    first = copies.find_copies(pairs, tmp_path / "cache")
    assert sorted(path.name.split("-")[0] for path in (tmp_path / "cache").iterdir()) == ["copies", "features"]
    monkeypatch.setattr(copies, "image_features", lambda path: pytest.fail("features were computed again"))
    assert copies.find_copies(pairs, tmp_path / "cache") == first
    monkeypatch.undo()
    os.utime(frames / "images" / "copy.png", ns=(1, 1))  # the file changed since: its features are stale
    calls = []
    monkeypatch.setattr(copies, "image_features", lambda path: calls.append(path) or copies.Features(*empty()))
    copies.find_copies(pairs, tmp_path / "cache")
    assert len(calls) == len(pairs)


def empty():
    return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other-count"])
def test_a_damaged_feature_cache_is_computed_again(frames, tmp_path, damage):
    pairs = pair_images_and_masks(frames / "images", frames / "masks")
    expected = copies.all_features(pairs, tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("features-*.npz")
    if damage == "truncated":  # a kill -9 cannot leave this (the write is atomic), but a full disk elsewhere can
        cached.write_bytes(cached.read_bytes()[:300])
    elif damage == "garbage":
        cached.write_bytes(b"not a zip")
    else:
        copies.save_features(cached, expected[:3])
    again = copies.all_features(pairs, tmp_path / "cache")
    assert [len(f.points) for f in again] == [len(f.points) for f in expected]


def test_a_damaged_result_cache_is_searched_again(frames, tmp_path):
    add_copy(frames, "copy", "png")
    pairs = pair_images_and_masks(frames / "images", frames / "masks")
    found = copies.find_copies(pairs, tmp_path / "cache")
    (result,) = (tmp_path / "cache").glob("copies-*.json")
    result.write_text('[["a", "b"]]')  # a row of the wrong shape
    assert copies.find_copies(pairs, tmp_path / "cache") == found


def test_a_read_only_cache_folder_costs_only_the_recomputation(frames, tmp_path, read_only, capsys):
    (tmp_path / "cache").mkdir()
    read_only(tmp_path / "cache")
    add_copy(frames, "copy", "png")
    found = copies.find_copies(pair_images_and_masks(frames / "images", frames / "masks"), tmp_path / "cache")
    assert [(pair.first, pair.second) for pair in found] == [("copy", "sample_003")]
    assert "note: cannot cache image features in" in capsys.readouterr().out
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_cache_path_that_is_a_file_costs_only_the_recomputation(frames, tmp_path, capsys):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    assert copies.find_copies(pair_images_and_masks(frames / "images", frames / "masks"), tmp_path / "cache") == []
    assert "note: cannot cache image features in" in capsys.readouterr().out


# --- groups ---------------------------------------------------------------------------------------------------------


def test_copies_of_copies_form_one_group():
    pairs = [copies.CopyPair("a", "b", 99, 20), copies.CopyPair("c", "d", 99, 20), copies.CopyPair("b", "e", 99, 20)]
    assert copies.copy_groups(pairs) == [["a", "b", "e"], ["c", "d"]]
    assert copies.group_labels(["a", "x", "e", "d", "y"], [["a", "b", "e"], ["c", "d"]]) == [0, 2, 0, 1, 3]


def test_groups_files_read_back_what_was_written(tmp_path):
    groups = [["a", "b", "e"], ["ds/c", "ds/d"]]
    path = tmp_path / "copies.txt"
    path.write_text(copies.format_groups(groups, "made by a test\nsecond line"))
    assert copies.read_groups(path) == groups


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a b\nb c\n", "b is already in the group of line 1"),
        ("a\n", "a copy group needs two or more ids, found 'a' alone"),
    ],
)
def test_a_malformed_groups_file_is_refused_naming_the_line(tmp_path, text, message):
    (tmp_path / "copies.txt").write_text(text)
    with pytest.raises(UserError, match=message):
        copies.read_groups(tmp_path / "copies.txt")


def test_a_groups_file_in_another_encoding_or_a_folder_is_refused(tmp_path):
    (tmp_path / "utf16.txt").write_bytes("a b\n".encode("utf-16"))
    with pytest.raises(UserError, match="UTF-16"):
        copies.read_groups(tmp_path / "utf16.txt")
    with pytest.raises(UserError, match="is a folder"):
        copies.read_groups(tmp_path)


def test_kvasir_seg_ships_its_copy_groups_with_how_they_were_made():
    groups = copies.read_groups(KVASIR_COPIES)
    train, test = map(set, official_split())
    assert all(set(group) <= train | test for group in groups)
    kinds = sorted("-".join(sorted("test" if i in test else "train" for i in group)) for group in groups)
    assert kinds.count("test-train") == 13 and kinds.count("train-train") == 4 and kinds.count("test-test") == 1
    header = KVASIR_COPIES.read_text().splitlines()[1]
    assert header.startswith("# made by `python scripts/find_copies.py --groups dataset/splits/kvasir_copies.txt`")


def test_the_shipped_groups_apply_to_the_kvasir_ids_present(tmp_path):
    pairs = [(sample_id, Path("x.jpg"), Path("x.jpg")) for sample_id in ("cju1dfeupuzlw0835gnxip369", "other")]
    assert source_copy_groups(Source("kvasir"), pairs, None) == []  # its copy is absent: no group left
    pairs.append(("cjyzul1qggwwj07216mhiv5sy", Path("y.jpg"), Path("y.jpg")))
    assert source_copy_groups(Source("kvasir"), pairs, None) == [
        ["cju1dfeupuzlw0835gnxip369", "cjyzul1qggwwj07216mhiv5sy"]
    ]


REAL_ZIP = os.environ.get("KVASIR_SEG_ZIP", "")  # .ci/run sets it where the real Kvasir-SEG zip lies beside the clone


@pytest.mark.slow
@pytest.mark.skipif(not Path(REAL_ZIP).is_file(), reason="KVASIR_SEG_ZIP names no file: the real Kvasir-SEG zip")
def test_the_shipped_groups_are_what_the_detector_finds_in_kvasir_seg(tmp_path):
    with zipfile.ZipFile(REAL_ZIP) as archive:
        archive.extractall(tmp_path)
    pairs = prepare_kvasir_seg(tmp_path)
    found = copies.copy_groups(copies.find_copies(pairs))
    assert found == copies.read_groups(KVASIR_COPIES)


# --- the held-out check -----------------------------------------------------------------------------------------


def trained_on(root: Path) -> DataRecord:
    """A record that trained on every image of the synthetic Kvasir-SEG folder `root`."""
    ids = sorted(sample_id for sample_id, _, _ in pair_images_and_masks(root / "images", root / "masks"))
    return DataRecord([Source("kvasir")], Split(ids, [], [], False), {})


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_training_frame_in_other_data_is_reported_as_a_copy(frames, tmp_path, edit):
    other = make_kvasir_folder(tmp_path / "other", 4, seed=9, sizes=FRAME_SIZE)
    add_copy(other, "copy", edit, original="sample_000")  # sample_000 of `other`, first: then make it a training frame
    shutil.copy(other / "images" / "sample_000.jpg", frames / "images" / "trained.jpg")
    shutil.copy(other / "masks" / "sample_000.jpg", frames / "masks" / "trained.jpg")
    (other / "images" / "sample_000.jpg").unlink()
    (other / "masks" / "sample_000.jpg").unlink()
    scored = [
        (f"other/{i}", image, mask) for i, image, mask in pair_images_and_masks(other / "images", other / "masks")
    ]
    assert training_copies(trained_on(frames), scored, tmp_path / "frames") == {"other/copy": "trained"}


def test_other_data_is_checked_for_exact_copies_only_when_the_training_images_are_gone(tmp_path, capsys):
    other = make_kvasir_folder(tmp_path / "other", 4, seed=9, sizes=FRAME_SIZE)
    record = DataRecord([Source("kvasir")], Split(["sample_000"], [], [], False), {})
    scored = pair_images_and_masks(other / "images", other / "masks")
    assert training_copies(record, [(f"o/{i}", a, b) for i, a, b in scored], tmp_path / "nothing") == {}
    assert "only exact copies of them are looked for" in capsys.readouterr().out


def test_each_ensemble_member_is_checked_on_its_own_record(frames, tmp_path):
    pairs = pair_images_and_masks(frames / "images", frames / "masks")
    by_id = {sample_id: (image, mask) for sample_id, image, mask in pairs}
    first = DataRecord([Source("kvasir")], Split(["sample_000"], [], ["sample_001"], False), {"sample_000": "x"})
    second = DataRecord(
        [Source("kvasir")],
        Split(["sample_001"], [], ["sample_000"], False),
        {"sample_001": file_digest(by_id["sample_001"][0])},
    )
    scored = [("sample_001", *by_id["sample_001"])]  # first held it out; second trained on it: refused
    with pytest.raises(UserError, match="1 of the 1 kvasir images to score are images this model was trained"):
        check_held_out("kvasir", scored, [first, second], "test", frames.parent)
    grouped = DataRecord([Source("kvasir")], first.split, {}, [["sample_000", "sample_001"]])
    assert check_held_out("kvasir", scored, [grouped], "test", frames.parent) == {"sample_001": "sample_000"}


# --- what a training run does with them ------------------------------------------------------------------------------


def low_contrast_dataset(folder: Path, count: int, seed: int) -> Path:
    """`count` pairs of grey noise with a faint coloured ellipse at random places: alike, but no two one frame."""
    rng = np.random.default_rng(seed)
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True)
    for index in range(count):
        image = (128 + rng.normal(0, 4, (40, 48, 3))).clip(0, 255).astype(np.uint8)
        mask = np.zeros((40, 48), np.uint8)
        cv2.ellipse(mask, (int(rng.integers(12, 36)), int(rng.integers(12, 28))), (8, 6), 0, 0, 360, 255, -1)
        image[mask > 0] = (0.8 * image[mask > 0] + 0.2 * np.array([90, 110, 170])).astype(np.uint8)
        cv2.imwrite(str(folder / "images" / f"{index:02d}.png"), image)
        cv2.imwrite(str(folder / "masks" / f"{index:02d}.png"), mask)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("folds", [[], ["--folds", "2", "--fold", "1"]])
def test_two_own_datasets_of_alike_images_train_on_all_of_them(tmp_path, folds):
    datasets = [f"{name}={low_contrast_dataset(tmp_path / name, 6, seed)}" for name, seed in (("A", 1), ("B", 2))]
    result = train(tmp_path, "--datasets", *datasets, "--epochs", "1", "--batch-size", "2", *folds)
    assert "copies: 0 copy group(s)" in result.stdout and "left out" not in result.stdout
    split = Split.from_checkpoint(torch.load(tmp_path / "run" / "best.pth", weights_only=True))
    assert len(split.train) + len(split.val) + len(split.test) == 12 and split.val


@pytest.mark.slow
def test_copies_of_test_images_train_unless_leave_out_copies_says_so(tmp_path):
    root = make_kvasir_folder(tmp_path / "own", 10, seed=4, sizes=FRAME_SIZE)
    add_copy(root, "copy", "overlay", "sample_003")  # the same size: its mask fits
    (root.parent / "test.txt").write_text("sample_003\nsample_007\n")
    shutil.move(root / "images", root.parent / "images")
    shutil.move(root / "masks", root.parent / "masks")
    spec = f"own={root.parent}"
    result = train(tmp_path, "--datasets", spec, "--epochs", "1", "--batch-size", "2")
    assert "copies: 1 of the 2 test images are the same frame as one of 1 training images (own/sample_003)" in (
        result.stdout
    )
    checkpoint = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert "own/copy" in checkpoint["split"]["train"] and checkpoint["copy_groups"] == [["own/copy", "own/sample_003"]]
    left = train(tmp_path, "--datasets", spec, "--epochs", "1", "--batch-size", "2", "--leave-out-copies", name="left")
    assert "LEAVE_OUT_COPIES left those 1 training images out (own/copy)" in left.stdout
    checkpoint = torch.load(tmp_path / "left" / "best.pth", weights_only=True)
    assert "own/copy" not in checkpoint["split"]["train"] + checkpoint["split"]["val"]
    assert checkpoint["left_out"] == ["own/copy"]


# --- scripts/find_copies.py ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_find_copies_prints_the_pairs_draws_each_and_writes_the_groups(frames, tmp_path):
    add_copy(frames, "copy", "re-cropped")
    output, groups = tmp_path / "pictures", tmp_path / "groups" / "copies.txt"
    spec = f"mine={frames}"
    result = run_script(
        "find_copies", "--datasets", spec, "--data-dir", tmp_path / "data", "--output", output, "--groups", groups
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 copy pair(s) among 13 images, in 1 group(s)" in result.stdout
    assert "mine/copy  mine/sample_003" in result.stdout
    (picture,) = output.iterdir()
    assert picture.name == "mine_copy__mine_sample_003.png" and cv2.imread(str(picture)).shape[1] > 2 * 100
    assert copies.read_groups(groups) == [["mine/copy", "mine/sample_003"]]
    assert f"--datasets {spec}" in groups.read_text().splitlines()[1]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["output-file", "groups-folder"])
def test_find_copies_refuses_unwritable_outputs_before_any_work(frames, tmp_path, where):
    (tmp_path / "blocker").write_text("a file")
    flags = ["--output", tmp_path / "blocker"] if where == "output-file" else ["--groups", tmp_path]
    result = run_script("find_copies", "--datasets", f"mine={frames}", "--data-dir", tmp_path / "data", *flags)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert ("is a file, not a folder" if where == "output-file" else "is a folder; give the path of a file") in (
        result.stderr
    )
