"""The image cache is rebuilt when damaged, gets the umask's permissions, and is refused before caching when the
disk or memory cannot hold it."""

import os
import resource
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from common.errors import DatasetError
from common.progress import format_size
from dataset.cache import cache_folder, open_cache
from dataset.kvasir import prepare_kvasir_seg
from dataset.segmentation import PolypDataset
from tests.scripts import REPO
from tests.train_runs import command_line, error_line, train_in_process


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
    with pytest.raises(DatasetError, match=r"needs \d+\.\d KiB in .*, where 1000 bytes are free; lower --image-size"):
        cache_folder(prepare_kvasir_seg(kvasir_dir), 32, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*px-*"))


@pytest.mark.parametrize("size", ["200000", "1000000"])
def test_an_image_size_beyond_memory_is_refused_before_any_data(tmp_path, size):
    status, stdout, stderr = train_in_process(tmp_path, "--image-size", size, "--data-dir", str(tmp_path / "none"))
    assert status == 2 and f"IMAGE_SIZE {size} with BATCH_SIZE 4 needs more than" in error_line(stderr)
    assert "lower --image-size or --batch-size" in stderr and "caching" not in stdout


@pytest.mark.parametrize(
    ("size", "said"),
    [(0, "0 bytes"), (1000, "1000 bytes"), (1536, "1.5 KiB"), (36 * 2**20, "36.0 MiB"), (3 * 2**29, "1.5 GiB"),
     (1490 * 2**30, "1490 GiB")],
)  # fmt: skip
def test_sizes_are_said_in_the_unit_that_shows_them(size, said):
    assert format_size(size) == said


ADDRESS_SPACE_LEFT = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import torch
from common.device import free_memory, _meminfo_kib
resource.setrlimit(resource.RLIMIT_AS, (_meminfo_kib("/proc/self/status", "VmSize") + 2**30, resource.RLIM_INFINITY))
size, what = free_memory(torch.device("cpu"))
print(size <= 2**30, what)
"""


def test_the_memory_left_under_ulimit_v_bounds_the_cpus_free_memory():
    """PyTorch dies at the address-space limit (`ulimit -v`) long before the machine's memory runs out: the check
    that refuses a step too large for memory must count that limit."""
    result = subprocess.run([sys.executable, "-c", ADDRESS_SPACE_LEFT, str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True the address space left under this process's limit (ulimit -v)\n"


def limit_address_space(gib: float):
    """For preexec_fn: `ulimit -v` of `gib` GiB in the child about to run."""
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (int(gib * 2**30), resource.RLIM_INFINITY))


@pytest.mark.slow
def test_a_step_beyond_ulimit_v_is_refused_in_one_line_naming_the_limit(tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "train.py"), *command_line(tmp_path, "--image-size", "8192")]
    environment = {**os.environ, "MPLBACKEND": "Agg", "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, env=environment, preexec_fn=limit_address_space(6), timeout=300
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "IMAGE_SIZE 8192 with BATCH_SIZE 4 needs more than 4.0 GiB" in error_line(result.stderr)
    assert "(ulimit -v)" in result.stderr and "Traceback" not in result.stderr
