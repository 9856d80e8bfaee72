"""Train / validation / test split: the official Kvasir-SEG 880/120 split, validation carved from the 880 (a seeded
VAL_FRACTION, or one fold of a seeded FOLDS-fold partition for cross-validation).

Copy groups (dataset/copies.py: images of the same video frame) stay whole on one side of every seeded cut, through
scikit-learn's group splitters; an image whose copy is a test image trains and never validates, so that choosing the
model never looks at a test image. A fixed test list (the official one) is kept as it is: its copies are reported.
"""

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from sklearn.model_selection import GroupKFold, GroupShuffleSplit

from common.errors import UserError
from common.files import read_text_file
from dataset.copies import group_labels

SPLIT_DIR = Path(__file__).parent / "splits"
FALLBACK_TEST_FRACTION = 0.12  # the official split's 120 of 1000


@dataclass(frozen=True)
class Split:
    """Image ids of each part; `official` tells whether the test ids are the published ones; `folds` and `fold`
    say which fold of a cross-validation partition `val` is (folds 0: the VAL_FRACTION carve-out)."""

    train: list[str]
    val: list[str]
    test: list[str]
    official: bool
    folds: int = 0
    fold: int = 0

    def as_dict(self) -> dict:
        """Plain lists and a bool, as checkpoints store them."""
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, source: str = "the checkpoint") -> "Split":
        """The split a checkpoint was trained with (model/checkpoint.py's load_checkpoint checked its fields),
        refusing a checkpoint that records none; `source` names it."""
        if "split" not in checkpoint:
            raise UserError(
                f"{source} records no train/val/test split (it predates that, or was not written by"
                " scripts/train.py), so it cannot say which images it never trained on."
            )
        saved = checkpoint["split"]
        folds, fold = saved.get("folds", 0), saved.get("fold", 0)  # 0, 0: a checkpoint written before folds
        return cls(saved["train"], saved["val"], saved["test"], bool(saved.get("official")), folds, fold)


def read_ids(path, what: str = "id list") -> list[str]:
    """One id per line, blank lines ignored (UTF-8, a byte-order mark allowed; else refused, naming the file)."""
    return [line.strip() for line in read_text_file(path, what).splitlines() if line.strip()]


def official_split() -> tuple[list[str], list[str]]:
    """The 880 training and 120 test ids published by the Kvasir-SEG authors."""
    return read_ids(SPLIT_DIR / "train.txt"), read_ids(SPLIT_DIR / "test.txt")


def make_split(
    ids: list[str],
    val_fraction: float,
    seed: int,
    test_ids: list[str] | None = None,
    folds: int = 0,
    fold: int = 0,
    groups: list[list[str]] = (),
) -> Split:
    """The official Kvasir-SEG test ids when all published ids are present (or the given `test_ids`), else a
    seeded random test split (said so).

    Validation is a seeded carve-out of `val_fraction` of the training ids, or with `folds` fold `fold` of their
    seeded partition (see fold_partition); the test ids are never used for training or model selection. `groups`
    are the copy groups, each kept on one side (see carve_validation).
    """
    if test_ids is not None:
        held_out = set(test_ids)
        train_ids = [i for i in ids if i not in held_out]
        return carve_validation(train_ids, sorted(test_ids), val_fraction, seed, False, folds, fold, groups)
    official_train, official_test = official_split()
    if set(ids).issuperset(official_train + official_test):
        train_ids, test_ids = sorted(official_train), sorted(official_test)
        return carve_validation(train_ids, test_ids, val_fraction, seed, True, folds, fold, groups)
    reason = "the data lacks the official Kvasir-SEG split ids"
    return random_split(ids, val_fraction, seed, reason, folds, fold, groups)


def random_split(
    ids: list[str], val_fraction: float, seed: int, reason: str, folds: int = 0, fold: int = 0, groups=()
) -> Split:
    """A seeded random FALLBACK_TEST_FRACTION test part of whole copy groups (the same for every fold), then the
    validation part; prints `reason`."""
    print(f"{reason}; using a seeded random split (seed {seed}, {FALLBACK_TEST_FRACTION:.0%} test)")
    ids = sorted(ids)
    count = len(set(group_labels(ids, groups)))
    if count < 3:
        raise UserError(
            f"the data holds {len(ids)} image(s), {count} once each copy group (the same frame) counts once; a split"
            " into training, validation and test needs 3 (scripts/find_copies.py shows the groups)."
        )
    held = min(max(1, math.ceil(FALLBACK_TEST_FRACTION * len(ids))), count - 1)
    train_ids, test_ids = group_cut(ids, held, seed, groups)
    return carve_validation(train_ids, test_ids, val_fraction, seed, False, folds, fold, groups)


def group_cut(ids: list[str], held: int, seed: int, groups) -> tuple[list[str], list[str]]:
    """A seeded cut of `ids` into the rest and `held` whole copy groups (single images mostly: their images number
    `held` or a few more), with scikit-learn's GroupShuffleSplit."""
    labels = group_labels(ids, groups)
    rest, held_out = next(GroupShuffleSplit(n_splits=1, test_size=held, random_state=seed).split(ids, groups=labels))
    return sorted(ids[i] for i in rest), sorted(ids[i] for i in held_out)


def copies_of_test(train_ids: list[str], test_ids: list[str], groups) -> list[str]:
    """The ids of `train_ids` in a copy group with a test image: the same frame as an image held out for testing."""
    test = set(test_ids)
    tied = {i for group in groups if test.intersection(group) for i in group}
    return sorted(i for i in train_ids if i in tied)


def carve_validation(
    train_ids: list[str],
    test_ids: list[str],
    val_fraction: float,
    seed: int,
    official: bool,
    folds=0,
    fold=0,
    groups=(),
) -> Split:
    """The Split with a seeded `val_fraction` of `train_ids` held out for validation, or with `folds` their fold
    `fold` (the rest train). Copy groups stay whole on one side, and an image whose copy is a test image always
    trains (validating on it would choose the model on a test image)."""
    check_folds(folds, fold)
    tied = copies_of_test(train_ids, test_ids, groups)
    free = [i for i in train_ids if i not in set(tied)]
    free_groups = len(set(group_labels(free, groups)))
    if folds:
        partition = fold_partition(free, folds, seed, groups)
        rest = sorted(tied + [i for number, part in enumerate(partition) if number != fold for i in part])
        return Split(rest, partition[fold], sorted(test_ids), official, folds, fold)
    validation = math.ceil(val_fraction * len(train_ids))  # copy groups: single images mostly
    if not 1 <= validation < free_groups:
        raise UserError(
            f"VAL_FRACTION {val_fraction} leaves no image for {'training' if validation else 'validation'}:"
            f" {describe_free(train_ids, tied, free_groups)}; give a"
            " VAL_FRACTION near 0.1, more images, or check the copy groups (scripts/find_copies.py)."
        )
    rest, val_ids = group_cut(free, validation, seed, groups)
    return Split(sorted(tied + rest), val_ids, sorted(test_ids), official)


def describe_free(train_ids: list[str], tied: list[str], free_groups: int) -> str:
    """Why few images can validate: the training images, the copies of test images among them (they only train),
    and the copy groups the rest forms."""
    copies = f", {len(tied)} of them the same frame as a test image (they only train)" if tied else ""
    return f"{len(train_ids)} training image(s){copies}; the others form {free_groups} copy group(s) or single images"


def check_folds(folds: int, fold: int) -> None:
    """Refuse FOLDS and FOLD that name no fold of a cross-validation partition (FOLDS 0 turns folds off)."""
    if folds == 1 or folds < 0:
        raise UserError(
            f"FOLDS {folds} gives no cross-validation (one fold would validate on every training image and train on"
            " none); give 0 for the VAL_FRACTION carve-out, or 2 or more folds (5 is usual)."
        )
    if not 0 <= fold < max(folds, 1):
        allowed = f"0 to {folds - 1}" if folds else "0 (FOLD needs FOLDS of 2 or more)"
        raise UserError(f"FOLD {fold} is not a fold of FOLDS {folds}; give {allowed}.")


def fold_partition(train_ids: list[str], folds: int, seed: int, groups=()) -> list[list[str]]:
    """The sorted ids of each of `folds` folds of `train_ids`: disjoint, together every id once, each copy group in
    one fold, sizes near each other (scikit-learn's GroupKFold); shuffled by `seed` alone (independent of
    VAL_FRACTION), so every fold of a run agrees."""
    check_folds(folds, 0)
    ids = sorted(train_ids)
    labels = group_labels(ids, groups)
    if len(set(labels)) < folds:
        raise UserError(
            f"FOLDS {folds} leaves some fold with no image: the {len(ids)} training images that may validate form"
            f" only {len(set(labels))} copy group(s) or single images (an image whose copy is a test image only"
            f" trains); give FOLDS from 2 to {max(len(set(labels)), 2)}, or more images."
        )
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [sorted(ids[i] for i in held) for _, held in splitter.split(ids, groups=labels)]


def pairs_with_ids(pairs, ids: list[str], what: str) -> list[tuple[str, Path, Path]]:
    """The (id, image, mask) pairs of `ids`, in that order, refusing when the data lacks some of them."""
    by_id = {pair[0]: pair for pair in pairs}
    missing = [sample_id for sample_id in ids if sample_id not in by_id]
    if missing:
        raise UserError(
            f"the data found lacks {len(missing)} of the {len(ids)} {what} images this checkpoint was split with"
            f" (e.g. {missing[0]}); point --data-dir (or the dataset's folders) at the data it was trained on."
        )
    return [by_id[sample_id] for sample_id in ids]
