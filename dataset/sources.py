"""Datasets by name: Kvasir-SEG (fetched as dataset/kvasir.py does) or any folder of images with masks, alone or
mixed, each with its own split, and the content digests that let evaluation refuse to score training images.

A dataset is given as a spec string:
    kvasir                      Kvasir-SEG in DATA_DIR (extracted, or its zip, or downloaded)
    NAME=FOLDER                 FOLDER/images and FOLDER/masks (files paired by stem); FOLDER/test.txt, when
                                present, lists the ids held out for testing
    NAME=IMAGES:MASKS[:TEST]    an images folder and a masks folder, and optionally a test-id list file
Sample ids are the file stems for Kvasir-SEG (as its official split lists them) and NAME/stem for a folder, so
two datasets may share file names. Folder paths are recorded absolute (symbolic links resolved), so a dataset is the
same whatever the working directory and however its path was spelt.
"""

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common.errors import DatasetError, UserError
from dataset import kvasir
from dataset.images import read_rgb
from dataset.splits import Split, make_split, pairs_with_ids, random_split, read_ids

KVASIR = "kvasir"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Source:
    """One dataset: its name, and for a folder dataset its images and masks folders and optional test-id list."""

    name: str
    images: str = ""
    masks: str = ""
    test_list: str = ""

    @property
    def is_kvasir(self) -> bool:
        return self.name == KVASIR

    def as_dict(self) -> dict:
        return asdict(self)


def parse_source(spec: str) -> Source:
    """A Source from its spec string (see the module docstring), refusing malformed specs with the grammar.

    A location that is an existing folder is NAME=FOLDER even when its name holds a ':'.
    """
    if spec.lower() == KVASIR:
        return Source(KVASIR)
    name, equals, location = spec.partition("=")
    if not equals or not NAME_PATTERN.fullmatch(name) or not location or name.lower() == KVASIR:
        raise UserError(
            f"dataset {spec!r} is not 'kvasir', NAME=FOLDER or NAME=IMAGES:MASKS[:TEST_LIST] (NAME: letters, digits,"
            " '_', '-' or '.', and not 'kvasir')."
        )
    parts = [location] if Path(location).is_dir() else location.split(":")
    if len(parts) == 1:
        folder = absolute(parts[0])
        test_list = str(folder / "test.txt") if (folder / "test.txt").is_file() else ""
        return Source(name, str(folder / "images"), str(folder / "masks"), test_list)
    if len(parts) > 3 or not all(parts[:2]):
        raise UserError(f"dataset {spec!r}: give NAME=IMAGES:MASKS or NAME=IMAGES:MASKS:TEST_LIST.")
    missing = [part for part in parts[:2] if not Path(part).is_dir()]
    if missing:
        raise UserError(
            f"dataset {spec!r}: {location} is no folder, and read as IMAGES:MASKS[:TEST_LIST] (split at each ':')"
            f" {missing[0]} is no folder either; give an existing folder, or images and masks folders."
        )
    return Source(name, str(absolute(parts[0])), str(absolute(parts[1])), str(absolute(parts[2])) if parts[2:] else "")


def absolute(path) -> Path:
    """`path` as an absolute path with symbolic links, '.' and '..' resolved: one spelling per folder."""
    return Path(path).expanduser().resolve()


def source_pairs(source: Source, data_dir, url: str = kvasir.KVASIR_SEG_URL) -> list[tuple[str, Path, Path]]:
    """The (id, image, mask) pairs of a dataset; Kvasir-SEG is fetched into `data_dir` when missing."""
    if source.is_kvasir:
        return kvasir.prepare_kvasir_seg(data_dir, url)
    for folder, what in ((source.images, "images"), (source.masks, "masks")):
        if not Path(folder).is_dir():
            raise UserError(f"dataset {source.name}: its {what} folder {folder} is not a folder.")
    pairs = kvasir.pair_images_and_masks(source.images, source.masks)
    print(f"{source.name}: {len(pairs)} images with masks in {source.images}")
    return [(f"{source.name}/{stem}", image, mask) for stem, image, mask in pairs]


def source_split(
    source: Source, ids: list[str], val_fraction: float, seed: int, folds: int = 0, fold: int = 0
) -> Split:
    """The split of one dataset: Kvasir-SEG's official test ids (or a seeded random test part), a folder's own
    test list when it has one (or a seeded random test part), and a seeded validation carve-out of the rest (with
    `folds`, fold `fold` of their seeded partition)."""
    if source.is_kvasir:
        return make_split(ids, val_fraction, seed, folds=folds, fold=fold)
    if not source.test_list:
        return random_split(ids, val_fraction, seed, f"dataset {source.name} has no test list", folds, fold)
    test = {f"{source.name}/{stem}" for stem in read_ids(source.test_list, "test list")}
    unknown = sorted(test - set(ids))
    if unknown:
        raise UserError(
            f"{source.test_list} lists {len(unknown)} id(s) with no image in {source.images} (e.g."
            f" {unknown[0].split('/', 1)[1]}); it must list file stems of that folder, one per line."
        )
    if len(ids) - len(test) < 2:
        raise UserError(
            f"the test list {source.test_list} holds {len(test)} of the {len(ids)} images of dataset {source.name},"
            " leaving fewer than 2 for training and validation; list fewer test images."
        )
    return make_split(ids, val_fraction, seed, test_ids=sorted(test), folds=folds, fold=fold)


def resumed_split(saved: "DataRecord", digests: dict[str, str], datasets: str) -> Split:
    """The split a resumed run saved, kept as it is, given the content `digests` of the images found now: refused
    when images of its training or validation part are gone or changed (the run cannot go on as it started); images
    added since are left out of the run, said so."""
    split = saved.split
    learnt = split.train + split.val
    removed = [sample_id for sample_id in learnt if sample_id not in digests]
    changed = [i for i in learnt if i in digests and saved.digests.get(i, digests[i]) != digests[i]]
    for images, how in ((removed, "are no longer in"), (changed, "have changed in")):
        if images:
            raise DatasetError(
                f"{len(images)} training or validation image(s) of the run saved {how} {datasets} since it started"
                f" (e.g. {images[0]}); restore them to resume this run, or start a new run (another --output-dir)"
                " on the data as it is now."
            )
    added = sorted(set(digests) - set(learnt + split.test))
    if added:
        print(
            f"note: {len(added)} image(s) added to the data since the run started (e.g. {added[0]}) are left out:"
            " a resumed run keeps its split; start a new run to train on them"
        )
    return split


def combined_split(splits: list[Split]) -> Split:
    """One split of several datasets: the union of their parts (official only when every part is), each dataset
    split into the same folds."""
    return Split(
        sorted(i for split in splits for i in split.train),
        sorted(i for split in splits for i in split.val),
        sorted(i for split in splits for i in split.test),
        all(split.official for split in splits),
        splits[0].folds,
        splits[0].fold,
    )


def file_digest(path) -> str:
    """A short content digest of a file: the same image under another name or in another copy of the data
    has the same digest."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


THUMBNAIL_SIDE = 16  # image_thumbnail's width and height
THUMBNAIL_DISTANCE = 2.0  # two thumbnails closer than this (mean absolute grey level, of 255) are the same image


def image_thumbnail(path) -> str:
    """The decoded image shrunk to THUMBNAIL_SIDE x THUMBNAIL_SIDE grey levels (area averages), as hex: the same
    for the image re-encoded (a PNG of the JPEG, another JPEG quality) or resized, as its pixels barely move."""
    grey = cv2.cvtColor(read_rgb(path), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA).tobytes().hex()


def thumbnail_pixels(thumbnails: list[str]) -> np.ndarray:
    """Hex thumbnails as a float array [N, THUMBNAIL_SIDE**2]."""
    return np.array([np.frombuffer(bytes.fromhex(t), np.uint8) for t in thumbnails], np.float32).reshape(
        len(thumbnails), THUMBNAIL_SIDE**2
    )


def thumbnail_distances(known: np.ndarray, thumbnail: np.ndarray) -> np.ndarray:
    """The distance of `thumbnail` to each row of `known` (thumbnail_pixels): the mean absolute grey-level
    difference, under THUMBNAIL_DISTANCE for the same image."""
    return np.abs(known - thumbnail).mean(axis=1)


@dataclass
class DataRecord:
    """What a checkpoint records of the data it was trained on: the datasets, their split, and of every training
    and validation image a content digest and a thumbnail (so that evaluation can refuse to score an image the
    model saw, also re-encoded or resized)."""

    datasets: list[Source]
    split: Split
    digests: dict[str, str]
    thumbnails: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "datasets": [source.as_dict() for source in self.datasets],
            "split": self.split.as_dict(),
            "digests": self.digests,
            "thumbnails": self.thumbnails,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "DataRecord":
        """The record of a checkpoint (one written before datasets were recorded trained on Kvasir-SEG alone, one
        before thumbnails were recorded with digests only)."""
        datasets = [Source(**source) for source in checkpoint.get("datasets", [Source(KVASIR).as_dict()])]
        return cls(
            datasets, Split.from_checkpoint(checkpoint), checkpoint.get("digests", {}), checkpoint.get("thumbnails", {})
        )


def seen_images(record: DataRecord, pairs, parts=("train", "val")) -> list[tuple[str, str]]:
    """The (id, id it was seen as) of each image of `pairs` that is an image of the record's `parts`: the same file
    content (a copy under another name or in another folder), or, where the record has thumbnails, the same
    thumbnail within THUMBNAIL_DISTANCE (the image re-encoded or resized). Never score those as held out."""
    ids = {sample_id for part in parts for sample_id in getattr(record.split, part)}
    seen = {digest: sample_id for sample_id, digest in record.digests.items() if sample_id in ids}
    found = [(sample_id, seen.get(file_digest(image))) for sample_id, image, _ in pairs]
    near = sorted(sample_id for sample_id in record.thumbnails if sample_id in ids)
    if near:
        unmatched = [index for index, (_, seen_as) in enumerate(found) if seen_as is None]
        known = thumbnail_pixels([record.thumbnails[sample_id] for sample_id in near])
        for index in unmatched:
            distances = thumbnail_distances(known, thumbnail_pixels([image_thumbnail(pairs[index][1])]))
            if distances.min() < THUMBNAIL_DISTANCE:
                found[index] = (found[index][0], near[int(distances.argmin())])
    return [(sample_id, seen_as) for sample_id, seen_as in found if seen_as is not None]


def keep_copies_apart(split: Split, thumbnails: dict[str, str]) -> Split:
    """The split with no image on two sides of it: a validation image whose copy (the same thumbnail within
    THUMBNAIL_DISTANCE, `thumbnails` by id) trains goes to training, and a training or validation image whose copy
    is held out for testing is left out, each said in a line. Kvasir-SEG has 3 such pairs; a seeded carve-out can
    part one (seed 42 does), and evaluate.py would then rightly refuse to score the validation images as unseen."""
    ids = sorted(thumbnails)
    pixels = thumbnail_pixels([thumbnails[sample_id] for sample_id in ids])
    copy_of = {}
    for index, sample_id in enumerate(ids):
        distances = thumbnail_distances(pixels[index + 1 :], pixels[index])
        for other in np.flatnonzero(distances < THUMBNAIL_DISTANCE):
            copy = ids[index + 1 + int(other)]
            copy_of.setdefault(sample_id, set()).add(copy)
            copy_of.setdefault(copy, set()).add(sample_id)
    test, train = set(split.test), set(split.train)
    left_out = sorted(i for i in split.train + split.val if copy_of.get(i, set()) & test)
    moved = sorted(i for i in split.val if i not in left_out and copy_of.get(i, set()) & train)
    for sample_id in left_out:
        print(f"note: {sample_id} is a copy of test image {min(copy_of[sample_id] & test)}: left out of training")
    for sample_id in moved:
        copy = min(copy_of[sample_id] & train)
        print(f"note: validation image {sample_id} is a copy of training image {copy}: it trains instead")
    if not (left_out or moved):
        return split
    kept_train = sorted({*split.train, *moved} - set(left_out))
    kept_val = [i for i in split.val if i not in moved and i not in left_out]
    return Split(kept_train, kept_val, split.test, split.official, split.folds, split.fold)


def refuse_shared_images(digests: dict[str, str]) -> None:
    """Refuse datasets that overlap (the same folder twice, one inside another, the same files copied): two datasets
    holding the same file content would split it each its own way, so an image held out for testing by one could be
    trained on through the other. `digests` holds the digest of every image, by id."""
    first = {}
    for sample_id, digest in sorted(digests.items()):
        other = first.setdefault(digest, sample_id)
        if dataset_of(other) != dataset_of(sample_id):
            raise DatasetError(
                f"datasets {dataset_of(other)} and {dataset_of(sample_id)} share images ({other} is {sample_id}), so"
                " one's test images could be trained on in the other; give each image to one dataset only (each"
                " folder once in DATASETS)."
            )


def dataset_of(sample_id: str) -> str:
    """The name of the dataset an id belongs to (Kvasir-SEG's ids are bare stems, a folder's NAME/stem)."""
    return sample_id.split("/", 1)[0] if "/" in sample_id else KVASIR


def source_ids(source: Source, ids: list[str]) -> list[str]:
    """The ids of `ids` that belong to `source` (Kvasir-SEG's are bare stems, a folder's are NAME/stem)."""
    return [i for i in ids if dataset_of(i) == source.name]


SCORED_PARTS = ("test", "val")  # the parts of a checkpoint's split that are scored: held out, or chosen on


def held_out_pairs(record: DataRecord, source: Source, part: str, data_dir) -> list[tuple[str, Path, Path]]:
    """The (id, image, mask) pairs of one dataset's `part` of the record's split ("test": held out; "val": the
    validation carve-out the checkpoint was chosen on), found in its folders or in `data_dir` for Kvasir-SEG."""
    if part not in SCORED_PARTS:
        raise UserError(f"--split must be {' or '.join(SCORED_PARTS)}, not {part!r}.")
    wanted = source_ids(source, getattr(record.split, part))
    return pairs_with_ids(source_pairs(source, data_dir), wanted, f"{source.name} {part}")


def ensemble_record(records: list[DataRecord]) -> DataRecord:
    """The record of an ensemble of models trained on `records`: validation images are those every member trained
    on their dataset validated on, test images those every such member held out, and every other image any member
    trained or validated on counts as trained on (so the folds of one partition have no validation image left, and
    only data none of them saw is scored as held out)."""
    sources = {}
    for record in records:
        for source in record.datasets:
            if sources.setdefault(source.name, source) != source:
                raise UserError(
                    f"the checkpoints name two different datasets {source.name} ({sources[source.name]} and"
                    f" {source}); an ensemble's members must agree on what each dataset name is."
                )

    def common(part: str) -> list[str]:
        """The ids of `part` in the split of every member trained on their dataset."""
        ids = []
        for source in sources.values():
            held = [set(source_ids(source, getattr(r.split, part))) for r in records if source in r.datasets]
            ids += set.intersection(*held)
        return sorted(ids)

    val, test = common("val"), common("test")
    seen = {sample_id for record in records for sample_id in record.split.train + record.split.val}
    split = Split(sorted(seen - set(val)), val, test, all(record.split.official for record in records))
    digests = {sample_id: digest for record in records for sample_id, digest in record.digests.items()}
    return DataRecord(list(sources.values()), split, digests)
