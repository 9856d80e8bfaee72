"""The data of a training run: every dataset fetched and split, the training batches as one seeded stream over the
run's remaining epochs, and the validation batches and panel images, which never change."""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from common.distributed import Processes, main_process_first
from common.errors import UserError, first_few
from dataset import transforms
from dataset.images import read_rgb
from dataset.loader import loader_options, worker_count
from dataset.sampler import RunBatchSampler
from dataset.segmentation import PolypDataset
from dataset.sources import (
    DataRecord,
    combined_split,
    file_digest,
    parse_source,
    refuse_shared_images,
    resumed_split,
    source_copy_groups,
    source_pairs,
    source_split,
)
from dataset.splits import Split, copies_of_test


@dataclass
class TrainingData:
    """The batches of one run: an augmented stream over all its remaining epochs, the validation pairs (id, image,
    mask: THRESHOLD_SEARCH scores them at full size) and their batches at the training size (kept on
    the device, as they never change), the fixed validation images its panels show (with their ids and their
    original height / width), and the record of its data."""

    record: DataRecord
    steps_per_epoch: int
    train_loader: DataLoader
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    val_pairs: list[tuple[str, Path, Path]]
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
    cache_dir = Path(config["DATA_DIR"]) / "cache" if config["CACHE"] else None
    groups = saved.copy_groups if saved else []
    for source in sources:
        with main_process_first(processes):  # one process downloads, extracts and finds copies; the others then read
            found = source_pairs(source, config["DATA_DIR"], config["DATA_URL"])
            found_groups = source_copy_groups(source, found, cache_dir) if config["COPY_GROUPS"] and not saved else []
        if not saved:
            ids = [sample_id for sample_id, _, _ in found]
            folds = config["FOLDS"], config["FOLD"]
            splits.append(source_split(source, ids, config["VAL_FRACTION"], config["SEED"], *folds, found_groups))
            groups += found_groups
        pairs += found
    by_id = {pair[0]: pair for pair in pairs}
    digests = {sample_id: file_digest(image) for sample_id, image, _ in pairs}
    refuse_shared_images(digests)
    if saved:
        split, left_out = resumed_split(saved, digests, ", ".join(config["DATASETS"])), saved.left_out
    else:
        split, left_out = leave_out_copies(combined_split(splits), groups, config["LEAVE_OUT_COPIES"])
    report_copies(split, groups, left_out, config["COPY_GROUPS"])
    fold = f" (fold {split.fold} of {split.folds})" if split.folds else ""
    print(f"split: {len(split.train)} train / {len(split.val)} validation{fold} / {len(split.test)} test (held out)")
    learnt = split.train + split.val
    digests = {sample_id: digests[sample_id] for sample_id in learnt}
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
        DataRecord(sources, split, digests, groups, left_out),
        batches.steps_per_epoch,
        loader,
        val_batches,
        val_set.pairs,
        torch.stack([image for image, _ in panel_samples]),
        torch.stack([mask for _, mask in panel_samples]),
        [sample_id for sample_id, _, _ in panel_pairs],
        [height / width for height, width, _ in panel_shapes],
    )


def leave_out_copies(split: Split, groups: list[list[str]], leave_out: bool) -> tuple[Split, list[str]]:
    """With LEAVE_OUT_COPIES, the split without the training images that are the same frame as a test image, and
    their ids; refused when that leaves no training image. Without it, the split as it is."""
    left_out = copies_of_test(split.train, split.test, groups) if leave_out else []
    if not left_out:
        return split, []
    train = [i for i in split.train if i not in set(left_out)]
    if not train:
        raise UserError(
            f"LEAVE_OUT_COPIES leaves no training image: all {len(left_out)} are the same frame as a test image (copy"
            " groups); turn it off (--no-leave-out-copies) or check the groups with scripts/find_copies.py."
        )
    return Split(train, split.val, split.test, split.official, split.folds, split.fold), left_out


def report_copies(split: Split, groups: list[list[str]], left_out: list[str], searched: bool) -> None:
    """Say what the copy groups do to this run: the test images whose frame is in training (scored apart by
    evaluate.py), the training images left out for them, and the groups kept on one side of the carve-out."""
    if not searched:
        print("copies: not looked for (COPY_GROUPS off): the carve-out may put two copies of one frame apart")
        return
    learnt, test = set(split.train + split.val), set(split.test)
    tied = [group for group in groups if test.intersection(group) and learnt.union(left_out).intersection(group)]
    copied_tests = sorted(i for group in tied for i in group if i in test)
    copies = sorted(i for group in tied for i in group if i not in test)
    inside = [group for group in groups if not test.intersection(group)]
    print(
        f"copies: {len(groups)} copy group(s) (the same frame twice or more); {len(inside)} of them lie within"
        " training and validation, each kept on one side of the carve-out"
    )
    if copied_tests and left_out:
        print(
            f"copies: {len(copied_tests)} of the {len(test)} test images are the same frame as a training image"
            f" ({first_few(copied_tests)}); LEAVE_OUT_COPIES left those {len(left_out)} training images out"
            f" ({first_few(left_out)})"
        )
    elif copied_tests:
        print(
            f"copies: {len(copied_tests)} of the {len(test)} test images are the same frame as one of {len(copies)}"
            f" training images ({first_few(copied_tests)}); they train, as in the published split, and"
            " evaluate.py scores the test images with and without them (LEAVE_OUT_COPIES leaves them out)"
        )
