"""Run the scripts in scripts/ as a user does (a subprocess), or import one to test its functions directly."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *arguments) -> subprocess.CompletedProcess:
    """`python scripts/NAME.py ARGUMENTS...` from the repository root, headless; returns the finished process."""
    command = [sys.executable, str(REPO / "scripts" / f"{name}.py"), *map(str, arguments)]
    environment = {**os.environ, "MPLBACKEND": "Agg", "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=environment)


def load_script(name: str):
    """Import scripts/NAME.py as a module (its main() does not run)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
