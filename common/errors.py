"""Errors meant for the person at the keyboard, and the wrapper that prints them without a traceback."""

import os
import sys

INTERRUPTED_STATUS = 130  # the shell convention for a process stopped by Ctrl-C (128 + SIGINT)


class UserError(Exception):
    """A problem the user can fix (bad setting, missing file, no network): shown as one clear message."""


class DatasetError(UserError):
    """The data on disk is incomplete or unreadable; the message names the files."""


def first_few(names, shown: int = 5) -> str:
    """The first `shown` names, with a count of the rest: "a, b, c and 4 more"."""
    names = [str(name) for name in names]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def user_message(error: UserError) -> str:
    """The error's own message, also when a DataLoader worker re-raised it wrapped in its traceback text."""
    text = str(error)
    prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
    if "Original Traceback" in text:
        last_line = text.rstrip().splitlines()[-1]
        return last_line.removeprefix(prefix)
    return text


def run_main(main) -> None:
    """Run a script's `main()` and exit with the status it returns (None counts as 0, success).

    A UserError becomes `error: ...` and exit status 2, Ctrl-C exit status 130.
    Set UNET_DEBUG=1 to see the full traceback instead.
    """
    try:
        status = main()
    except UserError as error:
        if os.environ.get("UNET_DEBUG"):
            raise
        print(f"error: {user_message(error)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if os.environ.get("UNET_DEBUG"):
            raise
        print("\ninterrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)
    if status:
        sys.exit(status)
