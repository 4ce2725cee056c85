"""The learning-events store: what happened to a learner in a module, and when.

Three kinds of writers put events here -- the learner SDK (``labs/``: a module
was opened, the lab connected, the first telemetry arrived), the grader
(``grading/``: a check passed or failed, the module was completed) and the lab
itself -- and the time-to-signal reports (``reports/``) read them.  It lives in
``labs`` beside the SDK that writes a learner's first events: it is about learning, not
hardware, and the grader and the reports sit *above* ``labs`` in the layers, so they may
import it; nothing below ``labs`` does.

Why the store looks the way it does:

* **One table behind SQLAlchemy 2 Core**: SQLite at ``<lab home>/events.sqlite``
  for one machine, any SQLAlchemy URL (PostgreSQL for a team) by setting
  (``url=`` or ``$LIVELAB_EVENTS_URL``).  ``postgresql://`` means psycopg 3.
* **Idempotent writes**: an event's ``id`` is a sha256 over who wrote it and
  what it says (source, learner, course, version, module, kind, check) plus a
  caller-supplied ``key`` -- the grading run id for the grader, the kernel
  session for the SDK.  ``id`` is the primary key and inserts are
  insert-or-ignore (``ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL), so
  re-grading or re-running a cell does not double-count.
* **Crash-safe batches**: :meth:`EventStore.write` validates the whole batch
  first (one bad event refuses the batch, with a one-line reason naming it),
  then inserts it in a single transaction.  A writer killed mid-batch leaves
  nothing of that batch behind; running the batch again writes it exactly once.
* **A writer's own fields** beyond the schema (the grader's score, a submission hash...) are
  kept in ``detail`` (JSON), not refused; an unknown ``kind`` is refused.
* **Names are checked at the door** (:mod:`labs.names`): learner, team, module, check, course
  and version are at most 128 printable characters -- no NUL, newline, escape sequence or
  bidirectional override reaches a report, a terminal or a CSV file from here.
* **System identities** (the release gate's runs, the demo's bots, benchmarks) write events with
  ``system = true`` (a boolean column, default false); managers' reports leave them out unless
  asked.  A process marks everything it records as system with :func:`system_identity` (it sets
  ``$LIVELAB_SYSTEM``, which its kernels and the grader inherit).  Stores created before the
  column existed are migrated when opened (``ALTER TABLE ... ADD COLUMN system ... DEFAULT false``):
  old events read as not system, nothing else changes.
* **Honest times**: UTC seconds since the epoch.  An event more than
  :data:`MAX_FUTURE_SKEW` seconds ahead of the store's clock is refused: it is
  a writer with a broken clock, and accepting it would distort every report.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import time as _time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from lab_hardware.home import events_key
from labs import names

log = logging.getLogger("livelab.events")

#: Event kinds, in the order a learner meets them (the report's completion funnel).
KINDS = ("module-opened", "lab-connected", "telemetry-first-seen", "check-passed", "check-failed", "module-completed")
#: Who wrote an event.
SOURCES = ("sdk", "grader", "lab")
#: Seconds an event may be ahead of the store's clock (writers on other machines).
MAX_FUTURE_SKEW = 60.0
#: File name of the default SQLite store inside the lab's state directory.
FILENAME = "events.sqlite"
#: Environment variable naming the store for every tool (overrides the lab home).
ENV_URL = "LIVELAB_EVENTS_URL"
#: The envelope name writers may put in ``schema`` (the SDK's MQTT learner events use it too).
SCHEMA = "livelab.event/v1"
#: Rows per INSERT statement inside one batch transaction.
CHUNK = 500
#: Environment variable that marks a process (and its kernels) as a system identity.
ENV_SYSTEM = "LIVELAB_SYSTEM"

_FIELDS = (
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
_FILTERS = (
    "id",
    "learner",
    "team",
    "course",
    "version",
    "module",
    "kind",
    "check",
    "source",
    "system",
    "since",
    "until",
)
#: The name fields every event is checked for (:mod:`labs.names`); team, course, version may be empty.
_NAMES = ("learner", "module", "check", "team", "course", "version")

#: A per-process session: the SDK's idempotency key (re-running ``Lab.connect`` in the
#: same kernel records a module opening once; a new kernel session records a re-opening).
SESSION = uuid.uuid4().hex


class EventError(ValueError):
    """An event the store refuses (unknown kind, from the future, missing field...)."""


class EventStoreError(RuntimeError):
    """The events database is missing, unreachable or unusable; the message says what to do."""


def event_id(
    source: str, learner: str, course: str, version: str, module: str, kind: str, check: str | None, key: str
) -> str:
    """The idempotency key: the same statement from the same writer gives the same id."""
    blob = json.dumps(
        [source, learner, course, version, module, kind, check or "", key], separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Event:
    """One learning event.  ``id`` is derived (see :func:`event_id`) unless given."""

    learner: str
    module: str
    kind: str
    time: float = field(default_factory=_time.time)
    source: str = "sdk"
    key: str = ""
    team: str = ""
    course: str = ""
    version: str = ""
    check: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""
    #: written by an identity of the system (release gate, demo bot, benchmark), not a learner
    system: bool = False

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(
                self,
                "id",
                event_id(
                    self.source, self.learner, self.course, self.version, self.module, self.kind, self.check, self.key
                ),
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Event":
        if isinstance(data, Event):
            return data
        if not isinstance(data, Mapping):
            raise EventError(f"an event is a mapping or an Event, not {type(data).__name__}")
        schema = data.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise EventError(f"event schema {schema!r} is not {SCHEMA!r}")
        kw = {k: v for k, v in data.items() if k in _FIELDS}
        for name in ("learner", "module", "kind"):
            if name not in kw:
                raise EventError(f"event is missing the field {name!r}")
        kw = {k: ("" if v is None and k in ("team", "course", "version", "key", "id") else v) for k, v in kw.items()}
        if kw.get("system") is None:
            kw.pop("system", None)
        detail = kw.get("detail")
        if detail is None:
            detail = {}
        if not isinstance(detail, Mapping):
            raise EventError(f"event detail must be a JSON object, not {type(detail).__name__}")
        # Fields beyond the schema (a writer's own: score, submission, message...) are kept, in detail.
        extra = {k: v for k, v in data.items() if k not in _FIELDS and k not in ("schema", "written_at")}
        kw["detail"] = {**extra, **detail} if extra else detail
        return cls(**kw)

    def as_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in _FIELDS}  # shallow: dataclasses.asdict deep-copies (slow)
        d["detail"] = dict(self.detail)
        return d


def validate(ev: Event, *, now: float | None = None, max_future_skew: float = MAX_FUTURE_SKEW) -> Event:
    """Raise EventError with a one-line reason if the store must refuse ``ev``."""
    if ev.kind not in KINDS:
        raise EventError(f"unknown event kind {ev.kind!r}: use one of {', '.join(KINDS)}")
    if ev.source not in SOURCES:
        raise EventError(f"unknown event source {ev.source!r}: use one of {', '.join(SOURCES)}")
    for name in ("learner", "module"):
        v = getattr(ev, name)
        if not isinstance(v, str) or not v.strip():
            raise EventError(f"event field {name!r} must be a non-empty string, not {v!r}")
    for name in ("team", "course", "version", "key"):
        if not isinstance(getattr(ev, name), str):
            raise EventError(f"event field {name!r} must be a string, not {getattr(ev, name)!r}")
    if ev.check is not None and not isinstance(ev.check, str):
        raise EventError(f"event field 'check' must be a string or None, not {ev.check!r}")
    for name in _NAMES:
        v = getattr(ev, name)
        if v is None or (v == "" and name in ("team", "course", "version")):
            continue
        if isinstance(v, str):
            try:
                names.check(name, v)
            except names.NameRefused as exc:
                raise EventError(str(exc)) from None
    if not isinstance(ev.system, bool):
        raise EventError(f"event field 'system' must be true or false, not {ev.system!r}")
    if ev.kind in ("check-passed", "check-failed") and not ev.check:
        raise EventError(f"a {ev.kind} event names its check (field 'check')")
    if isinstance(ev.time, bool) or not isinstance(ev.time, (int, float)) or not math.isfinite(ev.time) or ev.time < 0:
        raise EventError(f"event time must be UTC seconds since the epoch, not {ev.time!r}")
    now = _time.time() if now is None else now
    if ev.time > now + max_future_skew:
        raise EventError(
            f"event time is {ev.time - now:,.0f} s in the future (allowance "
            f"{max_future_skew:.0f} s): check the clock of the {ev.source} that wrote it"
        )
    try:
        json.dumps(dict(ev.detail))
    except (TypeError, ValueError) as exc:
        raise EventError(f"event detail must be a JSON object ({exc})") from None
    if not isinstance(ev.id, str) or len(ev.id) != 64:
        raise EventError(f"event id must be 64 hex characters, not {ev.id!r}")
    return ev


# ---- where the store is ----------------------------------------------------------------------


def resolve_url(url_or_home: str | os.PathLike | None = None, *, url: str | None = None) -> str:
    """Explicit ``url=`` (or a URL given positionally), else ``$LIVELAB_EVENTS_URL``, else
    ``<lab home>/events.sqlite`` (the home as given, or ``$LIVELAB_HOME``, or ``~/.livelab``)."""
    if url:
        return _normalize(url)
    if url_or_home is not None and "://" in str(url_or_home):
        return _normalize(str(url_or_home))
    env = os.environ.get(ENV_URL)
    if env:
        return _normalize(env)
    from lab_hardware.home import resolve

    return "sqlite:///" + str(resolve(url_or_home) / FILENAME)


def _normalize(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's default driver, psycopg2, is not installed)."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def display_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return url


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split())
    return text[:200]


# ---- the store ---------------------------------------------------------------------------------


def _table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "livelab_events",
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("learner", sa.String(200), nullable=False),
        sa.Column("team", sa.String(200), nullable=False, default=""),
        sa.Column("course", sa.String(200), nullable=False, default=""),
        sa.Column("version", sa.String(64), nullable=False, default=""),
        sa.Column("module", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("check", sa.String(200), nullable=True),
        sa.Column("time", sa.Float(precision=53), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("key", sa.String(400), nullable=False, default=""),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("written_at", sa.Float(precision=53), nullable=False),
        sa.Column("system", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
        sa.Index("ix_livelab_events_cvm", "course", "version", "module"),
        sa.Index("ix_livelab_events_learner", "learner"),
    )


class EventStore:
    """The events database.  ``EventStore(home_or_url)``; see :func:`resolve_url`.

    ``schema`` puts the table in a PostgreSQL schema (tests use a fresh one per run).
    Opening checks that the database is reachable and creates the table if needed,
    so a missing or unreachable database is reported at once, in one line.
    """

    def __init__(
        self,
        url_or_home: str | os.PathLike | None = None,
        *,
        url: str | None = None,
        schema: str | None = None,
        connect_timeout: float = 5.0,
    ):
        self.url = resolve_url(url_or_home, url=url)
        shown = display_url(self.url)
        try:
            u = sa.engine.make_url(self.url)
        except sa_exc.ArgumentError:
            raise EventStoreError(
                f"events database URL {shown!r} is not a SQLAlchemy URL "
                "(e.g. sqlite:////path/events.sqlite or postgresql://host/db)"
            ) from None
        self.dialect = u.get_backend_name()
        kw: dict[str, Any] = {}
        if self.dialect == "sqlite":
            if schema:
                raise EventStoreError("a schema is only for server databases, not SQLite")
            db = u.database or ""
            if db and db != ":memory:" and not db.startswith("file:"):
                parent = Path(db).expanduser().parent
                if not parent.is_dir():
                    raise EventStoreError(
                        f"events database directory {parent} does not exist: start a lab "
                        f"there ('livelab up'), pass --home, or set {ENV_URL}"
                    )
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise EventStoreError(
                        f"events database directory {parent} is not writable: pass another --home or set {ENV_URL}"
                    )
            kw["connect_args"] = {"timeout": 30.0}
        elif self.dialect == "postgresql":
            kw["connect_args"] = {"connect_timeout": max(1, int(connect_timeout))}
            kw["pool_pre_ping"] = True
        try:
            self.engine = sa.create_engine(self.url, **kw)
        except (ImportError, sa_exc.NoSuchModuleError, sa_exc.ArgumentError) as exc:
            raise EventStoreError(f"cannot use events database {shown}: {_one_line(exc)}") from None
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.metadata = sa.MetaData(schema=schema)
        self.table = _table(self.metadata)
        try:
            with self.engine.begin() as conn:
                self.metadata.create_all(conn, checkfirst=True)
            self._migrate()
        except sa_exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise EventStoreError(
                f"events database {shown} is unreachable or unusable ({_one_line(exc)}): "
                f"start it, or point {ENV_URL} / --home at a working one"
            ) from None

    def _migrate(self) -> None:
        """Bring a store created by an earlier release up to this schema, in place: add the
        ``system`` column (default false) if it is missing.  Two processes opening an old store
        at once may both try; the loser finds the column there and carries on."""
        schema = self.metadata.schema
        with self.engine.connect() as conn:
            have = {c["name"] for c in sa.inspect(conn).get_columns(self.table.name, schema=schema)}
        if "system" in have:
            return
        prep = self.engine.dialect.identifier_preparer
        name = (prep.quote_schema(schema) + "." if schema else "") + prep.quote(self.table.name)
        false = "0" if self.dialect == "sqlite" else "false"
        try:
            with self.engine.begin() as conn:
                conn.exec_driver_sql(
                    f"ALTER TABLE {name} ADD COLUMN {prep.quote('system')} BOOLEAN NOT NULL DEFAULT {false}"
                )
            log.info("events store %s migrated: added the 'system' column", display_url(self.url))
        except sa_exc.SQLAlchemyError:
            with self.engine.connect() as conn:
                have = {c["name"] for c in sa.inspect(conn).get_columns(self.table.name, schema=schema)}
            if "system" not in have:
                raise

    # ---- writing ---------------------------------------------------------------------------
    def write(self, events: Iterable[Event | Mapping[str, Any]], *, max_future_skew: float = MAX_FUTURE_SKEW) -> int:
        """Insert a batch in one transaction; returns how many were new (duplicates are ignored)."""
        now = _time.time()
        rows: dict[str, dict] = {}
        for i, raw in enumerate(events):
            try:
                ev = validate(Event.from_dict(raw), now=now, max_future_skew=max_future_skew)
            except TypeError as exc:
                raise EventError(f"event {i}: {exc}") from None
            except EventError as exc:
                raise EventError(f"event {i}: {exc}") from None
            d = ev.as_dict()
            d["time"] = float(d["time"])
            d["written_at"] = now
            rows.setdefault(ev.id, d)
        if not rows:
            return 0
        batch = list(rows.values())
        try:
            with self.engine.begin() as conn:
                return sum(self._insert(conn, batch[i : i + CHUNK]) for i in range(0, len(batch), CHUNK))
        except sa_exc.OperationalError as exc:
            raise EventStoreError(
                f"writing to events database {display_url(self.url)} failed "
                f"({_one_line(exc)}); nothing of this batch was written"
            ) from None

    def _insert(self, conn: sa.Connection, rows: list[dict]) -> int:
        """One INSERT ... ON CONFLICT DO NOTHING; counts the rows it really inserted."""
        t = self.table
        if self.dialect in ("sqlite", "postgresql"):
            if self.dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            # executemany through SQLAlchemy's "insertmanyvalues": one cached statement, batched
            # VALUES, and RETURNING yields exactly the rows that were new.
            stmt = insert(t).on_conflict_do_nothing(index_elements=["id"]).returning(t.c.id)
            return len(conn.execute(stmt, rows).all())
        # Any other database: skip ids already there (a racing duplicate fails the batch, which
        # rolls back whole; running it again is safe).
        have = {r[0] for r in conn.execute(sa.select(t.c.id).where(t.c.id.in_([r["id"] for r in rows])))}
        new = [r for r in rows if r["id"] not in have]
        if new:
            conn.execute(t.insert(), new)
        return len(new)

    # ---- reading ---------------------------------------------------------------------------
    def _where(self, filters: Mapping[str, Any] | None, kw: Mapping[str, Any]) -> list:
        f = {**(filters or {}), **kw}
        unknown = sorted(set(f) - set(_FILTERS))
        if unknown:
            raise EventError(f"unknown event filter(s) {', '.join(unknown)}; use {', '.join(_FILTERS)}")
        t, clauses = self.table, []
        for name, value in f.items():
            if value is None:
                continue
            if name == "since":
                clauses.append(t.c.time >= float(value))
            elif name == "until":
                clauses.append(t.c.time < float(value))
            elif isinstance(value, (list, tuple, set, frozenset)):
                clauses.append(t.c[name].in_(list(value)))
            else:
                clauses.append(t.c[name] == value)
        return clauses

    def query(self, filters: Mapping[str, Any] | None = None, **kw: Any) -> list[Event]:
        """Events matching every filter (a value, or a list of allowed values; ``since``/``until``
        bound the time), oldest first."""
        t = self.table
        stmt = sa.select(*[t.c[f] for f in _FIELDS]).where(*self._where(filters, kw)).order_by(t.c.time, t.c.id)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).all()
        except sa_exc.OperationalError as exc:
            raise EventStoreError(
                f"reading events database {display_url(self.url)} failed ({_one_line(exc)})"
            ) from None
        return [Event(**dict(zip(_FIELDS, r))) for r in rows]

    def columns(
        self, filters: Mapping[str, Any] | None = None, *, extra: Sequence[str] = (), **kw: Any
    ) -> dict[str, list]:
        """The matching events as columns (learner, team, course, version, module, kind, check,
        time, system, and the ``extra`` fields asked for, e.g. ``source``, ``key``, ``detail`` to
        check signatures; ``detail`` as JSON text, or already a dict where the driver parses JSON):
        what the time-to-signal computation reads, without building an object per event."""
        names = ("learner", "team", "course", "version", "module", "kind", "check", "time", "system", *extra)
        t = self.table
        # ``detail`` comes as its stored JSON text (a reader parses only the rows it needs:
        # decoding every event's detail would triple a report's read time)
        cols = [sa.type_coerce(t.c[n], sa.Text).label(n) if n == "detail" else t.c[n] for n in names]
        stmt = sa.select(*cols).where(*self._where(filters, kw))
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).all()
        except sa_exc.OperationalError as exc:
            raise EventStoreError(
                f"reading events database {display_url(self.url)} failed ({_one_line(exc)})"
            ) from None
        if not rows:
            return {n: [] for n in names}
        out = {n: list(col) for n, col in zip(names, zip(*rows))}
        out["system"] = [bool(x) for x in out["system"]]
        return out

    def count(self, filters: Mapping[str, Any] | None = None, **kw: Any) -> int:
        stmt = sa.select(sa.func.count()).select_from(self.table).where(*self._where(filters, kw))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "EventStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventStore({display_url(self.url)!r})"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    """WAL: readers (the report) never block the writers (SDK, grader); a crashed writer's
    uncommitted pages are discarded on the next open.  Busy timeout: writers queue, not fail."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# ---- for writers that must never fail because of the events store --------------------------------


def context_from_env() -> dict[str, Any]:
    """Team, course and curriculum version of the learner, as the grader or the kernel sets them
    (``LIVELAB_TEAM``, ``LIVELAB_COURSE``, ``LIVELAB_COURSE_VERSION``), and whether this process
    is a system identity (``LIVELAB_SYSTEM``, see :func:`system_identity`)."""
    return {
        "team": os.environ.get("LIVELAB_TEAM", ""),
        "course": os.environ.get("LIVELAB_COURSE", ""),
        "version": os.environ.get("LIVELAB_COURSE_VERSION", ""),
        "system": system_from_env(),
    }


def system_from_env() -> bool:
    """True when this process runs as an identity of the system (``$LIVELAB_SYSTEM`` set to 1)."""
    return os.environ.get(ENV_SYSTEM, "").strip().lower() in ("1", "true", "yes")


@contextmanager
def system_identity() -> Iterator[None]:
    """Within the block, this process -- and every kernel, worker or subprocess it starts --
    records its learning events as a system identity (``system = true``): for the release
    gate's runs, the demo's simulated team and benchmarks, which are not learning."""
    before = os.environ.get(ENV_SYSTEM)
    os.environ[ENV_SYSTEM] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_SYSTEM, None)
        else:
            os.environ[ENV_SYSTEM] = before


def record(home: str | os.PathLike | None, *events: Mapping[str, Any], url: str | None = None) -> int:
    """Write a few events and never raise: for the SDK and the lab, where a missing or broken
    events store must not break the learner's notebook (a failure is logged as a warning).

    Each mapping needs ``kind``, ``learner`` and ``module``; ``source`` defaults to ``sdk``,
    ``key`` to this process's session (idempotent within a kernel), and team, course and
    version to :func:`context_from_env`.  Returns how many were new."""
    try:
        ctx = context_from_env()
        batch = [
            {"source": "sdk", "key": f"session:{SESSION}", **ctx, **{k: v for k, v in ev.items() if v is not None}}
            for ev in events
        ]
        with EventStore(home, url=url) as store:
            return store.write(batch)
    except Exception as exc:  # noqa: BLE001 - failure-tolerant by design
        what = ", ".join(f"{ev.get('kind')} {ev.get('learner')}/{ev.get('module')}" for ev in events)
        log.warning("learning event(s) not recorded (%s): %s", what, exc)
        return 0


# ---- events that count: signed by the lab ----------------------------------------------------
# The grader (``grading/outcomes.py``) signs the outcome events it writes with the lab's events
# key (``secrets/events.key``); whatever reads them to decide something -- the reports, a
# rollout's release checklist (``labs/rollout.py``) -- keeps only events whose signature
# verifies.  The check lives here, beside the store, so that ``labs`` can use it without
# importing ``grading`` (which sits above it); ``grading.outcomes`` re-exports these names.

#: The kinds only lab-side writers may write: they count only when signed (the SDK in a
#: learner's kernel writes the openings, which a learner could forge anyway by opening).
OUTCOME_KINDS = ("check-passed", "check-failed", "module-completed")
#: What a signature covers, besides ``time``: the columns a report reads to check one.
SIGNED_FIELDS = ("learner", "team", "course", "version", "module", "kind", "check", "source", "key")


def _statement(ev: Mapping[str, Any]) -> bytes:
    fields = [ev.get(k) or "" for k in SIGNED_FIELDS]
    return json.dumps([*fields, round(float(ev.get("time") or 0.0), 6)], separators=(",", ":")).encode()


def sign(events: Iterable[Mapping[str, Any]], key: bytes) -> list[dict]:
    """Each event with ``detail.sig``: HMAC-SHA256 over what it says (who, what, when)."""
    out = []
    for ev in events:
        ev = dict(ev)
        detail = dict(ev.get("detail") or {})
        detail["sig"] = hmac.new(key, _statement(ev), hashlib.sha256).hexdigest()
        ev["detail"] = detail
        out.append(ev)
    return out


def verifies(ev: Any, key: bytes) -> bool:
    """Whether ``ev`` (an Event or a mapping) was signed with ``key`` and not altered since."""
    d = ev.as_dict() if hasattr(ev, "as_dict") else dict(ev)
    sig = (d.get("detail") or {}).get("sig")
    if not isinstance(sig, str):
        return False
    return hmac.compare_digest(sig, hmac.new(key, _statement(d), hashlib.sha256).hexdigest())


def counted(events: Iterable[Any], home: str | os.PathLike) -> list[Any]:
    """The events that count: signed by this lab's events key (none when the lab has no key)."""
    key = events_key(home, create=False)
    if key is None:
        return []
    return [e for e in events if verifies(e, key)]


__all__ = [
    "KINDS",
    "SOURCES",
    "MAX_FUTURE_SKEW",
    "ENV_SYSTEM",
    "Event",
    "EventError",
    "EventStore",
    "EventStoreError",
    "event_id",
    "validate",
    "resolve_url",
    "record",
    "context_from_env",
    "system_from_env",
    "system_identity",
    "OUTCOME_KINDS",
    "SIGNED_FIELDS",
    "sign",
    "verifies",
    "counted",
]
