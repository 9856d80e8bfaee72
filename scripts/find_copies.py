"""Find the images of your datasets that are the same video frame (re-encoded, resized, re-cropped, or with another
on-screen overlay): print each copy pair and group, and draw each pair side by side with its matched keypoints.

    python scripts/find_copies.py                               # Kvasir-SEG in data/: its pairs, by split part
    python scripts/find_copies.py --datasets A=my_data/a B=my_data/b --output outputs/copies/mine
    python scripts/find_copies.py --groups dataset/splits/kvasir_copies.txt   # how the shipped groups were made

scripts/train.py finds the same groups itself (COPY_GROUPS) and keeps each on one side of the validation carve-out;
this script shows them to you first. Every UPPER_CASE constant below can be edited here or given as a flag.
"""

import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find dataset/, model/, utils/ from anywhere

from common.config import parse_settings, script_constants
from common.errors import UserError, run_main
from common.files import writable_file, writable_folder, write_text_atomic
from dataset import copies
from dataset.images import write_png
from dataset.sources import KVASIR, parse_source, source_pairs
from dataset.splits import official_split

DATASETS = ["kvasir"]  # the datasets to search together: kvasir, NAME=FOLDER or NAME=IMAGES:MASKS
DATA_DIR = "data"  # holds Kvasir-SEG (fetched as train.py does) and the cache of image features
OUTPUT = "outputs/copies"  # one picture per copy pair: FIRST__SECOND.png (the two images and their matches)
GROUPS = ""  # also write the copy groups to this file (the format of dataset/splits/kvasir_copies.txt)
CANDIDATES = copies.CANDIDATES  # most similar images per image that are verified (more: slower, misses fewer)


def part_of(sample_id: str, train: set[str], test: set[str]) -> str:
    """Kvasir-SEG's official split part of an id ('train' or 'test'), or '' for another dataset's image."""
    return "train" if sample_id in train else "test" if sample_id in test else ""


def describe_pair(pair: copies.CopyPair, train: set[str], test: set[str]) -> str:
    """One line per pair: the ids, their official parts where they have one, and the inliers."""
    parts = sorted(filter(None, (part_of(pair.first, train, test), part_of(pair.second, train, test))))
    where = f" [{'-'.join(parts)}]" if len(parts) == 2 else ""
    return f"{pair.first}  {pair.second}  {pair.inliers} inliers in {pair.cells} cells{where}"


def picture_name(pair: copies.CopyPair) -> str:
    """The file name of a pair's picture (ids with '/' made file-name safe)."""
    return f"{pair.first}__{pair.second}.png".replace("/", "_")


def main() -> None:
    config = parse_settings(script_constants(globals()), __file__).values
    if config["CANDIDATES"] < 1:
        raise UserError("CANDIDATES must be at least 1.")
    output = writable_folder(config["OUTPUT"], "--output")
    if config["GROUPS"]:
        writable_file(config["GROUPS"], "--groups")
    sources = [parse_source(spec) for spec in config["DATASETS"]]
    pairs = [pair for source in sources for pair in source_pairs(source, config["DATA_DIR"])]
    started = time.perf_counter()
    found = copies.find_copies(pairs, Path(config["DATA_DIR"]) / "cache", config["CANDIDATES"])
    seconds = time.perf_counter() - started
    train, test = map(set, official_split()) if any(source.name == KVASIR for source in sources) else (set(), set())
    groups = copies.copy_groups(found)
    print(f"{len(found)} copy pair(s) among {len(pairs)} images, in {len(groups)} group(s) ({seconds:.1f} s):")
    print("\n".join(describe_pair(pair, train, test) for pair in found) or "  none")
    by_path = {sample_id: image for sample_id, image, _ in pairs}
    for pair in found:
        picture = copies.pair_picture(by_path[pair.first], by_path[pair.second])
        write_png(output / picture_name(pair), picture)
    print(f"pictures of each pair: {output}/")
    if config["GROUPS"]:
        command = "python scripts/find_copies.py " + " ".join(sys.argv[1:])
        comment = f"made by `{command.strip()}` on {date.today().isoformat()}; pairs and inliers:\n" + "\n".join(
            describe_pair(pair, train, test) for pair in found
        )
        write_text_atomic(config["GROUPS"], copies.format_groups(groups, comment))
        print(f"copy groups: {config['GROUPS']}")


if __name__ == "__main__":
    run_main(main)
