"""scripts/train.py's settings as a run reads them: its constants, then recipe files, then flags; with --resume the
saved run's recipe, which only the flags of RESUME_MAY_CHANGE may alter; and the check that refuses impossible
values before any work starts, naming the setting."""

import math
import re
import secrets
from pathlib import Path

from common.config import Settings, flag_name, keyword_settings, parse_settings
from common.errors import UserError
from common.run_folder import relocated_run
from dataset.sources import parse_source
from dataset.splits import check_folds
from model.networks import check_network, network_kwargs
from utils.losses import LOSSES
from utils.tensorboard_log import require_tensorboard
from utils.training_state import load_training_state, read_run_config

# What --resume may change: how the run is carried out, and EPOCHS (train longer); never the recipe.
RESUME_MAY_CHANGE = (
    "DATA_DIR", "DATA_URL", "CACHE", "NUM_WORKERS", "DEVICE", "COMPILE", "THREADS", "PANEL_EVERY", "PANEL_IMAGES",
    "SHOW_PANELS", "TENSORBOARD", "SAVE_EVERY", "STOP_CHECK_STEPS", "OUTPUT_DIR", "CHECKPOINT_PATH", "RESUME",
    "OVERWRITE", "EPOCHS", "NAME",
)  # fmt: skip
# Settings that leave a run's recipe as it is: RESUME_MAY_CHANGE and what each run records of itself.
RECIPE_FREE = (*RESUME_MAY_CHANGE, "RECIPES", "RUN_ID", "RUN_FOLDER", "RUN_CHECKPOINT", "COPY_OF")


def read_settings(defaults: dict, script, choices: dict) -> tuple[dict, dict | None]:
    """The run's settings (`defaults`, the script's constants, then recipe files, then flags), checked, and with
    --resume the saved state it continues, whose recipe it keeps."""
    settings = parse_settings(defaults, script, choices=choices, recipes=True)
    named_paths(settings, defaults["OUTPUT_DIR"])
    config = {**settings.values, "RECIPES": settings.recipes, "RUN_ID": secrets.token_hex(8)}  # RUN_ID: whose model
    state = None
    if config["RESUME"]:
        state = load_training_state(Path(config["OUTPUT_DIR"]) / "last.pth")
        config = resumed_settings(state, settings, defaults)
    check_settings(config, choices)
    return config, state


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # one plain folder name: no '/', '..', spaces


def named_paths(settings: Settings, outputs: str) -> None:
    """With NAME, the run's paths unless given: OUTPUT_DIR = `outputs`/NAME and CHECKPOINT_PATH = OUTPUT_DIR/best.pth,
    so that runs of different names never share a file; with --resume only OUTPUT_DIR (the run keeps its model's
    path). A NAME that is no plain folder name is refused."""
    values, name = settings.values, settings.values["NAME"]
    if "NAME" not in settings.given:
        return
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise UserError(
            f"NAME {name!r} is not a plain folder name; give letters, digits, '.', '_' or '-' (at most 100, starting"
            " with a letter or digit; no '/', '..' or spaces), e.g. --name cpu_quick."
        )
    if "OUTPUT_DIR" not in settings.given:
        values["OUTPUT_DIR"] = str(Path(outputs) / name)
        settings.given.add("OUTPUT_DIR")
    if "CHECKPOINT_PATH" not in settings.given and not values["RESUME"]:
        values["CHECKPOINT_PATH"] = str(Path(values["OUTPUT_DIR"]) / "best.pth")


def resumed_settings(state: dict, settings: Settings, defaults: dict) -> dict:
    """The saved run's settings, with the flags that may change on resuming (RESUME_MAY_CHANGE) taken from
    `settings`; a flag or recipe that would change the recipe mid-run is refused, naming it."""
    saved = {**defaults, **state["config"]}
    changed = [
        f"{flag_name(name)} {settings.values[name]!r} (the run has {saved[name]!r})"
        for name in sorted(settings.given)
        if name not in RESUME_MAY_CHANGE and settings.values[name] != saved[name]
    ]
    if changed:
        raise UserError(
            f"--resume continues the run saved in {settings.values['OUTPUT_DIR']} with its own recipe, which"
            f" {', '.join(changed)} would change; drop those, or start a new run with another --output-dir."
        )
    config = {**saved, **{name: settings.values[name] for name in RESUME_MAY_CHANGE if name in settings.given}}
    config["RESUME"] = True
    given_checkpoint = config["CHECKPOINT_PATH"] if "CHECKPOINT_PATH" in settings.given else None
    config.update(relocated_run(saved, config["OUTPUT_DIR"], given_checkpoint, read_run_config))
    finished = len(state["history"])
    if config["EPOCHS"] <= finished:
        raise UserError(
            f"nothing to resume: the run saved in {config['OUTPUT_DIR']} has finished {finished} of its"
            f" {config['EPOCHS']} epochs; give --epochs above {finished} to train it for longer."
        )
    print(
        f"resuming {config['OUTPUT_DIR']} at epoch {state['epoch']}, step {state['step']}, with its recipe"
        + (f", now for {config['EPOCHS']} epochs" if config["EPOCHS"] != state["config"]["EPOCHS"] else "")
    )
    return config


def check_settings(config: dict, choices: dict) -> None:
    """Refuse impossible settings before any work starts, naming the setting."""
    rules = [
        (config["DATASETS"] != [], "DATASETS is empty; give at least one dataset (kvasir, NAME=FOLDER, ...)"),
        (config["BATCH_SIZE"] >= 1, "BATCH_SIZE must be at least 1"),
        (config["EPOCHS"] >= 1, "EPOCHS must be at least 1"),
        (config["LEARNING_RATE"] > 0 and math.isfinite(config["LEARNING_RATE"]), "LEARNING_RATE must be > 0"),
        (config["WEIGHT_DECAY"] >= 0, "WEIGHT_DECAY must be >= 0"),
        (
            all(math.isfinite(config[name]) and config[name] >= 0 for name in ("BCE_WEIGHT", "DICE_WEIGHT"))
            and config["BCE_WEIGHT"] + config["DICE_WEIGHT"] > 0,
            "BCE_WEIGHT and DICE_WEIGHT must be finite, >= 0 and not both 0",
        ),
        (0 < config["VAL_FRACTION"] < 1, "VAL_FRACTION must be between 0 and 1 (exclusive)"),
        *[
            (config[name] in allowed, f"{name} must be one of {', '.join(allowed)}")
            for name, allowed in choices.items()
        ],
        (config["WARMUP_EPOCHS"] >= 0, "WARMUP_EPOCHS must be >= 0"),
        (0 <= config["EMA_DECAY"] < 1, "EMA_DECAY must be in [0, 1) (0 turns the moving average off)"),
        (
            math.isfinite(config["DEEP_SUPERVISION"]) and config["DEEP_SUPERVISION"] >= 0,
            "DEEP_SUPERVISION must be >= 0",
        ),
        (math.isfinite(config["GRAD_CLIP"]) and config["GRAD_CLIP"] >= 0, "GRAD_CLIP must be >= 0 (0 turns it off)"),
        (config["PANEL_EVERY"] >= 1 and config["PANEL_IMAGES"] >= 1, "PANEL_EVERY and PANEL_IMAGES must be >= 1"),
        (config["NUM_WORKERS"] >= -1, "NUM_WORKERS must be >= 0, or -1 to pick one per CPU core"),
        (0 <= config["SEED"] < 2**32, "SEED must be a whole number from 0 to 2**32 - 1"),
        (config["SAVE_EVERY"] >= 0, "SAVE_EVERY must be >= 0 seconds"),
        (config["STOP_CHECK_STEPS"] >= 1, "STOP_CHECK_STEPS must be at least 1"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(f"{message}.")
    loss_settings = keyword_settings(LOSSES[config["LOSS"]], config)
    if not all(math.isfinite(value) for value in loss_settings.values()):
        raise UserError(f"{', '.join(map(str.upper, loss_settings))} (LOSS {config['LOSS']}) must be finite numbers.")
    check_network(config["MODEL"], network_kwargs(config["MODEL"], config), config["IMAGE_SIZE"])
    check_folds(config["FOLDS"], config["FOLD"])
    if config["TENSORBOARD"]:
        require_tensorboard()
    names = [parse_source(spec).name for spec in config["DATASETS"]]
    if len(set(names)) < len(names):
        raise UserError(f"DATASETS names a dataset twice ({', '.join(names)}); give each a name of its own.")
