"""The official 880/120 split, the seeded validation carve-out, cross-validation folds, and the fallback for other
data."""

import re

import pytest

from common.errors import UserError
from dataset.copies import read_groups
from dataset.sources import KVASIR_COPIES
from dataset.splits import Split, make_split, official_split


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
            "FOLDS 40 leaves some fold with no image: the 36 training images that may validate form only 36 copy"
            " group(s) or single images",
        ),
    ],
)
def test_folds_that_name_no_fold_or_leave_one_empty_are_refused(folds, fold, message):
    with pytest.raises(UserError, match=re.escape(message)):
        make_split([f"image_{i:02d}" for i in range(36)], 0.1, seed=0, test_ids=[], folds=folds, fold=fold)


# --- copy groups: each on one side ---------------------------------------------------------------------------------


IDS = [f"image_{i:02d}" for i in range(40)]
GROUPS = [["image_00", "image_01", "image_02"], ["image_03", "image_04"], ["image_05", "image_30"]]


def sides(split: Split) -> dict[str, str]:
    """The part of the split each id lies in."""
    return {i: part for part in ("train", "val", "test") for i in getattr(split, part)}


@pytest.mark.parametrize("folds", [0, 4])
def test_a_copy_group_is_never_parted(folds):
    for seed in range(30):
        for fold in range(max(folds, 1)):
            split = make_split(IDS, 0.2, seed, test_ids=["image_30", "image_31"], folds=folds, fold=fold, groups=GROUPS)
            part = sides(split)
            assert {part[i] for i in GROUPS[0]} in ({"train"}, {"val"})
            assert {part[i] for i in GROUPS[1]} in ({"train"}, {"val"})
            assert part["image_05"] == "train"  # the same frame as test image image_30: it trains, never validates


def test_copies_of_official_test_images_train_and_never_validate():
    train, test = official_split()
    groups = read_groups(KVASIR_COPIES)
    tied = {i for group in groups if set(group) & set(test) for i in group if i in set(train)}
    assert len(tied) == 13
    for seed in range(10):
        split = make_split(sorted(train + test), 0.1, seed, groups=groups)
        assert tied <= set(split.train) and not tied & set(split.val) and 88 <= len(split.val) <= 92
        parted = [group for group in groups if tied.isdisjoint(group) and len({sides(split)[i] for i in group}) > 1]
        assert not parted


def test_a_random_test_part_keeps_copy_groups_whole():
    for seed in range(30):
        part = sides(make_split(IDS, 0.1, seed, groups=GROUPS))
        assert all(len({part[i] for i in group}) == 1 for group in GROUPS)


def test_a_split_that_leaves_no_image_to_validate_names_the_copy_check():
    with pytest.raises(UserError, match="3 training image.s., 3 of them the same frame as a test image"):
        make_split(["a", "b", "c", "d"], 0.1, 0, test_ids=["d"], groups=[["a", "b", "c", "d"]])
    with pytest.raises(UserError, match="only 1 copy group.s. or single images"):
        make_split(["a", "b", "c", "d"], 0.1, 0, test_ids=["d"], folds=2, groups=[["a", "b", "c"]])
