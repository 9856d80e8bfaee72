"""A bad recipe file or test list ends in one line naming the file; a byte order mark is read."""

import pytest

from common.config import read_recipe, script_constants
from dataset.kvasir import pair_images_and_masks
from dataset.sources import parse_source, source_split
from tests.train_runs import error_line, train_in_process, train_script

TRAIN_DEFAULTS = script_constants(vars(train_script))


RECIPE_BYTES = {  # contents of a recipe file that must end in one line, naming the file
    "utf-16": ("EPOCHS = 1\n".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    "latin-1": ("# réglage\nEPOCHS = 1\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9"),
    "nul byte": (b"EPOCHS = 1\x00\n", "not valid Python"),
    "list of ints": (b"DATASETS = [1, 2]\n", "DATASETS's elements must be a str, not 1"),
    "nested list": (b"DATASETS = [['kvasir']]\n", "DATASETS's elements must be a str"),
    "unhashable": (b"DATASETS = {[1]: 2}\n", "DATASETS must be a plain value"),
    "set": (b"DATASETS = {'kvasir'}\n", "DATASETS must be a list"),
    "annotated": (b"EPOCHS: int = 1\n", "a recipe holds only constants"),
}


@pytest.mark.parametrize("case", list(RECIPE_BYTES))
def test_a_bad_recipe_file_is_one_line(tmp_path, case):
    content, message = RECIPE_BYTES[case]
    (tmp_path / "r.py").write_bytes(content)
    status, _, stderr = train_in_process(tmp_path, str(tmp_path / "r.py"))
    assert status == 2 and message in error_line(stderr) and str(tmp_path / "r.py") in stderr


def test_a_recipe_file_with_a_byte_order_mark_is_read(tmp_path):
    (tmp_path / "r.py").write_bytes(b"\xef\xbb\xbf" + b'"""Saved by Notepad."""\nEPOCHS = 3\n')
    assert read_recipe(tmp_path / "r.py", TRAIN_DEFAULTS) == {"EPOCHS": 3}


def test_a_recipe_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / "r.py").mkdir()
    status, _, stderr = train_in_process(tmp_path, str(tmp_path / "r.py"))
    assert status == 2 and "recipe file" in error_line(stderr) and "is a folder" in stderr


TEST_LISTS = {  # a test list that is not a readable UTF-8 file
    "missing": (None, "test list {path} not found"),
    "folder": ("folder", "test list {path} is a folder"),
    "utf-16": ("sample_001\n".encode("utf-16"), "is UTF-16 text"),
    "latin-1": ("sample_001\né\n".encode("latin-1"), "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", list(TEST_LISTS))
def test_a_bad_test_list_is_one_line(kvasir_dir, tmp_path, case):
    content, message = TEST_LISTS[case]
    root, path = kvasir_dir / "Kvasir-SEG", tmp_path / "test.txt"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    spec = f"mine={root / 'images'}:{root / 'masks'}:{path}"
    status, _, stderr = train_in_process(tmp_path, "--datasets", spec, "--epochs", "1")
    assert status == 2 and message.format(path=path) in error_line(stderr)


def test_a_test_list_with_a_byte_order_mark_is_read(kvasir_dir, tmp_path):
    root = kvasir_dir / "Kvasir-SEG"
    (tmp_path / "t.txt").write_bytes(b"\xef\xbb\xbfsample_001\r\nsample_002\r\n")
    source = parse_source(f"mine={root / 'images'}:{root / 'masks'}:{tmp_path / 't.txt'}")
    ids = [f"mine/{stem}" for stem, _, _ in pair_images_and_masks(source.images, source.masks)]
    assert source_split(source, ids, 0.1, 42).test == ["mine/sample_001", "mine/sample_002"]
