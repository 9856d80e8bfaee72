"""The data of a training run: every dataset fetched and split, the training batches as one seeded stream over the
run's remaining epochs, and the validation batches and panel images, which never change."""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from common.distributed import Processes, main_process_first
from common.errors import UserError
from dataset import transforms
from dataset.images import read_rgb
from dataset.loader import loader_options, worker_count
from dataset.sampler import RunBatchSampler
from dataset.segmentation import PolypDataset
from dataset.sources import (
    DataRecord,
    combined_split,
    file_digest,
    image_thumbnail,
    keep_copies_apart,
    parse_source,
    refuse_shared_images,
    resumed_split,
    source_pairs,
    source_split,
)


@dataclass
class TrainingData:
    """The batches of one run: an augmented stream over all its remaining epochs, the validation batches (kept on
    the device, as they never change), the fixed validation images its panels show (with their ids and their
    original height / width), and the record of its data."""

    record: DataRecord
    steps_per_epoch: int
    train_loader: DataLoader
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    panel_images: torch.Tensor
    panel_masks: torch.Tensor
    panel_ids: list[str]
    panel_aspects: list[float]


def prepare_data(
    config: dict,
    processes: Processes,
    device: torch.device,
    memory_format,
    first_epoch: int,
    first_step: int,
    saved: DataRecord | None = None,
) -> TrainingData:
    """Get and split every dataset of scripts/train.py's DATASETS (a resumed run: the datasets and split it `saved`),
    and build the training stream from step `first_step` of epoch `first_epoch` on, and the validation batches of all
    of them together, on `device`."""
    sources, pairs, splits = saved.datasets if saved else [parse_source(spec) for spec in config["DATASETS"]], [], []
    for source in sources:
        with main_process_first(processes):  # one process downloads and extracts; the others then read
            found = source_pairs(source, config["DATA_DIR"], config["DATA_URL"])
        if not saved:
            ids = [sample_id for sample_id, _, _ in found]
            splits.append(
                source_split(source, ids, config["VAL_FRACTION"], config["SEED"], config["FOLDS"], config["FOLD"])
            )
        pairs += found
    by_id = {pair[0]: pair for pair in pairs}
    digests = {sample_id: file_digest(image) for sample_id, image, _ in pairs}
    refuse_shared_images(digests)
    split = resumed_split(saved, digests, ", ".join(config["DATASETS"])) if saved else combined_split(splits)
    # a resumed run keeps the split it saved; a new one puts no image on two sides of it, test part included
    compared = split.train + split.val + ([] if saved else split.test)
    thumbnails = {sample_id: image_thumbnail(by_id[sample_id][1]) for sample_id in compared}
    split = split if saved else keep_copies_apart(split, thumbnails)
    fold = f" (fold {split.fold} of {split.folds})" if split.folds else ""
    print(f"split: {len(split.train)} train / {len(split.val)} validation{fold} / {len(split.test)} test (held out)")
    learnt = split.train + split.val
    thumbnails = {sample_id: thumbnails[sample_id] for sample_id in learnt}
    digests = {sample_id: digests[sample_id] for sample_id in learnt}
    cache_dir = Path(config["DATA_DIR"]) / "cache" if config["CACHE"] else None
    augment, no_augment = transforms.build_transform(config["AUGMENTATION"]), transforms.build_transform("none")
    with main_process_first(processes):  # one process builds the cache; the others then open it
        train_set = PolypDataset([by_id[i] for i in split.train], config["IMAGE_SIZE"], augment, cache_dir)
        val_set = PolypDataset([by_id[i] for i in split.val], config["IMAGE_SIZE"], no_augment, cache_dir)
    if len(train_set) < config["BATCH_SIZE"]:
        raise UserError(f"BATCH_SIZE {config['BATCH_SIZE']} exceeds the {len(train_set)} training images.")
    batches = RunBatchSampler(
        len(train_set), config["BATCH_SIZE"], config["SEED"], first_epoch, first_step, config["EPOCHS"],
        processes.rank, processes.world_size,
    )  # fmt: skip
    workers = worker_count(config["NUM_WORKERS"], processes.local_world_size)
    loader = DataLoader(train_set, batch_sampler=batches, **loader_options(workers, device))
    val_batches = [
        (images.to(device, memory_format=memory_format), masks.to(device))
        for images, masks in DataLoader(val_set, batch_size=2 * config["BATCH_SIZE"])
    ]
    panel_pairs = val_set.pairs[: config["PANEL_IMAGES"]]
    panel_samples = [val_set[i] for i in range(len(panel_pairs))]
    panel_shapes = [read_rgb(image_path).shape for _, image_path, _ in panel_pairs]
    return TrainingData(
        DataRecord(sources, split, digests, thumbnails),
        batches.steps_per_epoch,
        loader,
        val_batches,
        torch.stack([image for image, _ in panel_samples]),
        torch.stack([mask for _, mask in panel_samples]),
        [sample_id for sample_id, _, _ in panel_pairs],
        [height / width for height, width, _ in panel_shapes],
    )
