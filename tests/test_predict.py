"""scripts/predict.py: masks and overlays at each input's own size, for grey, RGBA and RGB inputs."""

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
        ({"missing.png": None}, "neither an image file nor a folder"),
        ({"empty/": None}, "holds no images"),
        ({"a/polyp.png": 3, "b/polyp.jpg": 3}, "would both write polyp_mask.png"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(tmp_path, layout, message):
    for relative, channels in layout.items():
        path = tmp_path / relative
        if relative.endswith("/"):
            path.mkdir()
        elif channels:
            path.parent.mkdir(exist_ok=True)
            write_image(path, channels, 8, 8)
    inputs = [str(tmp_path / relative) for relative in layout]
    with pytest.raises(UserError, match=message):
        load_script("predict").collect_inputs(inputs)
