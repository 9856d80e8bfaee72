"""A small untrained checkpoint in the format scripts/train.py writes, for tests of the scripts that read one."""

from pathlib import Path

import torch

from dataset.kvasir import prepare_kvasir_seg
from dataset.splits import Split, make_split
from model import build_unet, model_checkpoint, save_checkpoint


def save_untrained_checkpoint(path, data_dir, image_size: int = 32, base_channels: int = 4, depth: int = 2) -> Path:
    """A seeded, untrained tiny U-Net with the split train.py would make of `data_dir` (VAL_FRACTION 0.1, SEED 42)."""
    torch.manual_seed(0)
    model = build_unet(base_channels, depth)
    ids = [sample_id for sample_id, _, _ in prepare_kvasir_seg(data_dir)] if Path(data_dir).exists() else []
    split = make_split(ids, 0.1, 42) if ids else Split([], [], [], official=False)
    config = dict(DATA_DIR=str(data_dir), IMAGE_SIZE=image_size, VAL_FRACTION=0.1, SEED=42)
    checkpoint = model_checkpoint(model, image_size, epoch=1, metrics={"val_dice": 0.0}, split=split, config=config)
    save_checkpoint(path, checkpoint)
    return Path(path)
