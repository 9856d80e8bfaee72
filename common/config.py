"""A script's settings from its UPPER_CASE constants, recipe files and command-line flags, as nanoGPT's configurator.

Every constant `SOME_NAME = value  # what it means` of a script becomes a flag `--some-name VALUE` parsed with the
type of its default (booleans become `--flag/--no-flag`; lists take one or more values, and a list flag given twice
takes the values of both; no flag may be abbreviated), with the comment as its help and the comment line above a
block of constants as the block's heading in `--help`. A recipe file
(`configs/NAME.py`) holds only such constants; given before the flags, it is applied first.
"""

import argparse
import ast
import contextlib
import inspect
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.files import read_text_file

SETTING_TYPES = (bool, int, float, str, list)
# Switches that destroy earlier results: only a command line may give them, never a recipe file (a shared file,
# whose switch would act on whoever runs it)
COMMAND_LINE_ONLY = ("OVERWRITE",)


def flag_name(constant: str) -> str:
    """IMAGE_SIZE -> --image-size."""
    return "--" + constant.lower().replace("_", "-")


def script_constants(namespace: dict) -> dict:
    """A script's settings: the UPPER_CASE names of `namespace` (its globals()) bound to plain values or lists by the
    script's own top-level assignments. An imported name (`from utils.metrics import THRESHOLD`) is never one, nor
    are tuples and dicts, so only what the script defines, and reads, becomes a flag.
    """
    defined = assigned_names(Path(namespace["__file__"]).read_text())
    return {
        name: value
        for name, value in namespace.items()
        if name in defined and name.isupper() and isinstance(value, SETTING_TYPES)
    }


def keyword_settings(function, config: dict) -> dict:
    """The keyword arguments of `function` (a builder of a table: a loss, a network) that are settings, each taken
    from the setting of its name in upper case (`bce_weight` is BCE_WEIGHT), so a builder's parameters are settings
    by naming them."""
    parameters = inspect.signature(function).parameters
    return {name: config[name.upper()] for name in parameters if name.upper() in config}


def assigned_names(source: str) -> set[str]:
    """The names bound by the top-level `NAME = ...` statements of a module's source."""
    return {
        target.id
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


@dataclass
class Settings:
    """The parsed settings (`values`), which of them a recipe file or flag set (`given`), and the recipe files."""

    values: dict
    given: set[str]
    recipes: list[str]


def parse_settings(
    defaults: dict, script, argv=None, choices: dict | None = None, recipes: bool = False, extra_flags=()
) -> Settings:
    """`defaults` updated by recipe files (when `recipes`) and then by the flags given on the command line.

    `script` is the script's path: its docstring is the description and the comment beside each constant its help.
    `choices` lists the allowed values of some settings, for the help (the script checks them, with the recipes').
    `extra_flags` are (args, kwargs) pairs of flags that are not constants (e.g. positional inputs); their values
    are returned under their argparse `dest` names.
    """
    choices = choices or {}
    source = Path(script).read_text()
    prog = f"python scripts/{Path(script).name}"
    positionals = [f"{kwargs.get('metavar', args[0])} ..." for args, kwargs in extra_flags if args[0][0] != "-"]
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=" ".join([prog, *(["[RECIPE ...]"] if recipes else []), *positionals, "[--SETTING VALUE ...]"]),
        description=ast.get_docstring(ast.parse(source)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,  # `--see 7` must not quietly mean --seed 7: every flag is given whole
    )
    if recipes:
        parser.add_argument("recipes", nargs="*", metavar="RECIPE", help="recipe files (configs/*.py), applied first")
    for args, kwargs in extra_flags:
        parser.add_argument(*args, **kwargs)
    comments, headings = constant_comments(source)
    group = parser
    for name, default in defaults.items():
        if name in headings:
            group = parser.add_argument_group(headings[name])
        kind = flag_kind(default)
        if name in choices:
            kind["metavar"] = "{" + ",".join(map(str, choices[name])) + "}"
        help_text = f"{comments.get(name, '')} (default {default!r})".lstrip()
        group.add_argument(flag_name(name), dest=name, help=help_text, **kind)
    given = vars(parser.parse_args(argv))
    recipe_files = given.pop("recipes", [])
    values, given_names = dict(defaults), {name for name in given if name in defaults}
    for recipe in recipe_files:
        recipe_values = read_recipe(recipe, defaults)
        values.update(recipe_values)
        given_names |= set(recipe_values)
    values.update(given)
    return Settings(values, given_names, recipe_files)


def flag_kind(default) -> dict:
    """argparse keywords for a flag whose default is `default`."""
    if isinstance(default, bool):
        return dict(action=argparse.BooleanOptionalAction)
    if isinstance(default, list):  # given twice, the values add up: --checkpoint a.pth --checkpoint b.pth is both
        return dict(action="extend", nargs="+", metavar="VALUE")
    return dict(type=type(default), metavar=type(default).__name__.upper())


def constant_comments(source: str) -> tuple[dict[str, str], dict[str, str]]:
    """From a script's source: the comment beside each top-level `NAME = ...`, and the heading comment (a comment
    line of its own) above the first constant of each block."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    by_line = {token.start[0]: token for token in tokens if token.type == tokenize.COMMENT}
    comments, headings = {}, {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        beside = by_line.get(node.lineno) or by_line.get(node.end_lineno)
        if beside and beside.start[1] > 0:
            comments[name] = beside.string.removeprefix("#").strip()
        above = by_line.get(node.lineno - 1)
        if above and above.start[1] == 0 and not above.string.startswith("# -"):
            headings[name] = above.string.removeprefix("#").strip()
    return comments, headings


def read_recipe(path, defaults: dict) -> dict:
    """The constants of a recipe file, each a literal of its setting's type; anything else is refused, naming the line.

    The file is parsed, never run, so a recipe cannot execute code.
    """
    path = Path(path)
    values = {}
    for name, value, line in recipe_constants(path):
        where = f"{path} line {line}: {name}"
        if name not in defaults:
            raise UserError(f"{where} is not a setting of this script (see --help).")
        if name in COMMAND_LINE_ONLY:
            raise UserError(
                f"{where} may not be set in a recipe file: it replaces earlier results, so only a command line"
                f" gives it ({flag_name(name)}); delete the line."
            )
        values[name] = coerce(value, defaults[name], where)
    return values


def recipe_constants(path) -> list[tuple[str, object, int]]:
    """The (name, value, line) of each `NAME = literal` of a recipe file, whose other lines may only be its docstring;
    refuses a missing file, other encodings than UTF-8, invalid Python and values that are not literals."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"recipe file {path} not found (recipes live in configs/, e.g. configs/seed.py).")
    text = read_text_file(path, "recipe file")
    try:
        tree = ast.parse(text, filename=str(path))
    except (SyntaxError, ValueError) as error:  # ValueError: a NUL byte, in older Pythons
        where = f" line {error.lineno}" if getattr(error, "lineno", None) else ""
        raise UserError(f"{path}{where}: not valid Python ({getattr(error, 'msg', error)}).") from None
    constants = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # the file's docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise UserError(f"{path} line {node.lineno}: a recipe holds only constants (NAME = value).")
        name = node.targets[0].id
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: {[1]: 2}, unhashable
            raise UserError(f"{path} line {node.lineno}: {name} must be a plain value, not an expression.") from None
        constants.append((name, value, node.lineno))
    return constants


def script_constant(script, name: str):
    """The literal value of the top-level constant `name` in a script's source (parsed, not run: no imports)."""
    constants = literal_constants(script)
    if name not in constants:
        raise KeyError(f"{script} has no constant {name}")
    return constants[name]


def literal_constants(script) -> dict:
    """The top-level UPPER_CASE constants of a script's source whose values are literals, parsed, not run (a value
    taken from another module is left out)."""
    constants = {}
    for node in ast.parse(Path(script).read_text()).body:
        names = [getattr(target, "id", "") for target in getattr(node, "targets", [])]
        if isinstance(node, ast.Assign) and len(names) == 1 and names[0].isupper():
            with contextlib.suppress(ValueError):  # not a literal
                constants[names[0]] = ast.literal_eval(node.value)
    return constants


def coerce(value, default, where: str):
    """`value` as the type of `default` (a whole number is accepted for a float setting); a list's elements as the
    type of the default's (strings, as the command line gives, when the default is empty)."""
    expected = type(default)
    if expected is float and type(value) is int:
        return float(value)
    if type(value) is not expected:
        raise UserError(f"{where} must be a {expected.__name__}, not {value!r}.")
    if expected is list:
        element = default[0] if default else ""
        return [coerce(item, element, f"{where}'s elements") for item in value]
    return value
