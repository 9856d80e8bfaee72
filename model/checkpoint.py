"""Checkpoints as plain dicts of tensors and Python values, saved atomically and loaded with weights_only=True.

A model checkpoint holds `model_state` (the state dict), `model_config` (UNet's constructor arguments),
`preprocessing` (image size, normalisation mean and std), `epoch`, `metrics` and `config` (the training
settings). Nothing in it needs unpickling of arbitrary objects.
"""

from pathlib import Path

import torch

from model.unet import UNet
from utils.errors import UserError
from utils.files import atomic_path

REQUIRED_KEYS = ("model_state", "model_config")


def save_checkpoint(path, checkpoint: dict) -> None:
    """Write `checkpoint` to a temporary file and rename it over `path`, so a kill never leaves half a file."""
    with atomic_path(path) as temporary:
        torch.save(checkpoint, temporary)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint dict safely, with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train one with `python scripts/train.py` or pass its path.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # the unpickler raises many types for files that are not checkpoints
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path} is not a readable checkpoint of this repository ({reason}).") from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise UserError(f"{path} is not a checkpoint of this repository (no {' / '.join(REQUIRED_KEYS)} inside).")
    return checkpoint


def build_model(checkpoint: dict, source="the checkpoint") -> UNet:
    """A UNet with the checkpoint's architecture and weights, in eval mode, on the CPU."""
    model = UNet(**checkpoint["model_config"])
    mismatch = describe_mismatch(model.state_dict(), checkpoint["model_state"])
    if mismatch:
        raise UserError(f"{source}'s weights do not fit UNet({checkpoint['model_config']}): {mismatch}.")
    model.load_state_dict(checkpoint["model_state"])
    return model.eval()


def describe_mismatch(expected: dict, found) -> str | None:
    """Why weights `found` cannot load into a model whose state dict is `expected` (None when they can)."""
    if not isinstance(found, dict) or not all(isinstance(value, torch.Tensor) for value in found.values()):
        return "model_state is not a dict of tensors"
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        return (
            f"{len(missing)} tensor(s) missing and {len(unexpected)} unexpected, a different depth or architecture"
            f" (e.g. {(missing or unexpected)[0]})"
        )
    reshaped = [name for name in expected if found[name].shape != expected[name].shape]
    if reshaped:
        name = reshaped[0]
        return (
            f"{len(reshaped)} tensor(s) of another shape, a different width (e.g. {name} is"
            f" {list(found[name].shape)} in the file, {list(expected[name].shape)} expected)"
        )
    return None


def load_model(path, device="cpu") -> UNet:
    """One line from a checkpoint file to a ready model: `model = load_model("models/unet_kvasirseg.pth")`."""
    return build_model(load_checkpoint(path), source=path).to(device)
