"""The promises of the troubleshooting table for the newer features (issue 20), one test per class, parametrised over
its variants: nothing a user made is destroyed, no silently wrong result, no traceback, messages that say what to do."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from common.config import read_recipe, script_constants
from common.errors import DatasetError, UserError
from common.files import lock_holder
from dataset.cache import cache_folder, open_cache
from dataset.kvasir import pair_images_and_masks, prepare_kvasir_seg
from dataset.segmentation import PolypDataset
from dataset.sources import DataRecord, Source, image_thumbnail, parse_source, seen_images, source_split
from dataset.splits import Split
from dataset.synthetic import make_kvasir_folder, make_sample
from model import load_checkpoint
from tests.checkpoints import save_untrained_checkpoint
from tests.scripts import REPO, load_script, run_script
from tests.train_runs import error_line, lock_held_elsewhere, train_in_process, train_script
from utils.inference import OnnxPredictor, fixed_batch_size

sweep = load_script("sweep")
TRAIN_DEFAULTS = script_constants(vars(train_script))


def folder_dataset(kvasir_dir) -> str:
    """The synthetic Kvasir-SEG of `kvasir_dir` given as a folder dataset."""
    return f"mine={kvasir_dir / 'Kvasir-SEG'}"


# --- 1. nothing a user made is destroyed -------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["OVERWRITE = True", "OVERWRITE = False"])
def test_a_recipe_file_may_not_hold_a_destructive_switch(tmp_path, line):
    recipe = tmp_path / "shared.py"
    recipe.write_text(f'"""A shared recipe."""\nEPOCHS = 1\n{line}\n')
    with pytest.raises(UserError, match="line 3: OVERWRITE may not be set in a recipe file.*--overwrite"):
        read_recipe(recipe, TRAIN_DEFAULTS)


def test_a_recipe_with_overwrite_leaves_the_earlier_run_intact(kvasir_dir, tmp_path):
    assert train_in_process(tmp_path, "--epochs", "1")[0] == 0
    before = (tmp_path / "run" / "best.pth").read_bytes()
    recipe = tmp_path / "recipe.py"
    recipe.write_text("OVERWRITE = True\n")
    status, _, stderr = train_in_process(tmp_path, str(recipe), "--epochs", "1")
    assert status == 2 and "OVERWRITE may not be set in a recipe file" in error_line(stderr)
    assert (tmp_path / "run" / "best.pth").read_bytes() == before


@pytest.fixture
def run_a(kvasir_dir, tmp_path):
    """A finished 1-epoch run in tmp_path/a; returns its best model's bytes."""
    assert train_in_process(tmp_path, "--epochs", "1", name="a")[0] == 0
    return (tmp_path / "a" / "best.pth").read_bytes()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--resume", "--epochs", "2"], "--resume keeps the run's best model at"),
        (["--epochs", "1", "--overwrite"], "is the best model of another run"),
        (["--epochs", "1"], "is the best model of another run"),
    ],
    ids=["resume", "new-run-overwrite", "new-run"],
)
def test_another_runs_best_model_is_never_replaced(run_a, tmp_path, flags, message):
    assert train_in_process(tmp_path, "--epochs", "1", name="b")[0] == 0
    b_args = ["--checkpoint-path", str(tmp_path / "a" / "best.pth")]
    status, _, stderr = train_in_process(tmp_path, *flags, *b_args, name="b")
    assert status == 2 and message in error_line(stderr)
    assert (tmp_path / "a" / "best.pth").read_bytes() == run_a


def test_resuming_onto_another_runs_model_is_refused_even_when_its_own_is_gone(run_a, tmp_path):
    assert train_in_process(tmp_path, "--epochs", "1", name="b")[0] == 0
    (tmp_path / "b" / "best.pth").unlink()  # moved away: a new path may be named, but not another run's model
    flags = ["--resume", "--epochs", "2", "--checkpoint-path", str(tmp_path / "a" / "best.pth")]
    status, _, stderr = train_in_process(tmp_path, *flags, name="b")
    assert status == 2 and "is the best model of another run" in error_line(stderr)
    assert (tmp_path / "a" / "best.pth").read_bytes() == run_a


@pytest.mark.parametrize("content", [b"my notes\n", b"", b"PK\x03\x04 not a checkpoint"], ids=["text", "empty", "zip"])
def test_a_checkpoint_path_holding_a_foreign_file_is_never_replaced(kvasir_dir, tmp_path, content):
    target = tmp_path / "precious.txt"
    target.write_bytes(content)
    status, _, stderr = train_in_process(tmp_path, "--epochs", "1", "--overwrite", "--checkpoint-path", str(target))
    assert status == 2 and "holds a file that is not a checkpoint" in error_line(stderr)
    assert target.read_bytes() == content


@pytest.mark.parametrize(
    "name", ["last.pth", "history.csv", "summary.json", "curves.png", "train", "panels/best.pth", "."]
)
def test_a_runs_own_paths_never_collide(tmp_path, name):
    status, _, stderr = train_in_process(tmp_path, "--checkpoint-path", str(tmp_path / "run" / name))
    line = error_line(stderr)
    assert status == 2 and "another run" not in line
    assert "would overwrite each other" in line or "is a folder" in line


def test_a_checkpoint_named_like_the_run_lock_trains(kvasir_dir, tmp_path):
    status, stdout, stderr = train_in_process(
        tmp_path, "--epochs", "1", "--checkpoint-path", str(tmp_path / "run" / "train.pth")
    )
    assert status == 0, stderr
    assert f"model saved to {tmp_path / 'run' / 'train.pth'}" in stdout


def test_a_second_sweep_on_one_sweep_dir_is_refused(tmp_path):
    recipe = tmp_path / "a.py"
    recipe.write_text("EPOCHS = 1\n")
    sweep_dir = tmp_path / "sweep"
    with lock_held_elsewhere(sweep_dir / "sweep.lock") as holder:
        result = run_script("sweep", recipe, "--sweep-dir", sweep_dir, "--data-dir", tmp_path / "nodata")
    assert result.returncode == 2
    assert f"another run (pid {holder}) is writing {sweep_dir}" in error_line(result.stderr)
    assert "another --sweep-dir" in result.stderr and not (sweep_dir / "a-seed42").exists()


def foreign_files(tmp_path) -> dict:
    """Files no script may replace: a checkpoint, another script's CSV and JSON, notes, and a folder."""
    checkpoint = save_untrained_checkpoint(tmp_path / "trained.pth", tmp_path / "none")
    files = {"checkpoint": checkpoint}
    for name, text in {"history.csv": "epoch,train_loss\n1,0.5\n", "other.json": '{"a": 1}', "notes.txt": "x"}.items():
        files[name] = tmp_path / name
        files[name].write_text(text)
    files["folder"] = tmp_path / "folder"
    files["folder"].mkdir()
    return files


@pytest.mark.parametrize("flag", ["--csv", "--json"])
@pytest.mark.parametrize("kind", ["checkpoint", "history.csv", "other.json", "notes.txt", "folder"])
def test_evaluate_refuses_outputs_that_are_not_its_own_before_scoring(kvasir_dir, tmp_path, flag, kind):
    target = foreign_files(tmp_path)[kind]
    before = None if target.is_dir() else target.read_bytes()
    model = save_untrained_checkpoint(tmp_path / "model.pth", kvasir_dir)
    other = "--json" if flag == "--csv" else "--csv"
    result = run_script(
        "evaluate", "--checkpoint", model, "--data-dir", kvasir_dir, "--device", "cpu", flag, target,
        other, tmp_path / "out" / "fresh",
    )  # fmt: skip
    line = error_line(result.stderr)
    assert result.returncode == 2 and "scoring" not in result.stdout
    assert "not replaced" in line or "is a folder" in line
    assert before is None or target.read_bytes() == before


def test_evaluate_replaces_its_own_earlier_outputs(kvasir_dir, tmp_path):
    model = save_untrained_checkpoint(tmp_path / "model.pth", kvasir_dir)
    flags = ["--checkpoint", model, "--data-dir", kvasir_dir, "--device", "cpu", "--no-tta"]
    outputs = ["--csv", tmp_path / "e.csv", "--json", tmp_path / "e.json"]
    for _ in range(2):
        result = run_script("evaluate", *flags, *outputs)
        assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "e.json").read_text())["written_by"] == "scripts/evaluate.py"


@pytest.mark.parametrize("flag", ["--output", "--json"])
@pytest.mark.parametrize("kind", ["checkpoint", "other.json", "notes.txt", "folder"])
def test_export_refuses_outputs_that_are_not_its_own_before_exporting(tmp_path, flag, kind):
    target = foreign_files(tmp_path)[kind]
    before = None if target.is_dir() else target.read_bytes()
    model = save_untrained_checkpoint(tmp_path / "model.pth", tmp_path / "none")
    other = "--json" if flag == "--output" else "--output"
    result = run_script("export", "--checkpoint", model, flag, target, other, tmp_path / "out" / "fresh")
    line = error_line(result.stderr)
    assert result.returncode == 2 and "exported" not in result.stdout
    assert "not replaced" in line or "is a folder" in line or "is the checkpoint itself" in line
    assert before is None or target.read_bytes() == before


# --- 2. no silently wrong result ---------------------------------------------------------------------------------


def first_epoch(kvasir_dir, tmp_path) -> tuple[Split, str]:
    """A 2-epoch run of the folder dataset stopped after 1 epoch (its last.pth kept); its split and dataset flag."""
    dataset = folder_dataset(kvasir_dir)
    assert train_in_process(tmp_path, "--epochs", "1", "--datasets", dataset)[0] == 0
    return Split.from_checkpoint(torch.load(tmp_path / "run" / "last.pth", weights_only=True)), dataset


@pytest.mark.parametrize("part", ["train", "val"])
@pytest.mark.parametrize("change", ["removed", "changed"])
def test_resume_refuses_when_images_it_trained_on_are_gone_or_changed(kvasir_dir, tmp_path, part, change):
    split, _ = first_epoch(kvasir_dir, tmp_path)
    stem = getattr(split, part)[0].split("/")[1]
    image = kvasir_dir / "Kvasir-SEG" / "images" / f"{stem}.jpg"
    if change == "removed":
        image.unlink()
        (kvasir_dir / "Kvasir-SEG" / "masks" / f"{stem}.jpg").unlink()
    else:
        cv2.imwrite(str(image), cv2.flip(cv2.imread(str(image)), 1))
    status, _, stderr = train_in_process(tmp_path, "--resume", "--epochs", "2")
    how = "are no longer in" if change == "removed" else "have changed in"
    assert status == 2 and f"image(s) of the run saved {how}" in error_line(stderr)
    assert f"mine/{stem}" in stderr


@pytest.mark.parametrize("where", ["images", "test list"])
def test_resume_after_images_were_added_keeps_its_split(kvasir_dir, tmp_path, where):
    split, _ = first_epoch(kvasir_dir, tmp_path)
    root = kvasir_dir / "Kvasir-SEG"
    rng = np.random.default_rng(5)
    for index in range(4):
        image, mask = make_sample(rng, 48, 40)
        cv2.imwrite(str(root / "images" / f"new_{index}.jpg"), image)
        cv2.imwrite(str(root / "masks" / f"new_{index}.jpg"), mask)
    if where == "test list":  # the folder gains a test list that would move trained-on images into the test part
        (root / "test.txt").write_text("\n".join(i.split("/")[1] for i in split.train[:3]) + "\n")
    status, stdout, stderr = train_in_process(tmp_path, "--resume", "--epochs", "2")
    assert status == 0, stderr
    assert "4 image(s) added to the data since the run started" in stdout
    resumed = Split.from_checkpoint(torch.load(tmp_path / "run" / "last.pth", weights_only=True))
    assert resumed == split


def thumbnail_record(pairs) -> DataRecord:
    """A record that trained on every pair, with digests and thumbnails."""
    ids = [sample_id for sample_id, _, _ in pairs]
    thumbnails = {sample_id: image_thumbnail(image) for sample_id, image, _ in pairs}
    return DataRecord([Source("kvasir")], Split(ids, [], [], False), {}, thumbnails)


COPIES = {  # how a training image may come back under another name; each is found
    "png": lambda image: (".png", image, []),
    "jpeg-q70": lambda image: (".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70]),
    "half-size": lambda image: (".png", cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA), []),
    "larger": lambda image: (".jpg", cv2.resize(image, None, fx=1.7, fy=1.3, interpolation=cv2.INTER_CUBIC), []),
    "bmp": lambda image: (".bmp", image, []),
}


@pytest.mark.parametrize("how", list(COPIES))
def test_a_reencoded_or_resized_training_image_is_not_held_out(kvasir_dir, tmp_path, how):
    pairs = prepare_kvasir_seg(kvasir_dir)
    record = thumbnail_record(pairs[:8])
    suffix, copy, params = COPIES[how](cv2.imread(str(pairs[3][1])))
    (tmp_path / "copy").mkdir()
    cv2.imwrite(str(tmp_path / "copy" / f"renamed{suffix}"), copy, params)
    scored = [("copy/renamed", tmp_path / "copy" / f"renamed{suffix}", pairs[3][2]), *pairs[8:]]
    assert seen_images(record, scored) == [("copy/renamed", pairs[3][0])]  # the unseen images are not flagged


def test_images_never_seen_are_held_out(tmp_path):
    make_kvasir_folder(tmp_path / "a", count=40, seed=1)
    make_kvasir_folder(tmp_path / "b", count=40, seed=2)
    record = thumbnail_record(prepare_kvasir_seg(tmp_path / "a"))
    assert seen_images(record, prepare_kvasir_seg(tmp_path / "b")) == []


@pytest.mark.parametrize("spelling", ["relative", "dot-slash", "trailing-slash", "symlink", "dot-dot"])
def test_one_folder_however_spelt_is_one_dataset(kvasir_dir, tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(kvasir_dir / "Kvasir-SEG")
    spec = {
        "relative": "data/Kvasir-SEG",
        "dot-slash": "./data/Kvasir-SEG",
        "trailing-slash": "data/Kvasir-SEG/",
        "symlink": "link",
        "dot-dot": "data/../data/Kvasir-SEG",
    }[spelling]
    source = parse_source(f"mine={spec}")
    assert source == parse_source(f"mine={kvasir_dir / 'Kvasir-SEG'}")
    assert Path(source.images).is_absolute()


def test_a_relative_dataset_scores_the_same_folder_from_another_directory(kvasir_dir, tmp_path):
    work = tmp_path / "work"
    (work / "mine").mkdir(parents=True)
    shutil.move(kvasir_dir / "Kvasir-SEG", work / "mine" / "set")
    (tmp_path / "elsewhere" / "mine" / "set").mkdir(parents=True)  # a folder of the same relative name elsewhere
    train_flags = ["--device", "cpu", "--no-show-panels", "--image-size", "32", "--base-channels", "4", "--depth", "2",
                   "--batch-size", "4", "--num-workers", "0", "--epochs", "1", "--datasets", "m=mine/set",
                   "--output-dir", "run", "--checkpoint-path", "run/best.pth"]  # fmt: skip
    trained = subprocess.run(
        [sys.executable, REPO / "scripts" / "train.py", *train_flags], cwd=work, capture_output=True, text=True
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = load_checkpoint(work / "run" / "best.pth")
    assert checkpoint["datasets"][0]["images"] == str(work / "mine" / "set" / "images")
    evaluated = subprocess.run(
        [sys.executable, REPO / "scripts" / "evaluate.py", "--checkpoint", work / "run" / "best.pth", "--device",
         "cpu", "--no-tta", "--csv", "e.csv"],
        cwd=tmp_path / "elsewhere", capture_output=True, text=True,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert f"held-out test split (seeded) of {work / 'mine' / 'set' / 'images'}" in evaluated.stdout


def sweep_settings(tmp_path, **changes) -> dict:
    recipe = tmp_path / "a.py"
    if not recipe.exists():
        recipe.write_text("EPOCHS = 1\n")
    config = {**script_constants(vars(sweep)), "TRAIN_FLAGS": [], "recipe_files": [str(recipe)]}
    return {**config, "SWEEP_DIR": str(tmp_path / "sweep"), **changes}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("recipe edited", "was trained with another content of a.py"),
        ("train flags", "was trained with --train-flags '' and seed 42, not '--epochs 2'"),
        ("no record", "holds a run with no readable record of its recipe"),
        ("record damaged", "holds a run with no readable record of its recipe"),
    ],
)
def test_a_sweep_never_reuses_a_run_of_another_recipe(tmp_path, change, message):
    config = sweep_settings(tmp_path)
    (run,) = sweep.plan_runs(config)
    run.folder.mkdir(parents=True)
    (run.folder / "recipe.json").write_text(json.dumps(sweep.run_fingerprint(run, config)))
    (run.folder / "summary.json").write_text("{}")
    sweep.refuse_foreign_runs([run], config)  # the same recipe, seed and flags: reused
    if change == "recipe edited":
        run.recipe.write_text("EPOCHS = 2\n")
    elif change == "train flags":
        config["TRAIN_FLAGS"] = ["--epochs", "2"]
    elif change == "no record":
        (run.folder / "recipe.json").unlink()
    else:
        (run.folder / "recipe.json").write_text("{not json")
    with pytest.raises(UserError, match="another --sweep-dir, or delete that folder") as refused:
        sweep.refuse_foreign_runs([run], config)
    assert message in str(refused.value)


# --- 3. no tracebacks --------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "case", ["output is a file", "output is read-only", "a target is a folder", "a target is not a picture"]
)
def test_predict_refuses_unwritable_outputs_before_loading_the_model(tmp_path, read_only, case):
    predict = load_script("predict")
    image = tmp_path / "in" / "x.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), make_sample(np.random.default_rng(0), 40, 40)[0])
    output = tmp_path / "out"
    if case == "output is a file":
        output.write_text("x")
    elif case == "output is read-only":
        output.mkdir()
        read_only(output)
    elif case == "a target is a folder":
        (output / "x_mask.png").mkdir(parents=True)
    else:
        output.mkdir()
        shutil.copy(save_untrained_checkpoint(tmp_path / "m.pth", tmp_path / "none"), output / "x_overlay.png")
    with pytest.raises(UserError, match="is a file|cannot write into|is a folder|is not a PNG picture"):
        predict.check_outputs([str(image)], [image], output, overwrite=True)


def test_export_refuses_a_read_only_output_before_exporting(tmp_path):
    model = save_untrained_checkpoint(tmp_path / "model.pth", tmp_path / "none")
    (tmp_path / "file").write_text("x")
    result = run_script("export", "--checkpoint", model, "--output", tmp_path / "file" / "model.onnx")
    assert result.returncode == 2 and "exported" not in result.stdout
    assert "cannot write into" in error_line(result.stderr) or "is a file" in result.stderr


def export_fixed(tmp_path, batch: int | None, side: int = 32) -> Path:
    """A tiny model exported with torch's TorchScript exporter at batch `batch` and `side` px: fixed axes (None: a
    dynamic batch axis), with the metadata scripts/export.py writes."""
    import onnx

    model = torch.nn.Conv2d(3, 1, 1)
    path = tmp_path / f"fixed{batch}.onnx"
    dynamic = None if batch else {"image": {0: "batch"}}
    torch.onnx.export(
        model, torch.zeros(batch or 2, 3, side, side), path, input_names=["image"], output_names=["logits"],
        dynamo=False, dynamic_axes=dynamic,
    )  # fmt: skip
    proto = onnx.load(path)
    preprocessing = {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "threshold": 0.5}
    builder = {"name": "unet", "kwargs": {"base_channels": 4, "depth": 2}}
    for key, value in (("preprocessing", preprocessing), ("builder", builder)):
        proto.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(proto, path)
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, which can fix the batch axis
@pytest.mark.parametrize("batch", [1, 2, 3, None])
def test_an_onnx_model_with_a_fixed_batch_axis_runs_batch_by_batch(tmp_path, batch):
    predictor = OnnxPredictor.from_file(export_fixed(tmp_path, batch))
    rng = np.random.default_rng(0)
    images = [cv2.cvtColor(make_sample(rng, 40, 36)[0], cv2.COLOR_BGR2RGB) for _ in range(5)]
    one_by_one = [predictor.probabilities([image])[0] for image in images]
    together = predictor.probabilities(images)
    assert len(together) == 5 and all(
        torch.allclose(a, b, atol=1e-6) for a, b in zip(one_by_one, together, strict=True)
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_onnx_model_of_another_fixed_size_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"fixed shape \[1, 3, 48, 48\], but its images are resized to 32 px"):
        OnnxPredictor.from_file(export_fixed(tmp_path, 1, side=48))
    with pytest.raises(UserError, match="feeds \\[N, 3, H, W\\] RGB batches"):
        fixed_batch_size([1, 4, 32, 32], 32)


# --- 4. messages that say what is wrong --------------------------------------------------------------------------


def test_no_dataset_is_named_as_such(tmp_path):
    recipe = tmp_path / "r.py"
    recipe.write_text("DATASETS = []\n")
    status, _, stderr = train_in_process(tmp_path, str(recipe))
    assert status == 2 and "DATASETS is empty; give at least one dataset" in error_line(stderr)


def test_a_folder_whose_name_holds_a_colon_is_one_folder(kvasir_dir, tmp_path):
    folder = tmp_path / "run:2024"
    shutil.copytree(kvasir_dir / "Kvasir-SEG", folder)
    assert parse_source(f"m={folder}").images == str(folder / "images")
    with pytest.raises(UserError, match=r"run:2025 is no folder, and read as IMAGES:MASKS.* is no folder either"):
        parse_source(f"m={tmp_path / 'run:2025'}")


@pytest.mark.parametrize("left", [0, 1])
def test_a_test_list_of_nearly_every_image_names_the_list(kvasir_dir, tmp_path, left):
    root = kvasir_dir / "Kvasir-SEG"
    stems = sorted(path.stem for path in (root / "images").iterdir())
    (root / "test.txt").write_text("\n".join(stems[left:]) + "\n")
    status, _, stderr = train_in_process(tmp_path, "--datasets", f"m={root}", "--epochs", "1")
    line = error_line(stderr)
    assert status == 2 and f"the test list {root / 'test.txt'} holds {16 - left} of the 16 images" in line
    assert "VAL_FRACTION" not in line


@pytest.mark.parametrize(
    ("recipe", "flags", "fetches"),
    [
        ("DATASETS = ['mine=/data/mine']\n", [], False),
        ("EPOCHS = 1\n", ["--datasets", "mine=/data/mine", "--epochs", "2"], False),
        ("EPOCHS = 1\n", ["--datasets=mine=/data/mine"], False),
        ("EPOCHS = 1\n", [], True),
        ("DATASETS = ['kvasir', 'mine=/data/mine']\n", [], True),
        ("DATASETS = ['mine=/data/mine']\n", ["--datasets", "KVASIR"], True),
    ],
)
def test_a_sweep_fetches_kvasir_only_for_runs_that_train_on_it(tmp_path, recipe, flags, fetches):
    (tmp_path / "a.py").write_text(recipe)
    (run,) = sweep.plan_runs(sweep_settings(tmp_path))
    assert sweep.uses_kvasir(run, sweep_settings(tmp_path, TRAIN_FLAGS=flags)) is fetches


def test_a_sweep_of_own_data_runs_offline(kvasir_dir, tmp_path):
    recipe = tmp_path / "own.py"
    recipe.write_text(f"DATASETS = ['mine={kvasir_dir / 'Kvasir-SEG'}']\nEPOCHS = 0\n")
    result = run_script(
        "sweep", recipe, "--sweep-dir", tmp_path / "sweep", "--data-dir", tmp_path / "empty", "--device", "cpu",
        "--num-workers", "0",
    )  # fmt: skip
    assert "downloading" not in result.stdout and not (tmp_path / "empty").exists()
    assert "EPOCHS must be at least 1" in result.stdout  # the run itself started (and failed on its recipe)


def test_a_run_still_going_from_a_killed_sweep_is_not_called_failed(tmp_path, capsys):
    config = sweep_settings(tmp_path)
    (run,) = sweep.plan_runs(config)
    with lock_held_elsewhere(run.folder / "train.lock") as holder:
        assert lock_holder(run.folder / "train.lock") == str(holder)
        assert sweep.advance(run, config, stopping=False) is False
    assert run.status == "busy" and f"still training in process {holder}" in run.note
    assert f"kill {holder}" in capsys.readouterr().out
    assert lock_holder(run.folder / "train.lock") is None


def test_a_checkpoint_without_a_split_scores_explicit_folders(kvasir_dir, tmp_path):
    checkpoint = torch.load(save_untrained_checkpoint(tmp_path / "m.pth", kvasir_dir), weights_only=True)
    for key in ("split", "datasets", "digests", "thumbnails"):
        checkpoint.pop(key, None)
    torch.save(checkpoint, tmp_path / "old.pth")
    root = kvasir_dir / "Kvasir-SEG"
    flags = ["--checkpoint", tmp_path / "old.pth", "--device", "cpu", "--no-tta", "--csv", tmp_path / "e.csv"]
    result = run_script("evaluate", *flags, "--images", root / "images", "--masks", root / "masks")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the checkpoint records no training images" in result.stdout
    result = run_script("evaluate", *flags, "--data-dir", kvasir_dir)
    assert result.returncode == 2 and "score explicit folders with --images and --masks" in error_line(result.stderr)


@pytest.mark.parametrize("second", ["same folder", "subset", "copied files"])
def test_datasets_that_share_images_are_refused(kvasir_dir, tmp_path, second):
    root = kvasir_dir / "Kvasir-SEG"
    if second == "same folder":
        other = f"b={root}"
    else:
        copy = tmp_path / "copy"
        shutil.copytree(root, copy)
        for path in sorted((copy / "images").iterdir())[: 8 if second == "subset" else 0]:
            path.unlink()
            (copy / "masks" / path.name).unlink()
        other = f"b={copy}"
    status, _, stderr = train_in_process(tmp_path, "--datasets", f"a={root}", other, "--epochs", "1")
    assert status == 2 and "datasets a and b share images" in error_line(stderr)


def folder_record(root: Path, images: str, masks: str) -> DataRecord:
    """A record of training on the folder dataset `mine` at `root`, recorded with these images and masks paths."""
    ids = [f"mine/{stem}" for stem, _, _ in pair_images_and_masks(root / "images", root / "masks")]
    split = source_split(parse_source(f"mine={root}"), ids, 0.1, 42)
    return DataRecord([Source("mine", images, masks)], split, {})


@pytest.mark.parametrize("spec", ["mine=data/Kvasir-SEG", "mine=./data/Kvasir-SEG/", "mine=link"])
def test_evaluate_takes_a_trained_on_folder_however_spelt_as_trained_on(kvasir_dir, tmp_path, monkeypatch, spec):
    evaluate = load_script("evaluate")
    root = kvasir_dir / "Kvasir-SEG"
    (tmp_path / "link").symlink_to(root)
    monkeypatch.chdir(tmp_path)
    record = folder_record(root, str(root / "images"), str(root / "masks"))
    config = {**script_constants(vars(evaluate)), "DATASETS": [spec], "DATA_DIR": str(kvasir_dir)}
    (target,) = evaluate.scoring_targets(config, record)
    assert [pair[0] for pair in target.pairs] == record.split.test
    assert f"the held-out test split (seeded) of {root / 'images'}" in target.description


def test_an_older_checkpoints_relative_folders_are_read_from_here_said_so(kvasir_dir, tmp_path, monkeypatch, capsys):
    evaluate = load_script("evaluate")
    root = kvasir_dir / "Kvasir-SEG"
    monkeypatch.chdir(kvasir_dir)
    checkpoint = folder_record(root, "Kvasir-SEG/images", "Kvasir-SEG/masks").as_dict()
    record = evaluate.checkpoint_record(checkpoint, {"IMAGES": "", "DATASETS": []})
    assert record.datasets[0].images == str(root / "images")
    assert "records dataset mine by the relative path Kvasir-SEG/images" in capsys.readouterr().out
