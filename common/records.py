"""Type checks for the fields of a saved record (a checkpoint's dict of plain values): each check takes a value and
the field's name (`split.train[3]`) and raises Malformed naming the field, so that one schema per record type
refuses a damaged or crafted record before any reader trusts it."""

import re
from collections.abc import Callable

Check = Callable[[object, str], None]


class Malformed(Exception):
    """A field of a record is not of its type: `field` names it, `problem` says how."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


def described(value) -> str:
    """A value's type in words, with a short value for plain ones: "a list", "the int 7"."""
    if value is None or isinstance(value, bool | int | float):
        return f"the {type(value).__name__} {value!r}"
    return f"a {type(value).__name__}"


def of_type(kinds: type | tuple, what: str) -> Check:
    """A value of `kinds` (never a bool standing in for a number)."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)

    def check(value, field):
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise Malformed(field, f"is {described(value)}, not {what}")

    return check


def text(pattern: str | None = None, what: str = "text") -> Check:
    """A str, matching `pattern` when given."""
    is_str = of_type(str, what)

    def check(value, field):
        is_str(value, field)
        if pattern and not re.fullmatch(pattern, value):
            raise Malformed(field, f"is {value[:40]!r}, not {what}")

    return check


def whole(minimum: int = 0) -> Check:
    """An int of at least `minimum`."""
    is_int = of_type(int, f"a whole number of at least {minimum}")

    def check(value, field):
        is_int(value, field)
        if value < minimum:
            raise Malformed(field, f"is {value}, below {minimum}")

    return check


def number() -> Check:
    """An int or float (never a bool)."""
    return of_type((int, float), "a number")


def list_of(item: Check, length: int | None = None, kinds: tuple = (list,)) -> Check:
    """A list (or another of `kinds`) of `length` items (any number when None), each passing `item`."""
    is_list = of_type(kinds, "a list")

    def check(value, field):
        is_list(value, field)
        if length is not None and len(value) != length:
            raise Malformed(field, f"holds {len(value)} items, not {length}")
        for index, element in enumerate(value):
            item(element, f"{field}[{index}]")

    return check


def dict_of(item: Check, key: Check | None = None) -> Check:
    """A dict whose keys pass `key` (text by default) and values pass `item`."""
    key = key or text()
    is_dict = of_type(dict, "a dict")

    def check(value, field):
        is_dict(value, field)
        for name, element in value.items():
            key(name, f"{field} key {str(name)[:40]!r}")
            item(element, f"{field}[{name!r}]")

    return check


def record(fields: dict[str, Check], required=(), others: Check | None = None) -> Check:
    """A dict holding the `required` names, whose names of `fields` pass their checks; any other name is refused,
    or with `others` must pass it."""
    is_dict = of_type(dict, "a dict")

    def check(value, field):
        is_dict(value, field)
        prefix = f"{field}." if field else ""
        for name in required:
            if name not in value:
                raise Malformed(f"{prefix}{name}", "is missing")
        for name, element in value.items():
            if name in fields:
                fields[name](element, f"{prefix}{name}")
            elif others is None:
                raise Malformed(f"{prefix}{str(name)[:40]}", "is not a field of this record")
            else:
                others(element, f"{prefix}{name}")

    return check


def either(*checks: Check, what: str) -> Check:
    """A value that passes one of `checks`."""

    def check(value, field):
        for option in checks:
            try:
                option(value, field)
                return
            except Malformed:
                continue
        raise Malformed(field, f"is {described(value)}, not {what}")

    return check


def described_by(describe: Callable[[object], str | None]) -> Check:
    """A value that `describe` finds no problem with (it returns why not, or None)."""

    def check(value, field):
        problem = describe(value)
        if problem:
            raise Malformed(field, f"is unusable ({problem})")

    return check


def like(default) -> Check:
    """A value of the type of `default`, as a setting is: a whole number where a float is, a list of the type of
    its first element (of text when it is empty)."""
    if isinstance(default, list):
        return list_of(like(default[0]) if default else text())
    if isinstance(default, float):
        return number()
    return of_type(type(default), f"a {type(default).__name__}")


def items(*checks: Check) -> Check:
    """A list or tuple of one item per check, each passing its own."""
    is_list = of_type((list, tuple), "a list")

    def check(value, field):
        is_list(value, field)
        if len(value) != len(checks):
            raise Malformed(field, f"holds {len(value)} items, not {len(checks)}")
        for index, (element, item) in enumerate(zip(value, checks, strict=True)):
            item(element, f"{field}[{index}]")

    return check
