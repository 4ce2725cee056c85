"""The metadata trail: an OpenLineage run event for every artifact the lab makes.

Why: a team that ships edge models must be able to answer, for any artifact (a bundle built,
signed, installed or revoked; a capture; a replay built or run; a course release; a grade; a
federated adapter round), *what made it, from what, and what it may say about people* - and
to prove that the artifact sends no more than it declares.  So every artifact-making path
calls :func:`emit_artifact`, which builds one OpenLineage ``RunEvent`` (``openlineage-python``'s
``event_v2`` classes, spec 2-0-2) whose output dataset is the artifact, with its **privacy
declaration** as a custom dataset facet (``livelab_privacy``: declared fields, consent scope,
retention, whether PII is scrubbed).  The event goes through openlineage-python's transports:

* a ``FileTransport`` appending one JSON line per event to ``<home>/lineage/events.jsonl``;
* an ``HttpTransport`` when a lineage server is configured (``$LIVELAB_LINEAGE_URL`` or
  ``<home>/lineage/config.json``), e.g. Marquez;
* :class:`MqttTransport` (a custom transport) to the lab's metadata topic
  ``livelab/<ns>/control/metadata`` when a lab runs and this process may act as its control plane.

A transport that fails never fails the artifact operation: the failure is logged, appended to
``<home>/lineage/failures.jsonl`` and returned (commands print it as a warning), so a missing
trail is visible, not silent.

The **privacy audit** (:func:`audit`) compares an artifact's declared fields with the fields
the lab observed it send (:func:`observed_fields` of the real payloads: the lab's observer,
``lab_hardware.runtime.observer``, watches telemetry and captures on the broker).  A field
sent but not declared fails the artifact: a ``FAIL`` event with a one-line reason and a
``livelab_privacyAudit`` run facet.  ``livelab lineage audit`` re-runs it over the lab's files.

This module imports openlineage lazily: devices and most commands never pay for it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from lab_hardware import consent as _consent
from lab_hardware import home as _home
from lab_hardware import topics

log = logging.getLogger("livelab.lineage")

#: Who produces the events (the spec wants a URI; livelab publishes no web site, so a URN).
PRODUCER = "urn:livelab:lab_hardware.modelops.lineage"
#: The custom facets' schema (``schemas/LivelabFacets.json``, shipped with the package).
FACETS_URN = "urn:livelab:lineage:facets:1-0-0"
FACET_PRIVACY = "livelab_privacy"
FACET_AUDIT = "livelab_privacyAudit"
FACET_ARTIFACT = "livelab_artifact"
SCHEMAS = Path(__file__).with_name("schemas")
JOB_NAMESPACE = "livelab"

#: Every kind of artifact the platform makes (the event's job name).
KINDS = (
    "bundle.build",
    "bundle.sign",
    "bundle.install",
    "bundle.revoke",
    "capture",
    "replay.build",
    "replay.run",
    "course.release",
    "grade",
    "adapter.round",
    "privacy.audit",
)
#: The dataset namespace of each kind's artifact.
DATASET_NAMESPACES = {
    "bundle": "livelab:bundles",
    "capture": "livelab:captures",
    "replay": "livelab:replays",
    "course": "livelab:courses",
    "grade": "livelab:grades",
    "adapter": "livelab:adapters",
}

EVENTS_FILE = "lineage/events.jsonl"
FAILURES_FILE = "lineage/failures.jsonl"
OBSERVED_FILE = "lineage/observed.json"
CONFIG_FILE = "lineage/config.json"
SCHEMA_CONFIG = "livelab.lineage-config/v1"
SCHEMA_OBSERVED = "livelab.lineage-observed/v1"
#: Seconds an HTTP lineage server gets per event (no retries: the artifact operation waits).
HTTP_TIMEOUT = 2.0
#: Longest line ``read_events`` accepts (an event is a few kB).
LINE_LIMIT = 1024 * 1024


class LineageError(ValueError):
    """A malformed lineage file, config or request: one line naming the problem."""


# ---- privacy declarations ------------------------------------------------------------------
@dataclass(frozen=True)
class Privacy:
    """An artifact's privacy declaration: what it may send or hold, under which consent."""

    subject: str
    fields: tuple[str, ...]
    consent_scope: str | None = None
    retention_days: int | None = None
    pii_scrubbed: bool = True
    raw_inputs_leave_device: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.subject, str) or not self.subject:
            raise LineageError("a privacy declaration needs a subject (what the fields are fields of)")
        if isinstance(self.fields, str) or not all(isinstance(f, str) and f for f in self.fields):
            raise LineageError("privacy 'fields' must be a list of field names")
        object.__setattr__(self, "fields", tuple(sorted(set(self.fields))))
        if self.consent_scope is not None and self.consent_scope not in _consent.SCOPES:
            raise LineageError(
                f"privacy consent scope {self.consent_scope!r} is not one of {', '.join(_consent.SCOPES)} (or none)"
            )
        r = self.retention_days
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 0):
            raise LineageError("privacy 'retention_days' must be a non-negative integer or None")
        if self.raw_inputs_leave_device is not False:
            raise LineageError("privacy 'raw_inputs_leave_device' must be false: devices never publish raw inputs")
        if not isinstance(self.pii_scrubbed, bool):
            raise LineageError("privacy 'pii_scrubbed' must be true or false")

    def as_facet(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "declaredFields": list(self.fields),
            "consentScope": self.consent_scope,
            "retentionDays": self.retention_days,
            "piiScrubbed": self.pii_scrubbed,
            "rawInputsLeaveDevice": False,
        }

    @classmethod
    def from_facet(cls, facet: Any) -> "Privacy":
        if not isinstance(facet, dict):
            raise LineageError(f"{FACET_PRIVACY} facet must be a JSON object")
        try:
            return cls(
                subject=facet["subject"],
                fields=tuple(facet["declaredFields"]),
                consent_scope=facet.get("consentScope"),
                retention_days=facet.get("retentionDays"),
                pii_scrubbed=facet["piiScrubbed"],
                raw_inputs_leave_device=facet["rawInputsLeaveDevice"],
            )
        except (KeyError, TypeError) as exc:
            raise LineageError(f"{FACET_PRIVACY} facet is missing or mistypes {exc}") from None


def telemetry_default() -> Privacy:
    """What a device running a scenario model (no manifest) may send: the platform's telemetry schema."""
    from lab_hardware import window

    return Privacy("telemetry window", tuple(window.ALLOWED_FIELDS), "telemetry", None, True)


#: Fields of a capture message (each of its records has the replay format's record fields).
CAPTURE_FIELDS = ("schema", "namespace", "device", "capture_id", "part", "last", "consent", "records")


def capture_privacy() -> Privacy:
    """A capture: scrubbed text and its decision, only under ``replay-capture`` consent."""
    from lab_hardware.modelops import replay

    return Privacy(
        "capture message",
        CAPTURE_FIELDS + tuple(f"records[].{f}" for f in replay.RECORD_FIELDS),
        "replay-capture",
        None,
        True,
    )


#: A replay run's output lines and its summary line (``livelab.replay-output/v1``): no text.
REPLAY_OUTPUT_FIELDS = ("decision", "digest", "digest_ok", "intent", "label", "probs")
REPLAY_SUMMARY_FIELDS = (
    "schema",
    "summary",
    "records",
    "model_digest",
    "capture_bundle",
    "same_model",
    "digest_matches",
    "labels_changed",
    "features",
    "replay_records_sha256",
    "counts",
)


def replay_privacy() -> Privacy:
    """A replay file: the scrubbed records of consented captures, and their consent trail
    (the fields of its manifest line are the replay format's own)."""
    from lab_hardware.modelops import replay

    return Privacy(
        "replay file",
        replay.MANIFEST_FIELDS + tuple(f"records[].{f}" for f in replay.RECORD_FIELDS),
        "replay-capture",
        None,
        True,
    )


def replay_output_privacy() -> Privacy:
    """A replay run's output: decisions, digests and probabilities per record, never the text."""
    return Privacy(
        "replay output",
        REPLAY_SUMMARY_FIELDS + ("rows",) + tuple(f"rows[].{f}" for f in REPLAY_OUTPUT_FIELDS),
        "replay-capture",
        None,
        True,
    )


#: A grade's record: the learning events the grader writes (``livelab.event/v1``).
GRADE_FIELDS = (
    "schema",
    "id",
    "learner",
    "team",
    "course",
    "version",
    "module",
    "kind",
    "check",
    "time",
    "source",
    "key",
    "detail",
    "system",
)


def grade_privacy() -> Privacy:
    """A grade: learning events naming the learner (kept as the events store keeps them)."""
    return Privacy("learning event", GRADE_FIELDS, None, None, False)


def bundle_privacy(manifest: dict[str, Any]) -> Privacy:
    """A bundle's declaration, from its manifest's ``privacy`` section: the telemetry fields a
    device running it may publish (under ``telemetry`` consent) and their retention."""
    p = manifest.get("privacy") if isinstance(manifest, dict) else None
    if not isinstance(p, dict):
        raise LineageError("the bundle manifest has no privacy section")
    return Privacy(
        "telemetry window",
        tuple(p.get("telemetry_fields") or ()),
        "telemetry",
        p.get("retention_days"),
        True,
        bool(p.get("raw_inputs_leave_device", False)),
    )


def observed_fields(payload: dict[str, Any], nested: Iterable[str] = ("records",)) -> set[str]:
    """The fields a payload really carries: its top-level keys, and ``<key>[].<field>`` for
    the objects in a ``nested`` list (a capture's records).  Values are never looked at."""
    out = set(payload)
    for key in nested:
        items = payload.get(key)
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict):
                    out.update(f"{key}[].{k}" for k in item)
    return out


@dataclass(frozen=True)
class Verdict:
    """The privacy audit of one artifact: declared vs observed fields."""

    ok: bool
    observed: tuple[str, ...]
    undeclared: tuple[str, ...]
    messages: int
    reason: str
    source: str = ""

    def as_facet(self) -> dict[str, Any]:
        return {
            "verdict": "pass" if self.ok else "fail",
            "observedFields": list(self.observed),
            "undeclaredFields": list(self.undeclared),
            "messages": self.messages,
            "source": self.source,
            "reason": self.reason,
        }


def audit(privacy: Privacy, observed: Iterable[str], *, messages: int = 1, source: str = "") -> Verdict:
    """Compare a declaration with the fields observed; a field sent but not declared fails.
    (A declared field never sent is fine: declarations are upper bounds.)"""
    seen = tuple(sorted(set(observed)))
    extra = tuple(f for f in seen if f not in set(privacy.fields))
    if extra:
        where = f" on {source}" if source else ""
        reason = (
            f"sent undeclared field{'s' if len(extra) > 1 else ''} {', '.join(extra)}{where} "
            f"({privacy.subject}: {len(privacy.fields)} fields declared)"
        )
        return Verdict(False, seen, extra, messages, reason, source)
    reason = f"{len(seen)} fields observed in {messages} {privacy.subject}{'s' if messages != 1 else ''}, all declared"
    return Verdict(True, seen, (), messages, reason, source)


# ---- events --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Artifact:
    """What a run made: a dataset in OpenLineage's words."""

    kind: str
    name: str
    namespace: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LineageError(f"unknown artifact kind {self.kind!r}; one of {', '.join(KINDS)}")
        if not isinstance(self.name, str) or not self.name or len(self.name) > 1024:
            raise LineageError("an artifact name is a non-empty string of at most 1024 characters")
        if not self.namespace:
            ns = DATASET_NAMESPACES.get(self.kind.split(".")[0], "livelab:artifacts")
            object.__setattr__(self, "namespace", ns)


def _facet_classes() -> dict[str, type]:
    """livelab's custom facets as openlineage-python facet classes (built once, lazily)."""
    global _FACETS
    if _FACETS is not None:
        return _FACETS
    import attr
    from openlineage.client.facet_v2 import DatasetFacet, RunFacet

    @attr.define
    class PrivacyDeclarationDatasetFacet(DatasetFacet):
        subject: str
        declaredFields: list[str]  # noqa: N815
        consentScope: str | None  # noqa: N815
        retentionDays: int | None  # noqa: N815
        piiScrubbed: bool  # noqa: N815
        rawInputsLeaveDevice: bool  # noqa: N815

        @staticmethod
        def _get_schema() -> str:
            return f"{FACETS_URN}#/$defs/PrivacyDeclarationDatasetFacet"

    @attr.define
    class PrivacyAuditRunFacet(RunFacet):
        verdict: str
        observedFields: list[str]  # noqa: N815
        undeclaredFields: list[str]  # noqa: N815
        messages: int
        source: str
        reason: str

        @staticmethod
        def _get_schema() -> str:
            return f"{FACETS_URN}#/$defs/PrivacyAuditRunFacet"

    @attr.define
    class ArtifactRunFacet(RunFacet):
        kind: str
        labNamespace: str | None  # noqa: N815
        details: dict

        @staticmethod
        def _get_schema() -> str:
            return f"{FACETS_URN}#/$defs/ArtifactRunFacet"

    _FACETS = {"privacy": PrivacyDeclarationDatasetFacet, "audit": PrivacyAuditRunFacet, "artifact": ArtifactRunFacet}
    return _FACETS


_FACETS: dict[str, type] | None = None


def warm() -> None:
    """Import openlineage-python and build livelab's facet and transport classes now, in a
    long-lived process that emits events for its whole life (the grading service writes one
    per graded submission): its first event otherwise paid for them (0.12 s of imports, then
    attrs compiling each class), in the first ``livelab grade`` on a new service."""
    from openlineage.client.serde import Serde
    from openlineage.client.transport.file import FileConfig, FileTransport  # noqa: F401

    _facet_classes()
    _mqtt_transport_classes()
    event = build_event(Artifact("grade", "warm-up"), privacy=grade_privacy(), details={"score": 0.0})
    Serde.to_json(event)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(details: dict[str, Any] | None) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(details or {}, sort_keys=True, default=str))
    except (TypeError, ValueError) as exc:
        raise LineageError(f"artifact details must be JSON: {exc}") from None


def build_event(
    artifact: Artifact,
    *,
    privacy: Privacy | None,
    inputs: Iterable[Artifact | tuple[str, str]] = (),
    details: dict[str, Any] | None = None,
    verdict: Verdict | None = None,
    failed: str | None = None,
    lab_namespace: str | None = None,
    run_id: str | None = None,
    when: float | None = None,
) -> Any:
    """The OpenLineage ``RunEvent`` (openlineage-python ``event_v2``) of one artifact.

    ``COMPLETE`` unless ``failed`` (a one-line reason) is given or the ``verdict`` failed:
    then ``FAIL``, with the reason in the standard ``errorMessage`` run facet."""
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import error_message_run, job_type_job

    fc = _facet_classes()
    if verdict is not None and not verdict.ok and failed is None:
        failed = f"privacy audit failed: {verdict.reason}"
    run_facets: dict[str, Any] = {
        FACET_ARTIFACT: fc["artifact"](
            kind=artifact.kind, labNamespace=lab_namespace, details=_jsonable(details), producer=PRODUCER
        )
    }
    if verdict is not None:
        run_facets[FACET_AUDIT] = fc["audit"](**verdict.as_facet(), producer=PRODUCER)
    if failed:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=" ".join(str(failed).split())[:2000], programmingLanguage="python", producer=PRODUCER
        )
    out_facets: dict[str, Any] = {}
    if privacy is not None:
        out_facets[FACET_PRIVACY] = fc["privacy"](**privacy.as_facet(), producer=PRODUCER)
    ins = []
    for i in inputs:
        ns, name = (i.namespace, i.name) if isinstance(i, Artifact) else i
        ins.append(InputDataset(namespace=ns, name=name))
    job_facets: dict[str, Any] = {
        "jobType": job_type_job.JobTypeJobFacet(
            processingType="BATCH",
            integration="LIVELAB",
            jobType=artifact.kind.upper().replace(".", "_"),
            producer=PRODUCER,
        )
    }
    return RunEvent(
        eventType=RunState.FAIL if failed else RunState.COMPLETE,
        eventTime=_iso(time.time() if when is None else when),
        run=Run(runId=run_id or str(uuid.uuid4()), facets=run_facets),
        job=Job(namespace=JOB_NAMESPACE, name=artifact.kind, facets=job_facets),
        inputs=ins,
        outputs=[OutputDataset(namespace=artifact.namespace, name=artifact.name, facets=out_facets)],
        producer=PRODUCER,
    )


def to_dict(event: Any) -> dict[str, Any]:
    from openlineage.client.serde import Serde

    return Serde.to_dict(event)


# ---- transports ----------------------------------------------------------------------------
def _mqtt_transport_classes() -> tuple[type, type]:
    """:class:`MqttTransport` and its config, as openlineage-python ``Transport``/``Config``."""
    global _MQTT
    if _MQTT is not None:
        return _MQTT
    import attr
    from openlineage.client.serde import Serde
    from openlineage.client.transport.transport import Config, Transport

    @attr.define
    class MqttConfig(Config):
        host: str = "127.0.0.1"
        port: int = 1883
        username: str | None = None
        password: str | None = None
        topic: str = ""
        timeout: float = 5.0
        client: Any = None  # a connected paho client to publish with (a lab service's own)

        @classmethod
        def from_dict(cls, params: dict[str, Any]) -> "MqttConfig":
            return cls(**{k: v for k, v in params.items() if k != "type"})

    class MqttTransport(Transport):
        """Publishes each event (QoS 1) on the lab's metadata topic and waits for the broker."""

        kind = "livelab-mqtt"
        config_class = MqttConfig

        def __init__(self, config: MqttConfig) -> None:
            self.config = config
            self._client = config.client
            self._owned = False

        def _connected(self) -> Any:
            if self._client is None:
                from lab_hardware import mqtt

                c = mqtt.client(username=self.config.username, password=self.config.password)
                mqtt.connect(c, self.config.host, int(self.config.port), timeout=self.config.timeout)
                self._client, self._owned = c, True
            return self._client

        def emit(self, event: Any) -> None:
            info = self._connected().publish(self.config.topic, Serde.to_json(event).encode(), qos=1)
            info.wait_for_publish(self.config.timeout)
            if not info.is_published():
                raise RuntimeError(f"the broker did not acknowledge the event within {self.config.timeout:g} s")

        def close(self, timeout: float = -1) -> bool:
            if self._owned and self._client is not None:
                from lab_hardware import mqtt

                mqtt.stop(self._client)
                self._client = None
            return True

    _MQTT = (MqttConfig, MqttTransport)
    return _MQTT


_MQTT: tuple[type, type] | None = None


def load_config(home: Path) -> dict[str, Any]:
    """``<home>/lineage/config.json`` (optional), checked; ``$LIVELAB_LINEAGE_URL`` sets the HTTP url.

    ``{"schema": "livelab.lineage-config/v1", "http": {"url": ..., "endpoint": ..., "timeout": s}
    | null, "mqtt": true, "file": true}``: LineageError with a one-line reason when malformed."""
    cfg: dict[str, Any] = {"http": None, "mqtt": True, "file": True}
    path = Path(home) / CONFIG_FILE
    if path.exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise LineageError(f"lineage config {path}: not valid JSON ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA_CONFIG:
            raise LineageError(f"lineage config {path}: must be a JSON object with schema {SCHEMA_CONFIG!r}")
        unknown = sorted(set(raw) - {"schema", "http", "mqtt", "file"})
        if unknown:
            raise LineageError(f"lineage config {path}: unknown key {unknown[0]!r}")
        for k in ("mqtt", "file"):
            if k in raw and not isinstance(raw[k], bool):
                raise LineageError(f"lineage config {path}: {k!r} must be true or false")
            cfg[k] = raw.get(k, cfg[k])
        http = raw.get("http")
        if http is not None:
            if not isinstance(http, dict) or not isinstance(http.get("url"), str):
                raise LineageError(f"lineage config {path}: 'http' must be null or an object with a 'url'")
            bad = sorted(set(http) - {"url", "endpoint", "timeout"})
            if bad:
                raise LineageError(f"lineage config {path}: unknown key 'http.{bad[0]}'")
            t = http.get("timeout", HTTP_TIMEOUT)
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 60:
                raise LineageError(f"lineage config {path}: 'http.timeout' must be seconds in (0, 60]")
            cfg["http"] = dict(http)
    url = os.environ.get("LIVELAB_LINEAGE_URL")
    if url:
        cfg["http"] = {**(cfg["http"] or {}), "url": url}
    if cfg["http"] is not None:
        u = cfg["http"]["url"]
        if not (u.startswith("http://") or u.startswith("https://")) or len(u) > 2048:
            raise LineageError(f"lineage server URL {u[:80]!r} must start with http:// or https://")
    return cfg


def _lab_mqtt(home: Path, namespace: str | None) -> dict[str, Any] | None:
    """Where this process may publish the metadata topic: the running lab's broker with the
    control-plane credentials, or None when no lab runs here or this home is a learner's (no
    ``secrets/``: the lab's observer reports what the learner's artifacts do on the devices).
    Raises OSError/ValueError when a lab runs but its control credentials cannot be read."""
    desc_path = home / _home.DESCRIPTOR
    if not desc_path.exists():
        return None
    desc = _home.read_json(desc_path)
    cred_path = home / "secrets" / "control.json"
    if not cred_path.exists() and not (home / "secrets").exists():
        return None  # a learner's home (lab.json only): this process is not the control plane
    cred = _home.read_json(cred_path)
    ns = namespace or desc["namespace"]
    return {
        "host": desc["broker"]["host"],
        "port": int(desc["broker"]["port"]),
        "username": cred["username"],
        "password": cred["password"],
        "topic": topics.metadata(ns),
    }


@dataclass
class Emitted:
    """What :meth:`Trail.emit` did: the event (as JSON) and each transport that failed."""

    event: dict[str, Any]
    failures: list[str] = field(default_factory=list)
    verdict: Verdict | None = None

    @property
    def failed(self) -> bool:
        return self.event.get("eventType") == "FAIL"


class Trail:
    """The transports of one lab home, built once (a batch emits many events through one).

    ``mqtt_client``: a connected client to publish the metadata topic with (a lab service's
    own); otherwise one is connected on first use when a lab runs here.  ``namespace``: the
    lab namespace whose metadata topic gets the events (default: the lab's own)."""

    def __init__(self, home: str | os.PathLike, *, mqtt_client: Any = None, namespace: str | None = None):
        self.home = _home.resolve(home)
        self.namespace = namespace
        self.transports: list[tuple[str, Any]] = []
        self.setup_failures: list[str] = []
        try:
            cfg = load_config(self.home)
        except LineageError as exc:  # the artifact still gets its file line; the config is reported
            self.setup_failures.append(f"config: {exc}")
            cfg = {"http": None, "mqtt": True, "file": True}
        from openlineage.client.transport.file import FileConfig, FileTransport

        if cfg["file"]:
            path = self.home / EVENTS_FILE
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.transports.append(("file", FileTransport(FileConfig(log_file_path=str(path), append=True))))
            except OSError as exc:
                self.setup_failures.append(f"file: {exc.strerror or exc}")
        if cfg["http"] is not None:
            from openlineage.client.transport.http import HttpConfig, HttpTransport

            h = cfg["http"]
            try:
                conf = HttpConfig.from_dict(
                    {
                        "url": h["url"],
                        "endpoint": h.get("endpoint", "api/v1/lineage"),
                        "timeout": float(h.get("timeout", HTTP_TIMEOUT)),
                        "retry": {"total": 0},
                    }
                )
                self.transports.append(("http", HttpTransport(conf)))
            except Exception as exc:  # noqa: BLE001 - a bad server config must not stop the artifact
                self.setup_failures.append(f"http: {str(exc).splitlines()[0] if str(exc) else exc}")
        if cfg["mqtt"]:
            MqttConfig, MqttTransport = _mqtt_transport_classes()
            if mqtt_client is not None:
                topic = topics.metadata(namespace or self._lab_namespace())
                self.transports.append(("mqtt", MqttTransport(MqttConfig(topic=topic, client=mqtt_client))))
            else:
                try:
                    where = _lab_mqtt(self.home, namespace)
                except (OSError, ValueError, KeyError) as exc:
                    self.setup_failures.append(
                        f"mqtt: a lab runs in {self.home} but its control credentials cannot be read "
                        f"({getattr(exc, 'strerror', None) or exc.__class__.__name__})"
                    )
                    where = None
                if where is not None:
                    self.transports.append(("mqtt", MqttTransport(MqttConfig(**where))))

    def _lab_namespace(self) -> str:
        try:
            return str(_home.read_json(self.home / _home.DESCRIPTOR)["namespace"])
        except (OSError, ValueError, KeyError):
            return "default"

    def emit(self, event: Any) -> Emitted:
        """Send one event through every transport; never raises for a transport's failure."""
        failures = list(self.setup_failures)
        for name, transport in self.transports:
            try:
                transport.emit(event)
            except Exception as exc:  # noqa: BLE001 - reported, never fatal to the artifact
                text = " ".join(str(exc).split()) or exc.__class__.__name__
                cause = exc.__cause__
                if cause is not None and str(cause):
                    text += f" ({' '.join(str(cause).split())[:200]})"
                failures.append(f"{name}: {text[:400]}")
        data = to_dict(event)
        if failures:
            self._record_failures(data, failures)
        return Emitted(data, failures)

    def _record_failures(self, event: dict[str, Any], failures: list[str]) -> None:
        for f in failures:
            log.warning("lineage event %s (%s) not delivered: %s", event["run"]["runId"], event["job"]["name"], f)
        try:
            path = self.home / FAILURES_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            outs = event.get("outputs") or [{}]
            with open(path, "a") as fh:
                for f in failures:
                    fh.write(
                        json.dumps(
                            {
                                "time": time.time(),
                                "runId": event["run"]["runId"],
                                "kind": event["job"]["name"],
                                "artifact": outs[0].get("name"),
                                "transport": f.split(":", 1)[0],
                                "reason": f,
                            },
                            sort_keys=True,
                        )
                        + "\n"
                    )
        except OSError as exc:
            log.error("cannot record lineage failures in %s: %s", self.home, exc)

    def close(self) -> None:
        for _, t in self.transports:
            try:
                t.close(1.0)
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self) -> "Trail":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def emit_artifact(
    home: str | os.PathLike | None,
    kind: str,
    name: str,
    *,
    privacy: Privacy | None,
    inputs: Iterable[Artifact | tuple[str, str]] = (),
    details: dict[str, Any] | None = None,
    observed: Iterable[str] | None = None,
    messages: int = 1,
    source: str = "",
    failed: str | None = None,
    lab_namespace: str | None = None,
    dataset_namespace: str = "",
    trail: Trail | None = None,
) -> Emitted:
    """Emit the run event of one artifact: the one call every artifact-making path makes.

    ``kind`` is one of :data:`KINDS` (e.g. ``"adapter.round"``), ``name`` the artifact's
    unique name (a digest, ``<ns>/<device>/<capture>``, ``<course>@<version>``...),
    ``privacy`` its declaration.  With ``observed`` (the fields the lab saw it send, see
    :func:`observed_fields`) the privacy audit runs and a mismatch makes the event ``FAIL``.
    Transport failures are returned in ``Emitted.failures``, never raised; a bad argument
    raises :class:`LineageError`.  Pass a ``trail`` to reuse its transports (a batch)."""
    art = Artifact(kind, name, dataset_namespace)
    verdict = None
    if observed is not None:
        if privacy is None:
            raise LineageError("an observation needs a privacy declaration to be audited against")
        verdict = audit(privacy, observed, messages=messages, source=source)
    event = build_event(
        art,
        privacy=privacy,
        inputs=inputs,
        details=details,
        verdict=verdict,
        failed=failed,
        lab_namespace=lab_namespace,
    )
    own = trail is None
    t = Trail(home or _home.resolve(None), namespace=lab_namespace) if trail is None else trail
    try:
        out = t.emit(event)
    finally:
        if own:
            t.close()
    out.verdict = verdict
    return out


def warn_failures(emitted: Emitted | None, say: Any = None) -> None:
    """Print a command's lineage delivery failures as one warning line each (stderr)."""
    if emitted is None:
        return
    import sys

    for f in emitted.failures:
        line = f"livelab: warning: lineage event not delivered ({f})"
        if say is not None:
            say(line)
        else:
            print(line, file=sys.stderr)


def safe_emit(home: str | os.PathLike | None, kind: str, name: str, **kw: Any) -> Emitted | None:
    """:func:`emit_artifact` for hooks: any error is logged and recorded, never raised (the
    artifact is made whether or not its trail could be written)."""
    try:
        return emit_artifact(home, kind, name, **kw)
    except Exception as exc:  # noqa: BLE001 - the trail never breaks the artifact
        reason = " ".join(str(exc).split()) or exc.__class__.__name__
        log.warning("lineage event for %s %s not emitted: %s", kind, name, reason)
        try:
            h = _home.resolve(home)
            (h / FAILURES_FILE).parent.mkdir(parents=True, exist_ok=True)
            with open(h / FAILURES_FILE, "a") as fh:
                fh.write(
                    json.dumps(
                        {"time": time.time(), "kind": kind, "artifact": name, "transport": "build", "reason": reason},
                        sort_keys=True,
                    )
                    + "\n"
                )
        except OSError:
            pass
        return Emitted({}, [f"build: {reason[:400]}"])


# ---- reading the trail -----------------------------------------------------------------------
def read_events(home: str | os.PathLike) -> list[dict[str, Any]]:
    """Every event in ``<home>/lineage/events.jsonl``, oldest first (LineageError, one line,
    when a line is not an OpenLineage run event; a torn last line is skipped)."""
    path = _home.resolve(home) / EVENTS_FILE
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LineageError(f"cannot read {path}: {exc.strerror or exc}") from None
    lines = data.split(b"\n")
    torn = lines.pop() if lines else b""  # after the last newline: empty, or a write in progress
    del torn
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(line) > LINE_LIMIT:
            raise LineageError(f"{path} line {i}: longer than {LINE_LIMIT:,} bytes")
        try:
            ev = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            raise LineageError(f"{path} line {i}: not valid JSON") from None
        problem = _event_problem(ev)
        if problem:
            raise LineageError(f"{path} line {i}: {problem}")
        out.append(ev)
    return out


def _event_problem(ev: Any) -> str | None:
    if not isinstance(ev, dict):
        return "not a JSON object"
    for k in ("eventTime", "producer", "schemaURL", "run", "job"):
        if k not in ev:
            return f"not an OpenLineage run event (no {k!r})"
    if not isinstance(ev["run"], dict) or not isinstance(ev["run"].get("runId"), str):
        return "run.runId must be a string"
    if not isinstance(ev["job"], dict) or not isinstance(ev["job"].get("name"), str):
        return "job.name must be a string"
    outs = ev.get("outputs", [])
    if not isinstance(outs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outs):
        return "outputs must be a list of datasets with a name"
    return None


def summary(ev: dict[str, Any]) -> dict[str, Any]:
    """One line's worth of an event: time, kind, artifact, state, reason."""
    out = (ev.get("outputs") or [{}])[0]
    facets = ev["run"].get("facets") or {}
    err = (facets.get("errorMessage") or {}).get("message")
    art = facets.get(FACET_ARTIFACT) or {}
    return {
        "time": ev["eventTime"],
        "runId": ev["run"]["runId"],
        "kind": ev["job"]["name"],
        "artifact": out.get("name"),
        "namespace": out.get("namespace"),
        "state": ev.get("eventType"),
        "labNamespace": art.get("labNamespace"),
        "reason": err,
        "declared": FACET_PRIVACY in (out.get("facets") or {}),
    }


def find(events: list[dict[str, Any]], ref: str) -> list[dict[str, Any]]:
    """Events whose run id or artifact name is ``ref`` or starts with it (at least 6 characters)."""
    if len(ref) < 6:
        raise LineageError("give at least 6 characters of a run id or artifact name")
    hits = []
    for ev in events:
        s = summary(ev)
        if s["runId"].startswith(ref) or (s["artifact"] or "").startswith(ref):
            hits.append(ev)
    return hits


# ---- observations (written by the lab's observer, read by the audit) ------------------------
def read_observed(home: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The observer's record: artifact key -> {declaration, observed fields, messages, ...}."""
    path = _home.resolve(home) / OBSERVED_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LineageError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA_OBSERVED or not isinstance(raw.get("artifacts"), dict):
        raise LineageError(f"{path}: must be a {SCHEMA_OBSERVED} object with 'artifacts'")
    for key, entry in raw["artifacts"].items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("observed"), list)
            or not isinstance(entry.get("messages"), int)
        ):
            raise LineageError(f"{path}: artifact {key[:80]!r} needs 'observed' fields and a 'messages' count")
        Privacy.from_facet(entry.get("declaration"))
    return raw["artifacts"]


def audit_all(home: str | os.PathLike, *, artifact: str | None = None) -> list[tuple[str, dict[str, Any], Verdict]]:
    """Re-run the privacy audit over everything the lab observed (``artifact``: only the keys
    starting with it).  Returns (artifact key, its record, verdict), sorted by key."""
    out = []
    for key, entry in sorted(read_observed(home).items()):
        if artifact and not (key.startswith(artifact) or key.split(":", 1)[-1].startswith(artifact)):
            continue
        v = audit(
            Privacy.from_facet(entry["declaration"]),
            entry["observed"],
            messages=entry["messages"],
            source=entry.get("source", ""),
        )
        out.append((key, entry, v))
    return out
