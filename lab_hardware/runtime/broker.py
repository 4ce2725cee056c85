"""The lab's own Mosquitto: generated config, identities, ACL, start and stop.

livelab never uses a broker it did not configure unless told to with
``--broker-url``.  The generated config listens on loopback only, refuses
anonymous clients, confines every identity with an ACL, and raises
Mosquitto's per-client queue limits: with the defaults (1000 queued
messages) a fast QoS 1 publisher loses messages silently, which the lab
must never do.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lab_hardware import topics
from lab_hardware.home import die_with_parent as _die_with_parent

#: Large enough that a subscriber stalled for a few minutes at 10k msg/s loses
#: nothing; bounded so that a dead persistent session cannot eat all memory.
MAX_QUEUED_MESSAGES = 5_000_000
#: In-flight QoS 1 messages per client: the round trip is the bottleneck of
#: QoS 1 throughput, so allow many outstanding PUBACKs.
MAX_INFLIGHT_MESSAGES = 1000
#: Bundles travel over MQTT (up to a few MiB); anything larger is refused by
#: the broker itself.
MESSAGE_SIZE_LIMIT = 16 * 1024 * 1024
#: Seconds between persistence saves; devices keep windows longer than this
#: and resend them after a broker crash (see device outbox), so a kill -9
#: between saves loses nothing end to end.
AUTOSAVE_INTERVAL = 1

CONTROL_USER = "control"
#: The lab oracle's identity (lab_hardware/runtime/oracle.py): reads every namespace's oracle
#: requests and writes only oracle responses.
ORACLE_USER = "oracle"
#: The identity that proves which version of the files the broker has read (:func:`confirm_reload`):
#: a fresh password in each version, and no line in the ACL, so it may connect and do nothing.
PROBE_USER = "livelab.reload-probe"  # a dot: never a learner's name (topics.NAME_RE)
#: Seconds between SIGHUPs while the broker has not taken a version of its files.
RELOAD_RESEND_S = 1.0


class BrokerError(RuntimeError):
    """The broker cannot be started or reached; the message says what to do."""


def learner_user(ns: str) -> str:
    return f"learner.{ns}"


def is_learner_of(username: object, ns: str) -> bool:
    """Whether a broker-proven command author (an audit record's ``by``) is the learner
    identity of namespace ``ns``: ``learner.<ns>`` or, for a registered learner, its name
    (which is its namespace).  Checks use this instead of trusting a name in a payload."""
    return isinstance(username, str) and username in (learner_user(ns), ns)


def device_user(ns: str, device: str) -> str:
    return f"device.{ns}.{device}"


def find_mosquitto() -> str:
    """Path of the mosquitto executable, or a one-line error saying how to install it.

    ``$LIVELAB_MOSQUITTO`` names a specific build (e.g. a conda env's) and, when set,
    is the only one considered.
    """
    forced = os.environ.get("LIVELAB_MOSQUITTO")
    if forced:
        if not (os.path.isfile(forced) and os.access(forced, os.X_OK)):
            raise BrokerError(f"mosquitto not found at LIVELAB_MOSQUITTO={forced}: fix the path or unset it")
        return forced
    exe = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )
    if exe is None:
        raise BrokerError(
            "mosquitto not found: install it with 'apt-get install mosquitto' "
            "or 'conda install -c conda-forge mosquitto' (or run 'make setup')"
        )
    return exe


def find_mosquitto_passwd() -> str:
    exe = shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if os.access("/usr/bin/mosquitto_passwd", os.X_OK) else None
    )
    if exe is None:
        raise BrokerError("mosquitto_passwd not found: install the 'mosquitto' package")
    return exe


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_listening(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.01)
    return False


@dataclass(frozen=True)
class BrokerAddress:
    """Where clients connect; credentials are per identity, not part of this."""

    host: str
    port: int
    username: str | None = None  # only for an external broker given by URL
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "BrokerAddress":
        """Parse ``mqtt://[user[:password]@]host[:port]``; ValueError with a one-line reason."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp"):
            raise ValueError(f"broker URL {url!r} must start with mqtt:// (TLS brokers: not yet supported)")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host")
        try:
            port = parts.port or 1883
        except ValueError:
            raise ValueError(f"broker URL {url!r} has an invalid port") from None
        return cls(
            parts.hostname,
            port,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
        )


def acl_text(namespaces: dict[str, list[str]], learners: dict[str, list[str]] | None = None) -> str:
    """The broker ACL (CONTRACTS §2).

    * control reads and writes everything under ``livelab/``;
    * a learner identity reads its namespace, writes commands only as itself
      (``.../devices/+/cmd/+/<username>``: the last level proves the author, so a device
      never believes a payload about who sent a command) and its ``learner/...`` topics;
      it cannot write the two-level control form ``.../cmd/<command>`` nor any retained
      control topic (``control/revocations``) nor the metadata trail (``control/metadata``,
      which it may read: the privacy declarations of its namespace's artifacts);
    * a device writes only its own telemetry/state/audit/capture/events/alert and reads its own
      commands, the namespace's revocation list and its learner names; it writes only its own
      oracle requests and reads only its own oracle responses;
    * the oracle reads oracle requests and writes oracle responses, nothing else: no learner
      (nor device) can answer in its name.

    ``learners`` maps a namespace to the broker usernames acting for its learner (default:
    ``learner.<ns>``); a registered learner's username is its name.
    """
    lines = [f"user {CONTROL_USER}", "topic readwrite livelab/#", "topic read $SYS/#", ""]
    lines += [
        f"user {ORACLE_USER}",
        f"topic read {topics.ORACLE_REQUESTS}",
        f"topic write {topics.oracle_response('+', '+')}",
        "",
    ]
    for ns, devices in sorted(namespaces.items()):
        pre = topics.namespace_prefix(ns)
        users = (learners or {}).get(ns) or [learner_user(ns)]
        for user in sorted(set(users)):
            if not topics.AUTHOR_RE.match(user) or user == CONTROL_USER:
                raise ValueError(f"invalid learner username {user!r} for namespace {ns}")
            lines += [
                f"user {user}",
                f"topic read {pre}/#",
                f"topic write {pre}/devices/+/cmd/+/{user}",
                f"topic readwrite {pre}/learner/#",
                "",
            ]
        for dev in devices:
            d = topics.device_prefix(ns, dev)
            lines += [
                f"user {device_user(ns, dev)}",
                f"topic write {d}/telemetry",
                f"topic write {d}/state",
                f"topic write {d}/audit",
                f"topic write {d}/capture",
                f"topic write {d}/events/alert",
                f"topic read {d}/cmd/#",
                f"topic read {pre}/control/revocations",
                f"topic read {pre}/control/learners",
                f"topic write {topics.oracle_request(ns, dev)}",
                f"topic read {topics.oracle_response(ns, dev)}",
                "",
            ]
    return "\n".join(lines)


def config_text(root: Path, port: int) -> str:
    data = root / "data"
    return "\n".join(
        [
            "# generated by livelab: edits are overwritten at the next 'livelab up'",
            "per_listener_settings false",
            # Started as root, Mosquitto would switch to user 'mosquitto' and could not read
            # the 0600 files of this state directory: stay the user that owns them.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            f"listener {port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {root / 'passwd'}",
            f"acl_file {root / 'acl'}",
            "persistence true",
            f"persistence_location {data}/",
            f"autosave_interval {AUTOSAVE_INTERVAL}",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            "max_queued_bytes 0",
            f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
            f"message_size_limit {MESSAGE_SIZE_LIMIT}",
            "max_keepalive 60",
            "persistent_client_expiration 1d",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            "log_timestamp true",
            "",
        ]
    )


def write_identities(root: Path, identities: dict[str, str]) -> None:
    """Write the password file (hashed by mosquitto_passwd -U, never left in clear)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "passwd.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        for user, pw in sorted(identities.items()):
            fh.write(f"{user}:{pw}\n")
    proc = subprocess.run([find_mosquitto_passwd(), "-U", str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BrokerError(f"mosquitto_passwd failed: {proc.stderr.strip() or proc.stdout.strip()}")
    os.replace(tmp, root / "passwd")


def write_config(
    root: Path,
    port: int,
    identities: dict[str, str],
    namespaces: dict[str, list[str]],
    learners: dict[str, list[str]] | None = None,
    *,
    probe: str | None = None,
) -> Path:
    """Write the config, password file and ACL; ``probe`` is this version's password of
    :data:`PROBE_USER` (see :func:`confirm_reload`)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    write_identities(root, {**identities, PROBE_USER: probe} if probe else identities)
    (root / "acl").write_text(acl_text(namespaces, learners))
    conf = root / "mosquitto.conf"
    conf.write_text(config_text(root, port))
    return conf


def start(root: Path, port: int, log_path: Path, *, timeout: float = 5.0) -> subprocess.Popen:
    """Start Mosquitto on the generated config and wait until it listens."""
    if port_in_use(port):
        raise BrokerError(f"port {port} on 127.0.0.1 is in use: choose another with --port or omit it")
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [find_mosquitto(), "-c", str(root / "mosquitto.conf")],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _tail(log_path)
            raise BrokerError(f"mosquitto exited with code {proc.returncode}: {tail}")
        if wait_listening("127.0.0.1", port, 0.05):
            return proc
    proc.kill()
    proc.wait()
    raise BrokerError(f"mosquitto did not listen on port {port} within {timeout:.0f} s: {_tail(log_path)}")


def reload(proc: subprocess.Popen) -> None:
    """Make Mosquitto re-read its password file and ACL (SIGHUP)."""
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGHUP)


def confirm_reload(proc: subprocess.Popen, port: int, probe: str, *, timeout: float = 30.0) -> bool:
    """Wait until the broker has read the version of its files whose probe password is
    ``probe`` (the supervisor, their only writer, writes no other version meanwhile), sending
    SIGHUP again every :data:`RELOAD_RESEND_S` while it has not; False if it has not within
    ``timeout``, or the broker is gone.

    Why: Mosquitto clears its reload flag *after* re-reading its files, so a SIGHUP that
    arrives while it is still reloading is lost, and identities written just before it stay
    unknown ('Not authorized') until some later reload.  Adding namespaces back to back (a
    grading run adds and removes one per submission) sends SIGHUPs that close together."""
    import signal

    from lab_hardware import mqtt

    deadline = time.monotonic() + timeout
    resend = time.monotonic() + RELOAD_RESEND_S
    while proc.poll() is None:
        c = mqtt.client(f"{PROBE_USER}-{os.getpid()}", username=PROBE_USER, password=probe)
        try:
            mqtt.connect(c, "127.0.0.1", port, timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        except mqtt.ConnectError:
            pass
        else:
            mqtt.stop(c)
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        if now >= resend:
            proc.send_signal(signal.SIGHUP)
            resend = now + RELOAD_RESEND_S
        time.sleep(0.02)
    return False


def _tail(path: Path) -> str:
    try:
        lines = [l for l in Path(path).read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"
