"""Command-line overrides for a script's UPPER_CASE constants, in the spirit of nanoGPT's configurator.

Every constant `SOME_NAME = value` becomes a flag `--some-name VALUE` parsed with the type of its default
(booleans become `--flag/--no-flag`). A preset is a named dict of constants applied before explicit flags.
"""

import argparse


def flag_name(constant: str) -> str:
    """IMAGE_SIZE -> --image-size."""
    return "--" + constant.lower().replace("_", "-")


def script_constants(namespace: dict) -> dict:
    """A script's settings: the UPPER_CASE names of `namespace` (its globals()) bound to plain values.

    Imported tuples, dicts and modules are not settings; import UPPER_CASE plain values as `module.NAME`.
    """
    return {
        name: value
        for name, value in namespace.items()
        if name.isupper() and isinstance(value, (bool, int, float, str))
    }


def parse_config(
    defaults: dict, argv=None, description: str = "", presets: dict[str, dict] | None = None, extra_flags=()
) -> dict:
    """Return `defaults` updated by `--preset NAME` (if any) and then by the flags given on the command line.

    `extra_flags` are (args, kwargs) pairs for flags that are not constants (e.g. positional inputs);
    their values are returned under their argparse `dest` names.
    """
    parser = argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS)
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), help="start from a named block of settings")
    for args, kwargs in extra_flags:
        parser.add_argument(*args, **kwargs)
    for name, default in defaults.items():
        flag = flag_name(name)
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=f"(default {default})")
        else:
            parser.add_argument(flag, dest=name, type=type(default), metavar=name, help=f"(default {default!r})")
    given = vars(parser.parse_args(argv))
    config = dict(defaults)
    preset = given.pop("preset", None)
    if presets:
        config.update(presets.get(preset, {}))
        config["PRESET"] = preset or "default"
    config.update(given)
    return config
