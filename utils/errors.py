"""Errors meant for the person at the keyboard, and the wrapper that prints them without a traceback."""

import os
import sys


class UserError(Exception):
    """A problem the user can fix (bad setting, missing file, no network): shown as one clear message."""


def run_main(main) -> None:
    """Run a script's `main()`, turning a UserError into `error: ...` and exit status 2.

    Set UNET_DEBUG=1 to see the full traceback instead.
    """
    try:
        main()
    except UserError as error:
        if os.environ.get("UNET_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
