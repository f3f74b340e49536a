"""Look-ups by name that fail with the valid names and the nearest match (as MONAI's look_up_option)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


class UnknownNameError(LookupError):
    """A name (architecture, checkpoint, block, norm...) that is not registered."""

    def __init__(self, what: str, name: str, valid: Iterable[str]):
        self.what, self.name, self.valid = what, name, sorted(valid)
        near = difflib.get_close_matches(name, self.valid, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        super().__init__(f"Unknown {what} {name!r}.{hint} Valid: {', '.join(self.valid) or 'none'}.")

    def __str__(self) -> str:  # LookupError would quote the whole message
        return self.args[0]


def look_up(table: Mapping[str, T], name: str, what: str) -> T:
    """Return `table[name]`, or raise UnknownNameError naming the valid keys and the nearest one."""
    try:
        return table[name]
    except KeyError:
        raise UnknownNameError(what, name, table.keys()) from None
