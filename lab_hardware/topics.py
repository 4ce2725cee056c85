"""MQTT topic layout and payload envelope: the contract between devices, learners and tools.

Every payload is a JSON object with a ``schema`` field naming its kind and
version, so that a reader can refuse what it does not understand instead of
guessing.  Topic names are built here and nowhere else.
"""

from __future__ import annotations

import json
import re
from typing import Any

ROOT = "livelab"

#: Names allowed for namespaces and devices: they become topic levels and
#: broker usernames, so no wildcards, slashes or spaces.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

SCHEMA_TELEMETRY = "livelab.telemetry/v1"
SCHEMA_STATE = "livelab.state/v1"
SCHEMA_AUDIT = "livelab.audit/v1"
SCHEMA_COMMAND = "livelab.command/v1"
SCHEMA_CAPTURE = "livelab.capture/v1"
SCHEMA_REVOCATIONS = "livelab.revocations/v1"
SCHEMA_LEARNERS = "livelab.learners/v1"
SCHEMA_ALERT = "livelab.alert/v1"
SCHEMA_ORACLE_REQUEST = "livelab.oracle.request/v1"
SCHEMA_ORACLE_RESPONSE = "livelab.oracle.response/v1"
#: The metadata trail's messages are OpenLineage run events (their own ``schemaURL``, no
#: ``schema`` field): see lab_hardware/modelops/lineage.py.
METADATA = "metadata"

#: Commands a device understands (the level after ``.../cmd/``).
COMMANDS = ("consent", "ping", "audit", "set-model", "install", "rollback", "shadow", "capture", "revoke", "federated")

#: The author the device records for the two-level form ``.../cmd/<command>``, which the
#: broker's ACL lets only the control plane write.
CONTROL_AUTHOR = "control"
#: A command's author (the topic level after the command): a broker username.  Learner
#: usernames are names (``alice``) or ``learner.<namespace>``; no wildcards, slashes, spaces.
AUTHOR_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


class TopicError(ValueError):
    """A topic or name that does not follow the layout."""


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TopicError(f"invalid {kind} name {name!r}: use 1-63 lower-case letters, digits, '-' or '_'")
    return name


def namespace_prefix(ns: str) -> str:
    return f"{ROOT}/{ns}"


def device_prefix(ns: str, device: str) -> str:
    return f"{ROOT}/{ns}/devices/{device}"


def telemetry(ns: str, device: str) -> str:
    return device_prefix(ns, device) + "/telemetry"


def state(ns: str, device: str) -> str:
    return device_prefix(ns, device) + "/state"


def audit(ns: str, device: str) -> str:
    return device_prefix(ns, device) + "/audit"


def capture(ns: str, device: str) -> str:
    return device_prefix(ns, device) + "/capture"


def alert(ns: str, device: str) -> str:
    """``.../events/alert``: a device's alerts (a micro-SLO burning its error budget)."""
    return device_prefix(ns, device) + "/events/alert"


def command(ns: str, device: str, cmd: str, sender: str | None = None) -> str:
    """``.../cmd/<cmd>/<sender>``: the broker lets user U write only ``.../cmd/+/U``, so the
    last level proves who sent it.  Without ``sender`` the two-level form, control only."""
    base = device_prefix(ns, device) + f"/cmd/{cmd}"
    if sender is None:
        return base
    if not isinstance(sender, str) or not AUTHOR_RE.match(sender):
        raise TopicError(
            f"invalid command sender {sender!r}: use a broker username (lower-case letters, digits, '.', '-', '_')"
        )
    return f"{base}/{sender}"


def command_author(parsed: dict[str, str]) -> str:
    """Who sent a command, from its parsed topic (TopicError if the author level is malformed)."""
    sender = parsed.get("sender")
    if sender is None:
        return CONTROL_AUTHOR
    if not AUTHOR_RE.match(sender):
        raise TopicError(f"command author {sender[:64]!r} in the topic is not a broker username")
    return sender


def control(ns: str, what: str) -> str:
    return f"{ROOT}/{ns}/control/{what}"


def metadata(ns: str) -> str:
    """``livelab/<ns>/control/metadata``: the metadata trail (OpenLineage run events of the
    artifacts made in that namespace).  Only the control plane writes it; the namespace's
    learner may read it (the broker's ACL)."""
    return control(ns, METADATA)


def oracle_request(ns: str, device: str) -> str:
    """Where a device sends the lab oracle its requests (MQTT 5 request/response): the broker
    lets only that device write it, so the last level proves which device asked."""
    return control(ns, f"oracle/request/{device}")


def oracle_response(ns: str, device: str) -> str:
    """The response topic a device names in its requests: only the oracle (and the control
    plane) may write it, only that device reads it (besides its namespace's learner)."""
    return control(ns, f"oracle/response/{device}")


#: What the oracle subscribes to: every namespace's requests.
ORACLE_REQUESTS = f"{ROOT}/+/control/oracle/request/+"


def parse_oracle_request(topic: str) -> tuple[str, str] | None:
    """(namespace, device) of an oracle request topic, or None if it is not one."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[0] != ROOT or parts[2:5] != ["control", "oracle", "request"]:
        return None
    if not (NAME_RE.match(parts[1]) and NAME_RE.match(parts[5])):
        return None
    return parts[1], parts[5]


def parse(topic: str) -> dict[str, str] | None:
    """Split a device topic into namespace, device, kind (and command, and the command's
    ``sender`` level when present; and ``event`` for ``.../events/<event>``); None if not one."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != ROOT or parts[2] != "devices":
        return None
    out = {"namespace": parts[1], "device": parts[3], "kind": parts[4]}
    if parts[4] == "cmd":
        if len(parts) not in (6, 7):
            return None
        out["command"] = parts[5]
        if len(parts) == 7:
            out["sender"] = parts[6]
    elif parts[4] == "events":
        if len(parts) != 6:
            return None
        out["event"] = parts[5]
    elif len(parts) != 5:
        return None
    return out


def encode(payload: dict[str, Any]) -> bytes:
    """Compact, key-sorted JSON: the same payload always gives the same bytes."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes, *, limit: int | None = None) -> dict[str, Any]:
    """Decode one payload or raise ValueError with a one-line reason."""
    if limit is not None and len(data) > limit:
        raise ValueError(f"payload of {len(data)} bytes exceeds the limit of {limit} bytes")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"payload is not valid JSON: {exc.__class__.__name__}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"payload must be a JSON object, not {type(obj).__name__}")
    return obj
