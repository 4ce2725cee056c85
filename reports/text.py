"""Names as terminal text: what a command prints of names that come from learners' and authors'
hands.  Kept apart from :mod:`reports.render` (which imports the plots and the events store) so
that a command printing a few names does not pay for those imports (about 0.35 s)."""

from __future__ import annotations

import unicodedata
from typing import Any

#: line/paragraph separators and the bidirectional overrides and isolates
_UNSAFE = {0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def printable(x: Any) -> str:
    """``x`` as text a terminal shows literally: control characters (ESC, NUL, newlines...),
    separators and bidirectional overrides as visible escapes (``\\x1b``).  Print it as a
    ``rich.text.Text`` (or with ``markup=False``) so that ``[/]`` or ``[link=...]`` stay text."""
    s = str(x)
    if not any(unicodedata.category(c) == "Cc" or ord(c) in _UNSAFE for c in s):
        return s
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) == "Cc" or ord(c) in _UNSAFE else c
        for c in s
    )
