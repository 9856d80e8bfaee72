"""Train / validation / test split: the official Kvasir-SEG 880/120 split, validation carved from the 880."""

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

from common.errors import UserError
from common.files import read_text_file

SPLIT_DIR = Path(__file__).parent / "splits"
FALLBACK_TEST_FRACTION = 0.12  # the official split's 120 of 1000


@dataclass(frozen=True)
class Split:
    """Image ids of each part; `official` tells whether the test ids are the published ones."""

    train: list[str]
    val: list[str]
    test: list[str]
    official: bool

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
        return cls(saved["train"], saved["val"], saved["test"], bool(saved.get("official")))


def read_ids(path, what: str = "id list") -> list[str]:
    """One id per line, blank lines ignored (UTF-8, a byte-order mark allowed; else refused, naming the file)."""
    return [line.strip() for line in read_text_file(path, what).splitlines() if line.strip()]


def official_split() -> tuple[list[str], list[str]]:
    """The 880 training and 120 test ids published by the Kvasir-SEG authors."""
    return read_ids(SPLIT_DIR / "train.txt"), read_ids(SPLIT_DIR / "test.txt")


def make_split(ids: list[str], val_fraction: float, seed: int, test_ids: list[str] | None = None) -> Split:
    """The official Kvasir-SEG test ids when all published ids are present (or the given `test_ids`), else a
    seeded random test split (said so).

    Validation is a seeded carve-out of `val_fraction` of the training ids; the test ids are never used
    for training or model selection.
    """
    if test_ids is not None:
        held_out = set(test_ids)
        return carve_validation([i for i in ids if i not in held_out], sorted(test_ids), val_fraction, seed, False)
    official_train, official_test = official_split()
    if set(ids).issuperset(official_train + official_test):
        return carve_validation(sorted(official_train), sorted(official_test), val_fraction, seed, True)
    return random_split(ids, val_fraction, seed, "the data lacks the official Kvasir-SEG split ids")


def random_split(ids: list[str], val_fraction: float, seed: int, reason: str) -> Split:
    """A seeded random FALLBACK_TEST_FRACTION test part, then the validation carve-out; prints `reason`."""
    print(f"{reason}; using a seeded random split (seed {seed}, {FALLBACK_TEST_FRACTION:.0%} test)")
    train_ids, test_ids = train_test_split(sorted(ids), test_size=FALLBACK_TEST_FRACTION, random_state=seed)
    return carve_validation(train_ids, test_ids, val_fraction, seed, False)


def carve_validation(train_ids: list[str], test_ids: list[str], val_fraction: float, seed: int, official: bool):
    """The Split with a seeded `val_fraction` of `train_ids` held out for validation."""
    validation = math.ceil(val_fraction * len(train_ids))
    if not 1 <= validation < len(train_ids):
        raise UserError(
            f"VAL_FRACTION {val_fraction} leaves {len(train_ids) - validation} of the {len(train_ids)} training images"
            f" for training and {validation} for validation; both need at least one (try 0.1)."
        )
    train_ids, val_ids = train_test_split(train_ids, test_size=validation, random_state=seed)
    return Split(sorted(train_ids), sorted(val_ids), sorted(test_ids), official)


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
