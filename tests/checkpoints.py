"""A small untrained checkpoint in the format scripts/train.py writes, for tests of the scripts that read one."""

from pathlib import Path

import torch

from dataset.kvasir import prepare_kvasir_seg
from dataset.sources import KVASIR, DataRecord, Source, file_digest
from dataset.splits import Split, make_split
from model import build_network, model_checkpoint, save_checkpoint


def save_untrained_checkpoint(
    path, data_dir, image_size: int = 32, base_channels: int = 4, depth: int = 2, folds: int = 0, fold: int = 0
) -> Path:
    """A seeded, untrained tiny U-Net with the split train.py would make of `data_dir` (VAL_FRACTION 0.1, SEED 42;
    with `folds`, FOLDS and FOLD); each fold's weights are seeded with its number, so that folds differ as trained
    ones do."""
    torch.manual_seed(fold)
    model = build_network("unet", {"base_channels": base_channels, "depth": depth})
    pairs = prepare_kvasir_seg(data_dir) if Path(data_dir).exists() else []
    ids = [pair[0] for pair in pairs]
    split = make_split(ids, 0.1, 42, folds=folds, fold=fold) if pairs else Split([], [], [], official=False)
    digests = {sample_id: file_digest(image) for sample_id, image, _ in pairs if sample_id not in split.test}
    data = DataRecord([Source(KVASIR)], split, digests)
    config = dict(DATA_DIR=str(data_dir), IMAGE_SIZE=image_size, VAL_FRACTION=0.1, SEED=42, FOLDS=folds, FOLD=fold)
    checkpoint = model_checkpoint(model, image_size, epoch=1, metrics={"val_dice": 0.0}, data=data, config=config)
    save_checkpoint(path, checkpoint)
    return Path(path)
