"""U-Net shapes for many input sizes, and checkpoints that rebuild the model or fail clearly."""

import argparse
import re
import textwrap

import pytest
import torch

from common.errors import UserError
from model import UNet, load_checkpoint, load_model, save_checkpoint
from utils.inference import Predictor


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (64, 48), (17, 16)])
@pytest.mark.parametrize("depth", [2, 4])
def test_logits_have_input_size(size, depth):
    model = UNet(3, 1, base_channels=4, depth=depth).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 1, *size)


def test_widths_follow_base_channels():
    model = UNet(3, 2, base_channels=8, depth=3)
    assert model.inc[0].out_channels == 8
    assert model.downs[-1][1][0].out_channels == 64
    assert model.outc.out_channels == 2


def test_load_model_rebuilds_the_same_network(tmp_path):
    torch.manual_seed(0)
    model = UNet(3, 1, base_channels=4, depth=2).eval()
    path = tmp_path / "model.pth"
    save_checkpoint(path, {"model_state": model.state_dict(), "model_config": model.config})
    loaded = load_model(path)
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "text.pth")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pth")
    with pytest.raises(UserError, match="not a checkpoint of this repository"):
        load_checkpoint(tmp_path / "foreign.pth")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"base_channels": 8},
            r"55 tensor\(s\) of another shape, a different width \(e.g. inc.0.weight is \[4,",
        ),
        ({"depth": 3}, r"26 tensor\(s\) missing and 0 unexpected, a different depth or architecture"),
        ({"depth": 1}, r"0 tensor\(s\) missing and 26 unexpected, a different depth or architecture"),
    ],
)
def test_checkpoint_of_another_architecture_says_which(tmp_path, change, message):
    small = UNet(3, 1, base_channels=4, depth=2)
    torch.save({"model_state": small.state_dict(), "model_config": {**small.config, **change}}, tmp_path / "x.pth")
    with pytest.raises(UserError, match=f"x.pth's weights do not fit UNet.*{message}"):
        load_model(tmp_path / "x.pth")


def test_checkpoints_load_without_unpickling_objects(tmp_path):
    torch.save({"model_state": {}, "model_config": {}, "extra": argparse.Namespace()}, tmp_path / "pickled.pth")
    with pytest.raises(UserError, match="holds Python objects besides tensors") as error:
        load_checkpoint(tmp_path / "pickled.pth")
    assert "weights_only" not in str(error.value) and "trust" not in str(error.value)  # no advice to run its code


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_config": {"in_channels": 3, "out_channels": 1, "base_channels": 4, "depth": 2, "extra": 1}},
         "malformed model_config (keys"),
        ({"model_config": {"in_channels": 3, "out_channels": 1, "base_channels": "4", "depth": 2}},
         "malformed model_config (base_channels is '4', not a positive whole number)"),
        ({"preprocessing": {"image_size": 0, "mean": [0.5] * 3, "std": [0.25] * 3}}, "(image_size is 0)"),
        ({"preprocessing": {"image_size": 32, "mean": [0.5] * 3, "std": [0.25, 0, 0.25]}}, "(std holds a 0)"),
    ],
)  # fmt: skip
def test_malformed_checkpoints_are_refused_naming_the_file(tmp_path, change, message):
    model = UNet(3, 1, base_channels=4, depth=2)
    checkpoint = {"model_state": model.state_dict(), "model_config": model.config}
    checkpoint["preprocessing"] = {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    torch.save({**checkpoint, **change}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=re.escape(message)) as error:
        Predictor.from_checkpoint(tmp_path / "bad.pth", device="cpu")
    assert str(tmp_path / "bad.pth") in str(error.value)


def test_a_full_disk_while_saving_keeps_the_old_checkpoint_and_says_so(tmp_path, full_disk):
    path = tmp_path / "model.pth"
    save_checkpoint(path, {"model_state": {}, "model_config": {}})
    before = path.read_bytes()
    code = textwrap.dedent(f"""
        import torch
        from common.errors import UserError
        from model import save_checkpoint
        try:
            save_checkpoint({str(path)!r}, {{"weights": torch.zeros(1_000_000)}})
        except UserError as error:
            print(error)
    """)
    result = full_disk(code, limit=100_000)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"no space left on device while writing {path}")
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
