"""scripts/export.py: an ONNX model with dynamic batch, height and width and its preprocessing in its metadata,
written only when ONNX Runtime gives PyTorch's probabilities; predict.py --onnx predicts as with the checkpoint."""

import json
import re
import shutil
import sys

import cv2
import numpy as np
import pytest
import torch

from common.errors import UserError
from model import load_checkpoint, model_from_checkpoint, save_checkpoint
from tests.checkpoints import save_untrained_checkpoint
from tests.scripts import load_script, run_script
from utils.inference import OnnxPredictor, Predictor

onnx = pytest.importorskip("onnx")  # requirements-export.txt, which requirements-test.txt includes
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

CHOSEN_THRESHOLD = 0.45  # not 0.5, to see that the ONNX model carries the checkpoint's threshold
TOLERANCE = 1e-4  # scripts/export.py's default


def run_export_main(*arguments) -> None:
    """export.py's main() in this process, as `python scripts/export.py ARGUMENTS...`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["export.py", *map(str, arguments)])
        load_script("export").main()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint (32 px, depth 2) with a chosen threshold, its ONNX export and the check's JSON."""
    folder = tmp_path_factory.mktemp("export")
    checkpoint_path = save_untrained_checkpoint(folder / "model.pth", folder / "data")
    checkpoint = load_checkpoint(checkpoint_path)
    checkpoint["preprocessing"]["threshold"] = CHOSEN_THRESHOLD
    save_checkpoint(checkpoint_path, checkpoint)
    onnx_path, json_path = folder / "model.onnx", folder / "check.json"
    run_export_main(
        "--checkpoint", checkpoint_path, "--output", onnx_path, "--json", json_path, "--check-sizes", "48x40"
    )
    return checkpoint_path, onnx_path, json_path


def synthetic_images() -> list[np.ndarray]:
    """RGB images of odd, non-square sizes, none of them the training size."""
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for height, width in ((37, 53), (61, 29))]


def test_the_onnx_model_has_dynamic_axes_and_its_preprocessing_in_the_metadata(exported):
    checkpoint_path, onnx_path, json_path = exported
    model = onnx.load(onnx_path)
    dims = [[dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim] for value in model.graph.input]
    assert dims == [["batch", 3, "height", "width"]]
    assert [dim.dim_param or dim.dim_value for dim in model.graph.output[0].type.tensor_type.shape.dim] == [
        "batch", 1, "height", "width",
    ]  # fmt: skip
    assert {opset.domain: opset.version for opset in model.opset_import}[""] == 18
    metadata = {prop.key: json.loads(prop.value) for prop in model.metadata_props}
    checkpoint = load_checkpoint(checkpoint_path)
    assert metadata["builder"] == checkpoint["builder"]
    assert metadata["preprocessing"] == json.loads(json.dumps(checkpoint["preprocessing"]))
    assert metadata["preprocessing"]["threshold"] == CHOSEN_THRESHOLD
    report = json.loads(json_path.read_text())
    assert report["passed"] and report["max_abs_difference"] <= report["tolerance"] == TOLERANCE
    assert [(check["width"], check["height"]) for check in report["checks"]] == [(32, 32), (48, 40)]
    speed = report["speed"]
    for name in ("pytorch", "onnxruntime"):
        low, high = speed[name]["images_per_second_range"]
        assert 0 < low <= speed[name]["images_per_second"] <= high, name
    assert speed["rounds"] == 5 and speed["speedup"]["min"] <= speed["speedup"]["median"] <= speed["speedup"]["max"]


def test_onnx_runtime_gives_pytorchs_logits_at_any_batch_and_size(exported):
    checkpoint_path, onnx_path, _ = exported
    model = model_from_checkpoint(load_checkpoint(checkpoint_path))
    session = OnnxPredictor.from_file(onnx_path).session
    for shape in [(1, 3, 32, 32), (3, 3, 33, 47), (2, 3, 96, 64)]:
        batch = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            expected = torch.sigmoid(model(batch))
        found = torch.sigmoid(torch.from_numpy(session.run(None, {"image": batch.numpy()})[0]))
        assert found.shape == expected.shape
        assert (found - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize("tta", [False, True])
def test_the_onnx_predictor_resizes_normalises_and_thresholds_as_the_pytorch_one(exported, tta):
    checkpoint_path, onnx_path, _ = exported
    pytorch = Predictor.from_checkpoint(checkpoint_path, device="cpu", tta=tta)
    onnxruntime = OnnxPredictor.from_file(onnx_path, tta=tta)
    assert onnxruntime.threshold == pytorch.threshold == CHOSEN_THRESHOLD
    images = synthetic_images()
    pairs = zip(pytorch.probabilities(images), onnxruntime.probabilities(images), images, strict=True)
    for expected, found, image in pairs:
        assert found.shape == image.shape[:2] and (found - expected).abs().max() <= TOLERANCE
    for expected, found in zip(pytorch.masks(images), onnxruntime.masks(images), strict=True):
        assert np.mean(expected != found) <= 0.001  # only pixels within TOLERANCE of the threshold may differ


def test_a_failed_check_exits_with_a_message_and_leaves_no_onnx_file(exported, tmp_path, monkeypatch):
    checkpoint_path, onnx_path, _ = exported
    output, json_path = tmp_path / "model.onnx", tmp_path / "check.json"
    shutil.copy(onnx_path, output)  # an earlier export, which a failed check leaves as it was
    earlier = output.read_bytes()
    honest_logits = OnnxPredictor.logits
    monkeypatch.setattr(OnnxPredictor, "logits", lambda self, batch: honest_logits(self, batch) + 1)  # a bad export
    with pytest.raises(UserError, match=r"differ from PyTorch's by up to .* more than TOLERANCE .* was not written"):
        run_export_main("--checkpoint", checkpoint_path, "--output", output, "--json", json_path)
    assert output.read_bytes() == earlier
    assert sorted(path.name for path in tmp_path.iterdir()) == ["check.json", "model.onnx"]  # no temporary file
    report = json.loads(json_path.read_text())
    assert not report["passed"] and report["max_abs_difference"] > TOLERANCE and "speed" not in report


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--check-sizes", "320by288"], "not WIDTHxHEIGHT"),
        (["--check-sizes", "320x3"], r"320x3 does not fit the network, whose sides are at least 8 px"),
        (["--opset", "17"], "opset 18 and later"),
        (["--tolerance", "-1"], "TOLERANCE must be"),
        (["--speed-rounds", "0"], "SPEED_ROUNDS must be at least 1"),
        (["--speed-batch", "-2"], "SPEED_BATCH and SPEED_ROUNDS must be at least 1"),
        (["--output", "SAME"], "OUTPUT is the checkpoint itself"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_exporting(exported, tmp_path, arguments, message):
    checkpoint_path, _, _ = exported
    arguments = [str(checkpoint_path) if argument == "SAME" else argument for argument in arguments]
    with pytest.raises(UserError, match=message):
        run_export_main("--checkpoint", checkpoint_path, "--output", tmp_path / "model.onnx", *arguments)
    assert list(tmp_path.iterdir()) == []


def test_an_onnx_file_without_the_export_metadata_is_refused(tmp_path):
    identity = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["image"], ["logits"])], "identity",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)],
    )  # fmt: skip
    onnx.save(onnx.helper.make_model(identity, opset_imports=[onnx.helper.make_opsetid("", 18)]), tmp_path / "x.onnx")
    with pytest.raises(UserError, match="no preprocessing and builder metadata"):
        OnnxPredictor.from_file(tmp_path / "x.onnx")


@pytest.mark.slow
def test_the_script_prints_the_check_and_the_speed(exported, tmp_path):
    checkpoint_path, _, _ = exported
    onnx_path = tmp_path / "model.onnx"
    result = run_script("export", "--checkpoint", checkpoint_path, "--output", onnx_path, "--speed-batch", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 x 320x288: max |probability difference|" in result.stdout
    assert "ONNX Runtime" in result.stdout and "images/s" in result.stdout and "check passed" in result.stdout
    assert re.search(r"median of 5 rounds timed in turn: .* ONNX Runtime \d+\.\d\dx PyTorch \(\d", result.stdout)
    assert f"wrote {onnx_path}" in result.stdout and onnx_path.is_file()


@pytest.mark.slow
def test_predict_with_the_onnx_model_writes_the_checkpoints_masks(exported, tmp_path):
    checkpoint_path, onnx_path, _ = exported
    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(synthetic_images()):
        cv2.imwrite(str(images / f"case{index}.png"), image)
    for flag, model_path in (("--checkpoint", checkpoint_path), ("--onnx", onnx_path)):
        result = run_script("predict", images, flag, model_path, "--output", tmp_path / flag[2:], "--device", "cpu")
        assert result.returncode == 0, result.stderr[-3000:]
    assert "ONNX Runtime on the CPU" in result.stdout
    for index, image in enumerate(synthetic_images()):
        expected = cv2.imread(str(tmp_path / "checkpoint" / f"case{index}_mask.png"), cv2.IMREAD_UNCHANGED)
        found = cv2.imread(str(tmp_path / "onnx" / f"case{index}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert found.shape == expected.shape == image.shape[:2] and np.mean(found != expected) <= 0.001
