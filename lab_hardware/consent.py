"""Consent: per device and scope, default deny, every change on the consent trail.

The consent trail is the ``consent`` records of the device's audit chain, so it
is as tamper-evident as the chain.  A device restores its consent state by
replaying the trail at start, never from a separate mutable file.
"""

from __future__ import annotations

from typing import Any, Iterable

SCOPES = ("telemetry", "replay-capture")


class ConsentError(ValueError):
    """A consent change that cannot be applied (unknown scope, bad value)."""


class ConsentState:
    """Which scopes a device may act on; everything starts denied."""

    def __init__(self) -> None:
        self._granted = {scope: False for scope in SCOPES}

    def allows(self, scope: str) -> bool:
        return self._granted.get(scope, False)

    def apply(self, scope: str, granted: bool) -> bool:
        """Change one scope; returns whether it actually changed."""
        if scope not in SCOPES:
            raise ConsentError(f"unknown consent scope {scope!r}; use one of {', '.join(SCOPES)}")
        if not isinstance(granted, bool):
            raise ConsentError("consent 'grant' must be true or false")
        changed = self._granted[scope] != granted
        self._granted[scope] = granted
        return changed

    def as_dict(self) -> dict[str, bool]:
        return dict(self._granted)

    @classmethod
    def from_trail(cls, records: Iterable[dict[str, Any]]) -> "ConsentState":
        state = cls()
        for rec in trail(records):
            state.apply(rec["data"]["scope"], rec["data"]["grant"])
        return state


def trail(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The consent records of an audit chain, in order."""
    return [r for r in records if r.get("kind") == "consent"]
