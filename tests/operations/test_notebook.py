"""notebooks/explore_predictions.ipynb runs top to bottom, headless, from notebooks/ as Jupyter starts it there."""

import cv2
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from traitlets.config import Config

from model.checkpoint import load_checkpoint, save_checkpoint
from tests.checkpoints import save_untrained_checkpoint
from tests.scripts import REPO
from utils.visualization import run_curves

NOTEBOOK = REPO / "notebooks" / "explore_predictions.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_runs_and_shows_curves_scores_and_panels(kvasir_dir, tmp_path, monkeypatch, capfd):
    checkpoint_path = save_untrained_checkpoint(tmp_path / "model.pth", kvasir_dir)
    checkpoint = load_checkpoint(checkpoint_path)
    checkpoint["config"]["RUN_FOLDER"] = str(tmp_path / "run")  # the run folder the notebook finds the curves in
    checkpoint["copy_groups"] = [[checkpoint["split"]["test"][0], checkpoint["split"]["train"][0]]]
    save_checkpoint(checkpoint_path, checkpoint)
    (tmp_path / "run").mkdir()
    cv2.imwrite(str(tmp_path / "run" / "curves.png"), np.zeros((8, 8, 3), np.uint8))
    monkeypatch.setenv("KVASIR_CHECKPOINT", str(checkpoint_path))
    monkeypatch.setenv("KVASIR_DATA_DIR", str(kvasir_dir))
    monkeypatch.delenv("KVASIR_OUTPUT_DIR", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # README's `jupyter nbconvert --execute --KernelManager.transport_encryption=auto`: the kernelspec of ipykernel
    # declares CurveZMQ support, and with keys the kernel no longer warns that it runs over TCP without encryption
    encrypted = Config({"KernelManager": {"transport_encryption": "auto"}})
    NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": NOTEBOOK.parent}},
        config=encrypted,
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    assert "2 test images: mean Dice" in text and "1 with no copy in training: mean Dice" in text
    tables = [output["data"]["text/markdown"] for output in outputs if "text/markdown" in output.get("data", {})]
    assert len(tables) == 1 and tables[0].count("| sample_") == 2  # the worst and best few: both, with 2 images
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 3  # the run's curves.png, the Dice histogram and the predictions
    assert not [output for output in outputs if output.get("name") == "stderr"]  # no progress bars or warnings
    assert "without encryption" not in capfd.readouterr().err  # the kernel's own log, outside the notebook


def test_the_curves_shown_are_the_checkpoints_own_runs_or_none_said_so(kvasir_dir, tmp_path, monkeypatch):
    checkpoint = load_checkpoint(save_untrained_checkpoint(tmp_path / "model.pth", kvasir_dir))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    cv2.imwrite(str(tmp_path / "outputs" / "curves.png"), np.zeros((8, 8, 3), np.uint8))  # some other run's curves
    assert run_curves(checkpoint) == (
        None,
        "its run folder is not recorded (no RUN_FOLDER: an older checkpoint), so its training curves are not shown;"
        " set KVASIR_OUTPUT_DIR to that run's folder",
    )
    run = tmp_path / "run"
    checkpoint["config"].update(RUN_FOLDER=str(run), RUN_ID="0123456789abcdef")
    curves, whose = run_curves(checkpoint)
    assert curves is None and whose.startswith(f"no {run / 'curves.png'}: its run folder was moved or deleted")
    run.mkdir()
    cv2.imwrite(str(run / "curves.png"), np.zeros((8, 8, 3), np.uint8))
    assert run_curves(checkpoint) == (run / "curves.png", f"the training curves of its run, {run}")
    assert run_curves(checkpoint, str(tmp_path / "outputs"))[0] == tmp_path / "outputs" / "curves.png"  # as asked
    later = load_checkpoint(tmp_path / "model.pth")
    later["config"].update(RUN_ID="fedcba9876543210")  # another run trained in the same folder since
    save_checkpoint(run / "last.pth", later)
    assert run_curves(checkpoint) == (
        None,
        f"{run} now holds another run (RUN_ID fedcba9876543210, not 0123456789abcdef): no curves shown",
    )
