"""scripts/predict.py: masks and overlays at each input's own size, for grey, RGBA and RGB inputs; a run never
replaces an input or a file it did not write."""

import os
import sys

import cv2
import numpy as np
import pytest

from common.errors import UserError
from tests.checkpoints import save_untrained_checkpoint
from tests.scripts import load_script, run_script

INPUTS = {  # name: (file name, channels, height, width)
    "grey": ("grey.png", 1, 37, 53),
    "rgba": ("rgba.png", 4, 41, 29),
    "rgb": ("rgb.jpg", 3, 30, 50),
}


def write_image(path, channels: int, height: int, width: int) -> None:
    shape = (height, width) if channels == 1 else (height, width, channels)
    cv2.imwrite(str(path), np.random.default_rng(channels).integers(0, 256, shape, dtype=np.uint8))


@pytest.mark.slow
def test_script_writes_a_mask_and_an_overlay_per_input(tmp_path):
    folder, single = tmp_path / "folder", tmp_path / "single"
    folder.mkdir()
    single.mkdir()
    for name, (file_name, channels, height, width) in INPUTS.items():
        write_image((single if name == "rgb" else folder) / file_name, channels, height, width)
    checkpoint = save_untrained_checkpoint(tmp_path / "model.pth", tmp_path / "data")
    output = tmp_path / "predictions"
    result = run_script(
        "predict", folder, single / "rgb.jpg", "--checkpoint", checkpoint, "--output", output,
        "--device", "cpu", "--batch-size", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote 3 mask(s)" in result.stdout
    assert sorted(path.name for path in output.iterdir()) == sorted(
        f"{name}_{kind}.png" for name in INPUTS for kind in ("mask", "overlay")
    )
    for name, (_, _, height, width) in INPUTS.items():
        mask = cv2.imread(str(output / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(output / f"{name}_overlay.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        assert overlay.shape == (height, width, 3)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"missing.png": None}, r"missing\.png does not exist; give an image file or a folder of images"),
        ({"pipe.png": "fifo"}, "neither an image file nor a folder"),
        ({"empty/": None}, "holds no images"),
        ({"a/polyp.png": 3, "b/polyp.jpg": 3}, "would both write polyp_mask.png"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(tmp_path, layout, message):
    for relative, channels in layout.items():
        path = tmp_path / relative
        if relative.endswith("/"):
            path.mkdir()
        elif channels == "fifo":
            os.mkfifo(path)
        elif channels:
            path.parent.mkdir(exist_ok=True)
            write_image(path, channels, 8, 8)
    inputs = [str(tmp_path / relative) for relative in layout]
    with pytest.raises(UserError, match=message):
        load_script("predict").collect_inputs(inputs)


def test_a_folder_with_two_images_of_one_name_is_refused_naming_both(tmp_path):
    for name in ("x.jpg", "x.png", "y.png"):
        write_image(tmp_path / name, 3, 8, 8)
    with pytest.raises(UserError, match=r"x\.jpg and .*x\.png would both write x_mask\.png"):
        load_script("predict").collect_inputs([str(tmp_path)])


def run_predict_main(monkeypatch, *arguments) -> None:
    """predict.py's main() in this process, as `python scripts/predict.py ARGUMENTS...`."""
    monkeypatch.setattr(sys, "argv", ["predict.py", *map(str, arguments)])
    load_script("predict").main()


def test_output_into_an_input_folder_is_refused_and_leaves_the_users_files(tmp_path, monkeypatch):
    # the reported case: case1_mask.png is the user's own mask beside case1.png, and --output is that folder
    write_image(tmp_path / "case1.png", 3, 8, 8)
    write_image(tmp_path / "case1_mask.png", 1, 8, 8)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(UserError, match="is the input folder"):
        run_predict_main(monkeypatch, tmp_path, "--output", tmp_path, "--checkpoint", tmp_path / "absent.pth")
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_is_an_input_file_is_refused_even_with_overwrite(tmp_path, overwrite):
    for name in ("case1.png", "case1_mask.png"):
        write_image(tmp_path / name, 3, 8, 8)
    predict = load_script("predict")
    inputs = [str(tmp_path / "case1.png"), str(tmp_path / "case1_mask.png")]
    with pytest.raises(UserError, match="case1_mask.png is an input of this run"):
        predict.check_outputs(inputs, predict.collect_inputs(inputs), tmp_path, overwrite)


def test_existing_outputs_are_replaced_only_with_overwrite(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "out").mkdir()
    write_image(tmp_path / "images" / "case1.png", 3, 8, 8)
    write_image(tmp_path / "out" / "case1_overlay.png", 3, 8, 8)
    predict = load_script("predict")
    inputs = [str(tmp_path / "images")]
    paths = predict.collect_inputs(inputs)
    with pytest.raises(UserError, match="already holds case1_overlay.png; give --overwrite"):
        predict.check_outputs(inputs, paths, tmp_path / "out", overwrite=False)
    predict.check_outputs(inputs, paths, tmp_path / "out", overwrite=True)
    predict.check_outputs(inputs, paths, tmp_path / "new", overwrite=False)


def test_a_checkpoint_and_an_onnx_model_together_are_refused(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="give --checkpoint or --onnx, not both"):
        run_predict_main(monkeypatch, tmp_path, "--checkpoint", tmp_path / "m.pth", "--onnx", tmp_path / "m.onnx")


def test_a_negative_thread_count_is_refused_before_any_work(tmp_path, monkeypatch):
    write_image(tmp_path / "case1.png", 3, 8, 8)
    with pytest.raises(UserError, match=r"THREADS must be >= 0"):
        run_predict_main(monkeypatch, tmp_path / "case1.png", "--threads=-1", "--output", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_threads_sets_the_cpu_threads_predict_runs_on(tmp_path):
    write_image(tmp_path / "case1.png", 3, 30, 50)
    checkpoint = save_untrained_checkpoint(tmp_path / "model.pth", tmp_path / "data")
    result = run_script(
        "predict", tmp_path / "case1.png", "--checkpoint", checkpoint, "--output", tmp_path / "out",
        "--device", "cpu", "--threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert " cores, 1 threads) into " in result.stdout
