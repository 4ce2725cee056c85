"""One validation for every name that enters livelab: learner, team, module, check, course, version.

Names travel far: into the events store, report pages (HTML, embedded JSON, plot labels), the
terminal, CSV files.  Each of those outputs escapes what it shows (``reports/render.py``,
``reports/plots.py``, ``reports/term.py``), so ordinary punctuation -- ``<``, ``$``, ``[`` --
is allowed here; what no output can show faithfully is refused at the door, with one line:

* **length**: at most :data:`MAX_LENGTH` characters (one 20,000-character module name made a
  static export spend most of a minute laying out plot labels);
* **control characters** (Unicode category Cc: NUL, newlines, tabs, ``ESC`` and the C1 range),
  line and paragraph separators (U+2028/U+2029), and the bidirectional overrides and isolates
  (U+202A-U+202E, U+2066-U+2069) that make a name read differently from what it is;
* **empty or blank** names, and names with leading or trailing whitespace (two learners who
  look alike in every table but are different rows).

Registered learners follow the stricter ``lab_hardware.topics.check_name`` as well (they are
broker usernames and topic levels); this is the common floor for every name any writer sends.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Mapping

#: Longest name accepted, in characters.
MAX_LENGTH = 128
#: What a name may be called in a message (the fields the events store and the CLI take).
KINDS = ("learner", "team", "module", "check", "course", "version")
_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


class NameRefused(ValueError):
    """A name that must not enter the system; the message is one line naming the problem."""


def problem(value: Any, *, max_length: int = MAX_LENGTH) -> str | None:
    """Why ``value`` is not an acceptable name (a short phrase), or None if it is."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value.strip():
        return "is empty"
    if len(value) > max_length:
        return f"is {len(value):,} characters long (at most {max_length})"
    for i, ch in enumerate(value):
        cp = ord(ch)
        if unicodedata.category(ch) == "Cc" or cp in (0x2028, 0x2029) or cp in _BIDI:
            return f"contains the control character U+{cp:04X} at position {i + 1}"
    if value != value.strip():
        return "starts or ends with whitespace"
    return None


def shown(value: Any, limit: int = 40) -> str:
    """A refused value, safe to quote in a one-line message: control characters as escapes,
    long values cut."""
    text = value if isinstance(value, str) else repr(value)
    text = (
        text.encode("unicode_escape").decode("ascii")
        if any(unicodedata.category(c) == "Cc" or ord(c) in _BIDI or ord(c) in (0x2028, 0x2029) for c in text)
        else text
    )
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check(kind: str, value: Any, *, max_length: int = MAX_LENGTH) -> str:
    """Return ``value`` if it is an acceptable ``kind`` name, else raise :class:`NameRefused`."""
    why = problem(value, max_length=max_length)
    if why is not None:
        raise NameRefused(f"{kind} name {shown(value)} {why}: use up to {max_length} printable characters")
    return value


def check_all(names: Mapping[str, Any], *, optional: bool = True) -> None:
    """Check each (kind, value) pair; None and (with ``optional``) empty strings are skipped
    (a team, course or version may be absent)."""
    for kind, value in names.items():
        if value is None or (optional and value == ""):
            continue
        check(kind, value)


__all__ = ["MAX_LENGTH", "KINDS", "NameRefused", "problem", "check", "check_all", "shown"]
