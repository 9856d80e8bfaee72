"""Every flag a script's --help lists is a setting its code reads: none is accepted and then ignored.

A script's settings come from its UPPER_CASE constants (common/config.py), so an imported constant or an internal
one used directly (not through the parsed settings) would become a flag that changes nothing. The check reads the
flags from each script's own --help, then looks in the script's source (with ast) for a read of each setting,
`config["NAME"]`, in code that uses it: not its definition, a comment or a list of names, nor check_settings,
which only refuses bad values. A settings dict the script passes to a function of common/, dataset/, model/ or
utils/ counts as read there, by the name of the parameter that receives it; settings it hands on inside an object
(a Run of utils/training_ops.py) count as read anywhere in that function's module; and a table's builders (a loss,
a network) read the settings named by their keyword parameters (common.config.keyword_settings).
"""

import ast
import contextlib
import importlib
import inspect
import io
import re
import sys
from pathlib import Path

import pytest

from tests.scripts import REPO, load_script

SCRIPTS = ["train", "evaluate", "predict", "export", "sweep", "benchmark"]
VALIDATION_ONLY = {"check_settings"}  # reads there refuse bad values; they do not make a setting do anything


def help_text(name: str) -> str:
    """What `python scripts/NAME.py --help` prints, in a terminal 120 columns wide."""
    module, stdout = load_script(name), io.StringIO()
    saved, sys.argv = sys.argv, [f"{name}.py", "--help"]
    try:
        with (
            contextlib.redirect_stdout(stdout),
            pytest.MonkeyPatch.context() as patch,
            pytest.raises(SystemExit) as exit_,
        ):
            patch.setenv("COLUMNS", "120")
            module.main()
    finally:
        sys.argv = saved
    assert exit_.value.code == 0
    return stdout.getvalue()


def help_flags(name: str) -> list[str]:
    """The --SETTING flags (not --help, not --no-X twins) that the script's --help lists."""
    flags = re.findall(r"^  (--[a-z][a-z0-9-]*)", help_text(name), flags=re.MULTILINE)
    return [flag for flag in flags if flag != "--help"]


def setting_name(flag: str) -> str:
    """--image-size -> IMAGE_SIZE."""
    return flag.removeprefix("--").replace("-", "_").upper()


def subscript_reads(function: ast.AST, on: str | None = None) -> set[str]:
    """The string keys read as `X["KEY"]` inside `function` (only where X is the name `on`, when given)."""
    return {
        node.slice.value
        for node in ast.walk(function)
        if isinstance(node, ast.Subscript)
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
        and (on is None or (isinstance(node.value, ast.Name) and node.value.id == on))
    }


def imported_modules(tree: ast.Module) -> dict[str, str]:
    """Names the script imports from the repository's packages -> the module that defines them (dotted)."""
    modules = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                is_module = (REPO / Path(*node.module.split(".")) / f"{alias.name}.py").is_file()
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}" if is_module else node.module
    return modules


PACKAGES = ("common", "dataset", "model", "utils")


def function_in(module: str, name: str) -> ast.FunctionDef | None:
    """The top-level function `name` of the repository module `module` (dotted), or None."""
    path = REPO / Path(*module.split("."))
    module_file = path.with_suffix(".py")  # dataset/splits.py beside the folder dataset/splits/ of split lists
    source = (module_file if module_file.is_file() else path / "__init__.py").read_text()
    return next(
        (node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef) and node.name == name), None
    )


def library_reads(tree: ast.Module, settings_names: set[str]) -> set[str]:
    """Keys read from the settings by the library functions the script hands them to: for a call such as
    `inference.predictor_from_settings(checkpoint, config)`, what the callee reads from its parameter there."""
    modules, reads = imported_modules(tree), set()
    for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
        callee = call.func
        if isinstance(callee, ast.Attribute) and isinstance(callee.value, ast.Name):
            module, name = modules.get(callee.value.id), callee.attr
        elif isinstance(callee, ast.Name):
            module, name = modules.get(callee.id), callee.id
        else:
            continue
        if module and any(isinstance(value, ast.Name) and value.id in HANDED_ON for value in call.args):
            reads |= module_reads(module)
        function = function_in(module, name) if module else None
        if function is None:
            continue
        parameters = [argument.arg for argument in function.args.args]
        passed = [(parameters[i], value) for i, value in enumerate(call.args) if i < len(parameters)]
        passed += [(keyword.arg, keyword.value) for keyword in call.keywords if keyword.arg]
        for parameter, value in passed:
            if isinstance(value, ast.Name) and value.id in settings_names:
                reads |= subscript_reads(function, on=parameter)
    return reads


HANDED_ON = {"run", "defaults", "config"}  # names under which the settings travel into a library module


def module_reads(module: str) -> set[str]:
    """The keys a library module reads as `X["KEY"]` outside check_settings, and the settings its tables' builders
    take by name (a dict of functions, such as LOSSES or NETWORKS: their keyword parameters in upper case)."""
    path = REPO / Path(*module.split("."))
    tree = ast.parse(
        (path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py").read_text()
    )
    reads = set()
    for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)):
        if function.name not in VALIDATION_ONLY:
            reads |= subscript_reads(function)
    for table in vars(importlib.import_module(module)).values():
        if isinstance(table, dict) and table and all(callable(builder) for builder in table.values()):
            for builder in table.values():
                with contextlib.suppress(TypeError, ValueError):  # a class or builtin without a signature
                    reads |= {name.upper() for name in inspect.signature(builder).parameters}
    return reads


def unread_settings(script: Path, names: list[str]) -> list[str]:
    """Those of `names` that nothing in `script` reads from its parsed settings (see the module's docstring)."""
    tree = ast.parse(script.read_text())
    reads = set()
    for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)):
        if function.name not in VALIDATION_ONLY:
            reads |= subscript_reads(function)
    reads |= library_reads(tree, settings_names={"config", "settings"})
    return [name for name in names if name not in reads]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_flag_in_help_is_a_setting_the_script_reads(name):
    flags = help_flags(name)
    assert flags, "no flag found in --help: the pattern no longer matches argparse's layout"
    unread = unread_settings(REPO / "scripts" / f"{name}.py", [setting_name(flag) for flag in flags])
    assert not unread, f"{name}.py --help lists flags that change nothing: {unread}"


DEAD_SETTINGS_SCRIPT = """
from utils import inference

SIZE = 8  # read by main
DEAD = 1  # only checked, never used
TTA = True  # read by the library function the settings go to
LISTED = 2  # only named in a list
NAMES = ("LISTED",)


def check_settings(config):
    assert config["DEAD"] >= 0


def main(config):
    check_settings(config)
    print(config["SIZE"])
    return inference.predictor_from_settings(None, config)
"""


def test_the_check_finds_a_setting_that_changes_nothing(tmp_path):
    script = tmp_path / "dead.py"
    script.write_text(DEAD_SETTINGS_SCRIPT)
    assert unread_settings(script, ["SIZE", "DEAD", "TTA", "LISTED"]) == ["DEAD", "LISTED"]


def test_an_imported_constant_is_no_flag_and_stop_check_steps_is_a_run_setting():
    flags, text = help_flags("train"), help_text("train")
    assert "--threshold" not in flags and {"--threads", "--save-every", "--overwrite"} <= set(flags)
    run_heading = text.index("\nRun:\n")
    assert run_heading < text.index("--stop-check-steps") < text.index("--output-dir")  # not under "What --resume ..."
    assert "What --resume may change" not in text


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_reads_whole_in_120_columns(name):
    """No docstring line runs on (a backslash at a line's end joins it to the next, with its indentation), and no
    setting's help stops mid-sentence on a dangling word because its comment was cut to fit the line."""
    text = help_text(name)
    assert not [line for line in text.splitlines() if len(line) > 120]
    helps = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    cut = [
        entry.split()[0]
        for entry in helps
        if re.search(r"\b(a|an|the|to|of|and|or|whether|should|than)\s*\(default", entry)
    ]
    assert not cut, f"{name}.py --help: these settings' help stops mid-sentence: {cut}"
