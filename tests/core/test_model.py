"""U-Net shapes for many input sizes, the network table (MODEL), and checkpoints that rebuild the model or fail
clearly."""

import argparse
import re
import textwrap

import pytest
import torch

from common.errors import UserError
from model import NETWORKS, UNet, build_network, load_checkpoint, load_model, save_checkpoint
from model.unet import DeepSupervision
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
    model = build_network("unet", {"base_channels": 4, "depth": 2}).eval()
    path = tmp_path / "model.pth"
    save_checkpoint(path, {"model_state": model.state_dict(), "builder": model.builder})
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
    small = build_network("unet", {"base_channels": 4, "depth": 2})
    builder = {"name": "unet", "kwargs": {**small.builder["kwargs"], **change}}
    torch.save({"model_state": small.state_dict(), "builder": builder}, tmp_path / "x.pth")
    with pytest.raises(UserError, match=f"x.pth's weights do not fit MODEL unet.*{message}"):
        load_model(tmp_path / "x.pth")


def test_checkpoints_load_without_unpickling_objects(tmp_path):
    torch.save({"model_state": {}, "builder": {}, "extra": argparse.Namespace()}, tmp_path / "pickled.pth")
    with pytest.raises(UserError, match="holds Python objects besides tensors") as error:
        load_checkpoint(tmp_path / "pickled.pth")
    assert "weights_only" not in str(error.value) and "trust" not in str(error.value)  # no advice to run its code


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"builder": {"name": "unet", "kwargs": {"base_channels": 4, "depth": 2, "extra": 1}}},
         "its builder is unusable (MODEL unet takes no 'extra')"),
        ({"builder": {"name": "vgg", "kwargs": {}}}, "its builder is unusable (name 'vgg' is not one of unet"),
        ({"builder": {"name": "unet", "kwargs": [4, 2]}}, "its builder is unusable (kwargs is a list, not a dict)"),
        ({"preprocessing": {"image_size": 0, "mean": [0.5] * 3, "std": [0.25] * 3}}, "(image_size is 0)"),
        ({"preprocessing": {"image_size": 32, "mean": [0.5] * 3, "std": [0.25, 0, 0.25]}}, "(std holds a 0)"),
    ],
)  # fmt: skip
def test_malformed_checkpoints_are_refused_naming_the_file(tmp_path, change, message):
    model = build_network("unet", {"base_channels": 4, "depth": 2})
    checkpoint = {"model_state": model.state_dict(), "builder": model.builder}
    checkpoint["preprocessing"] = {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    torch.save({**checkpoint, **change}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=re.escape(message)) as error:
        Predictor.from_checkpoint(tmp_path / "bad.pth", device="cpu")
    assert str(tmp_path / "bad.pth") in str(error.value)


def test_a_full_disk_while_saving_keeps_the_old_checkpoint_and_says_so(tmp_path, full_disk):
    path = tmp_path / "model.pth"
    save_checkpoint(path, {"model_state": {}, "builder": {}})
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


def test_a_checkpoint_of_an_older_version_is_refused_in_one_line(tmp_path):
    torch.save({"model_state": {}, "model_config": {"base_channels": 4, "depth": 2}}, tmp_path / "old.pth")
    with pytest.raises(UserError, match="older version of this repository .* train it again"):
        load_checkpoint(tmp_path / "old.pth")


@pytest.mark.parametrize("name", list(NETWORKS))
def test_every_network_of_the_table_takes_its_smallest_input_and_says_what_rebuilds_it(name):
    torch.manual_seed(0)
    network = build_network(name, {"encoder": "resnet18"} if name.startswith("smp_") else {"base_channels": 4})
    side = network.smallest_input
    assert side % network.size_multiple == 0
    with torch.no_grad():
        assert network.eval()(torch.zeros(1, 3, side, side)).shape == (1, 1, side, side)
    assert network.builder["name"] == name
    assert build_network(**network.builder).state_dict().keys() == network.state_dict().keys()


def test_a_network_too_small_for_the_image_size_names_the_setting():
    with pytest.raises(UserError, match=r"IMAGE_SIZE must be at least 64, a multiple of 32 for MODEL smp_unet"):
        build_network("smp_unet", {"encoder": "resnet18"}, image_size=96 + 1)


def test_deep_supervision_asks_the_network_for_its_decoder_levels():
    unet = build_network("unet", {"base_channels": 4, "depth": 3})
    outputs, auxiliary = DeepSupervision(unet)(torch.zeros(2, 3, 16, 16))
    assert outputs.shape == (2, 1, 16, 16) and [a.shape for a in auxiliary] == [(2, 1, 16, 16)] * 2
    with pytest.raises(UserError, match="DEEP_SUPERVISION needs a network that shows its decoder levels"):
        DeepSupervision(build_network("smp_unet", {"encoder": "resnet18"}))


def test_smp_encoder_weights_from_a_local_file_are_loaded_and_not_stored(tmp_path):
    torch.manual_seed(0)
    source = build_network("smp_unet", {"encoder": "resnet18"})
    for value in source.encoder.state_dict().values():
        if value.is_floating_point():
            value.uniform_()  # weights no fresh network starts from
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pth")
    network = build_network("smp_unet", {"encoder": "resnet18", "encoder_weights": str(tmp_path / "encoder.pth")})
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(network.encoder.state_dict()[key], value)
    assert network.builder == {"name": "smp_unet", "kwargs": {"encoder": "resnet18"}}  # the file is not needed again


@pytest.mark.parametrize(
    ("weights", "message"),
    [("missing.pth", "is neither none, imagenet nor a file"), ("other.pth", "does not hold this encoder's weights")],
)
def test_bad_smp_encoder_weights_are_one_line(tmp_path, weights, message):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=message):
        build_network("smp_unet", {"encoder": "resnet18", "encoder_weights": str(tmp_path / weights)})
    with pytest.raises(UserError, match="ENCODER 'vgg1' is not an encoder of segmentation_models_pytorch"):
        build_network("smp_unet", {"encoder": "vgg1"})
