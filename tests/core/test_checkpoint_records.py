"""Every field of a checkpoint is checked once, where model/checkpoint.py loads it: a field of the wrong type, a
missing or an unknown one ends in one UserError naming the file and the field, for every reader (evaluate, export,
predict, a resumed run, the notebook), never in another exception. The cases are generated from the fields of real
checkpoints, so a new field is covered too."""

import copy

import pytest
import torch

from common.errors import UserError
from model.checkpoint import common_record, data_records, load_members, save_checkpoint
from tests.checkpoints import save_untrained_checkpoint
from tests.scripts import run_script
from tests.train_runs import error_line, train_in_process
from utils.inference import predictor_of
from utils.training_state import load_training_state

WRONG = {"none": None, "bool": True, "whole": 7, "number": 1.5, "text": "not hex!", "list": [1], "dict": {"a": 1}}
OPAQUE = ("optimizer_state", "scaler_state")  # read only by PyTorch's load_state_dict, which checks them itself


def kind(value) -> str:
    """The kind of WRONG a value is (a tuple is a list; a tensor has a kind of its own)."""
    kinds = {bool: "bool", int: "whole", float: "number", str: "text", list: "list", tuple: "list", dict: "dict"}
    return "none" if value is None else kinds.get(type(value), type(value).__name__)


def fields(value, path=()):
    """The path of every field of a record, nested: each key of a dict, the first item of a list."""
    if path:
        yield path
    if isinstance(value, dict) and path[:1] not in [(name,) for name in OPAQUE]:
        for key, item in list(value.items())[:3] if path[:1] == ("model_state",) else value.items():
            yield from fields(item, (*path, key))
    elif isinstance(value, list | tuple) and value:
        yield from fields(value[0], (*path, 0))


def mutations(checkpoint: dict) -> list[tuple[tuple, str]]:
    """(field, wrong kind) for every field and every kind it is not (a whole number stands in for a number; text
    of hexadecimal digits becomes other text), and (field, "missing") for every key of a dict."""
    cases = []
    for path in fields(checkpoint):
        original = get(checkpoint, path)
        hexadecimal = isinstance(original, str) and original and all(c in "0123456789abcdef" for c in original)
        for name in WRONG:
            same = name == kind(original) and not (name == "text" and hexadecimal)
            if not same and not (name == "whole" and kind(original) == "number"):
                cases.append((path, name))
        if not isinstance(path[-1], int) and len(path) <= 2 and path[0] not in ("model_state", "metrics", "config"):
            cases.append((path, "missing"))  # a part of a record (the metrics and settings are open-ended)
    cases.append((("unknown field",), "text"))
    return cases


def get(record, path):
    for key in path:
        record = record[key]
    return record


def mutated(checkpoint: dict, path: tuple, wrong: str) -> dict:
    """A deep copy of `checkpoint` with the field at `path` replaced by WRONG[wrong], or removed."""
    changed = copy.deepcopy(checkpoint)
    parent = get(changed, path[:-1])
    items = list(parent) if isinstance(parent, tuple) else parent
    if wrong == "missing":
        del items[path[-1]]
    else:
        items[path[-1]] = copy.deepcopy(WRONG[wrong])
    if isinstance(parent, tuple):  # (mean, std, a learning rate's step and value): rebuilt around the change
        get(changed, path[:-2])[path[-2]] = tuple(items)
    return changed


@pytest.fixture(scope="module")
def model_checkpoint(tmp_path_factory):
    """A real tiny best.pth, as train.py writes it (its settings, RUN_ID and RUN_FOLDER included)."""
    from dataset.synthetic import make_kvasir_folder

    root = tmp_path_factory.mktemp("model")
    make_kvasir_folder(root / "data")
    checkpoint = torch.load(save_untrained_checkpoint(root / "best.pth", root / "data"), weights_only=True)
    checkpoint["config"].update(RUN_ID="0123456789abcdef", RUN_FOLDER=str(root), DATASETS=["kvasir"])
    checkpoint["preprocessing"]["threshold"] = 0.4
    return root, checkpoint


def read_as_every_model_reader_does(path, data_dir) -> None:
    """What evaluate.py, predict.py, export.py and the notebook read of a checkpoint: its members, model, data
    records and their common split."""
    members = load_members([str(path)])
    predictor_of(members, device="cpu")
    common_record(data_records(members))


def test_every_field_of_a_model_checkpoint_is_checked_naming_the_file_and_the_field(model_checkpoint):
    root, checkpoint = model_checkpoint
    cases = mutations(checkpoint)
    assert len(cases) > 200 and any(path[0] == "digests" for path, _ in cases)
    escaped = []
    for path, wrong in cases:
        target = root / "damaged.pth"
        save_checkpoint(target, mutated(checkpoint, path, wrong))
        try:
            read_as_every_model_reader_does(target, root / "data")
            if wrong != "missing":  # an optional field (an older checkpoint's) may be missing
                escaped.append((path, wrong, "accepted"))
        except UserError as error:
            named = [str(key) for key in path if not isinstance(key, int)][-1]  # a list item: its list's name
            if str(target) not in str(error) or named not in str(error):
                escaped.append((path, wrong, str(error)))
        except Exception as error:  # any other exception is the bug this test guards against
            escaped.append((path, wrong, repr(error)))
    assert escaped == [], [case[:2] for case in escaped]


@pytest.fixture(scope="module")
def training_state(tmp_path_factory):
    """A real last.pth of a 1-epoch run of the tiny recipe."""
    from dataset.synthetic import make_kvasir_folder

    root = tmp_path_factory.mktemp("state")
    make_kvasir_folder(root / "data")
    assert train_in_process(root, "--epochs", "1")[0] == 0
    return root, torch.load(root / "run" / "last.pth", weights_only=True)


def test_every_field_of_a_training_state_is_checked_before_a_resumed_run_reads_it(training_state):
    root, state = training_state
    escaped = []
    for path, wrong in mutations(state):
        target = root / "damaged" / "last.pth"
        target.parent.mkdir(exist_ok=True)
        save_checkpoint(target, mutated(state, path, wrong))
        try:
            load_training_state(target)
            if wrong != "missing":
                escaped.append((path, wrong, "accepted"))
        except UserError as error:
            if str(target) not in str(error):
                escaped.append((path, wrong, str(error)))
        except Exception as error:  # any other exception is the bug this test guards against
            escaped.append((path, wrong, repr(error)))
    assert escaped == [], [case[:2] for case in escaped]


@pytest.mark.parametrize(
    ("path", "wrong"), [(("config", "RUN_FOLDER"), "list"), (("split", "train"), "dict"), (("config",), "list")]
)
def test_the_scripts_end_a_damaged_record_in_one_line(training_state, path, wrong):
    root, state = training_state
    save_checkpoint(root / "run" / "last.pth", mutated(state, path, wrong))
    best = root / "damaged-best.pth"
    save_checkpoint(best, mutated(torch.load(root / "run" / "best.pth", weights_only=True), path, wrong))
    status, _, stderr = train_in_process(root, "--resume", "--epochs", "2")
    assert status == 2 and f"{root / 'run' / 'last.pth'} has a damaged record: its {'.'.join(path)}" in error_line(
        stderr
    )
    for script, flags in (
        ("evaluate", ["--data-dir", root / "data", "--csv", root / "e.csv", "--device", "cpu"]),
        ("export", ["--output", root / "m.onnx"]),
        ("predict", [root / "data" / "Kvasir-SEG" / "images", "--output", root / "predicted", "--device", "cpu"]),
    ):
        result = run_script(script, *flags, "--checkpoint", best)
        assert result.returncode == 2 and f"{best} has a damaged record" in error_line(result.stderr), script
