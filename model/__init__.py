"""The networks and their checkpoints: `from model import load_model`."""

from model.checkpoint import load_checkpoint, load_model, model_checkpoint, model_from_checkpoint, save_checkpoint
from model.networks import NETWORKS, build_network, network_kwargs
from model.unet import UNet, build_unet

__all__ = [
    "NETWORKS",
    "UNet",
    "build_network",
    "build_unet",
    "load_checkpoint",
    "load_model",
    "model_checkpoint",
    "model_from_checkpoint",
    "network_kwargs",
    "save_checkpoint",
]
