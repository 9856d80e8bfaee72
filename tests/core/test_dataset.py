"""The PyTorch dataset: item shapes and values, image readers, the resize cache and seeded augmentation."""

import os
import pickle
import threading

import cv2
import numpy as np
import pytest
import torch

from common.errors import DatasetError
from common.files import waiting_lock
from dataset import cache
from dataset.cache import cache_folder, cached_arrays
from dataset.images import load_pair, read_rgb
from dataset.kvasir import prepare_kvasir_seg
from dataset.sampler import RunBatchSampler, epoch_order
from dataset.segmentation import PolypDataset
from dataset.transforms import build_transform


@pytest.fixture
def pairs(kvasir_dir):
    return prepare_kvasir_seg(kvasir_dir)


@pytest.mark.parametrize("size", [16, 32, 48])
@pytest.mark.parametrize("augmentation", ["none", "flips", "strong", "heavy", "wide"])
def test_items_have_expected_shapes_and_values(pairs, size, augmentation):
    dataset = PolypDataset(pairs, size, build_transform(augmentation))
    image, mask = dataset[(3, 7)]
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    assert mask.shape == (1, size, size) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 0
    assert -3 < image.mean() < 3  # normalised, not 0-255


def test_masks_are_binarised_at_127(tmp_path):
    """A 0/255 mask with JPEG-like noise near 0 and 255 and a few grey edge pixels: foreground above 127."""
    mask = np.zeros((10, 20), np.uint8)
    mask[5:] = 255
    mask[0, :4], mask[9, :4], mask[4, 4:8] = [0, 8, 3, 1], [246, 255, 250, 252], [127, 128, 60, 200]
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    cv2.imwrite(str(tmp_path / "i.png"), np.zeros((10, 20, 3), np.uint8))
    _, binary = load_pair(tmp_path / "i.png", tmp_path / "m.png")
    assert np.array_equal(binary, mask > 127)
    assert binary[4, 4:8].tolist() == [0, 1, 0, 1]


def test_a_mask_of_mostly_grey_levels_is_refused(tmp_path):
    """Half its pixels mid-grey (this test's mask until masks without one reading were refused): no threshold
    is the right one, so it is named instead of silently binarised."""
    cv2.imwrite(str(tmp_path / "m.png"), np.array([[0, 8, 127, 128], [246, 255, 60, 200]], np.uint8))
    cv2.imwrite(str(tmp_path / "i.png"), np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"m.png is not a binary mask \(50% of its pixels are mid-grey"):
        load_pair(tmp_path / "i.png", tmp_path / "m.png")


def test_same_seed_same_augmentation(pairs):
    dataset = PolypDataset(pairs, 32, build_transform("strong"))
    first, again = dataset[(0, 123)], dataset[(0, 123)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert any(not torch.equal(first[0], dataset[(0, seed)][0]) for seed in range(124, 130))


def test_run_sampler_is_seeded_resumable_and_sliced_per_process():
    run = list(RunBatchSampler(10, 4, seed=3, first_epoch=1, first_step=0, last_epoch=3))
    assert len(run) == len(RunBatchSampler(10, 4, 3, 1, 0, 3)) == 6  # 2 full batches of 4 per epoch, for 3 epochs
    for epoch in (1, 2, 3):
        order, seeds = epoch_order(10, 3, epoch)
        expected = [(int(order[i]), int(seeds[i])) for i in range(8)]
        assert run[2 * (epoch - 1)] + run[2 * (epoch - 1) + 1] == expected
    assert run[:2] != run[2:4]  # a new order each epoch
    assert list(RunBatchSampler(10, 4, 3, first_epoch=2, first_step=1, last_epoch=3)) == run[3:]
    halves = [list(RunBatchSampler(10, 4, 3, 1, 0, 3, rank=rank, world_size=2)) for rank in (0, 1)]
    assert [first + second for first, second in zip(*halves, strict=True)] == run


@pytest.mark.parametrize("augmentation", ["none", "strong", "heavy"])
def test_cached_and_uncached_loading_give_the_same_samples(pairs, tmp_path, augmentation):
    cached = PolypDataset(pairs, 32, build_transform(augmentation), cache_dir=tmp_path / "cache")
    uncached = PolypDataset(pairs, 32, build_transform(augmentation))
    for key in [(0, 1), (5, 2), (15, 3)]:
        for from_cache, from_files in zip(cached[key], uncached[key], strict=True):
            assert torch.equal(from_cache, from_files)


def test_cache_hit_miss_and_invalidation(pairs, tmp_path, monkeypatch):
    tmp_path = tmp_path / "cache"
    built = []
    real_build = cache._build
    monkeypatch.setattr(cache, "_build", lambda *args: built.append(args[1]) or real_build(*args))
    images, masks = cached_arrays(pairs, 24, tmp_path)  # miss: builds
    assert images.shape == (16, 24, 24, 3) and masks.shape == (16, 24, 24) and len(built) == 1
    cached_arrays(pairs, 24, tmp_path)  # hit
    assert len(built) == 1
    cached_arrays(pairs, 20, tmp_path)  # another size: a new cache
    assert len(built) == 2
    image_path = pairs[0][1]
    cv2.imwrite(str(image_path), np.full((40, 48, 3), 255, np.uint8))  # the source changes
    os.utime(image_path, ns=(1, 1))
    changed, _ = cached_arrays(pairs, 24, tmp_path)
    assert len(built) == 3
    assert changed[0].min() >= 250 and not np.array_equal(changed[0], images[0])
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 3


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_images_of_any_channel_count_read_as_rgb(tmp_path, channels):
    data = np.random.default_rng(0).integers(0, 255, (10, 12, channels), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), data if channels > 1 else data[:, :, 0])
    image = read_rgb(tmp_path / "x.png")
    assert image.shape == (10, 12, 3) and image.dtype == np.uint8
    if channels == 3:
        assert np.array_equal(image, data[:, :, ::-1])


def test_bad_files_are_named(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "garbage.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="empty.jpg is empty"):
        read_rgb(tmp_path / "empty.jpg")
    with pytest.raises(DatasetError, match="garbage.jpg cannot be read"):
        read_rgb(tmp_path / "garbage.jpg")
    cv2.imwrite(str(tmp_path / "image.png"), np.zeros((10, 10, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "mask.png"), np.zeros((12, 10), np.uint8))
    with pytest.raises(DatasetError, match="mask must have its image's size"):
        load_pair(tmp_path / "image.png", tmp_path / "mask.png")


def test_cached_dataset_pickles_without_its_arrays(pairs, tmp_path):
    """Spawned DataLoader workers receive the dataset pickled: it must reopen the shared memory maps, not
    carry a private copy of every image."""
    dataset = PolypDataset(pairs, 64, build_transform("flips"), cache_dir=tmp_path / "cache")
    first = dataset[(2, 5)]
    pickled = pickle.dumps(dataset)
    assert len(pickled) < sum(array.nbytes for array in dataset.arrays) / 10
    for original, restored in zip(first, pickle.loads(pickled)[(2, 5)], strict=True):
        assert torch.equal(original, restored)


def test_killed_cache_builds_leave_staging_folders_that_the_next_build_removes(pairs, tmp_path):
    leftover = tmp_path / "cache" / ".24px-0123456789abcdef0123.k1ll3d"
    leftover.mkdir(parents=True)
    (leftover / "images.npy").write_bytes(b"half")  # what kill -9 during caching leaves
    assert cache_folder(pairs, 24, tmp_path / "cache") is not None
    assert not leftover.exists()


def test_a_second_run_waits_for_the_cache_being_built(pairs, tmp_path, capsys):
    results = []
    with waiting_lock(tmp_path / "cache" / ".lock", "caching in the test"):
        second = threading.Thread(target=lambda: results.append(cache_folder(pairs, 24, tmp_path / "cache")))
        second.start()
        second.join(0.3)
        assert second.is_alive() and not results
    second.join(30)
    assert (results[0] / "masks.npy").exists()
    assert f"waiting for another process caching images in {tmp_path / 'cache'} (pid {os.getpid()})" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("blocked", ["read-only", "file"])
def test_a_cache_that_cannot_be_written_falls_back_to_reading_the_files(pairs, kvasir_dir, read_only, capsys, blocked):
    if blocked == "read-only":
        read_only(kvasir_dir)
    else:
        (kvasir_dir / "cache").write_text("a file where the cache folder goes")
    cached = PolypDataset(pairs, 32, build_transform("none"), cache_dir=kvasir_dir / "cache")
    reason = "Read-only file system" if blocked == "read-only" else "File exists"
    assert capsys.readouterr().out == (
        f"note: cannot write the image cache in {kvasir_dir / 'cache'} ({reason}); reading the image files instead\n"
    )
    uncached = PolypDataset(pairs, 32, build_transform("none"))
    for from_files, expected in zip(cached[3], uncached[3], strict=True):
        assert torch.equal(from_files, expected)


def test_a_full_disk_while_caching_names_the_space_needed_and_leaves_no_cache(kvasir_dir, full_disk):
    code = (
        "from common.errors import run_main; from dataset.cache import cache_folder;"
        " from dataset.kvasir import prepare_kvasir_seg;"
        f" run_main(lambda: cache_folder(prepare_kvasir_seg({str(kvasir_dir)!r}), 32, {str(kvasir_dir / 'cache')!r}))"
    )
    result = full_disk(code, limit=20_000)  # the cache (images and masks) needs 64.2 KiB
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: no space left on device while caching images in {kvasir_dir / 'cache'} (File too large): the cache"
        " needs 64.2 KiB there; free space, or run with --no-cache."
    )
    assert [p.name for p in (kvasir_dir / "cache").iterdir()] == [".lock"]
