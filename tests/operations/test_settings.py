"""Settings from constants, recipe files and flags (common/config.py), and train.py's --help."""

import pytest

from common.config import constant_comments, flag_name, parse_settings, read_recipe, script_constants
from common.errors import UserError
from tests.scripts import REPO, run_script

SCRIPT = '''"""A script.

    python x.py --size 3
"""

# Data
SIZE = 8  # pixels per side
NAMES = ["a"]  # one or more names
# Run
FAST = False  # go fast
RATE = 0.5
'''


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "x.py"
    path.write_text(SCRIPT)
    return path


DEFAULTS = {"SIZE": 8, "NAMES": ["a"], "FAST": False, "RATE": 0.5}


def test_comments_and_headings_come_from_the_source():
    comments, headings = constant_comments(SCRIPT)
    assert comments == {"SIZE": "pixels per side", "NAMES": "one or more names", "FAST": "go fast"}
    assert headings == {"SIZE": "Data", "FAST": "Run"}


def test_recipes_apply_before_flags_and_given_names_are_recorded(script, tmp_path):
    recipe = tmp_path / "recipe.py"
    recipe.write_text('"""Bigger."""\nSIZE = 16\nRATE = 1  # a whole number is fine for a float\n')
    settings = parse_settings(DEFAULTS, script, [str(recipe), "--size", "32", "--names", "b", "c"], recipes=True)
    assert settings.values == {"SIZE": 32, "NAMES": ["b", "c"], "FAST": False, "RATE": 1.0}
    assert settings.given == {"SIZE", "RATE", "NAMES"} and settings.recipes == [str(recipe)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SIZ = 3\n", "line 1: SIZ is not a setting of this script"),
        ("SIZE = 2 * 4\n", "line 1: SIZE must be a plain value, not an expression"),
        ("SIZE = '8'\n", "line 1: SIZE must be a int, not '8'"),
        ("import os\n", "line 1: a recipe holds only constants"),
        ("SIZE = (\n", "line 1: not valid Python"),
        ("FAST = 1\n", "line 1: FAST must be a bool, not 1"),
    ],
)
def test_bad_recipes_are_refused_naming_the_line(tmp_path, text, message):
    recipe = tmp_path / "bad.py"
    recipe.write_text(text)
    with pytest.raises(UserError, match=message):
        read_recipe(recipe, DEFAULTS)


def test_missing_recipe_is_refused(tmp_path):
    with pytest.raises(UserError, match="recipe file .* not found"):
        read_recipe(tmp_path / "nope.py", DEFAULTS)


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.py")), ids=lambda path: path.name)
def test_every_shipped_recipe_is_valid_and_says_what_it_is_for(recipe):
    from tests.train_runs import train_script

    values = read_recipe(recipe, script_constants(vars(train_script)))
    assert (values or recipe.name == "default.py") and recipe.read_text().startswith('"""')


@pytest.mark.slow
def test_help_keeps_the_examples_and_explains_every_setting():
    result = run_script("train", "--help")
    assert result.returncode == 0
    assert "usage: python scripts/train.py [RECIPE ...] [--SETTING VALUE ...]" in result.stdout
    assert "\n    python scripts/train.py configs/cpu_quick.py" in result.stdout  # line breaks kept
    from tests.train_runs import train_script

    for name, allowed in train_script.CHOICES.items():  # each choice lists its table's names
        assert f"{flag_name(name)} {{{','.join(allowed)}}}" in result.stdout
    assert "Optimisation" in result.stdout
    assert f"peak learning rate (default {train_script.LEARNING_RATE!r})" in result.stdout
