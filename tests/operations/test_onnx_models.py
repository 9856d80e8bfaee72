"""ONNX models exported elsewhere: a fixed batch axis runs batch by batch, another fixed size is one line."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from common.errors import UserError
from dataset.synthetic import make_sample
from utils.inference import OnnxPredictor, fixed_batch_size


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
