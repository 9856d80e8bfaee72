"""notebooks/explore_predictions.ipynb runs top to bottom, headless, from notebooks/ as Jupyter starts it there."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.checkpoints import save_untrained_checkpoint
from tests.scripts import REPO

NOTEBOOK = REPO / "notebooks" / "explore_predictions.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_runs_and_shows_scores_and_panels(kvasir_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KVASIR_CHECKPOINT", str(save_untrained_checkpoint(tmp_path / "model.pth", kvasir_dir)))
    monkeypatch.setenv("KVASIR_DATA_DIR", str(kvasir_dir))
    monkeypatch.setenv("KVASIR_OUTPUT_DIR", str(tmp_path / "no-run"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": NOTEBOOK.parent}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    assert "2 test images: mean Dice" in text and "sample_" in text
    assert any("image/png" in output.get("data", {}) for output in outputs)  # the panel figure
    assert not [output for output in outputs if output.get("name") == "stderr"]  # no progress bars or warnings
