"""The image cache is rebuilt when damaged, gets the umask's permissions, and is refused before caching when the
disk or memory cannot hold it."""

import os
import shutil
import stat

import numpy as np
import pytest

from common.errors import DatasetError
from dataset.cache import cache_folder, open_cache
from dataset.kvasir import prepare_kvasir_seg
from dataset.segmentation import PolypDataset
from tests.train_runs import error_line, train_in_process


@pytest.mark.parametrize("damage", ["images deleted", "masks deleted", "images truncated", "masks truncated", "empty"])
def test_a_damaged_cache_is_rebuilt(kvasir_dir, tmp_path, capsys, damage):
    pairs = prepare_kvasir_seg(kvasir_dir)
    expected = PolypDataset(pairs, 32, None, cache_dir=None).resized_pair(5)
    folder = cache_folder(pairs, 32, tmp_path / "cache")
    name = "images.npy" if damage.startswith("images") else "masks.npy"
    if damage.endswith("deleted"):
        (folder / name).unlink()
    elif damage.endswith("truncated"):
        os.truncate(folder / name, (folder / name).stat().st_size // 2)
    else:
        for path in folder.iterdir():
            path.unlink()
    assert cache_folder(pairs, 32, tmp_path / "cache") == folder
    assert "is incomplete (a file missing or cut short); rebuilding it" in capsys.readouterr().out
    images, masks = open_cache(folder)
    assert np.array_equal(images[5], expected[0]) and np.array_equal(masks[5], expected[1])


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_cache_and_extracted_folders_get_the_umask_permissions(kvasir_zip, tmp_path, umask):
    previous = os.umask(umask)
    try:
        shutil.copy(kvasir_zip, tmp_path / "kvasir-seg.zip")
        pairs = prepare_kvasir_seg(tmp_path)  # extracts the zip through a staging folder
        folder = cache_folder(pairs, 32, tmp_path / "cache")
    finally:
        os.umask(previous)
    for path in (folder, tmp_path / "Kvasir-SEG", tmp_path / "Kvasir-SEG" / "images"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask, path
    for path in (folder / "images.npy", tmp_path / "cache" / ".lock"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_a_cache_larger_than_the_free_disk_is_refused_before_caching(kvasir_dir, tmp_path, monkeypatch):
    import dataset.cache

    monkeypatch.setattr(dataset.cache.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**6, 10**6, 1000))
    with pytest.raises(DatasetError, match=r"needs 0.0 GiB in .*, where 0.0 GiB are free; lower --image-size"):
        cache_folder(prepare_kvasir_seg(kvasir_dir), 32, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*px-*"))


@pytest.mark.parametrize("size", ["200000", "1000000"])
def test_an_image_size_beyond_memory_is_refused_before_any_data(tmp_path, size):
    status, stdout, stderr = train_in_process(tmp_path, "--image-size", size, "--data-dir", str(tmp_path / "none"))
    assert status == 2 and f"IMAGE_SIZE {size} with BATCH_SIZE 4 needs more than" in error_line(stderr)
    assert "lower --image-size or --batch-size" in stderr and "caching" not in stdout
