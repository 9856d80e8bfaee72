"""Output paths that are not a script's own, or not writable, are refused before any work: evaluate's CSV and
JSON, export's ONNX file and report, predict's masks (troubleshooting rows on outputs)."""

import json
import shutil

import cv2
import numpy as np
import pytest

from common.errors import UserError
from dataset.synthetic import make_sample
from tests.checkpoints import save_untrained_checkpoint
from tests.scripts import load_script, run_script
from tests.train_runs import error_line


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
