"""Rank training recipes: train each recipe once per seed (and with FOLDS once per fold) with scripts/train.py,
PARALLEL runs at a time on one device, score each run's best checkpoint on its validation images (its carve-out, or
its fold) with scripts/evaluate.py (at each mask's full size, with and without TTA), and write the ranked table to
SWEEP_DIR/ranking.md and ranking.csv.

    python scripts/sweep.py configs/*.py                                   # each recipe once (seed 42), in turn
    python scripts/sweep.py configs/*.py --parallel 3 --seeds 42 43        # 3 runs at a time on the GPU
    python scripts/sweep.py configs/*.py --train-flags "--epochs 30"       # every run shorter
    python scripts/sweep.py configs/seed.py --seeds 42 43 --test           # a chosen recipe, on test too
    python scripts/sweep.py configs/*.py --folds 5 --parallel 5            # 5-fold cross-validation of each

Each run trains in SWEEP_DIR/<recipe>-seed<seed>/ (best.pth, last.pth, history.csv, summary.json, the evaluation
JSON and CSV files, run.log with everything its commands printed, and with --tensorboard its TensorBoard events in
tensorboard/, so that `tensorboard --logdir SWEEP_DIR` overlays the curves of every run); with FOLDS in
SWEEP_DIR/<recipe>-seed<seed>-folds<FOLDS>/fold<k>/, and evaluate.py and predict.py take the folder above the folds
as the ensemble of its folds. A failed run is reported in the table and the others go on; the exit status is then 1.
Ctrl-C or SIGTERM stops the running runs cleanly (each saves its state), writes the table of what finished and exits
130 or 143. Running the same command again continues: finished runs are not retrained (nor rescored), stopped ones
resume where they were saved; a run folder trained with another recipe
file content, seed or TRAIN_FLAGS (its recipe.json says which) is refused rather than reused. One sweep at a time
works in a SWEEP_DIR (a second is refused), and a run still going from an earlier sweep that was killed is reported
as such, never as failed.
"""

import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find common/, dataset/ and utils/ from anywhere

from common.config import parse_settings, recipe_constants, script_constant, script_constants
from common.errors import UserError, run_main
from common.files import exclusive_lock, lock_holder, writable_folder, write_csv_atomic, write_text_atomic
from common.signals import SignalForwarder
from dataset import kvasir
from dataset.loader import worker_count
from dataset.sources import KVASIR
from dataset.splits import check_folds
from utils.tensorboard_log import require_tensorboard

SWEEP_DIR = "outputs/sweep"  # one folder per run, and the ranking (ranking.md, ranking.csv, ranking_recipes.csv)
SEEDS = [42]  # every recipe is trained once per seed; the recipe table averages over them
FOLDS = 0  # 0: each run validates on train.py's VAL_FRACTION carve-out; N: once per fold of an N-fold partition
PARALLEL = 1  # runs at a time on DEVICE (one 31 M-parameter U-Net at batch 16 leaves most of an 80 GB GPU idle)
DATA_DIR = "data"  # Kvasir-SEG as train.py gets it; fetched once, before any run starts
DEVICE = "auto"  # every train.py and evaluate.py runs on it (a recipe's DEVICE too): auto | cpu | cuda | cuda:N
NUM_WORKERS = -1  # DataLoader workers per run; -1 shares the CPU cores: max(1, (CPU count - 1) // PARALLEL), <= 8
TRAIN_FLAGS = ""  # appended to every train.py command, e.g. "--epochs 150" (a lone flag: --train-flags=--no-cache)
TENSORBOARD = False  # each run writes TensorBoard events into RUN/tensorboard/ (train.py --tensorboard)
TEST = False  # also score every run on the held-out test split (with TTA): only for recipes already chosen on val

# ----------------------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT, EVALUATE_SCRIPT = REPO / "scripts" / "train.py", REPO / "scripts" / "evaluate.py"
# How each run is scored: evaluate.py with these flags writes RUN/<name>.json and RUN/<name>.csv
SCORES = {
    "val_tta": ("--split", "val", "--tta"),
    "val": ("--split", "val", "--no-tta"),
    "test_tta": ("--split", "test", "--tta"),
}
# train.py flags the sweep sets for each run, which TRAIN_FLAGS must not hold
SET_PER_RUN = ("--seed", "--output-dir", "--checkpoint-path", "--resume", "--overwrite", "--data-dir", "--device",
               "--num-workers", "--folds", "--fold", "--tensorboard")  # fmt: skip
HEADERS = {  # the Markdown header of each column of ranking.csv and ranking_recipes.csv that the tables show
    "rank": "rank", "recipe": "recipe", "runs": "runs done", "seed": "seed", "fold": "fold", "status": "status",
    "best_epoch": "best epoch", "val_tta_dice": "val Dice TTA", "val_tta_dice_std": "± std over {runs}",
    "val_tta_iou": "val IoU TTA", "val_dice": "val Dice", "val_iou": "val IoU",
    "val_dice_train_size": "val Dice at train size", "test_tta_dice": "test Dice TTA", "test_tta_iou": "test IoU TTA",
    "minutes": "train minutes", "images_per_second": "images/s", "note": "note",
}  # fmt: skip
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One command of a run, and the file it writes when it succeeds."""

    label: str
    command: list[str]
    writes: Path


@dataclass
class RecipeRun:
    """One recipe trained with one seed (and with FOLDS, on one fold) in its own folder, and where this sweep has got
    with it."""

    recipe: Path
    seed: int
    folder: Path
    fold: int | None = None  # None: validated on the VAL_FRACTION carve-out
    status: str = "pending"  # pending (not started) | running | done | failed | stopped | busy (another sweep's)
    note: str = ""
    started: float = 0.0  # time.monotonic() when this sweep started its first step
    step: Step | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.recipe.stem} seed {self.seed}" + ("" if self.fold is None else f" fold {self.fold}")

    @property
    def log(self) -> Path:
        return self.folder / "run.log"


# --- settings ----------------------------------------------------------------------------------------------------


def read_settings() -> dict:
    """The sweep's settings (the constants above, then flags), checked, with the recipes and seeds as given."""
    recipes = (("recipe_files",), dict(nargs="+", metavar="RECIPE", help="recipe files to rank (configs/*.py)"))
    config = parse_settings(script_constants(globals()), __file__, extra_flags=[recipes]).values
    try:
        config["SEEDS"] = list(dict.fromkeys(int(seed) for seed in config["SEEDS"]))
    except ValueError:
        raise UserError(f"SEEDS must be whole numbers, not {' '.join(map(str, config['SEEDS']))}.") from None
    if config["PARALLEL"] < 1 or config["NUM_WORKERS"] < -1:
        raise UserError("PARALLEL must be at least 1 and NUM_WORKERS at least -1 (-1 shares the CPU cores).")
    check_folds(config["FOLDS"], 0)
    config["TRAIN_FLAGS"] = train_flags(config["TRAIN_FLAGS"])
    if config["TENSORBOARD"]:
        require_tensorboard()  # once, rather than every run failing on it
    return config


def train_flags(text: str) -> list[str]:
    """TRAIN_FLAGS split as a shell would, refusing the flags the sweep sets itself for each run."""
    try:
        flags = shlex.split(text)
    except ValueError as error:
        raise UserError(f"TRAIN_FLAGS {text!r} cannot be split into flags: {error}.") from None
    clashes = [flag for flag in flags if flag.split("=")[0] in SET_PER_RUN]
    if clashes:
        raise UserError(
            f"TRAIN_FLAGS may not hold {', '.join(clashes)}: the sweep sets it for each run"
            " (use the sweep's --seeds, --folds, --sweep-dir, --data-dir, --device, --num-workers or --tensorboard)."
        )
    return flags


def workers_per_run(config: dict) -> int:
    """NUM_WORKERS, or for -1 the CPU cores but one (for the main processes) shared among the PARALLEL runs."""
    return worker_count(config["NUM_WORKERS"], config["PARALLEL"], at_least=1)


def plan_runs(config: dict) -> list[RecipeRun]:
    """One run per recipe and seed, in SWEEP_DIR/<recipe stem>-seed<seed>/, or with FOLDS per recipe, seed and fold,
    in SWEEP_DIR/<recipe stem>-seed<seed>-folds<FOLDS>/fold<k>/ (another FOLDS never reuses a fold trained for
    another partition); refuses missing or same-named recipes."""
    recipes = [Path(recipe) for recipe in config["recipe_files"]]
    for recipe in recipes:
        if not recipe.is_file():
            raise UserError(f"recipe file {recipe} not found (recipes live in configs/, e.g. configs/seed.py).")
    stems = [recipe.stem for recipe in recipes]
    if len(set(stems)) < len(stems):
        raise UserError(f"two recipes share a file name ({', '.join(map(str, recipes))}); their runs would collide.")
    sweep_dir = writable_folder(config["SWEEP_DIR"], "SWEEP_DIR")
    if not config["FOLDS"]:
        return [
            RecipeRun(recipe, seed, sweep_dir / f"{recipe.stem}-seed{seed}")
            for recipe in recipes
            for seed in config["SEEDS"]
        ]
    return [
        RecipeRun(recipe, seed, sweep_dir / f"{recipe.stem}-seed{seed}-folds{config['FOLDS']}" / f"fold{fold}", fold)
        for recipe in recipes
        for seed in config["SEEDS"]
        for fold in range(config["FOLDS"])
    ]


# --- what each run was trained with -----------------------------------------------------------------------------


def run_fingerprint(run: RecipeRun, config: dict) -> dict:
    """What a run's scores depend on besides the code: its recipe file's content, its seed and TRAIN_FLAGS."""
    return {
        "recipe": run.recipe.name,
        "recipe_sha256": hashlib.sha256(run.recipe.read_bytes()).hexdigest(),
        "seed": run.seed,
        "train_flags": config["TRAIN_FLAGS"],
    }


def fingerprint_path(run: RecipeRun) -> Path:
    return run.folder / "recipe.json"


def fingerprint_mismatch(run: RecipeRun, config: dict) -> str | None:
    """Why the run's folder holds results of another recipe, seed or TRAIN_FLAGS than this sweep's (None when it
    holds none, or those of the same)."""
    if not any((run.folder / name).is_file() for name in ("summary.json", "last.pth", "best.pth")):
        return None
    path, wanted = fingerprint_path(run), run_fingerprint(run, config)
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"{run.folder} holds a run with no readable record of its recipe ({path.name})"
    if not isinstance(recorded, dict):
        return f"{run.folder} holds a run with no readable record of its recipe ({path.name})"
    if recorded.get("recipe_sha256") != wanted["recipe_sha256"]:
        return f"{run.folder} was trained with another content of {run.recipe.name} (the file was edited since)"
    if recorded.get("train_flags") != wanted["train_flags"] or recorded.get("seed") != wanted["seed"]:
        return (
            f"{run.folder} was trained with --train-flags {shlex.join(recorded.get('train_flags') or [])!r} and seed"
            f" {recorded.get('seed')}, not {shlex.join(wanted['train_flags'])!r} and seed {wanted['seed']}"
        )
    return None


def refuse_foreign_runs(runs: list[RecipeRun], config: dict) -> None:
    """Refuse, before any work, run folders that hold another recipe's results: reusing their scores would rank a
    recipe that was not trained; retraining silently would destroy them."""
    problems = [problem for run in runs if (problem := fingerprint_mismatch(run, config))]
    if problems:
        more = f" (and {len(problems) - 1} more run folders)" if len(problems) > 1 else ""
        raise UserError(
            f"{problems[0]}{more}; its scores are not this sweep's. Give this sweep another --sweep-dir, or delete"
            " that folder to train it again."
        )


def uses_kvasir(run: RecipeRun, config: dict) -> bool:
    """Whether the run trains on Kvasir-SEG: the last --datasets of TRAIN_FLAGS, else its recipe's DATASETS, else
    train.py's default."""
    flags, datasets = config["TRAIN_FLAGS"], None
    for index, flag in enumerate(flags):
        name, equals, value = flag.partition("=")
        if name == "--datasets":
            rest = itertools.takewhile(lambda item: not item.startswith("-"), flags[index + 1 :])
            datasets = [value] if equals else list(rest)
    if datasets is None:
        recipe = {name: value for name, value, _ in recipe_constants(run.recipe)}
        datasets = recipe.get("DATASETS", script_constant(TRAIN_SCRIPT, "DATASETS"))
    return any(str(dataset).lower() == KVASIR for dataset in datasets)


# --- what a run still needs, judged from its files -----------------------------------------------------------------


def score_names(config: dict) -> list[str]:
    """The evaluations every run gets: validation with and without TTA, and with TEST the test split with TTA."""
    return [name for name in SCORES if config["TEST"] or not name.startswith("test")]


def next_step(run: RecipeRun, config: dict) -> Step | None:
    """Train (or resume) until summary.json exists, then each missing evaluation; None when the run is complete."""
    summary = run.folder / "summary.json"
    if not summary.is_file():
        resume = (run.folder / "last.pth").is_file()
        return Step("resuming" if resume else "training", train_command(run, config, resume), summary)
    for name in score_names(config):
        report = run.folder / f"{name}.json"
        if not report.is_file():
            return Step(f"scoring {name}", evaluate_command(run, name, config), report)
    return None


def train_command(run: RecipeRun, config: dict, resume: bool) -> list[str]:
    """train.py on the run's recipe and seed, writing into its folder; a new run replaces any unfinished files."""
    return [
        sys.executable, str(TRAIN_SCRIPT), str(run.recipe), "--seed", str(run.seed), "--output-dir", str(run.folder),
        "--checkpoint-path", str(run.folder / "best.pth"), "--data-dir", config["DATA_DIR"],
        "--device", config["DEVICE"], "--num-workers", str(workers_per_run(config)), "--no-show-panels",
        "--resume" if resume else "--overwrite", *(["--tensorboard"] if config["TENSORBOARD"] else []),
        *(["--folds", str(config["FOLDS"]), "--fold", str(run.fold)] if run.fold is not None else []),
        *config["TRAIN_FLAGS"],
    ]  # fmt: skip


def evaluate_command(run: RecipeRun, name: str, config: dict) -> list[str]:
    """evaluate.py on the run's best checkpoint, as SCORES[name] says, writing RUN/<name>.json and .csv."""
    return [
        sys.executable, str(EVALUATE_SCRIPT), "--checkpoint", str(run.folder / "best.pth"), *SCORES[name],
        "--data-dir", config["DATA_DIR"], "--device", config["DEVICE"],
        "--json", str(run.folder / f"{name}.json"), "--csv", str(run.folder / f"{name}.csv"),
    ]  # fmt: skip


# --- running the steps -----------------------------------------------------------------------------------------------


def say(message: str) -> None:
    """One timestamped line of the sweep's progress."""
    print(f"{time.strftime('%H:%M:%S')}  {message}", flush=True)


def child_environment(config: dict) -> dict:
    """The sweep's environment with unbuffered output (so the logs stay current) and, unless OMP_NUM_THREADS is
    set, PyTorch's CPU threads shared among the PARALLEL runs: oversubscribed threads slow every run down many times."""
    threads = str(max(1, (os.cpu_count() or 1) // config["PARALLEL"]))
    return {"OMP_NUM_THREADS": threads, **os.environ, "PYTHONUNBUFFERED": "1"}


def start(run: RecipeRun, step: Step, config: dict) -> None:
    """Start `step` with its output appended to the run's log, in its own process group, so that a Ctrl-C at the
    terminal reaches only the sweep, which forwards it once."""
    run.folder.mkdir(parents=True, exist_ok=True)
    with open(run.log, "a") as log:
        log.write(f"\n$ {shlex.join(step.command)}\n")
        log.flush()
        run.process = subprocess.Popen(
            step.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, process_group=0,
            env=child_environment(config),
        )  # fmt: skip
    run.step, run.status = step, "running"


def finish(run: RecipeRun, status: str, note: str = "") -> None:
    """Settle the run's status for this sweep and print it."""
    run.status, run.note, run.process = status, note, None
    minutes = (time.monotonic() - run.started) / 60
    say(f"{run.name}: {status} after {minutes:.1f} min" + (f": {note}" if note else ""))


def advance(run: RecipeRun, config: dict, stopping: bool) -> bool:
    """Start the run's next step (True); or, when it has none left or the sweep is stopping, settle it (False)."""
    run.started = run.started or time.monotonic()
    step = next_step(run, config)
    if step is None:
        finish(run, "done")
        return False
    if stopping:
        finish(run, "stopped", f"{step.label} left; run the sweep again to continue")
        return False
    holder = lock_holder(run.folder / "train.lock")
    if holder is not None:
        finish(
            run, "busy", f"still training in process {holder}, which an earlier sweep started (was it killed?); wait"
            f" for it to end, or stop it (kill {holder}), then run the sweep again",
        )  # fmt: skip
        return False
    if run.status == "pending":
        say(f"{run.name}: {step.label} {run.recipe} (log {run.log})")
    if step.command[1] == str(TRAIN_SCRIPT):
        write_text_atomic(fingerprint_path(run), json.dumps(run_fingerprint(run, config), indent=2) + "\n")
    start(run, step, config)
    return True


def last_line(log: Path) -> str:
    """The last line of a log that is neither blank nor a progress bar (tqdm's carriage-return updates)."""
    with open(log, "rb") as file:
        file.seek(max(0, log.stat().st_size - 4096))
        lines = [line.strip() for line in re.split(r"[\r\n]", file.read().decode(errors="replace"))]
    return [line for line in lines if line and not re.search(r"\d+%\|", line)][-1]


def step_ended(run: RecipeRun, config: dict, stopping: bool) -> bool:
    """After the run's current process exited: go on to its next step (True), or settle it as failed or stopped."""
    status = run.process.returncode
    if status == 0 and run.step.writes.is_file():
        return advance(run, config, stopping)
    if stopping:
        finish(run, "stopped", f"{run.step.label} stopped; run the sweep again to continue")
    else:
        how = f"was killed by {signal.Signals(-status).name}" if status < 0 else f"exited {status}"
        reason = last_line(run.log) if status else f"wrote no {run.step.writes.name}"
        finish(run, "failed", f"{run.step.label} {how}: {reason}")
    return False


def work_through(runs: list[RecipeRun], config: dict, signals: SignalForwarder) -> None:
    """Run the steps of every unfinished run, PARALLEL runs at a time, until each has settled or a signal came."""
    waiting = [run for run in runs if run.status == "pending"]
    active = []
    while active or (waiting and not signals.received):
        signals.forward([run.process for run in active], say)
        while waiting and len(active) < config["PARALLEL"] and not signals.received:
            run = waiting.pop(0)
            if advance(run, config, stopping=False):
                active.append(run)
        time.sleep(0.2)  # how often the sweep looks at its processes
        for run in [run for run in active if run.process.poll() is not None]:
            if not step_ended(run, config, stopping=bool(signals.received)):
                active.remove(run)
    for run in waiting:
        run.note = "not started; run the sweep again to continue"


# --- the ranking ------------------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} when the file is not there."""
    return json.loads(path.read_text()) if path.is_file() else {}


def run_row(run: RecipeRun, config: dict) -> dict:
    """One line of ranking.csv: the run's summary.json and evaluation JSONs, blank where missing."""
    summary = read_json(run.folder / "summary.json")
    row = {"rank": None, "recipe": run.recipe.stem, "seed": run.seed}
    row.update({"fold": run.fold} if run.fold is not None else {})
    row["status"] = run.status
    row["best_epoch"] = summary.get("best_epoch")
    for name in score_names(config):
        mean = read_json(run.folder / f"{name}.json").get("summary", {}).get("mean", {})
        row.update({f"{name}_dice": mean.get("dice"), f"{name}_iou": mean.get("iou")})
    row["val_dice_train_size"] = summary.get("best_val_dice")
    row["minutes"] = round(summary["wall_seconds"] / 60, 2) if summary else None
    row["images_per_second"] = summary.get("images_per_second")
    row.update(note=run.note, folder=str(run.folder))
    return row


def recipe_row(recipe: str, rows: list[dict]) -> dict:
    """One line of ranking_recipes.csv: the mean of each number over the recipe's completed runs (each seed, or
    each seed and fold), and the sample standard deviation of val Dice with TTA over them."""
    done = [row for row in rows if row["status"] == "done"]
    mean = {"rank": None, "recipe": recipe, "runs": f"{len(done)}/{len(rows)}"}
    for key in [key for key in rows[0] if key not in ("rank", "recipe", "seed", "fold", "status", "note", "folder")]:
        mean[key] = statistics.fmean([row[key] for row in done]) if done else None
        if key == "val_tta_dice":
            mean[f"{key}_std"] = statistics.stdev([row[key] for row in done]) if len(done) > 1 else None
    return mean


def ranked(rows: list[dict]) -> list[dict]:
    """`rows` best first by full-size val Dice with TTA, numbered; rows without that score last, unranked."""
    rows = sorted(rows, key=lambda row: (row["val_tta_dice"] is None, -(row["val_tta_dice"] or 0.0)))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank if row["val_tta_dice"] is not None else None
    return rows


def averaged_over(config: dict) -> str:
    """What a recipe's mean and spread are taken over: seeds, folds, or both."""
    seeds = len(config["SEEDS"]) > 1 or not config["FOLDS"]
    return " and ".join(["seeds"] * seeds + ["folds"] * bool(config["FOLDS"]))


def markdown_table(rows: list[dict], runs: str) -> str:
    """`rows` as a Markdown table of the columns HEADERS names (numbers rounded for reading); `runs` says what the
    recipe spread is over."""
    columns = [key for key in HEADERS if key in rows[0]]

    def cell(key: str, value) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.1f}" if key in ("best_epoch", "minutes", "images_per_second") else f"{value:.4f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(HEADERS[key].format(runs=runs) for key in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(key, row[key]) for key in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_ranking(runs: list[RecipeRun], config: dict) -> str:
    """Write ranking.csv (one row per run), ranking_recipes.csv (the mean per recipe) and ranking.md (both tables);
    return the Markdown."""
    rows = ranked([run_row(run, config) for run in runs])
    by_recipe = {}
    for row in rows:
        by_recipe.setdefault(row["recipe"], []).append(row)
    recipes = ranked([recipe_row(recipe, group) for recipe, group in by_recipe.items()])
    sweep_dir = Path(config["SWEEP_DIR"])
    write_csv_atomic(sweep_dir / "ranking.csv", rows)
    write_csv_atomic(sweep_dir / "ranking_recipes.csv", recipes)
    test_note = " Test: the held-out test split with TTA, never used to rank." if config["TEST"] else ""
    over = averaged_over(config)
    folds_note = (
        f" Each run validates on its own fold of a {config['FOLDS']}-fold partition." if config["FOLDS"] else ""
    )
    markdown = "\n".join([
        f"# Recipe ranking: {len(runs)} runs in {sweep_dir}",
        "",
        "Val Dice / IoU: per-image mean on each run's validation images at each mask's full size, by"
        " scripts/evaluate.py, with TTA (flips averaged) and without; val Dice at train size: train.py's best epoch"
        f" at IMAGE_SIZE; train minutes and images/s: train.py's summary.json, end to end.{folds_note}{test_note}",
        "",
        "## Runs, ranked by full-size val Dice with TTA",
        "",
        markdown_table(rows, over),
        "",
        f"## Recipes: mean over {over} of the completed runs, ranked by mean full-size val Dice with TTA",
        "",
        markdown_table(recipes, over),
        "",
    ])  # fmt: skip
    write_text_atomic(sweep_dir / "ranking.md", markdown)
    return markdown


def main() -> int:
    config = read_settings()
    runs = plan_runs(config)
    sweep_lock = Path(config["SWEEP_DIR"]) / "sweep.lock"
    with exclusive_lock(sweep_lock, config["SWEEP_DIR"], advice="give this sweep another --sweep-dir"):
        refuse_foreign_runs(runs, config)
        if any(uses_kvasir(run, config) for run in runs):
            kvasir.prepare_kvasir_seg(config["DATA_DIR"])  # once, so that concurrent runs never download or extract it
        for run in runs:
            if next_step(run, config) is None:
                run.status = "done"
                say(f"{run.name}: done earlier, its scores are reused (same recipe file, seed and TRAIN_FLAGS)")
        with SignalForwarder() as signals:
            work_through(runs, config, signals)
            markdown = write_ranking(runs, config)
    print(f"\n{markdown}\nwritten to {Path(config['SWEEP_DIR']) / 'ranking.md'}, ranking.csv and ranking_recipes.csv")
    if signals.received:
        return signals.exit_status
    return 1 if any(run.status == "failed" for run in runs) else 0


if __name__ == "__main__":
    run_main(main)
