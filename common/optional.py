"""Optional packages: imported only where a feature needs them, refused in one line that says how to install them."""

import importlib

from common.errors import UserError


def import_optional(name: str, needs: str):
    """Import the package `name`, or refuse with `name is not installed; <needs>.` (what needs it, and the install
    command), before any work that would need it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"{name} is not installed; {needs}.") from None
