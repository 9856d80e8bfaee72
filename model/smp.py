"""segmentation_models_pytorch's architectures, with any of its encoders, as MODEL choices: an optional extra
(`pip install -r requirements-smp.txt`). ENCODER names the encoder (resnet34, efficientnet-b0, ...); ENCODER_WEIGHTS
its starting weights: none (from scratch), imagenet (downloaded by that library, so on a machine with network), or
the path of a file holding the encoder's state dict (torch.save(model.encoder.state_dict(), path))."""

import functools
from pathlib import Path

import torch

from common.errors import UserError
from common.optional import import_optional

SMP_INSTALL = "pip install -r requirements-smp.txt"
ARCHITECTURES = {
    "smp_unet": "Unet",
    "smp_unetplusplus": "UnetPlusPlus",
    "smp_fpn": "FPN",
    "smp_deeplabv3plus": "DeepLabV3Plus",
}
ENCODER_DEPTH = 5  # the library's default: the encoder halves the image 5 times


def smp_network(architecture: str, encoder: str = "resnet34", encoder_weights: str = "none") -> torch.nn.Module:
    """segmentation_models_pytorch's `architecture` with `encoder`, one logit map out, its encoder starting from
    `encoder_weights` (none, imagenet or a file)."""
    smp = import_optional("segmentation_models_pytorch", f"MODEL smp_* needs it: {SMP_INSTALL}")
    if encoder not in smp.encoders.get_encoder_names():
        raise UserError(f"ENCODER {encoder!r} is not an encoder of segmentation_models_pytorch (e.g. resnet34).")
    weights = "imagenet" if encoder_weights == "imagenet" else None
    network = getattr(smp, architecture)(
        encoder_name=encoder, encoder_weights=weights, encoder_depth=ENCODER_DEPTH, in_channels=3, classes=1
    )
    if encoder_weights not in ("none", "imagenet"):
        load_encoder_weights(network.encoder, Path(encoder_weights))
    network.size_multiple = 2**ENCODER_DEPTH  # the decoder adds each upsampled map to the encoder's of its size
    network.smallest_input = 2 * network.size_multiple  # 2x2 at the bottleneck: BatchNorm needs more than 1 value
    return network


def load_encoder_weights(encoder: torch.nn.Module, path: Path) -> None:
    """Load the state dict in `path` into `encoder`, refusing in one line a missing or unfitting file."""
    if not path.is_file():
        raise UserError(f"ENCODER_WEIGHTS {path} is neither none, imagenet nor a file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        encoder.load_state_dict(state)
    except Exception as error:  # unreadable, or weights of another encoder
        reason = (str(error) or type(error).__name__).splitlines()[0]
        raise UserError(f"ENCODER_WEIGHTS {path} does not hold this encoder's weights ({reason}).") from None


SMP_NETWORKS = {name: functools.partial(smp_network, architecture) for name, architecture in ARCHITECTURES.items()}
