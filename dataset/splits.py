"""Train / validation / test split: the official Kvasir-SEG 880/120 split, validation carved from the 880."""

from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

SPLIT_DIR = Path(__file__).parent / "splits"
FALLBACK_TEST_FRACTION = 0.12  # the official split's 120 of 1000


@dataclass(frozen=True)
class Split:
    """Image ids of each part; `official` tells whether the test ids are the published ones."""

    train: list[str]
    val: list[str]
    test: list[str]
    official: bool


def read_ids(path) -> list[str]:
    """One id per line, blank lines ignored."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def official_split() -> tuple[list[str], list[str]]:
    """The 880 training and 120 test ids published by the Kvasir-SEG authors."""
    return read_ids(SPLIT_DIR / "train.txt"), read_ids(SPLIT_DIR / "test.txt")


def make_split(ids: list[str], val_fraction: float, seed: int) -> Split:
    """Official test ids when all published ids are present, else a seeded random test split (said so).

    Validation is a seeded carve-out of `val_fraction` of the training ids; the test ids are never used
    for training or model selection.
    """
    official_train, official_test = official_split()
    available = set(ids)
    if available.issuperset(official_train + official_test):
        train_ids, test_ids, official = sorted(official_train), sorted(official_test), True
    else:
        print(
            f"the data lacks the official Kvasir-SEG split ids; using a seeded random split (seed {seed},"
            f" {FALLBACK_TEST_FRACTION:.0%} test)"
        )
        train_ids, test_ids = train_test_split(sorted(ids), test_size=FALLBACK_TEST_FRACTION, random_state=seed)
        official = False
    train_ids, val_ids = train_test_split(train_ids, test_size=val_fraction, random_state=seed)
    return Split(sorted(train_ids), sorted(val_ids), sorted(test_ids), official)
