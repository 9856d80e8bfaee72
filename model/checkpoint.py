"""The checkpoint format, described here and nowhere else: a plain dict of tensors and Python values, built by
`model_checkpoint`, saved atomically and loaded with weights_only=True (nothing in it needs unpickling of arbitrary
objects), so `torch.load(path, weights_only=True)` reads it too. `load_checkpoint` checks the type of every field below
(FIELDS) for every reader, refusing a damaged or crafted record naming the file and the field.

A model checkpoint (scripts/train.py's CHECKPOINT_PATH: the best epoch by validation Dice) holds the keys above
`step`; it never holds the auxiliary heads of deep supervision, so the model stays the plain network. With
THRESHOLD_SEARCH, `preprocessing` also holds the chosen `threshold` (readers use 0.5 when it is absent) and
`metrics` the validation Dice of each threshold tried (`val_dice_by_threshold`). scripts/train.py's resumable state
(OUTPUT_DIR/last.pth, written by utils/training_state.py) holds the trained network's own weights as `model_state`,
the epoch the run stands in as `epoch` and the last finished epoch's row as `metrics` ({} before the first), and
all the keys below:

| key | content |
| --- | --- |
| `model_state` | the network's state dict: the weights validated (their moving average when EMA_DECAY > 0) |
| `builder` | `name` (MODEL) and `kwargs`: `model.networks.NETWORKS[name](**kwargs)` rebuilds the network |
| `preprocessing` | `image_size`, the `mean` and `std` for RGB in [0, 1], and the `threshold` if training chose one |
| `epoch`, `metrics` | the epoch it was saved at and its history row (`train_loss`, `val_loss`, `val_dice`, ...) |
| `datasets` | the datasets trained on: `name`, and for a folder its `images` and `masks` folders and `test_list` |
| `split` | the ids of the `train`, `val` and `test` parts, whether the test ids are `official`, and `folds`, `fold` |
| `digests` | a content digest of every training and validation image: no file copy of one is scored as held out |
| `copy_groups` | groups of ids of one video frame (dataset/copies.py), each kept on one side of the carve-out |
| `left_out` | the training images LEAVE_OUT_COPIES left out (the same frame as a test image); empty by default |
| `config` | every setting of the run, with its `RUN_ID`, absolute `RUN_FOLDER`, `RUN_CHECKPOINT`; a copy's `COPY_OF` |
| `step`, `step_losses` | last.pth only: the steps done of `epoch`, and the loss of each of them |
| `history`, `best_dice` | last.pth only: the rows of history.csv so far, and the best validation Dice so far |
| `learning_rates` | last.pth only: (global step, learning rate) about 20 times per epoch, for the curves |
| `optimizer_state`, `scaler_state` | last.pth only: the state dicts of the optimizer and of the loss scaler |
| `rng_state` | last.pth only: PyTorch's random state, so a resumed run draws what an uninterrupted one would |
| `ema_state` | last.pth only, with EMA_DECAY > 0: the moving average of the weights (an AveragedModel) |
| `auxiliary_heads_state` | last.pth only, with DEEP_SUPERVISION > 0: the auxiliary heads of deep supervision |
"""

import hashlib
import inspect
import math
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from common.config import literal_constants
from common.errors import UserError, first_few
from common.files import atomic_path, lock_holder
from common.records import (
    Malformed,
    described,
    described_by,
    dict_of,
    either,
    items,
    like,
    list_of,
    number,
    of_type,
    record,
    text,
    whole,
)
from dataset.sources import NAME_PATTERN, DataRecord, Source, ensemble_record
from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD
from model.networks import NETWORKS, build_network

REQUIRED_KEYS = ("model_state", "builder")


def cpu_state(module: torch.nn.Module) -> dict:
    """A copy of the module's state dict as CPU tensors: it can be saved (also on another thread) while the
    module trains on."""
    return {name: value.detach().to("cpu", copy=True) for name, value in module.state_dict().items()}


def model_checkpoint(
    model: torch.nn.Module, image_size: int, epoch: int, metrics: dict, data: DataRecord, config: dict
) -> dict:
    """The portable checkpoint of `model`: its weights, everything needed to rebuild and feed it, and what it was
    trained on."""
    return {
        "model_state": cpu_state(model),
        "builder": model.builder,
        "preprocessing": {"image_size": image_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        "epoch": epoch,
        "metrics": metrics,
        **data.as_dict(),
        "config": config,
    }


def save_checkpoint(path, checkpoint: dict) -> None:
    """Write `checkpoint` to a temporary file and rename it over `path`, so a kill never leaves half a file.

    It is written through a Python file, whose failed write (a full disk) is an OSError that atomic_path turns
    into a one-line message; torch.save given a path reports it as a bare RuntimeError instead.
    """
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        torch.save(checkpoint, file)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint dict safely, with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} not found; train one with `python scripts/train.py` or pass its path (a run given a"
            " NAME, as configs/cpu_quick.py is, keeps its best model in outputs/NAME/best.pth)."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # torch's own advice here is to load it unsafely: never repeated
        if "Unsupported global" in str(error):  # weights_only refused an object that could run code when unpickled
            raise UserError(
                f"{path} holds Python objects besides tensors and plain values; this repository never loads those,"
                " as unpickling them can run code. Use a checkpoint written by scripts/train.py."
            ) from None
        raise UserError(
            f"{path} is not a readable checkpoint of this repository (not a PyTorch file, or damaged)."
        ) from None
    except Exception as error:  # the unpickler raises many types for files that are not checkpoints
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path} is not a readable checkpoint of this repository ({reason}).") from None
    if isinstance(checkpoint, dict) and "model_config" in checkpoint and "builder" not in checkpoint:
        raise UserError(
            f"{path} is a checkpoint of an older version of this repository (a model_config, no builder), which this"
            " one does not read; train it again with scripts/train.py."
        )
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise UserError(f"{path} is not a checkpoint of this repository (no {' / '.join(REQUIRED_KEYS)} inside).")
    check_fields(checkpoint, path)
    return checkpoint


RUN_RECORD = ("epoch", "metrics", "datasets", "split", "digests", "copy_groups", "config")  # what a run records


def require_fields(checkpoint: dict, path, names) -> None:
    """Refuse a checkpoint that lacks any of the fields `names` (a record its reader needs whole), naming the file
    and the field."""
    missing = [name for name in names if name not in checkpoint]
    if missing:
        raise damaged_record(path, ", ".join(missing), "is missing" if len(missing) == 1 else "are missing")


def check_fields(checkpoint: dict, path) -> None:
    """Refuse a checkpoint any of whose fields (FIELDS) is not of its type, naming the file and the field: every
    reader (evaluate, export, predict, a resumed run, the notebook) gets it through load_checkpoint, so none trusts
    a damaged or crafted record."""
    try:
        FIELDS(checkpoint, "")
    except Malformed as error:
        raise damaged_record(path, error.field, error.problem) from None


def damaged_record(path, field: str, problem: str) -> UserError:
    """The error for a checkpoint whose `field` is not as scripts/train.py writes it."""
    return UserError(
        f"{path} has a damaged record: its {field} {problem}; it is not a checkpoint as scripts/train.py writes it."
        " Use a checkpoint that train.py wrote (or train it again)."
    )


def model_from_checkpoint(checkpoint: dict, source="the checkpoint") -> torch.nn.Module:
    """The network of the checkpoint's builder, with its weights, in eval mode, on the CPU."""
    builder = checkpoint["builder"]  # checked by load_checkpoint
    model = build_network(builder["name"], builder["kwargs"])
    mismatch = describe_mismatch(model.state_dict(), checkpoint["model_state"])
    if mismatch:
        raise UserError(f"{source}'s weights do not fit MODEL {builder['name']} {builder['kwargs']}: {mismatch}.")
    model.load_state_dict(checkpoint["model_state"])
    return model.eval()


def describe_bad_builder(builder) -> str | None:
    """Why `builder` cannot rebuild a network (None when it can): not {name: one of NETWORKS, kwargs: a dict}."""
    if not isinstance(builder, dict) or set(builder) != {"kwargs", "name"}:
        return "not a dict of name and kwargs"
    name, kwargs = builder["name"], builder["kwargs"]
    if not isinstance(name, str) or name not in NETWORKS:
        return f"name {name!r} is not one of {', '.join(NETWORKS)}"
    if not isinstance(kwargs, dict):
        return f"kwargs is {described(kwargs)}, not a dict"
    parameters = inspect.signature(NETWORKS[name]).parameters
    for key, value in kwargs.items():
        if key not in parameters:
            return f"MODEL {name} takes no {str(key)[:40]!r}"
        default = parameters[key].default
        if default is not inspect.Parameter.empty and type(value) is not type(default):
            return f"{key} is {described(value)}, not a {type(default).__name__}"
    return None


def describe_bad_preprocessing(preprocessing) -> str | None:
    """Why `preprocessing` cannot feed a model (None when it can): a size below 1, a std that divides by 0, or a
    threshold outside (0, 1)."""
    if not isinstance(preprocessing, dict) or not {"image_size", "mean", "std"} <= set(preprocessing):
        return "it needs image_size, mean and std"
    unknown = set(preprocessing) - {"image_size", "mean", "std", "threshold"}
    if unknown:
        return f"{sorted(map(str, unknown))[0][:40]!r} is not one of its fields"
    threshold = preprocessing.get("threshold", 0.5)
    if type(threshold) not in (int, float) or not 0 < threshold < 1:
        return f"threshold is {described(threshold)}, not a number between 0 and 1"
    size, mean, std = preprocessing["image_size"], preprocessing["mean"], preprocessing["std"]
    if type(size) is not int or size < 1:
        return f"image_size is {size!r}"
    channels = [*mean, *std] if isinstance(mean, list | tuple) and isinstance(std, list | tuple) else []
    if len(channels) != 6 or not all(type(value) in (int, float) and math.isfinite(value) for value in channels):
        return "mean and std must be 3 finite numbers each"
    if min(abs(value) for value in std) == 0:
        return "std holds a 0"
    return None


SAMPLE_IDS = list_of(text())
TENSORS = dict_of(of_type(torch.Tensor, "a tensor"))
PLAIN = of_type((bool, int, float, str, type(None)), "a plain value")
SETTING = either(PLAIN, list_of(PLAIN), what="a setting's value (a plain value or a list of them)")
TRAIN_SETTINGS = literal_constants(Path(__file__).resolve().parents[1] / "scripts" / "train.py")
CONFIG = record(  # scripts/train.py's settings, each of its default's type, and what a run records of itself
    {
        **{name: like(default) for name, default in TRAIN_SETTINGS.items()},
        "RUN_ID": text("[0-9a-f]{16}", "16 hexadecimal digits"),
        "RUN_FOLDER": text(),
        "RUN_CHECKPOINT": text(),
        "COPY_OF": list_of(text("[0-9a-f]{16}", "16 hexadecimal digits")),
        "DATA_URL": text(),
        "RECIPES": list_of(text()),
    },
    others=SETTING,  # a setting of an earlier version: only for the record
)
FIELDS = record(  # every field of the table above, with the type each reader relies on
    {
        "model_state": TENSORS,
        "builder": described_by(describe_bad_builder),
        "preprocessing": described_by(describe_bad_preprocessing),
        "epoch": whole(0),
        "metrics": record(
            {"epoch": whole(0)},
            others=either(number(), dict_of(number(), key=number()), what="a number, or numbers by threshold"),
        ),
        "datasets": list_of(
            record(
                {name: text() for name in Source.__dataclass_fields__} | {"name": text(NAME_PATTERN.pattern)},
                required=("name",),
            )
        ),  # fmt: skip
        "split": record(
            {
                **dict.fromkeys(("train", "val", "test"), SAMPLE_IDS),
                "official": of_type(bool, "True or False"),
                **dict.fromkeys(("folds", "fold"), whole(0)),
            },
            required=("train", "val", "test"),
        ),
        "digests": dict_of(text("[0-9a-f]{16}", "16 hexadecimal digits")),
        "copy_groups": list_of(SAMPLE_IDS),
        "left_out": SAMPLE_IDS,
        "config": CONFIG,
        "step": whole(0),
        "step_losses": of_type(torch.Tensor, "a tensor"),
        "history": list_of(record({"epoch": whole(1)}, others=number())),
        "best_dice": number(),
        "learning_rates": list_of(items(whole(0), number())),
        "optimizer_state": record(
            {"state": of_type(dict, "a dict"), "param_groups": list_of(of_type(dict, "a dict"))},
            required=("state", "param_groups"),
        ),  # fmt: skip
        "scaler_state": of_type(dict, "a dict"),
        "rng_state": of_type(torch.Tensor, "a tensor"),
        "ema_state": TENSORS,
        "auxiliary_heads_state": TENSORS,
    },
    required=REQUIRED_KEYS,
)


def describe_mismatch(expected: dict, found) -> str | None:
    """Why weights `found` cannot load into a model whose state dict is `expected` (None when they can)."""
    if not isinstance(found, dict) or not all(isinstance(value, torch.Tensor) for value in found.values()):
        return "model_state is not a dict of tensors"
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        return (
            f"{len(missing)} tensor(s) missing and {len(unexpected)} unexpected, a different depth or architecture"
            f" (e.g. {(missing or unexpected)[0]})"
        )
    reshaped = [name for name in expected if found[name].shape != expected[name].shape]
    if reshaped:
        name = reshaped[0]
        return (
            f"{len(reshaped)} tensor(s) of another shape, a different width (e.g. {name} is"
            f" {list(found[name].shape)} in the file, {list(expected[name].shape)} expected)"
        )
    return None


def load_model(path, device="cpu") -> torch.nn.Module:
    """One line from a checkpoint file to a ready model: `model = load_model("models/unet_kvasirseg.pth")`."""
    return model_from_checkpoint(load_checkpoint(path), source=path).to(device)


@dataclass
class Member:
    """One checkpoint of a model or ensemble: the file it was read from, and its contents."""

    path: Path
    checkpoint: dict


def load_members(names: list[str]) -> list[Member]:
    """The checkpoints named: files, or folders of a sweep's folds (see fold_checkpoints); refuses a file named
    twice or weights given twice (a copy, or two runs that ended identical), and for a folder a mix of partitions or
    a partition it does not hold every fold of."""
    members = []
    for name in names:
        path = Path(name)
        if not path.is_dir():
            members.append(Member(path, load_checkpoint(path)))
            continue
        folds = [Member(file, load_checkpoint(file)) for file in fold_checkpoints(path)]
        check_one_partition(path, folds)
        members += folds
    seen, weights = set(), {}
    for member in members:
        if member.path.resolve() in seen:
            raise UserError(f"checkpoint {member.path} is named twice; an ensemble takes each member once.")
        seen.add(member.path.resolve())
        first = weights.setdefault(weights_digest(member.checkpoint["model_state"]), member.path)
        if first != member.path:
            raise UserError(
                f"{first} and {member.path} hold the same weights (a copy, or two runs that ended identical), so an"
                " ensemble would count one model twice; name only one of them."
            )
    return members


def weights_digest(state: dict) -> str:
    """A digest of a state dict's names and tensor contents: equal for the same weights in any file."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{list(state[name].shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_records(members: list[Member]) -> list[DataRecord]:
    """What each checkpoint of `members` was trained on: its own data record (evaluation checks every one)."""
    return [DataRecord.from_checkpoint(member.checkpoint, str(member.path)) for member in members]


def common_record(records: list[DataRecord]) -> DataRecord:
    """The split to score a model of `records` on: one checkpoint's, or an ensemble's (dataset.sources.
    ensemble_record: only images no member trained on count as held out)."""
    return records[0] if len(records) == 1 else ensemble_record(records)


def fold_checkpoints(folder: Path) -> list[Path]:
    """The best.pth of each subfolder of `folder` (as a sweep with FOLDS writes RECIPE-seedS-foldsN/foldK/), each
    from a finished run, refusing a folder that holds none or a run that is not finished (see unfinished_reason),
    by name: its best.pth may still change."""
    runs = sorted(
        sub for sub in folder.iterdir() if sub.is_dir() and (any(sub.glob("*.pth")) or (sub / "run.log").exists())
    )
    if not runs:
        raise UserError(
            f"{folder} holds no run folders with a best.pth (a sweep with --folds writes"
            " RECIPE-seedS-foldsN/fold0/best.pth, ...); give checkpoint files or such a folder."
        )
    for run in runs:
        reason = unfinished_reason(run)
        if reason:
            raise UserError(
                f"{run} {reason}; finish it (run the sweep again, or wait for it), or name the checkpoint files to"
                " use, which are taken as they are."
            )
    return [run / "best.pth" for run in runs]


def unfinished_reason(run: Path) -> str | None:
    """Why the run in folder `run` is not finished (None when it is): no best.pth with its summary.json, a process
    training it (holding its train.lock), or a last.pth written after its summary.json (resumed since it ended)."""
    summary, last = run / "summary.json", run / "last.pth"
    if not (run / "best.pth").is_file() or not summary.is_file():
        return "holds no finished run (a best.pth with its summary.json)"
    holder = lock_holder(run / "train.lock")
    if holder:
        return f"is still training (process {holder} holds its train.lock)"
    if last.is_file() and last.stat().st_mtime > summary.stat().st_mtime:
        return "was resumed after it finished and has not finished again (its last.pth is newer than its summary.json)"
    return None


def check_one_partition(folder: Path, members: list[Member]) -> None:
    """Refuse a folder of folds that mixes carve-out runs (FOLDS 0) with folds, or folds of different partitions
    (another FOLDS, SEED, data or split), naming the odd members; or that lacks some folds of its partition, or
    holds one twice. A folder of carve-out runs alone (several seeds, say) is used as it is."""
    folds = [member.checkpoint.get("split", {}).get("folds", 0) for member in members]
    carve_outs = [member.path for member, count in zip(members, folds, strict=True) if not count]
    if len(carve_outs) == len(members):
        return
    if carve_outs:
        raise UserError(
            f"{folder} holds carve-out run(s) (FOLDS 0) beside the folds of a cross-validation:"
            f" {first_few(carve_outs)}; an ensemble of a folder is the folds of one partition. Move those out, or name"
            " the checkpoint files to use."
        )
    partitions = [partition(member) for member in members]
    usual = Counter(map(repr, partitions)).most_common(1)[0][0]
    odd = [index for index, value in enumerate(partitions) if repr(value) != usual]
    if odd:
        expected = next(value for value in partitions if repr(value) == usual)
        differs = [name for name in expected if partitions[odd[0]][name] != expected[name]]
        raise UserError(
            f"{folder} mixes folds of different partitions: {first_few(members[index].path for index in odd)}"
            f" differ{'s' * (len(odd) == 1)} from the other {len(members) - len(odd)} in {', '.join(differs)}; an"
            " ensemble of a folder is the folds of one partition. Move the odd run(s) out, or name the checkpoint"
            " files to use."
        )
    count = folds[0]
    fold_numbers = sorted(member.checkpoint["split"].get("fold", 0) for member in members)
    if fold_numbers != list(range(count)):
        missing = sorted(set(range(count)) - set(fold_numbers))
        raise UserError(
            f"{folder} holds folds {', '.join(map(str, fold_numbers))} of a {count}-fold partition (missing:"
            f" {', '.join(map(str, missing)) or 'none, but one twice'}); train the rest (run the sweep again), or"
            " name the checkpoint files to use."
        )


def partition(member: Member) -> dict:
    """What makes the folds of one partition one: FOLDS, SEED, the datasets, the images split into folds and the
    test images."""
    split = member.checkpoint["split"]
    return {
        "FOLDS": split.get("folds", 0),
        "SEED": member.checkpoint.get("config", {}).get("SEED"),
        "datasets": member.checkpoint.get("datasets"),
        "the images split into folds": sorted(split["train"] + split["val"]),
        "the test images": sorted(split["test"]),
    }
