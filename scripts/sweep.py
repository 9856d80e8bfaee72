"""Rank training recipes: train each recipe once per seed (and with FOLDS once per fold) with scripts/train.py,
score each run's best checkpoint on its validation images (its carve-out, or its fold) with scripts/evaluate.py
(at each mask's full size, with and without TTA), and write the ranked table to SWEEP_DIR/ranking.md and
ranking.csv. Each run (its training, then its scoring) is one submitit job: on this machine (EXECUTOR local,
PARALLEL at a time, each on its own GPU when there are several), on a SLURM cluster (EXECUTOR slurm, one job
array), or inside this process (EXECUTOR debug, one at a time, for a debugger).

    python scripts/sweep.py configs/*.py                                   # each recipe once (seed 42), in turn
    python scripts/sweep.py configs/*.py --parallel 3 --seeds 42 43        # 3 runs at a time on this machine
    python scripts/sweep.py configs/*.py --train-flags "--epochs 30"       # every run shorter
    python scripts/sweep.py configs/seed.py --seeds 42 43 --test           # a chosen recipe, on test too
    python scripts/sweep.py configs/*.py --folds 5 --parallel 5            # 5-fold cross-validation of each
    python scripts/sweep.py configs/*.py --folds 5 --executor slurm --slurm-partition gpu --parallel 10

Each run trains in SWEEP_DIR/<recipe>-seed<seed>/ (best.pth, last.pth, history.csv, summary.json, the evaluation
JSON and CSV files, run.log with everything its commands printed, and with --tensorboard its TensorBoard events in
tensorboard/, so that `tensorboard --logdir SWEEP_DIR` overlays the curves of every run); with FOLDS in
SWEEP_DIR/<recipe>-seed<seed>-folds<FOLDS>/fold<k>/, and evaluate.py and predict.py take the folder above the folds
as the ensemble of its folds. submitit's job files and logs go to JOBS_DIR/<start time>/. A failed run is reported
in the table and the others go on; the exit status is then 1. Ctrl-C or SIGTERM stops the running runs cleanly
(each saves its state), writes the table of what finished and exits 130 or 143. Running the same command again
continues: finished runs are not retrained (nor rescored), stopped ones resume where they were saved; a run folder
trained with another recipe file content, seed, TRAIN_FLAGS or data (its recipe.json says which) is refused rather
than reused. One sweep at a time works in a SWEEP_DIR (a second is refused), and a run still going from an earlier
sweep that was killed is reported as such, never as failed.
"""

import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # find common/, dataset/ and utils/ from anywhere

from common.config import parse_settings, recipe_constants, script_constant, script_constants
from common.errors import UserError, run_main
from common.files import exclusive_lock, lock_holder, writable_folder, write_csv_atomic, write_text_atomic
from common.signals import SIGNALS, SignalForwarder
from dataset import kvasir
from dataset.loader import worker_count
from dataset.sources import KVASIR, parse_source
from dataset.splits import check_folds
from utils.tensorboard_log import require_tensorboard

SWEEP_DIR = "outputs/sweep"  # one folder per run, and the ranking (ranking.md, ranking.csv, ranking_recipes.csv)
SEEDS = [42]  # every recipe is trained once per seed; the recipe table averages over them
FOLDS = 0  # 0: each run validates on train.py's VAL_FRACTION carve-out; N: once per fold of an N-fold partition
PARALLEL = 1  # runs at a time, local or SLURM (one 31 M-parameter U-Net at batch 16 leaves most of an 80 GB GPU idle)
DATA_DIR = "data"  # Kvasir-SEG as train.py gets it; fetched once, before any run starts
DEVICE = "auto"  # every train.py and evaluate.py runs on it (a recipe's DEVICE too): auto | cpu | cuda | cuda:N
NUM_WORKERS = -1  # DataLoader workers per run; -1 shares the CPU cores: max(1, (CPU count - 1) // PARALLEL), <= 8
TRAIN_FLAGS = ""  # appended to every train.py command, e.g. "--epochs 150" (a lone flag: --train-flags=--no-cache)
TENSORBOARD = False  # each run writes TensorBoard events into RUN/tensorboard/ (train.py --tensorboard)
TEST = False  # also score every run on the held-out test split (with TTA): only for recipes already chosen on val
EXECUTOR = "local"  # where runs go, through submitit: local (this machine) | slurm (a cluster) | debug (in-process)
JOBS_DIR = ""  # submitit's job files and logs, a folder per sweep started; "" for SWEEP_DIR/jobs (SLURM: a shared disk)
# SLURM (EXECUTOR slurm): every run is one task of one job array, PARALLEL of them running at a time
SLURM_PARTITION = ""  # sbatch --partition ("" for the cluster's default)
SLURM_TIME = 1440  # minutes a run (training and scoring) may take; SLURM stops it then, and a re-run resumes it
SLURM_GPUS = 1  # GPUs per run (sbatch --gpus-per-node)
SLURM_CPUS = 8  # CPU cores per run (sbatch --cpus-per-task), shared by its DataLoader workers and PyTorch threads
SLURM_SETUP = []  # shell lines each job runs first, e.g. "module load cuda" "source .venv/bin/activate"

# ----------------------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT, EVALUATE_SCRIPT = REPO / "scripts" / "train.py", REPO / "scripts" / "evaluate.py"
EXECUTORS = {"local": submitit.LocalExecutor, "slurm": submitit.SlurmExecutor, "debug": submitit.DebugExecutor}
# How each run is scored: evaluate.py with these flags writes RUN/<name>.json and RUN/<name>.csv
SCORES = {
    "val_tta": ("--split", "val", "--tta"),
    "val": ("--split", "val", "--no-tta"),
    "test_tta": ("--split", "test", "--tta"),
}
# train.py flags the sweep sets for each run, which TRAIN_FLAGS must not hold, nor abbreviate (argparse reads
# "--see 7" as "--seed 7")
SET_PER_RUN = ("--seed", "--output-dir", "--checkpoint-path", "--resume", "--overwrite", "--data-dir", "--device",
               "--num-workers", "--folds", "--fold", "--tensorboard", "--no-tensorboard")  # fmt: skip
JOB_LOCK, STOP_FILE = "job.lock", "stop.signals"  # in a run's folder: held by its job; the sweep's stop requests
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


@dataclass(eq=False)
class RecipeRun:
    """One recipe trained with one seed (and with FOLDS, on one fold) in its own folder, and where this sweep has got
    with it."""

    recipe: Path
    seed: int
    folder: Path
    fold: int | None = None  # None: validated on the VAL_FRACTION carve-out
    status: str = "pending"  # pending (not started) | running | done | failed | stopped | busy (another sweep's)
    note: str = ""
    started: float = 0.0  # time.monotonic() when this sweep submitted its job

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
    choices = {"EXECUTOR": list(EXECUTORS)}
    config = parse_settings(script_constants(globals()), __file__, choices=choices, extra_flags=[recipes]).values
    try:
        config["SEEDS"] = list(dict.fromkeys(int(seed) for seed in config["SEEDS"]))
    except ValueError:
        raise UserError(f"SEEDS must be whole numbers, not {' '.join(map(str, config['SEEDS']))}.") from None
    if config["PARALLEL"] < 1 or config["NUM_WORKERS"] < -1:
        raise UserError("PARALLEL must be at least 1 and NUM_WORKERS at least -1 (-1 shares the CPU cores).")
    check_folds(config["FOLDS"], 0)
    config["TRAIN_FLAGS"] = train_flags(config["TRAIN_FLAGS"])
    check_executor(config)
    if config["TENSORBOARD"]:
        require_tensorboard()  # once, rather than every run failing on it
    return config


def train_flags(text: str) -> list[str]:
    """TRAIN_FLAGS split as a shell would, refusing the flags the sweep sets itself for each run, and their
    abbreviations, which train.py's argparse would read as them."""
    try:
        flags = shlex.split(text)
    except ValueError as error:
        raise UserError(f"TRAIN_FLAGS {text!r} cannot be split into flags: {error}.") from None
    clashes = []
    for flag in [flag for flag in flags if flag.startswith("--")]:
        name = flag.split("=")[0]
        meant = [per_run for per_run in SET_PER_RUN if per_run.startswith(name)]
        if meant:
            clashes.append(flag if name in meant else f"{flag} (argparse reads it as {' or '.join(meant)})")
    if clashes:
        raise UserError(
            f"TRAIN_FLAGS may not hold {', '.join(clashes)}: the sweep sets it for each run"
            " (use the sweep's --seeds, --folds, --sweep-dir, --data-dir, --device, --num-workers or --tensorboard)."
        )
    return flags


def check_executor(config: dict) -> None:
    """Refuse an unknown EXECUTOR, SLURM settings that cannot be, and EXECUTOR slurm where there is no SLURM."""
    if config["EXECUTOR"] not in EXECUTORS:
        raise UserError(f"EXECUTOR must be one of {', '.join(EXECUTORS)}, not {config['EXECUTOR']!r}.")
    if config["SLURM_TIME"] < 1 or config["SLURM_CPUS"] < 1 or config["SLURM_GPUS"] < 0:
        raise UserError("SLURM_TIME (minutes) and SLURM_CPUS must be at least 1, SLURM_GPUS at least 0.")
    if config["EXECUTOR"] == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise UserError(
            "EXECUTOR slurm needs SLURM's sbatch and srun, which are not on this machine's PATH; run the sweep on"
            " the cluster's login node, or use --executor local."
        )


def runs_at_once(config: dict) -> int:
    """How many runs share this machine's CPU cores: PARALLEL local processes, one debug run, none under SLURM."""
    return {"local": config["PARALLEL"], "debug": 1}.get(config["EXECUTOR"], 0)


def workers_per_run(config: dict) -> int:
    """NUM_WORKERS, or for -1 the CPU cores but one (for the main process) shared among the runs at once on this
    machine, or under SLURM those of the run's own SLURM_CPUS."""
    if runs_at_once(config):
        return worker_count(config["NUM_WORKERS"], runs_at_once(config), at_least=1)
    return config["NUM_WORKERS"] if config["NUM_WORKERS"] >= 0 else min(8, max(1, config["SLURM_CPUS"] - 1))


def job_environment(config: dict, gpu: str | None = None) -> dict[str, str | None]:
    """What each job changes in its environment for its commands (None: unset): unbuffered output (so that the logs
    stay current); unless OMP_NUM_THREADS is set, PyTorch's CPU threads shared among the runs at once (oversubscribed
    threads slow every run down many times); on this machine the sweep's CUDA_VISIBLE_DEVICES, which submitit's local
    executor empties, or the one GPU `gpu` the job is pinned to."""
    cores = (os.cpu_count() or 1) // runs_at_once(config) if runs_at_once(config) else config["SLURM_CPUS"]
    environment = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, cores))), "PYTHONUNBUFFERED": "1"}
    if config["EXECUTOR"] != "slurm":  # SLURM sets CUDA_VISIBLE_DEVICES to the job's own GPUs
        environment["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    return environment


def pinned_gpus(config: dict) -> list[str]:
    """The GPUs that local runs take one each, in turn, when there are several for PARALLEL > 1 runs on DEVICE auto
    or cuda (the sweep's CUDA_VISIBLE_DEVICES, else every GPU); none otherwise, which leaves the device as it is."""
    if config["EXECUTOR"] != "local" or config["PARALLEL"] < 2 or config["DEVICE"] not in ("auto", "cuda"):
        return []
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        gpus = [gpu.strip() for gpu in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    else:
        import torch  # only here: the sweep itself never needs it

        gpus = [str(index) for index in range(torch.cuda.device_count())]
    return gpus if len(gpus) > 1 else []


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


def run_datasets(run: RecipeRun, config: dict) -> list[str]:
    """The dataset specs the run trains on: the last --datasets of TRAIN_FLAGS, else its recipe's DATASETS, else
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
    return [str(dataset) for dataset in datasets]


def uses_kvasir(run: RecipeRun, config: dict) -> bool:
    """Whether the run trains on Kvasir-SEG."""
    return any(dataset.lower() == KVASIR for dataset in run_datasets(run, config))


def data_digest(spec: str, data_dir: str) -> str:
    """A cheap digest of a dataset's files: the name and size of each file of its images and masks folders (and of
    its test-id list), so that another --data-dir or an edited dataset is told apart from the data a run was trained
    on without reading any image. Modification times are left out: extracting the same zip again changes them."""
    if spec.lower() == KVASIR:
        root = Path(data_dir) / kvasir.FOLDER_NAME
        folders, files = [root / "images", root / "masks"], []
    else:
        source = parse_source(spec)
        folders, files = [Path(source.images), Path(source.masks)], [Path(source.test_list)] * bool(source.test_list)
    listing = [
        f"{path.relative_to(folder.parent)}\t{path.stat().st_size}"
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ] + [f"{path.name}\t{hashlib.sha256(path.read_bytes()).hexdigest()}" for path in files]
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()


def run_fingerprint(run: RecipeRun, config: dict, digests: dict[str, str]) -> dict:
    """What a run's scores depend on besides the code: its recipe file's content, its seed, TRAIN_FLAGS and its data
    (each dataset spec and the digest of its files, `digests` by spec)."""
    return {
        "recipe": run.recipe.name,
        "recipe_sha256": hashlib.sha256(run.recipe.read_bytes()).hexdigest(),
        "seed": run.seed,
        "train_flags": config["TRAIN_FLAGS"],
        "data": {spec: digests[spec] for spec in run_datasets(run, config)},
    }


def data_digests(runs: list[RecipeRun], config: dict) -> dict[str, str]:
    """The digest of each dataset some run trains on, by spec (each computed once)."""
    specs = dict.fromkeys(spec for run in runs for spec in run_datasets(run, config))
    return {spec: data_digest(spec, config["DATA_DIR"]) for spec in specs}


def fingerprint_path(run: RecipeRun) -> Path:
    return run.folder / "recipe.json"


def fingerprint_mismatch(run: RecipeRun, config: dict, digests: dict[str, str]) -> str | None:
    """Why the run's folder holds results of another recipe, seed, TRAIN_FLAGS or data than this sweep's (None when
    it holds none, or those of the same)."""
    if not any((run.folder / name).is_file() for name in ("summary.json", "last.pth", "best.pth")):
        return None
    path, wanted = fingerprint_path(run), run_fingerprint(run, config, digests)
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = None
    if not isinstance(recorded, dict):
        return f"{run.folder} holds a run with no readable record of its recipe ({path.name})"
    if recorded.get("recipe_sha256") != wanted["recipe_sha256"]:
        return f"{run.folder} was trained with another content of {run.recipe.name} (the file was edited since)"
    if recorded.get("train_flags") != wanted["train_flags"] or recorded.get("seed") != wanted["seed"]:
        return (
            f"{run.folder} was trained with --train-flags {shlex.join(recorded.get('train_flags') or [])!r} and seed"
            f" {recorded.get('seed')}, not {shlex.join(wanted['train_flags'])!r} and seed {wanted['seed']}"
        )
    if recorded.get("data") != wanted["data"]:
        return (
            f"{run.folder} was trained on other data than {', '.join(wanted['data'])} in this sweep's --data-dir (the"
            " files of its images and masks differ, or its record predates data fingerprints)"
        )
    return None


def refuse_foreign_runs(runs: list[RecipeRun], config: dict, digests: dict[str, str]) -> None:
    """Refuse, before any work, run folders that hold another recipe's results: reusing their scores would rank a
    recipe that was not trained; retraining silently would destroy them."""
    problems = [problem for run in runs if (problem := fingerprint_mismatch(run, config, digests))]
    if problems:
        more = f" (and {len(problems) - 1} more run folders)" if len(problems) > 1 else ""
        raise UserError(
            f"{problems[0]}{more}; its scores are not this sweep's. Give this sweep another --sweep-dir, or delete"
            " that folder to train it again."
        )


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


# --- inside a job: a run's steps, one process after another -----------------------------------------------------------


def run_job(run: RecipeRun, config: dict, environment: dict[str, str | None], sweep_pid: int) -> dict:
    """A submitit job: the run's remaining steps in turn (train or resume, then each missing evaluation), each a
    process whose output is appended to the run's log. Holds the run's JOB_LOCK throughout, so that a re-run of a
    killed sweep sees the run still going. Returns how the run ended, {"status": done | failed | stopped, "note"};
    never raises (submitit's debug executor would open a debugger)."""
    try:
        with exclusive_lock(run.folder / JOB_LOCK, run.folder, "stop it"), SignalForwarder() as signals:
            outcome = run_steps(run, config, environment, signals)
    except UserError as error:  # JOB_LOCK is held: another job of this run is going
        return {"status": "busy", "note": str(error)}
    except OSError as error:
        return {"status": "failed", "note": f"{error.strerror or error}: {error.filename or run.folder}"}
    if os.getpid() == sweep_pid:  # the debug executor's job: its signals were the sweep's, which stops too
        for number in signals.received:
            signal.raise_signal(number)
    return outcome


def run_steps(run: RecipeRun, config: dict, environment: dict, signals: SignalForwarder) -> dict:
    """The steps of run_job, each passed every stop request (a signal to the job, or one the sweep wrote into the
    run's STOP_FILE) once; the run stops after the step that got one."""
    while (step := next_step(run, config)) is not None:
        if stop_requests(run, signals):
            return {"status": "stopped", "note": f"{step.label} left; run the sweep again to continue"}
        with open(run.log, "a") as log:
            log.write(f"\n$ {shlex.join(step.command)}\n")
            log.flush()
            process = subprocess.Popen(  # its own process group: a terminal's Ctrl-C reaches only the sweep
                step.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, process_group=0,
                env=merged_environment(environment), preexec_fn=unblock_signals,
            )  # fmt: skip
        forwarded = 0
        while process.poll() is None:
            requests = stop_requests(run, signals)
            for number in requests[forwarded:]:
                process.send_signal(number)
            forwarded = len(requests)
            time.sleep(0.2)  # how often a job looks at its step's process and at the stop requests
        if process.returncode == 0 and step.writes.is_file():
            continue
        if forwarded:
            return {"status": "stopped", "note": f"{step.label} stopped; run the sweep again to continue"}
        code = process.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
        reason = last_line(run.log) if code else f"wrote no {step.writes.name}"
        return {"status": "failed", "note": f"{step.label} {how}: {reason}"}
    return {"status": "done", "note": ""}


def merged_environment(changes: dict[str, str | None]) -> dict[str, str]:
    """This process's environment with `changes` (None: unset)."""
    environment = dict(os.environ)
    for name, value in changes.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return environment


def unblock_signals() -> None:
    """In a step's process before it starts: take the signals the sweep blocked while it started the job back."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def stop_requests(run: RecipeRun, signals: SignalForwarder) -> list[int]:
    """The stop signals this job got: those sent to its process, then those the sweep wrote into STOP_FILE."""
    try:
        written = [signal.Signals[name].value for name in (run.folder / STOP_FILE).read_text().split()]
    except FileNotFoundError:
        written = []
    return signals.received + written


def last_line(log: Path) -> str:
    """The last line of a log that is neither blank nor a progress bar (tqdm's carriage-return updates)."""
    with open(log, "rb") as file:
        file.seek(max(0, log.stat().st_size - 4096))
        lines = [line.strip() for line in re.split(r"[\r\n]", file.read().decode(errors="replace"))]
    return [line for line in lines if line and not re.search(r"\d+%\|", line)][-1]


# --- the sweep: submitting the jobs and collecting their outcomes ---------------------------------------------------


def say(message: str) -> None:
    """One timestamped line of the sweep's progress."""
    print(f"{time.strftime('%H:%M:%S')}  {message}", flush=True)


def make_executor(config: dict) -> submitit.Executor:
    """submitit's executor of EXECUTOR, writing its job files and logs into JOBS_DIR/<start time>/ (a new folder for
    every sweep started: local job ids are process ids, which come back)."""
    jobs_dir = writable_folder(config["JOBS_DIR"] or Path(config["SWEEP_DIR"]) / "jobs", "JOBS_DIR")
    folder = jobs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    executor = EXECUTORS[config["EXECUTOR"]](folder)
    # the jobs unpickle run_job, which imports this repository's modules, wherever they start
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if config["EXECUTOR"] == "local":
        executor.update_parameters(timeout_min=60 * 24 * 365)  # submitit's local default is 2 minutes; here, none
    elif config["EXECUTOR"] == "slurm":
        executor.update_parameters(**slurm_parameters(config))
    return executor


def slurm_parameters(config: dict) -> dict:
    """The sbatch settings of every run's job, as submitit's SlurmExecutor takes them."""
    partition = {"partition": config["SLURM_PARTITION"]} if config["SLURM_PARTITION"] else {}
    return {
        **partition,
        "job_name": f"sweep-{Path(config['SWEEP_DIR']).resolve().name}",
        "time": config["SLURM_TIME"],
        "gpus_per_node": config["SLURM_GPUS"],
        "cpus_per_task": config["SLURM_CPUS"],
        "ntasks_per_node": 1,
        "array_parallelism": config["PARALLEL"],
        "setup": [line for line in config["SLURM_SETUP"] if line],
        "stderr_to_stdout": True,
    }


@dataclass(eq=False)
class Submitted:
    """A run's job, and the GPU it is pinned to (None: the device as DEVICE says)."""

    run: RecipeRun
    job: submitit.Job
    gpu: str | None

    def send_signal(self, number: int) -> None:
        """Ask the job to pass signal `number` on to its process (see run_steps), as SignalForwarder does."""
        with open(self.run.folder / STOP_FILE, "a") as file:
            file.write(f"{signal.Signals(number).name}\n")


def startable(run: RecipeRun, config: dict, digests: dict[str, str]) -> bool:
    """Whether the run can be submitted now; else it is settled: done, or busy with a process an earlier sweep
    started. Before a training step, records what it trains with (its fingerprint)."""
    run.started = time.monotonic()
    step = next_step(run, config)
    if step is None:
        finish(run, "done")
        return False
    holder = lock_holder(run.folder / JOB_LOCK) or lock_holder(run.folder / "train.lock")
    if holder is not None:
        finish(
            run, "busy", f"still going in process {holder}, which an earlier sweep started (was it killed?); wait"
            f" for it to end, or stop it (kill {holder}), then run the sweep again",
        )  # fmt: skip
        return False
    say(f"{run.name}: {step.label} {run.recipe} (log {run.log})")
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / STOP_FILE).unlink(missing_ok=True)  # an earlier sweep's stop request
    if step.command[1] == str(TRAIN_SCRIPT):
        write_text_atomic(fingerprint_path(run), json.dumps(run_fingerprint(run, config, digests), indent=2) + "\n")
    return True


def submit(executor: submitit.Executor, runs: list[RecipeRun], gpus: list[str | None], config: dict) -> list:
    """One job per run (with several, one SLURM job array), started with the stop signals blocked, so that the local
    executor's job controllers, which would kill a job one second after a terminal's Ctrl-C, never receive it: the
    sweep alone gets it, and passes it on to each job once."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        with executor.batch():
            jobs = [
                executor.submit(run_job, run, config, job_environment(config, gpu), os.getpid())
                for run, gpu in zip(runs, gpus, strict=True)
            ]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    for run in runs:
        run.status = "running"
    return [Submitted(run, job, gpu) for run, job, gpu in zip(runs, jobs, gpus, strict=True)]


def finish(run: RecipeRun, status: str, note: str = "") -> None:
    """Settle the run's status for this sweep and print it."""
    run.status, run.note = status, note
    minutes = (time.monotonic() - run.started) / 60
    say(f"{run.name}: {status} after {minutes:.1f} min" + (f": {note}" if note else ""))


def collect(submitted: Submitted, stopping: bool) -> None:
    """Settle a run whose job has ended by the outcome it returned, or, when it returned none (killed, timed out on
    SLURM), as failed or stopped, pointing at submitit's log of the job."""
    try:
        outcome = submitted.job.result()
    except (UncompletedJobError, FailedJobError):
        job = submitted.job
        note = f"its job {job.job_id} ended without an outcome (state {job.state}); see {job.paths.stdout}"
        outcome = {"status": "stopped" if stopping else "failed", "note": note}
    finish(submitted.run, outcome["status"], outcome["note"])


def work_through(
    runs: list[RecipeRun], config: dict, digests: dict, executor: submitit.Executor, signals: SignalForwarder
) -> None:
    """Submit every unfinished run as a submitit job, at most PARALLEL at a time on this machine (all at once to
    SLURM, whose job array runs PARALLEL at a time; one at a time in this process), and settle each as its job ends,
    until all have or a signal came."""
    gpus = pinned_gpus(config)
    capacity = {"local": config["PARALLEL"], "debug": 1}.get(config["EXECUTOR"], len(runs))
    waiting, active = [run for run in runs if run.status == "pending"], []
    while active or (waiting and not signals.received):
        if signals.received and signals.forwarded < len(signals.received) and config["EXECUTOR"] == "slurm":
            for queued in [submitted for submitted in active if submitted.job.state == "PENDING"]:
                queued.job.cancel(check=False)  # rather than wait for a node to start it, only to stop it
        signals.forward(active, say)
        batch = []
        while waiting and len(active) + len(batch) < capacity and not signals.received:
            run = waiting.pop(0)
            if startable(run, config, digests):
                batch.append(run)
        free = [gpu for gpu in gpus if gpu not in {submitted.gpu for submitted in active}]
        active += submit(executor, batch, [free.pop(0) if free else None for _ in batch], config) if batch else []
        time.sleep(0.2)  # how often the sweep looks at its jobs
        for submitted in [submitted for submitted in active if submitted.job.done()]:
            collect(submitted, stopping=bool(signals.received))
            active.remove(submitted)
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
        " scripts/evaluate.py, with TTA (8 views: flips and quarter turns, averaged) and without; val Dice at train"
        " size: train.py's best epoch at IMAGE_SIZE; train minutes and images/s: train.py's summary.json, end to"
        f" end.{folds_note}{test_note}",
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
        if any(uses_kvasir(run, config) for run in runs):
            kvasir.prepare_kvasir_seg(config["DATA_DIR"])  # once, so that concurrent runs never download or extract it
        digests = data_digests(runs, config)
        refuse_foreign_runs(runs, config, digests)
        executor = make_executor(config)
        for run in runs:
            if next_step(run, config) is None:
                run.status = "done"
                say(f"{run.name}: done earlier, its scores are reused (same recipe file, seed, TRAIN_FLAGS and data)")
        with SignalForwarder() as signals:
            work_through(runs, config, digests, executor, signals)
            markdown = write_ranking(runs, config)
    print(f"\n{markdown}\nwritten to {Path(config['SWEEP_DIR']) / 'ranking.md'}, ranking.csv and ranking_recipes.csv")
    if signals.received:
        return signals.exit_status
    return 1 if any(run.status == "failed" for run in runs) else 0


if __name__ == "__main__":
    run_main(main)
