"""Train / validation / test split: the official Kvasir-SEG 880/120 split, validation carved from the 880 (a seeded
VAL_FRACTION, or one fold of a seeded FOLDS-fold partition for cross-validation)."""

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from sklearn.model_selection import KFold, train_test_split

from common.errors import UserError
from common.files import read_text_file

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
    def from_checkpoint(cls, checkpoint: dict) -> "Split":
        """The split a checkpoint was trained with, refusing a checkpoint that does not record one."""
        saved = checkpoint.get("split")
        parts = ("train", "val", "test")
        if not isinstance(saved, dict) or not all(isinstance(saved.get(part), list) for part in parts):
            raise UserError(
                "the checkpoint does not record the ids of its train/val/test split (it predates that, or was not"
                " written by scripts/train.py); score explicit folders with --images and --masks instead."
            )
        folds, fold = saved.get("folds", 0), saved.get("fold", 0)  # 0, 0: a checkpoint written before folds
        return cls(saved["train"], saved["val"], saved["test"], bool(saved.get("official")), folds, fold)


def read_ids(path, what: str = "id list") -> list[str]:
    """One id per line, blank lines ignored (UTF-8, a byte-order mark allowed; else refused, naming the file)."""
    return [line.strip() for line in read_text_file(path, what).splitlines() if line.strip()]


def official_split() -> tuple[list[str], list[str]]:
    """The 880 training and 120 test ids published by the Kvasir-SEG authors."""
    return read_ids(SPLIT_DIR / "train.txt"), read_ids(SPLIT_DIR / "test.txt")


def make_split(
    ids: list[str], val_fraction: float, seed: int, test_ids: list[str] | None = None, folds: int = 0, fold: int = 0
) -> Split:
    """The official Kvasir-SEG test ids when all published ids are present (or the given `test_ids`), else a
    seeded random test split (said so).

    Validation is a seeded carve-out of `val_fraction` of the training ids, or with `folds` fold `fold` of their
    seeded partition (see fold_partition); the test ids are never used for training or model selection.
    """
    if test_ids is not None:
        held_out = set(test_ids)
        train_ids = [i for i in ids if i not in held_out]
        return carve_validation(train_ids, sorted(test_ids), val_fraction, seed, False, folds, fold)
    official_train, official_test = official_split()
    if set(ids).issuperset(official_train + official_test):
        return carve_validation(sorted(official_train), sorted(official_test), val_fraction, seed, True, folds, fold)
    return random_split(ids, val_fraction, seed, "the data lacks the official Kvasir-SEG split ids", folds, fold)


def random_split(ids: list[str], val_fraction: float, seed: int, reason: str, folds: int = 0, fold: int = 0) -> Split:
    """A seeded random FALLBACK_TEST_FRACTION test part (the same for every fold), then the validation part;
    prints `reason`."""
    print(f"{reason}; using a seeded random split (seed {seed}, {FALLBACK_TEST_FRACTION:.0%} test)")
    train_ids, test_ids = train_test_split(sorted(ids), test_size=FALLBACK_TEST_FRACTION, random_state=seed)
    return carve_validation(train_ids, test_ids, val_fraction, seed, False, folds, fold)


def carve_validation(
    train_ids: list[str], test_ids: list[str], val_fraction: float, seed: int, official: bool, folds=0, fold=0
) -> Split:
    """The Split with a seeded `val_fraction` of `train_ids` held out for validation, or with `folds` their fold
    `fold` (the rest train)."""
    check_folds(folds, fold)
    if folds:
        partition = fold_partition(train_ids, folds, seed)
        rest = sorted(i for number, part in enumerate(partition) if number != fold for i in part)
        return Split(rest, partition[fold], sorted(test_ids), official, folds, fold)
    validation = math.ceil(val_fraction * len(train_ids))
    if not 1 <= validation < len(train_ids):
        raise UserError(
            f"VAL_FRACTION {val_fraction} leaves {len(train_ids) - validation} of the {len(train_ids)} training images"
            f" for training and {validation} for validation; both need at least one (try 0.1)."
        )
    train_ids, val_ids = train_test_split(train_ids, test_size=validation, random_state=seed)
    return Split(sorted(train_ids), sorted(val_ids), sorted(test_ids), official)


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


def fold_partition(train_ids: list[str], folds: int, seed: int) -> list[list[str]]:
    """The sorted ids of each of `folds` folds of `train_ids`: disjoint, together every id once, sizes within one
    of each other; shuffled by `seed` alone (independent of VAL_FRACTION), so every fold of a run agrees."""
    check_folds(folds, 0)
    if len(train_ids) < folds:
        raise UserError(
            f"FOLDS {folds} leaves {folds - len(train_ids)} fold(s) with no image: the data has only"
            f" {len(train_ids)} training images; give FOLDS from 2 to {len(train_ids)}."
        )
    ids = sorted(train_ids)
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return [sorted(ids[i] for i in held) for _, held in splitter.split(ids)]


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
