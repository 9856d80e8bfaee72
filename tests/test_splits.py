"""The official 880/120 split, the seeded validation carve-out, and the fallback for other data."""

import pytest

from dataset.splits import make_split, official_split


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
