"""Datasets by name: Kvasir-SEG (fetched as dataset/kvasir.py does) or any folder of images with masks, alone or
mixed, each with its own split, and the content digests that let evaluation refuse to score training images.

A dataset is given as a spec string:
    kvasir                      Kvasir-SEG in DATA_DIR (extracted, or its zip, or downloaded)
    NAME=FOLDER                 FOLDER/images and FOLDER/masks (files paired by stem); FOLDER/test.txt, when
                                present, lists the ids held out for testing
    NAME=IMAGES:MASKS[:TEST]    an images folder and a masks folder, and optionally a test-id list file
Sample ids are the file stems for Kvasir-SEG (as its official split lists them) and NAME/stem for a folder, so
two datasets may share file names.
"""

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from common.errors import UserError
from dataset import kvasir
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
    """A Source from its spec string (see the module docstring), refusing malformed specs with the grammar."""
    if spec.lower() == KVASIR:
        return Source(KVASIR)
    name, equals, location = spec.partition("=")
    if not equals or not NAME_PATTERN.fullmatch(name) or not location or name.lower() == KVASIR:
        raise UserError(
            f"dataset {spec!r} is not 'kvasir', NAME=FOLDER or NAME=IMAGES:MASKS[:TEST_LIST] (NAME: letters, digits,"
            " '_', '-' or '.', and not 'kvasir')."
        )
    parts = location.split(":")
    if len(parts) == 1:
        folder = Path(parts[0])
        test_list = str(folder / "test.txt") if (folder / "test.txt").is_file() else ""
        return Source(name, str(folder / "images"), str(folder / "masks"), test_list)
    if len(parts) > 3 or not all(parts[:2]):
        raise UserError(f"dataset {spec!r}: give NAME=IMAGES:MASKS or NAME=IMAGES:MASKS:TEST_LIST.")
    return Source(name, parts[0], parts[1], parts[2] if len(parts) == 3 else "")


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
    test = {f"{source.name}/{stem}" for stem in read_ids(source.test_list)}
    unknown = sorted(test - set(ids))
    if unknown:
        raise UserError(
            f"{source.test_list} lists {len(unknown)} id(s) with no image in {source.images} (e.g."
            f" {unknown[0].split('/', 1)[1]}); it must list file stems of that folder, one per line."
        )
    return make_split(ids, val_fraction, seed, test_ids=sorted(test), folds=folds, fold=fold)


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
    """What a checkpoint records of the data it was trained on: the datasets, their split, and a content digest
    of every training and validation image (so that evaluation can refuse to score an image the model saw)."""

    datasets: list[Source]
    split: Split
    digests: dict[str, str]

    def as_dict(self) -> dict:
        return {
            "datasets": [source.as_dict() for source in self.datasets],
            "split": self.split.as_dict(),
            "digests": self.digests,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "DataRecord":
        """The record of a checkpoint (one written before datasets were recorded trained on Kvasir-SEG alone)."""
        datasets = [Source(**source) for source in checkpoint.get("datasets", [Source(KVASIR).as_dict()])]
        return cls(datasets, Split.from_checkpoint(checkpoint), checkpoint.get("digests", {}))


def seen_images(record: DataRecord, pairs, parts=("train", "val")) -> list[tuple[str, str]]:
    """The (id, id it was seen as) of each image of `pairs` whose content is an image of the record's `parts`
    (by digest, so copies under other names or in other folders are found too): never score those as held out."""
    ids = {sample_id for part in parts for sample_id in getattr(record.split, part)}
    seen = {digest: sample_id for sample_id, digest in record.digests.items() if sample_id in ids}
    found = ((sample_id, seen.get(file_digest(image))) for sample_id, image, _ in pairs)
    return [(sample_id, seen_as) for sample_id, seen_as in found if seen_as is not None]


def source_ids(source: Source, ids: list[str]) -> list[str]:
    """The ids of `ids` that belong to `source` (Kvasir-SEG's are bare stems, a folder's are NAME/stem)."""
    prefix = f"{source.name}/"
    return [i for i in ids if ("/" not in i if source.is_kvasir else i.startswith(prefix))]


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
