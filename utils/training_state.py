"""The resumable state of a training run (scripts/train.py's OUTPUT_DIR/last.pth): what the optimisation changes,
where the run stands, and how both are saved and restored, so that a resumed run ends exactly as an uninterrupted
one. The file's keys are listed in model/checkpoint.py."""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from common.config import flag_name
from common.errors import UserError
from dataset.sources import DataRecord
from model.checkpoint import RUN_RECORD, cpu_state, load_checkpoint, model_checkpoint, require_fields, save_checkpoint


@dataclass
class Training:
    """What the optimisation changes: the network; the module trained (the network itself, or with
    DEEP_SUPERVISION the network wrapped with auxiliary heads); the moving average of the network's weights (or
    None); the optimizer and the loss scaler."""

    network: torch.nn.Module
    trained: torch.nn.Module
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights that are validated, shown in the panels and saved as the best model."""
        return self.ema.module if self.ema else self.network


@dataclass
class Progress:
    """Where the run stands: `global_step` steps are done over all epochs, the last ones in `epoch`, with these
    losses; the history of finished epochs and the best validation Dice so far."""

    epoch: int
    global_step: int
    steps_per_epoch: int
    step_losses: torch.Tensor  # the loss of each step of `epoch`, on the training device
    history: list[dict] = field(default_factory=list)
    best_dice: float = -1.0
    learning_rates: list[tuple[int, float]] = field(default_factory=list)  # (global steps done, the last one's rate)

    @property
    def epoch_step(self) -> int:
        """How many steps of `epoch` are done (saved as the checkpoint's `step`)."""
        return self.global_step - (self.epoch - 1) * self.steps_per_epoch

    def step_done(self, loss: torch.Tensor) -> None:
        """Record the loss of the step just taken, and count it."""
        self.step_losses[self.epoch_step] = loss
        self.global_step += 1


def save_training_state(path: Path, training: Training, progress: Progress, record: DataRecord, config: dict) -> None:
    """Write everything needed to continue exactly at `progress` (the start of its next step) to `path` (last.pth),
    in the format model/checkpoint.py describes."""
    metrics = progress.history[-1] if progress.history else {}
    state = model_checkpoint(training.network, config["IMAGE_SIZE"], progress.epoch, metrics, record, config)
    if training.ema:
        state["ema_state"] = cpu_state(training.ema)
    if training.trained is not training.network:
        state["auxiliary_heads_state"] = cpu_state(training.trained.heads)
    state.update(
        step=progress.epoch_step,
        step_losses=progress.step_losses.cpu(),
        history=progress.history,
        best_dice=progress.best_dice,
        learning_rates=progress.learning_rates,
        optimizer_state=training.optimizer.state_dict(),
        scaler_state=training.scaler.state_dict(),
        rng_state=torch.get_rng_state(),
    )
    save_checkpoint(path, state)


def restore_training(state: dict, training: Training) -> None:
    """Load a state written by `save_training_state` into `training`, and the random state it was saved with."""
    training.network.load_state_dict(state["model_state"])
    if training.ema:
        training.ema.load_state_dict(state["ema_state"])
    if training.trained is not training.network:
        training.trained.heads.load_state_dict(state["auxiliary_heads_state"])
    training.optimizer.load_state_dict(state["optimizer_state"])
    training.scaler.load_state_dict(state["scaler_state"])
    torch.set_rng_state(state["rng_state"])


def restored_progress(state: dict, steps_per_epoch: int, device: torch.device) -> Progress:
    """The progress a state written by `save_training_state` was saved at."""
    global_step = (state["epoch"] - 1) * steps_per_epoch + state["step"]
    return Progress(
        state["epoch"],
        global_step,
        steps_per_epoch,
        state["step_losses"].to(device),
        state["history"],
        state["best_dice"],
        state["learning_rates"],
    )


RESUMABLE_KEYS = (
    "step", "step_losses", "history", "best_dice", "learning_rates", "optimizer_state", "scaler_state", "rng_state",
)  # fmt: skip


def load_training_state(path: Path) -> dict:
    """The training state saved in `path` by an earlier run, with a clear error when there is none to resume."""
    if not path.is_file():
        raise UserError(
            f"nothing to resume: {path} does not exist (a run writes it while training and when it ends or is"
            " stopped); start without --resume, or pass the --output-dir of the run to continue."
        )
    state = load_checkpoint(path)
    missing = [key for key in RESUMABLE_KEYS if key not in state]
    if missing:
        raise UserError(f"{path} is a model checkpoint, not a resumable training state (no {', '.join(missing)}).")
    require_fields(state, path, RUN_RECORD)
    return state


def read_run_config(path: Path) -> dict:
    """The settings a checkpoint of this repository records (its `config`); a UserError for any other file."""
    return load_checkpoint(path).get("config", {})


def describe_earlier_run(
    last_path: Path, checkpoint_path: Path, defaults: dict, config: dict, recipe_free: tuple[str, ...]
) -> str:
    """What the run that wrote `last_path` (or else `checkpoint_path`) is, and which way on fits this run: its
    recipe is `defaults` overridden by its saved settings, compared with `config` except for `recipe_free` names."""
    choices = "keep it by giving this run another --output-dir and --checkpoint-path, or replace it with --overwrite"
    path = last_path if last_path.is_file() else checkpoint_path
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        saved = {**defaults, **state["config"]}
        epoch, step, done = state["epoch"], state.get("step", 0), len(state.get("history", []))
        epochs, recipe = saved["EPOCHS"], ", ".join(saved.get("RECIPES", [])) or "the defaults"
    except Exception:  # an unreadable or foreign file: nothing to say about it, nor to resume
        return f"{path} is not a run of this script that can be resumed; {choices}."
    if path != last_path:
        return f"{path} holds the best model (epoch {epoch}) of a run of {recipe}, not resumable; {choices}."
    if done < epochs:
        what = f"a run of {recipe} stopped at epoch {epoch} step {step} ({done} of {epochs} epochs done)"
    else:
        what = f"a finished run of {recipe} ({epochs} epochs)"
    differs = [name for name in saved if name not in recipe_free and saved[name] != config.get(name, saved[name])]
    if differs:
        named = f"{', '.join(map(flag_name, differs[:3]))} differ{'s' * (len(differs) == 1)}"
        return f"{path} holds {what}, not this run's recipe ({named}); {choices}."
    way_on = (
        "continue it with --resume" if done < epochs else f"train it longer with --resume --epochs {epochs + 1} or more"
    )
    return f"{path} holds {what} with this run's recipe: {way_on}, or {choices}."


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite: the weights are spoilt, so nothing is saved from here on."""


def check_finite(progress: Progress, checkpoint_path: Path) -> None:
    """Stop on a NaN/inf loss, naming where it first appeared; checked once per epoch, not with a sync per step."""
    bad = (~torch.isfinite(progress.step_losses[: progress.epoch_step])).nonzero()
    if len(bad):
        raise NonFiniteLoss(
            f"the training loss became non-finite at epoch {progress.epoch}, step {int(bad[0]) + 1}; nothing from"
            f" this epoch was saved ({checkpoint_path} keeps the best earlier model)."
            " Try a lower --learning-rate or --no-mixed-precision."
        )
