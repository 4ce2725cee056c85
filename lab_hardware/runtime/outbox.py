"""The device's offline queue: telemetry windows survive a broker outage.

Every window is written here before it is published and stays until the
broker acknowledged it *and* a resend horizon has passed.  Why keep
acknowledged windows?  A broker killed with -9 loses whatever it acknowledged
since its last persistence save; on reconnecting the device therefore resends
everything from a little before the outage, and readers drop duplicates by
``seq``.  That gives zero loss end to end rather than zero loss to the broker.

SQLite (stdlib ``sqlite3``, WAL) keeps it durable across a device crash too.
It is one append-only table on the device's hot path (thousands of windows a
second in the throughput benchmark), written in batches; acknowledgements
only move an in-memory watermark (persisted with each batch), so the hot path
never updates rows.  That is why it does not go through SQLAlchemy.
"""

from __future__ import annotations

import collections
import sqlite3
import time
from pathlib import Path


class Outbox:
    def __init__(self, path: Path, *, horizon: float = 10.0, clock=time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.horizon = horizon
        self._clock = clock
        self._pending: list[tuple[int, float, bytes]] = []  # not yet written to SQLite
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS windows (seq INTEGER PRIMARY KEY, created REAL NOT NULL, payload BLOB NOT NULL)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        row = self.db.execute("SELECT MAX(seq) FROM windows").fetchone()
        self.last_seq = max(row[0] if row[0] is not None else -1, meta.get("last_seq", -1))
        #: every seq <= acked_upto was acknowledged by the broker
        self.acked_upto = meta.get("acked_upto", -1)
        self._acked_above: set[int] = set()
        # After a (re)start nothing recent is known to be delivered: resend the horizon.
        self.next_send = self._resend_point(self._clock())
        # Windows not yet handed to the broker, in memory so the hot path never reads SQLite;
        # refilled from the database after a (re)start or a rewind.
        self._unsent: collections.deque[tuple[int, bytes]] = collections.deque(self._load_from(self.next_send))

    def _load_from(self, seq: int) -> list[tuple[int, bytes]]:
        self.flush()
        return self.db.execute("SELECT seq, payload FROM windows WHERE seq >= ? ORDER BY seq", (seq,)).fetchall()

    def _resend_point(self, since: float) -> int:
        row = self.db.execute(
            "SELECT MIN(seq) FROM windows WHERE seq > ? OR created >= ?", (self.acked_upto, since - self.horizon)
        ).fetchone()
        return row[0] if row[0] is not None else self.last_seq + 1

    def next_seq(self) -> int:
        return self.last_seq + 1

    def add(self, seq: int, payload: bytes) -> None:
        """Queue one window (written at the next :meth:`flush`)."""
        if seq != self.last_seq + 1:
            raise ValueError(f"outbox seq {seq} does not follow {self.last_seq}")
        self.last_seq = seq
        self._pending.append((seq, self._clock(), payload))
        self._unsent.append((seq, payload))

    def flush(self) -> None:
        """One transaction for every window added since the last flush."""
        if not self._pending:
            return
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO windows (seq, created, payload) VALUES (?, ?, ?)", self._pending)
        self.db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", (("last_seq", self.last_seq), ("acked_upto", self.acked_upto))
        )
        self.db.execute("COMMIT")
        self._pending.clear()

    def unsent(self, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` windows to send now, in order (written to SQLite first:
        a window is durable before it can be acknowledged)."""
        self.flush()
        q = self._unsent
        return [q.popleft() for _ in range(min(limit, len(q)))]

    def mark_sent(self, seq: int) -> None:
        self.next_send = max(self.next_send, seq + 1)

    def ack(self, seqs: list[int]) -> None:
        """Broker acknowledgements: advance the contiguous watermark."""
        if not seqs:
            return
        above = self._acked_above
        above.update(s for s in seqs if s > self.acked_upto)
        w = self.acked_upto
        while w + 1 in above:
            w += 1
            above.discard(w)
        self.acked_upto = w

    def rewind(self, disconnected_at: float) -> int:
        """After a reconnect: send again from before the outage (see module doc)."""
        self.flush()
        self.next_send = min(self.next_send, self._resend_point(disconnected_at))
        self._unsent = collections.deque(self._load_from(self.next_send))
        return self.next_send

    def withdraw_unsent(self) -> int:
        """Consent revoked: windows not yet handed to the broker must not leave."""
        self.flush()
        cur = self.db.execute("DELETE FROM windows WHERE seq >= ? AND seq > ?", (self.next_send, self.acked_upto))
        self._unsent.clear()
        return cur.rowcount

    def backlog(self) -> int:
        return len(self._unsent)

    def prune(self) -> None:
        self.flush()
        self.db.execute(
            "DELETE FROM windows WHERE seq <= ? AND created < ?", (self.acked_upto, self._clock() - 2 * self.horizon)
        )

    def close(self) -> None:
        self.flush()
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('acked_upto', ?)", (self.acked_upto,))
        self.db.close()
