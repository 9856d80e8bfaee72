"""The U-Net and its checkpoints: `from model import UNet, load_model`."""

from model.checkpoint import load_checkpoint, load_model, save_checkpoint
from model.unet import UNet

__all__ = ["UNet", "load_checkpoint", "load_model", "save_checkpoint"]
