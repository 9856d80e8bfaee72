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

from common.errors import DatasetError, UserError
from dataset import kvasir
from dataset.copies import copy_groups, find_copies, read_groups
from dataset.splits import SPLIT_DIR, Split, make_split, pairs_with_ids, random_split, read_ids

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
    source: Source, ids: list[str], val_fraction: float, seed: int, folds: int = 0, fold: int = 0, groups=()
) -> Split:
    """The split of one dataset: Kvasir-SEG's official test ids (or a seeded random test part), a folder's own
    test list when it has one (or a seeded random test part), and a seeded validation carve-out of the rest (with
    `folds`, fold `fold` of their seeded partition), each copy group of `groups` kept on one side."""
    if source.is_kvasir:
        return make_split(ids, val_fraction, seed, folds=folds, fold=fold, groups=groups)
    if not source.test_list:
        reason = f"dataset {source.name} has no test list"
        return random_split(ids, val_fraction, seed, reason, folds, fold, groups)
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
    return make_split(ids, val_fraction, seed, test_ids=sorted(test), folds=folds, fold=fold, groups=groups)


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
    added = sorted(set(digests) - set(learnt + split.test + saved.left_out))
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


@dataclass
class DataRecord:
    """What a checkpoint records of the data it was trained on: the datasets, their split, a content digest of every
    training and validation image (so that evaluation refuses to score an image the model saw, under any name), the
    copy groups (images of the same frame, dataset/copies.py) of its images, and the training images LEAVE_OUT_COPIES
    left out."""

    datasets: list[Source]
    split: Split
    digests: dict[str, str]
    copy_groups: list[list[str]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "datasets": [source.as_dict() for source in self.datasets],
            "split": self.split.as_dict(),
            "digests": self.digests,
            "copy_groups": self.copy_groups,
            "left_out": self.left_out,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, source: str = "the checkpoint") -> "DataRecord":
        """The record of a checkpoint (whose fields model/checkpoint.py's load_checkpoint checked), refusing one that
        lacks it, or lacks the copy groups (written before they were recorded: retrain it); `source` names it."""
        split = Split.from_checkpoint(checkpoint, source)
        if "copy_groups" not in checkpoint:
            raise UserError(
                f"{source} records no copy groups (no copy_groups: it was written before same-frame copies were"
                " recorded), so its test images cannot be told apart from its training images' copies; train it again."
            )
        if "datasets" not in checkpoint or "digests" not in checkpoint:
            raise UserError(f"{source} records a split but not the datasets and digests of its images; train it again.")
        datasets = [Source(**fields) for fields in checkpoint["datasets"]]
        return cls(datasets, split, checkpoint["digests"], checkpoint["copy_groups"], checkpoint.get("left_out", []))


KVASIR_COPIES = SPLIT_DIR / "kvasir_copies.txt"  # Kvasir-SEG's copy groups, as scripts/find_copies.py found them


def source_copy_groups(source: Source, pairs, cache_dir) -> list[list[str]]:
    """The copy groups among one dataset's images: Kvasir-SEG's shipped list, or for a folder what the detector
    finds (its features and result cached in `cache_dir`)."""
    if not source.is_kvasir:
        return copy_groups(find_copies(pairs, cache_dir))
    present = {sample_id for sample_id, _, _ in pairs}
    groups = [[i for i in group if i in present] for group in read_groups(KVASIR_COPIES)]
    return [group for group in groups if len(group) > 1]


def training_copies(record: DataRecord, pairs, data_dir) -> dict[str, str]:
    """Of the images of `pairs`, each that is the same frame as an image the record trained or validated on, with
    that image: for ids of the record's datasets its copy groups say so; other images are searched for among the
    training images with the copy detector, where those are on disk (else only exact copies are caught, said so)."""
    learnt = set(record.split.train + record.split.val)
    copied = {}
    for group in record.copy_groups:
        seen = sorted(learnt.intersection(group))
        copied.update({sample_id: seen[0] for sample_id in group if seen and sample_id not in learnt})
    split_ids = learnt | set(record.split.test) | set(record.left_out)
    found = {sample_id: copied[sample_id] for sample_id, _, _ in pairs if sample_id in copied}
    foreign = [pair for pair in pairs if pair[0] not in split_ids]
    if not foreign or not learnt:
        return found
    known = [pair for source in record.datasets for pair in local_pairs(source, data_dir) if pair[0] in learnt]
    if not known:
        print(
            "note: the images this model trained on are not on disk here, so only exact copies of them are looked for"
            f" among these {len(foreign)} images (not re-crops or re-encodings)"
        )
        return found
    marked = [(f"?{sample_id}", image, mask) for sample_id, image, mask in foreign]  # "?": no id of a dataset
    for pair in find_copies(known + marked, Path(data_dir) / "cache"):
        (seen_as, scored) = sorted((pair.first, pair.second), key=lambda i: i.startswith("?"))
        if scored.startswith("?") and not seen_as.startswith("?"):
            found.setdefault(scored[1:], seen_as)
    return found


def local_pairs(source: Source, data_dir) -> list[tuple[str, Path, Path]]:
    """A dataset's (id, image, mask) pairs when its files are on disk (Kvasir-SEG extracted in `data_dir`), without
    fetching anything; none when they are not."""
    images, masks = (
        (Path(data_dir) / kvasir.FOLDER_NAME / "images", Path(data_dir) / kvasir.FOLDER_NAME / "masks")
        if source.is_kvasir
        else (Path(source.images), Path(source.masks))
    )
    if not (images.is_dir() and masks.is_dir()):
        return []
    prefix = "" if source.is_kvasir else f"{source.name}/"
    return [(prefix + stem, image, mask) for stem, image, mask in kvasir.pair_images_and_masks(images, masks)]


def seen_images(record: DataRecord, pairs, parts=("train", "val")) -> list[tuple[str, str]]:
    """The (id, id it was seen as) of each image of `pairs` whose file content is that of an image of the record's
    `parts` (a copy under another name or in another folder). Never score those as held out."""
    ids = {sample_id for part in parts for sample_id in getattr(record.split, part)}
    seen = {digest: sample_id for sample_id, digest in record.digests.items() if sample_id in ids}
    found = [(sample_id, seen.get(file_digest(image))) for sample_id, image, _ in pairs]
    return [(sample_id, seen_as) for sample_id, seen_as in found if seen_as is not None]


def check_held_out(name: str, pairs, records: list[DataRecord], part: str, data_dir) -> dict[str, str]:
    """Refuse to score `pairs` when some are images a model of `records` (each member's own record) trained on (or,
    scoring held-out images, validated on), found by file content under any name; return those that are the same
    frame as such an image (id: that image's id), which are scored, and reported apart."""
    copies = {}
    for record in records:
        seen = seen_images(record, pairs, parts=("train",) if part == "val" else ("train", "val"))
        if seen:
            example, seen_as = seen[0]
            raise UserError(
                f"{len(seen)} of the {len(pairs)} {name} images to score are images this model was trained or"
                f" validated on (e.g. {example} is its {seen_as}), so their scores would not be held-out scores;"
                " score its held-out split (the default), or data it never saw."
            )
        for sample_id, seen_as in training_copies(record, pairs, data_dir).items():
            copies.setdefault(sample_id, seen_as)
    return copies


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
    """The split of an ensemble of models trained on `records`: validation images are those every member trained
    on their dataset validated on, test images those every such member held out, and every other image any member
    trained or validated on counts as trained on (so the folds of one partition have no validation image left, and
    only data none of them saw is scored as held out). It holds no digests: each member's own record is checked
    (see seen_images), so no member's record stands in for another's."""
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
    return DataRecord(list(sources.values()), split, {})
