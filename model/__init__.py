"""The U-Net and its checkpoints: `from model import load_model`."""

from model.checkpoint import load_checkpoint, load_model, model_checkpoint, model_from_checkpoint, save_checkpoint
from model.unet import UNet, build_unet

__all__ = [
    "UNet",
    "build_unet",
    "load_checkpoint",
    "load_model",
    "model_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
]
