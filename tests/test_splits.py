"""The official 880/120 split, the seeded validation carve-out, cross-validation folds, and the fallback for other
data."""

import re

import cv2
import pytest

from common.errors import UserError
from dataset.sources import image_thumbnail, keep_copies_apart
from dataset.splits import Split, make_split, official_split
from dataset.synthetic import make_kvasir_folder


def test_official_split_files():
    train, test = official_split()
    assert len(train) == 880 and len(test) == 120 and len(set(train) | set(test)) == 1000


@pytest.mark.parametrize("val_fraction", [0.1, 0.2])
def test_official_ids_give_the_official_test_set(val_fraction):
    train, test = official_split()
    split = make_split(sorted(train + test), val_fraction, seed=7)
    assert split.official and split.test == sorted(test)
    assert len(split.val) == round(880 * val_fraction) and len(split.train) + len(split.val) == 880
    assert not set(split.val) & set(split.train) and not set(split.test) & set(split.train + split.val)
    assert make_split(sorted(train + test), val_fraction, seed=7) == split
    assert make_split(sorted(train + test), val_fraction, seed=8).val != split.val


def test_other_data_falls_back_to_a_seeded_random_split(capsys):
    ids = [f"image_{i:03d}" for i in range(100)]
    split = make_split(ids, 0.1, seed=0)
    assert not split.official
    assert "seeded random split" in capsys.readouterr().out
    assert len(split.test) == 12 and len(split.val) == 9 and len(split.train) == 79
    assert sorted(split.train + split.val + split.test) == ids
    assert make_split(ids, 0.1, seed=0) == split


# --- cross-validation folds -------------------------------------------------------------------------------------------


def test_folds_partition_the_training_ids_and_never_touch_the_test_ids():
    train, test = official_split()
    splits = [make_split(sorted(train + test), 0.1, seed=3, folds=5, fold=fold) for fold in range(5)]
    folds = [split.val for split in splits]
    assert sorted(i for fold in folds for i in fold) == sorted(train)  # every training image once over the folds
    assert all(len(fold) == 176 for fold in folds)  # 880 / 5
    for fold, split in enumerate(splits):
        assert (split.folds, split.fold, split.official) == (5, fold, True)
        assert split.test == sorted(test) and not set(split.train) & set(split.val)
        assert sorted(split.train + split.val) == sorted(train)
    assert make_split(sorted(train + test), 0.1, seed=3, folds=5, fold=2) == splits[2]
    assert make_split(sorted(train + test), 0.3, seed=3, folds=5, fold=2) == splits[2]  # VAL_FRACTION plays no part
    assert make_split(sorted(train + test), 0.1, seed=4, folds=5, fold=2).val != splits[2].val


def test_folds_of_data_without_a_test_list_keep_one_seeded_test_part(capsys):
    ids = [f"image_{i:03d}" for i in range(50)]
    splits = [make_split(ids, 0.1, seed=0, folds=3, fold=fold) for fold in range(3)]
    assert {tuple(split.test) for split in splits} == {tuple(make_split(ids, 0.1, seed=0).test)}
    assert sorted(i for split in splits for i in split.val) == sorted(splits[0].train + splits[0].val)
    assert [len(split.val) for split in splits] == [15, 15, 14]  # 44 training images, sizes within one


def test_a_split_read_back_from_a_checkpoint_keeps_its_fold():
    split = make_split([f"image_{i:02d}" for i in range(20)], 0.1, seed=0, folds=4, fold=3)
    assert Split.from_checkpoint({"split": split.as_dict()}) == split
    older = {key: value for key, value in split.as_dict().items() if key not in ("folds", "fold")}
    assert (Split.from_checkpoint({"split": older}).folds, Split.from_checkpoint({"split": older}).fold) == (0, 0)


@pytest.mark.parametrize(
    "folds, fold, message",
    [
        (1, 0, "FOLDS 1 gives no cross-validation"),
        (-2, 0, "FOLDS -2 gives no cross-validation"),
        (3, 3, "FOLD 3 is not a fold of FOLDS 3; give 0 to 2."),
        (3, -1, "FOLD -1 is not a fold of FOLDS 3"),
        (0, 1, "FOLD 1 is not a fold of FOLDS 0; give 0 (FOLD needs FOLDS of 2 or more)."),
        (
            40,
            0,
            "FOLDS 40 leaves 4 fold(s) with no image: the data has only 36 training images; give FOLDS from 2 to 36",
        ),
    ],
)
def test_folds_that_name_no_fold_or_leave_one_empty_are_refused(folds, fold, message):
    with pytest.raises(UserError, match=re.escape(message)):
        make_split([f"image_{i:02d}" for i in range(36)], 0.1, seed=0, test_ids=[], folds=folds, fold=fold)


# --- copies of one image on two sides of a split -------------------------------------------------------------------


@pytest.fixture
def copied_images(tmp_path):
    """Six synthetic images, b a re-encoded copy of a (a PNG of the JPEG, as Kvasir-SEG's 3 near-identical pairs
    differ by encoding), e of d; their thumbnails by id."""
    root = make_kvasir_folder(tmp_path, 6)
    images = sorted((root / "images").glob("*.jpg"))
    names = dict(zip("abcdef", images, strict=True))
    for copy, original in (("b", "a"), ("e", "d")):
        names[copy] = tmp_path / f"{copy}.png"
        cv2.imwrite(str(names[copy]), cv2.imread(str(names[original])))
    return {name: image_thumbnail(path) for name, path in names.items()}


def test_a_validation_copy_of_a_training_image_trains(copied_images, capsys):
    split = keep_copies_apart(Split(["a", "c"], ["b", "f"], ["d", "e"], False), copied_images)
    assert split == Split(["a", "b", "c"], ["f"], ["d", "e"], False)
    assert "note: validation image b is a copy of training image a: it trains instead" in capsys.readouterr().out


@pytest.mark.parametrize("part", ["train", "val"])
def test_a_copy_of_a_test_image_is_left_out_of_training_and_validation(copied_images, part, capsys):
    parts = {"train": ["a", "b", "c"], "val": ["f"]}
    parts[part] = [*parts[part], "e"]
    split = keep_copies_apart(Split(parts["train"], parts["val"], ["d"], True, 3, 1), copied_images)
    assert split == Split(["a", "b", "c"], ["f"], ["d"], True, 3, 1)  # a and b together stay: both train
    assert "note: e is a copy of test image d: left out of training" in capsys.readouterr().out


def test_a_split_without_parted_copies_is_kept_as_it_is(copied_images, capsys):
    split = Split(["a", "b", "c"], ["f"], ["d", "e"], False)
    assert keep_copies_apart(split, copied_images) is split and not capsys.readouterr().out
