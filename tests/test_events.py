"""The learning-events store (labs/learning_events.py) on SQLite and on a real PostgreSQL.

Idempotent writes, whole-batch refusal of bad events, one-line errors for a missing or
unreachable database, and crash safety: a writer SIGKILLed in the middle of a batch leaves
nothing of it behind, and running the batch again writes it exactly once.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from labs.learning_events import (
    KINDS,
    MAX_FUTURE_SKEW,
    Event,
    EventError,
    EventStore,
    EventStoreError,
    event_id,
    record,
    resolve_url,
)

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
T0 = 1_700_000_000.0


@pytest.fixture(autouse=True)
def _no_env_store(monkeypatch):
    monkeypatch.delenv("LIVELAB_EVENTS_URL", raising=False)
    for k in ("LIVELAB_TEAM", "LIVELAB_COURSE", "LIVELAB_COURSE_VERSION"):
        monkeypatch.delenv(k, raising=False)


def pg_engine():
    import sqlalchemy as sa

    return sa.create_engine(
        PG_BASE.replace("postgresql://", "postgresql+psycopg://"), connect_args={"connect_timeout": 3}
    )


@pytest.fixture(scope="module")
def pg_schema():
    """A uniquely named schema in the real PostgreSQL at 127.0.0.1:5432 (database 'test'),
    dropped afterwards; skipped with the reason if the server is absent."""
    try:
        import psycopg

        psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres", connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(
            f"PostgreSQL at 127.0.0.1:5432 (database 'test', user postgres) is not available: "
            f"{' '.join(str(exc).split())[:120]}"
        )
    name = f"livelab_test_{uuid.uuid4().hex[:10]}"
    eng = pg_engine()
    with eng.begin() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    yield name
    with eng.begin() as c:
        c.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_args(request, tmp_path):
    """(url_or_home, schema) for a fresh, empty store on each backend."""
    if request.param == "sqlite":
        return str(tmp_path), None
    schema = request.getfixturevalue("pg_schema")
    # one table per test: a schema of its own inside the run's schema is overkill; use a fresh one
    sub = f"{schema}_{uuid.uuid4().hex[:6]}"
    eng = pg_engine()
    with eng.begin() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{sub}"')
    request.addfinalizer(lambda: _drop(eng, sub))
    return PG_BASE, sub


def _drop(eng, schema):
    with eng.begin() as c:
        c.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    eng.dispose()


def ev(i: int = 0, **kw) -> Event:
    base = dict(
        learner=f"l{i % 7}",
        module="m1",
        kind="check-passed",
        check=f"c{i % 3}",
        key=f"run-{i}",
        time=T0 + i,
        source="grader",
        course="edge-ml",
        version="1.0.0",
        team="t",
    )
    base.update(kw)
    return Event(**base)


# ---- idempotency, queries ----------------------------------------------------------------------


def test_write_is_idempotent_and_queryable(store_args):
    url, schema = store_args
    with EventStore(url, schema=schema) as store:
        batch = [ev(i) for i in range(1200)]  # more than one INSERT chunk
        assert store.write(batch) == 1200
        assert store.write(batch) == 0  # re-grading does not double-count
        assert store.write(batch[:5] + [ev(5000)]) == 1  # only the new one
        # A batch naming the same event twice writes it once.
        assert store.write([ev(6000), ev(6000)]) == 1
        assert store.count() == 1202
        got = store.query(learner="l1", check=["c0", "c1"])
        assert got and all(e.learner == "l1" and e.check in ("c0", "c1") for e in got)
        assert [e.time for e in got] == sorted(e.time for e in got)
        one = store.query(id=batch[3].id)
        assert one == [batch[3]]
        assert store.count(since=T0 + 10, until=T0 + 20) == 10
        cols = store.columns(kind="check-passed")
        assert len(cols["time"]) == 1202 and set(cols) >= {"learner", "team", "course", "version", "module"}
        assert store.columns(learner="nobody") == {k: [] for k in cols}
        with pytest.raises(EventError, match="unknown event filter"):
            store.query(colour="red")


def test_event_id_is_the_idempotency_key():
    a = ev(1)
    assert a.id == event_id("grader", "l1", "edge-ml", "1.0.0", "m1", "check-passed", "c1", "run-1")
    assert ev(1).id == a.id and ev(1, time=T0 + 99).id == a.id  # same statement, same run: one event
    assert ev(1, key="run-2").id != a.id  # a new grading run is a new event
    assert ev(1, version="1.1.0").id != a.id and ev(1, source="sdk").id != a.id
    assert Event.from_dict(a.as_dict()) == a


# ---- bad input ---------------------------------------------------------------------------------------


def test_bad_events_refuse_the_whole_batch_with_one_line(tmp_path):
    with EventStore(tmp_path) as store:
        store.write([ev(0)])
        cases = [
            (dict(learner="a", module="m", kind="module-closed"), "unknown event kind 'module-closed'"),
            (dict(learner="a", module="m", kind="module-opened", time=time.time() + 3600), "in the future"),
            (dict(learner="a", module="m", kind="check-passed"), "names its check"),
            (dict(learner="", module="m", kind="module-opened"), "non-empty"),
            (dict(learner="a", kind="module-opened"), "missing the field 'module'"),
            (dict(learner="a", module="m", kind="module-opened", source="browser"), "unknown event source"),
            (dict(learner="a", module="m", kind="module-opened", time="yesterday"), "UTC seconds"),
            (dict(learner="a", module="m", kind="module-opened", time=float("nan")), "UTC seconds"),
            (dict(learner="a", module="m", kind="module-opened", schema="other/v9"), "schema"),
            (dict(learner="a", module="m", kind="module-opened", detail=[1, 2]), "JSON object"),
            (dict(learner="a", module="m", kind="module-opened", detail={"x": object()}), "JSON"),
        ]
        for bad, msg in cases:
            with pytest.raises(EventError, match=msg) as info:
                store.write([ev(1), bad, ev(2)])
            assert "\n" not in str(info.value) and str(info.value).startswith("event 1:")
        assert store.count() == 1  # nothing of any refused batch was written
        # Within the skew allowance the future is fine (writers' clocks differ a little).
        assert (
            store.write([dict(learner="a", module="m", kind="module-opened", time=time.time() + MAX_FUTURE_SKEW / 2)])
            == 1
        )
        assert store.write([]) == 0
        # A writer's own fields (the grader's score, submission...) are kept in detail, not refused.
        assert (
            store.write(
                [
                    dict(
                        learner="g",
                        module="m",
                        kind="check-failed",
                        check="consent",
                        source="grader",
                        schema="livelab.event/v1",
                        score=0.5,
                        submission="ab12",
                        detail={"run": 3},
                    )
                ]
            )
            == 1
        )
        (got,) = store.query(learner="g")
        assert got.detail == {"score": 0.5, "submission": "ab12", "run": 3}
        assert set(KINDS) == {
            "module-opened",
            "lab-connected",
            "telemetry-first-seen",
            "check-passed",
            "check-failed",
            "module-completed",
        }


@pytest.mark.parametrize(
    "where,msg",
    [
        ("postgresql://127.0.0.1:1/x", "unreachable"),
        ("{tmp}/no/such/dir", "does not exist"),
        ("sqlite:///{tmp}/no/such/dir/events.sqlite", "does not exist"),
        ("{file}/sub", "does not exist"),  # a home under a regular file
        ("mysql://127.0.0.1/x", "cannot use events database"),
        ("nosuchdb://x/y", "cannot use events database"),
    ],
)
def test_missing_or_unreachable_database_is_one_line(tmp_path, where, msg):
    f = tmp_path / "a-file"
    f.write_text("x")
    target = where.format(tmp=tmp_path, file=f)
    t0 = time.monotonic()
    with pytest.raises(EventStoreError, match=msg) as info:
        EventStore(target)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    assert time.monotonic() - t0 < 10


def test_where_the_store_is(tmp_path, monkeypatch):
    assert resolve_url(tmp_path) == f"sqlite:///{tmp_path}/events.sqlite"
    assert resolve_url(url="postgresql://h/db") == "postgresql+psycopg://h/db"
    monkeypatch.setenv("LIVELAB_EVENTS_URL", "sqlite:////elsewhere/e.sqlite")
    assert resolve_url(tmp_path) == "sqlite:////elsewhere/e.sqlite"  # the setting wins over a home
    assert resolve_url(tmp_path, url="sqlite:///x") == "sqlite:///x"  # an explicit URL wins over both
    monkeypatch.delenv("LIVELAB_EVENTS_URL")
    monkeypatch.setenv("LIVELAB_HOME", str(tmp_path / "h"))
    assert resolve_url() == f"sqlite:///{tmp_path}/h/events.sqlite"


def test_record_never_raises(tmp_path, caplog):
    assert record(tmp_path / "missing", {"kind": "module-opened", "learner": "a", "module": "m"}) == 0
    assert "not recorded" in caplog.text
    assert record(tmp_path, {"kind": "bogus", "learner": "a", "module": "m"}) == 0
    e = {"kind": "module-opened", "learner": "a", "module": "m", "time": T0}
    assert record(tmp_path, e) == 1 and record(tmp_path, e) == 0  # same session: idempotent
    with EventStore(tmp_path) as s:
        (got,) = s.query()
    assert got.source == "sdk" and got.key.startswith("session:")


# ---- crash safety ------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    from labs import learning_events as E
    url, schema, n, hook = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), sys.argv[4] == "kill-me"
    batch = [E.Event(learner=f"l{i % 50}", module="m1", kind="check-failed", check=f"c{i % 4}",
                     key=f"run-7/{i}", source="grader", time=1_700_000_000.0 + i) for i in range(n)]
    store = E.EventStore(url, schema=schema)
    if hook:  # stop for good in the middle of the batch, after two INSERT chunks
        real, calls = E.EventStore._insert, []
        def slow(self, conn, rows):
            got = real(self, conn, rows)
            calls.append(got)
            if len(calls) == 2:
                print("mid-batch", sum(calls), flush=True)
                time.sleep(120)
            return got
        E.EventStore._insert = slow
    print("inserted", store.write(batch), flush=True)
""")


def run_writer(tmp_path, url, schema, n, hook=""):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), url, schema or "", str(n), hook],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )


def test_writer_killed_mid_batch_leaves_nothing_and_rerun_completes_once(tmp_path, store_args):
    url, schema = store_args
    n = 5 * 500 + 123
    with EventStore(url, schema=schema) as store:
        # A first, committed batch overlapping the one that will be killed.
        p = run_writer(tmp_path, url, schema, 700)
        out, errs = p.communicate(timeout=60)
        assert p.returncode == 0, errs
        assert out.strip() == "inserted 700" and store.count() == 700

        p = run_writer(tmp_path, url, schema, n, "kill-me")
        line = p.stdout.readline()
        assert line.startswith("mid-batch"), p.stderr.read()
        assert int(line.split()[1]) == 1000 - 700  # rows of this batch inserted so far, uncommitted
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        assert p.returncode == -signal.SIGKILL
        # Consistent: exactly the committed batch, nothing half-written.
        deadline = time.monotonic() + 60
        while store.count() != 700 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.count() == 700
        if store.dialect == "sqlite":
            db = store.url.removeprefix("sqlite:///")
            with sqlite3.connect(db) as c:
                assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

        # Running the same batch again completes it, exactly once.
        p = run_writer(tmp_path, url, schema, n)
        out, errs = p.communicate(timeout=60)
        assert p.returncode == 0, errs
        assert out.strip() == f"inserted {n - 700}"
        assert store.count() == n
        assert len(set(store.columns()["time"])) == n
        p = run_writer(tmp_path, url, schema, n)
        assert p.communicate(timeout=60)[0].strip() == "inserted 0"
        assert store.count() == n


def test_concurrent_writers_with_overlapping_batches(tmp_path):
    """The grader's Dask workers write at the same time; SQLite writers queue, none fails."""
    url = str(tmp_path)
    EventStore(url).close()
    procs = [run_writer(tmp_path, url, None, n) for n in (3000, 2000, 3000)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    inserted = [int(o[0].split()[-1]) for o in outs]
    assert sum(inserted) == 3000
    with EventStore(url) as store:
        assert store.count() == 3000


# ---- the SDK writes events -----------------------------------------------------------------------


def _wait_count(store, n, timeout=20, **filters):
    """The lab's recorder writes the SDK's announcements: wait for them (bounded)."""
    deadline = time.monotonic() + timeout
    while store.count(**filters) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return store.count(**filters)


def test_sdk_writes_opening_connection_and_first_telemetry(lab_home, monkeypatch):
    """The SDK announces; the lab's trusted recorder stores the events under the namespace's
    owner (the lab's owner on a single-user lab), whatever name the kernel claims."""
    from lab_hardware.home import read_json
    from labs import Lab

    owner = read_json(lab_home / "lab.json")["owner"]
    monkeypatch.setenv("LIVELAB_TEAM", "team-a")
    with Lab.connect("m1-telemetry", home=lab_home, learner="ada", course="edge-ml", version="1.1.0") as lab:
        with EventStore(lab_home) as store:
            assert _wait_count(store, 2, learner=owner, module="m1-telemetry") == 2
            assert store.count(learner="ada") == 0
            got = {e.kind: e for e in store.query(learner=owner, module="m1-telemetry")}
            assert set(got) == {"module-opened", "lab-connected"}
            o = got["module-opened"]
            assert (o.module, o.course, o.version, o.team, o.source) == (
                "m1-telemetry",
                "edge-ml",
                "1.1.0",
                "team-a",
                "sdk",
            )
            assert o.time <= got["lab-connected"].time <= time.time()
            lab.grant_consent("dev-0")
            lab.next_window("dev-0", timeout=10)
            assert _wait_count(store, 1, learner=owner, kind="telemetry-first-seen") == 1
            lab.revoke_consent("dev-0")
    # The same kernel session opening the module again records nothing new (idempotent)...
    with Lab.connect("m1-telemetry", home=lab_home, learner="ada", course="edge-ml", version="1.1.0") as lab:
        lab._record(("telemetry-first-seen", time.time()))  # a redelivered announcement, too
    # An explicit team wins over $LIVELAB_TEAM (a learner opening a module outside the grader).
    with Lab.connect("m2-replay", home=lab_home, learner="cy", course="edge-ml", version="1.1.0", team="blue") as lab:
        assert lab.team == "blue"
    with EventStore(lab_home) as store:
        assert _wait_count(store, 2, learner=owner, module="m2-replay") == 2
        assert {e.team for e in store.query(learner=owner, module="m2-replay")} == {"blue"}
        # (recorded after the repeats above, which the one recorder received first)
        assert store.count(learner=owner, module="m1-telemetry") == 3
    # ... and a broken events store never breaks the learner's notebook.
    monkeypatch.setenv("LIVELAB_EVENTS_URL", "postgresql://127.0.0.1:1/x")
    with Lab.connect("m2-replay", home=lab_home, learner="bob") as lab:
        assert lab.devices


def test_closing_the_sdk_right_after_opening_waits_for_the_broker_to_take_its_announcements(lab_home, monkeypatch):
    """A notebook that opens a module and closes the lab at once still has its announcements
    stored.  Seen under a CPU hog: closing disconnected before the broker had read the second
    announcement, the broker's acknowledgement of the first reset the connection, and the
    broker lost the second (``lab-connected`` of m2 never stored).  Paho says so: loop_stop
    does not wait for QoS 1 publishes, wait_for_publish does.  Here the broker is paused while
    the announcements are made, so closing must wait for its acknowledgements (bounded)."""
    import threading

    import paho.mqtt.client as paho

    from lab_hardware.home import read_json
    from labs import Lab

    broker = int(read_json(lab_home / "run" / "supervisor.json")["broker"]["pid"])
    announced: list = []
    publish = paho.Client.publish

    def spy(self, topic, *a, **kw):
        if topic.endswith("/learner/events"):
            if not announced:
                os.kill(broker, signal.SIGSTOP)  # resumed below, whatever happens
            info = publish(self, topic, *a, **kw)
            announced.append(info)
            return info
        return publish(self, topic, *a, **kw)

    monkeypatch.setattr(paho.Client, "publish", spy)
    closed = threading.Event()
    try:
        lab = Lab.connect("m3-bundles", home=lab_home, learner="cy", course="edge-ml", version="1.1.0")
        closing = threading.Thread(target=lambda: (lab.close(), closed.set()), daemon=True)
        closing.start()
        closed.wait(0.5)  # the broker is paused: nothing can acknowledge meanwhile
    finally:
        os.kill(broker, signal.SIGCONT)
    closing.join(30)
    assert closed.is_set(), "close() did not return within 30 s of the broker resuming"
    assert len(announced) == 2 and all(info.is_published() for info in announced), [
        info.is_published() for info in announced
    ]


# ---- hostile names (issue 13, point 5) -------------------------------------------------------------

HOSTILE_OK = ("</script><!--", "$\\frac{1}{0}$", "[/]", "[link=https://example.invalid]x[/link]", "a & <b>", "Zoë-Ŝ 李")
HOSTILE_REFUSED = (
    ("nul\x00byte", "U+0000"),
    ("two\nlines", "U+000A"),
    ("\x1b[31mred", "U+001B"),
    ("tab\there", "U+0009"),
    ("line\u2028sep", "U+2028"),
    ("bidi\u202eevil", "U+202E"),
    ("x" * 129, "129 characters"),
    ("   ", "empty"),
    (" padded", "whitespace"),
)


def test_names_library_refuses_with_one_line():
    from labs import names

    for good in HOSTILE_OK:
        assert names.check("learner", good) == good
    for bad, why in HOSTILE_REFUSED:
        with pytest.raises(names.NameRefused, match=re.escape(why)) as info:
            names.check("team", bad)
        msg = str(info.value)
        assert msg.startswith("team name ") and "\n" not in msg and "\x00" not in msg and "\x1b" not in msg
        assert len(msg) < 200
    with pytest.raises(names.NameRefused, match="must be a string"):
        names.check("module", 7)
    names.check_all({"learner": "ana", "team": "", "course": None})  # absent team/course: fine


@pytest.mark.parametrize("field", ["learner", "team", "module", "check", "course", "version"])
def test_the_store_refuses_hostile_names_and_keeps_odd_but_printable_ones(tmp_path, field):
    with EventStore(tmp_path) as store:
        for bad, why in HOSTILE_REFUSED:
            if field in ("team", "course", "version") and why == "empty":
                continue  # these may be absent
            with pytest.raises(EventError, match=re.escape(why)) as info:
                store.write([ev(1), ev(2, **{field: bad})])
            assert "\n" not in str(info.value) and "\x00" not in str(info.value)
            assert str(info.value).startswith(f"event 1: {field} name" if why != "empty" else "event 1: ")
        assert store.count() == 0  # nothing of a refused batch, no NUL byte stored
        for i, good in enumerate(HOSTILE_OK):
            assert store.write([ev(i, **{field: good})]) == 1
        assert {getattr(e, field) for e in store.query()} == set(HOSTILE_OK)


def test_sdk_refuses_a_hostile_name_before_looking_for_a_lab(tmp_path):
    from labs import Lab, names

    for kw in (
        {"module": "m1\n"},
        {"module": "m1", "learner": "a\x00"},
        {"module": "m1", "team": "\x1b[2J"},
        {"module": "m1", "course": "c" * 500},
        {"module": "m1", "version": "1.0\u2028"},
    ):
        with pytest.raises(names.NameRefused) as info:
            Lab.connect(home=tmp_path / "no-lab-here", **kw)
        assert "\n" not in str(info.value)


# ---- system identities (issue 10, point 4) -----------------------------------------------------------


def test_system_field_defaults_to_false_and_is_queryable(store_args):
    from labs.learning_events import system_identity

    url, schema = store_args
    with EventStore(url, schema=schema) as store:
        assert (
            store.write(
                [
                    ev(1),
                    ev(2, learner="release-gate", system=True),
                    {**ev(3).as_dict(), "learner": "bot", "system": True},
                ]
            )
            == 3
        )
        got = {e.learner: e.system for e in store.query()}
        assert got == {"l1": False, "release-gate": True, "bot": True}
        assert store.count(system=False) == 1 and store.count(system=True) == 2
        assert store.columns()["system"] == [False, True, True] or sorted(store.columns()["system"]) == [
            False,
            True,
            True,
        ]
        with pytest.raises(EventError, match="system"):
            store.write([{**ev(4).as_dict(), "system": "yes"}])
    # A process that runs as a system identity marks what record() writes.
    home = tmp_path_for(url)
    if home is not None:
        with system_identity():
            assert os.environ["LIVELAB_SYSTEM"] == "1"
            assert record(home, {"kind": "module-opened", "learner": "gate", "module": "m", "time": T0}) == 1
        assert "LIVELAB_SYSTEM" not in os.environ
        assert record(home, {"kind": "module-opened", "learner": "ana", "module": "m", "time": T0}) == 1
        with EventStore(home) as store:
            assert {e.learner: e.system for e in store.query(kind="module-opened")} == {"gate": True, "ana": False}


def tmp_path_for(url: str):
    return None if "://" in url else url


def test_a_store_from_before_the_system_field_is_migrated_and_stays_readable(tmp_path):
    # The table as the previous release created it (no 'system' column), with one event in it.
    db = tmp_path / "events.sqlite"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE livelab_events (id VARCHAR(64) NOT NULL PRIMARY KEY, learner VARCHAR(200) NOT NULL, "
        "team VARCHAR(200) NOT NULL, course VARCHAR(200) NOT NULL, version VARCHAR(64) NOT NULL, "
        'module VARCHAR(200) NOT NULL, kind VARCHAR(32) NOT NULL, "check" VARCHAR(200), '
        'time FLOAT NOT NULL, source VARCHAR(16) NOT NULL, "key" VARCHAR(400) NOT NULL, '
        "detail JSON NOT NULL, written_at FLOAT NOT NULL)"
    )
    old = ev(1)
    con.execute(
        "INSERT INTO livelab_events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            old.id,
            old.learner,
            old.team,
            old.course,
            old.version,
            old.module,
            old.kind,
            old.check,
            old.time,
            old.source,
            old.key,
            "{}",
            T0,
        ),
    )
    con.commit()
    con.close()
    with EventStore(tmp_path) as store:
        (got,) = store.query()
        assert got.id == old.id and got.system is False
        assert store.write([ev(2, learner="bot", system=True)]) == 1
        assert store.count(system=True) == 1 and store.count(system=False) == 1
    with EventStore(tmp_path) as store:  # opening again: nothing to migrate, nothing lost
        assert store.count() == 2
    cols = [r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(livelab_events)")]
    assert cols.count("system") == 1


def test_system_identities_mark_the_grader_and_the_release_gate(monkeypatch):
    from courses import release
    from grading import events as grading_events
    from labs.learning_events import system_identity

    result = {
        "assignment": "m1",
        "student": "ana",
        "cells": [{"score": 1, "max_score": 1, "grade_id": "t1", "kind": "test"}],
        "status": "graded",
        "score": 1,
        "max_score": 1,
        "graded_at": T0,
    }
    assert {e["system"] for e in grading_events.events_for(result)} == {False}
    with system_identity():
        evs = grading_events.events_for(result)
    assert {e["system"] for e in evs} == {True} and all(Event.from_dict(e).system for e in evs)
    # The release gate runs as a system identity (its notebooks' kernels inherit the marking).
    seen = []
    monkeypatch.setattr(
        release, "_run_gate", lambda *a, **kw: seen.append(os.environ.get("LIVELAB_SYSTEM")) or ([], [])
    )
    assert release.run_gate(None, {}, {}, Path("."), progress=lambda m: None) == ([], [])
    assert seen == ["1"] and "LIVELAB_SYSTEM" not in os.environ


def test_migration_on_both_backends(store_args):
    """A store whose table lacks the 'system' column (as an earlier release made it) gets it
    when opened, on SQLite and on PostgreSQL; its events read as not system."""
    url, schema = store_args
    with EventStore(url, schema=schema) as store:
        store.write([ev(1), ev(2)])
        name = (f'"{schema}".' if schema else "") + "livelab_events"
        with store.engine.begin() as c:
            c.exec_driver_sql(f'ALTER TABLE {name} DROP COLUMN "system"')
    with EventStore(url, schema=schema) as store:
        assert [e.system for e in store.query()] == [False, False]
        assert store.write([ev(3, system=True)]) == 1 and store.count(system=True) == 1
