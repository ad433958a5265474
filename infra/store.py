"""The event store: eventsourcing's recorders on SQLite or PostgreSQL.

One table of stored events (eventsourcing's ``stored_events``: stream id, stream
version, topic, msgpack state, and a global notification id that is our *log
position*). Optimistic concurrency comes from its primary key (stream id, version).

We add one table, ``command_responses``, written in the same transaction as the
events of the command it answers, so a retried request with the same
``Idempotency-Key`` gets the first answer back even after a restart; and ``user_keys``
(infra/keys.py): personal text is sealed with its owner's key on append, and
``domain.events.decode`` opens it again, so no reader ever sees ciphertext.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    StoredEvent,
    Transcoder,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
from psycopg.sql import SQL, Identifier

from domain import events as ev
from infra.keys import RING, StoreKeys

__all__ = ["STORE_AWAY_ERRORS", "EventStore", "IntegrityError", "MsgspecTranscoder", "Pending", "StoredResponse"]

# What the store raises while its database cannot be reached (stopped, restarting, connections
# cut) or is too busy to answer: callers answer 503 and try again later.
STORE_AWAY_ERRORS = (OperationalError, InterfaceError)


class MsgspecTranscoder(Transcoder):
    """eventsourcing's transcoder interface over our msgpack event contract."""

    def encode(self, obj: Any) -> bytes:
        return ev.encode(obj)

    def decode(self, data: bytes) -> Any:
        return ev.decode(data)


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes
    position: int


@dataclass
class Pending:
    """One command's events (with their stream ids and versions) and, if the request
    carried an Idempotency-Key, the response to remember for it."""

    events: list[tuple[UUID, int, ev.Event]]
    idempotency: tuple[UUID, str, int, bytes] | None = None  # client, key, status, body


def _responses(pending: Sequence[Pending]) -> list[tuple[str, str, int, bytes, int]]:
    """Rows for command_responses: (client, key, status, body, index of the command's
    last event in the batch); the index becomes a log position once inserted."""
    rows, end = [], 0
    for p in pending:
        end += len(p.events)
        if p.idempotency:
            client, key, status, body = p.idempotency
            rows.append((str(client), key, status, body, end - 1))
    return rows


def _columns(rows: list[tuple], width: int) -> list[list]:
    """Rows to column lists (PostgreSQL arrays)."""
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


class _SQLiteRecorder(SQLiteApplicationRecorder):
    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            "CREATE TABLE IF NOT EXISTS command_responses (api_client_id TEXT, key TEXT, "
            "status INTEGER, body BLOB, position INTEGER, PRIMARY KEY (api_client_id, key))",
        ]

    def _insert_events(self, c, stored_events, *, pending=(), keys=None, **kwargs):
        if keys is not None:  # user keys created or destroyed for these events (infra/keys.py)
            keys[0].write(c, keys[1])
        ids = super()._insert_events(c, stored_events, **kwargs)
        rows = [(*r[:4], ids[r[4]]) for r in _responses(pending)]
        if rows:
            c.executemany("INSERT INTO command_responses VALUES (?,?,?,?,?)", rows)
        return ids


class _PostgresRecorder(PostgresApplicationRecorder):
    """eventsourcing's recorder, with an append that is one round trip: a function that
    takes the table lock (as the stock insert does, so positions are gap-free in commit
    order), inserts the events from plain arrays and the command responses, in one
    transaction. The stock path pipelines several statements and dumps an array of
    composite values in Python; under load that cost more than the database did."""

    def __init__(self, datastore: PostgresDatastore):
        super().__init__(datastore)
        names = {
            "schema": Identifier(datastore.schema),
            "table": Identifier(self.events_table_name),
            "channel": Identifier(self.channel_name),
        }
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.command_responses (api_client_id text, "
                "key text, status int, body bytea, position bigint, PRIMARY KEY (api_client_id, key))"
            ).format(**names)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.oasst_append_events("
                "ids uuid[], versions bigint[], topics text[], states bytea[], "
                "r_clients text[], r_keys text[], r_status int[], r_bodies bytea[], r_last int[]) "
                "RETURNS SETOF bigint LANGUAGE plpgsql AS $$ "
                "DECLARE positions bigint[]; "
                "BEGIN "
                "  SET LOCAL lock_timeout = '10s'; "
                "  LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
                "  NOTIFY {channel}; "
                "  WITH ins AS (INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
                "    SELECT * FROM unnest(ids, versions, topics, states) RETURNING notification_id) "
                "  SELECT array_agg(notification_id ORDER BY notification_id) INTO positions FROM ins; "
                "  INSERT INTO {schema}.command_responses "
                "    SELECT c, k, s, b, positions[i] FROM unnest(r_clients, r_keys, r_status, r_bodies, r_last) "
                "    AS r(c, k, s, b, i); "
                "  RETURN QUERY SELECT unnest(positions); "
                "END $$"
            ).format(**names)
        )
        self.append_call = SQL(
            "SELECT {schema}.oasst_append_events(%s, %s, %s, %s, %s, %s, %s, %s, %s) AS position"
        ).format(**names)

    def insert_events(self, stored_events, *, pending=(), keys=None, **kwargs) -> list[int]:
        events = _columns([(e.originator_id, e.originator_version, e.topic, e.state) for e in stored_events], 4)
        responses = _columns([(*r[:4], r[4] + 1) for r in _responses(pending)], 5)  # SQL arrays count from 1
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            if keys is None:  # the usual case: one statement, its own transaction
                curs.execute(self.append_call, [*events, *responses], prepare=True)
                return [row["position"] for row in curs.fetchall()]
            with conn.transaction():  # user keys created or destroyed for these events (infra/keys.py)
                keys[0].write(curs, keys[1])
                curs.execute(self.append_call, [*events, *responses], prepare=True)
                return [row["position"] for row in curs.fetchall()]


class _Datastore(PostgresDatastore):
    """eventsourcing's datastore, quick to notice PostgreSQL going away and coming back.

    psycopg's pool makes a caller wait up to ``connect_timeout`` (5 s) for a connection and
    reconnects in the background with growing delays (1, 2, 4, 8 s…), so after an outage the
    store would stay unusable for long after the server is back. Here, once an operation failed
    with the database away (and before the first one), each later one first opens one plain
    connection: while the server is down that fails at once (no wait on the pool); once it
    succeeds, the pool's dead connections are discarded and replaced (``pool.check()``) and the
    operation goes on. Background reconnects give up after a second: from then on the operations
    drive them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pool.reconnect_timeout = 1.0
        self.away = True  # an operation failed with the database away, or none has run yet

    @contextmanager
    def get_connection(self) -> Iterator[psycopg.Connection]:
        try:
            if self.away:
                self._back()
            with super().get_connection() as conn:
                yield conn
        except STORE_AWAY_ERRORS:
            self.away = True
            raise

    def _back(self) -> None:
        """Raises OperationalError while the server does not take connections; else makes the
        pool usable again."""
        params = {k: v for k, v in self.pool.kwargs.items() if k != "row_factory"}
        try:
            psycopg.connect(**params, connect_timeout=2).close()
            if not self.pool.closed:  # (before the first operation it is not open yet)
                self.pool.check()
        except psycopg.Error as exc:
            raise OperationalError(str(exc)) from exc
        self.away = False


def _open_recorder(url: str):
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else parsed.path
        if path not in ("", ":memory:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        else:
            path = "file::memory:?cache=shared"
        datastore = SQLiteDatastore(path, lock_timeout=30)
        recorder = _SQLiteRecorder(datastore)
        return "sqlite", recorder
    if parsed.scheme in ("postgresql", "postgres"):
        query = dict(p.split("=", 1) for p in parsed.query.split("&") if "=" in p)
        datastore = _Datastore(
            dbname=unquote(parsed.path.lstrip("/")) or "postgres",
            host=unquote(query.get("host", "")) or parsed.hostname or "127.0.0.1",  # ?host= a socket dir
            port=parsed.port or 5432,
            user=unquote(parsed.username or "postgres"),
            password=unquote(parsed.password or ""),
            pool_size=4,
            max_overflow=4,
            schema=query.get("schema", ""),
            lock_timeout=10,
        )
        return "postgresql", _PostgresRecorder(datastore)
    raise SystemExit(f"unsupported OASST_DATABASE_URL {url!r}: use sqlite:///PATH or postgresql://…")


class Folded(NamedTuple):
    """An event as a fold reads it (EventStore.pages): its position and its encoded state."""

    id: int
    state: bytes


class EventStore:
    """Append and read the log. ``append`` is synchronous and does one transaction;
    ``GroupCommitter`` below batches concurrent appends into such transactions."""

    def __init__(self, url: str):
        self.url = url
        self.backend, self.recorder = _open_recorder(url)
        self.transcoder = MsgspecTranscoder()
        with self.schema_lock():
            self.recorder.create_table()
            schema = getattr(self.recorder.datastore, "schema", "")
            self.keys = StoreKeys(self.backend, self.recorder.datastore, schema)

    def close(self) -> None:
        RING.sources.discard(self.keys)
        self.recorder.datastore.close()

    def append(self, pending: Sequence[Pending]) -> list[int]:
        """Writes all events of ``pending`` in one transaction; returns their positions.
        Raises IntegrityError if any stream version is taken (nothing is written). Personal
        text is sealed first; the keys it needs are stored, and the keys of users erased in
        the batch destroyed, in the same transaction: an acknowledged erasure destroyed the key."""
        seal = self.keys.seal
        stored = [
            StoredEvent(stream, version, ev.topic(e), self.transcoder.encode(seal(e)))
            for p in pending
            for stream, version, e in p.events
        ]
        if not stored:
            return []
        changes = self.keys.take()
        try:
            return list(self.recorder.insert_events(stored, pending=pending, keys=changes and (self.keys, changes)))
        except BaseException:
            if changes:
                self.keys.failed(changes)
            raise

    def read(self, after: int = 0, limit: int = 1000) -> list[tuple[int, ev.Event]]:
        """Events with position > after, in log order."""
        notes = self.recorder.select_notifications(start=after, limit=limit, inclusive_of_start=False)
        return [(n.id, self.transcoder.decode(n.state)) for n in notes]

    def read_stored(self, after: int = 0, limit: int = 1000):
        """Raw notifications (position, stream, version, topic, state) for replay."""
        if self.backend == "sqlite":
            return self.recorder.select_notifications(start=after, limit=limit, inclusive_of_start=False)
        sql = SQL(
            "SELECT notification_id AS id, originator_id, originator_version, topic, state FROM {}.{} "
            "WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        ).format(Identifier(self.recorder.datastore.schema), Identifier(self.recorder.events_table_name))
        return self._select(sql, [after, limit])

    @contextmanager
    def schema_lock(self) -> Iterator[None]:
        """PostgreSQL: one process at a time creates tables (processes starting together raced:
        "tuple concurrently updated", a duplicate type name). A transaction-level advisory lock,
        held while the block runs (its statements may use other connections)."""
        if self.backend == "sqlite":
            yield
            return
        with self.recorder.datastore.transaction(commit=True) as c:
            c.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            yield

    def pages(
        self, after: int, upto: int | None = None, topics: Sequence[str] | None = None, page_size: int = 20_000
    ) -> Iterator[list]:
        """Every page of events in (after, upto] (of ``topics`` when given), in log order, each
        event with its ``id`` (position) and ``state``: what a fold reads. On PostgreSQL only those
        two columns are read (a stream id made into a UUID and a Notification per event cost the
        reading thread, which shares the interpreter with the fold, ~8 s at OA's size), and the
        next page is read in a thread while the caller folds this one: the server's work and the
        transfer overlap the fold (bench/projections.py, bench/snapshot.py)."""
        upto = self.max_position() if upto is None else upto
        if self.backend == "sqlite":  # a connection per thread there: an in-memory store is one thread's
            while page := self._sqlite_page(after, upto, topics, page_size):
                yield page
                after = page[-1].id
            return
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(self._folded_page, after, upto, topics, page_size)
            while page := ahead.result():
                ahead = pool.submit(self._folded_page, page[-1].id, upto, topics, page_size)
                yield page

    def _sqlite_page(self, after: int, upto: int, topics: Sequence[str] | None, limit: int) -> list:
        if topics is None:
            return [n for n in self.read_stored(after, limit) if n.id <= upto]
        return self.read_topics(after, upto, topics, limit)

    def _folded_page(self, after: int, upto: int, topics: Sequence[str] | None, limit: int) -> list[Folded]:
        which = "AND topic = ANY(%s) " if topics is not None else ""
        sql = SQL(
            "SELECT notification_id, state FROM {}.{} WHERE notification_id > %s AND notification_id <= %s "
            + which
            + "ORDER BY notification_id LIMIT %s"
        ).format(Identifier(self.recorder.datastore.schema), Identifier(self.recorder.events_table_name))
        params = [after, upto, *([list(topics)] if topics is not None else []), limit]
        with self.recorder.datastore.transaction(commit=False) as c:
            with c.copy(SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(sql), params) as copy:
                copy.set_types(["int8", "bytea"])
                return list(map(Folded._make, copy.rows()))

    def read_positions(self, positions: Sequence[int]):
        """Raw notifications at exactly these positions, in log order."""
        if not positions:
            return []
        table = self.recorder.events_table_name
        if self.backend == "sqlite":
            marks = ",".join("?" * len(positions))
            sql = f"SELECT rowid AS id, * FROM {table} WHERE rowid IN ({marks}) ORDER BY rowid"
            params = list(positions)
        else:
            sql = SQL(
                "SELECT notification_id AS id, originator_id, originator_version, topic, state FROM {}.{} "
                "WHERE notification_id = ANY(%s) ORDER BY notification_id"
            ).format(Identifier(self.recorder.datastore.schema), Identifier(table))
            params = [list(positions)]
        return self._select(sql, params)

    def read_topics(self, after: int, upto: int, topics: Sequence[str], limit: int = 20_000):
        """Raw notifications in (after, upto] whose topic is one of ``topics``, in log order
        (the database skips the rest: a reader of a few event types never transfers the others)."""
        table = self.recorder.events_table_name
        if self.backend == "sqlite":
            marks = ",".join("?" * len(topics))
            sql = (
                f"SELECT rowid AS id, originator_id, originator_version, topic, state FROM {table} "
                f"WHERE rowid > ? AND rowid <= ? AND topic IN ({marks}) ORDER BY rowid LIMIT ?"
            )
            params = [after, upto, *topics, limit]
        else:
            sql = SQL(
                "SELECT notification_id AS id, originator_id, originator_version, topic, state FROM {}.{} "
                "WHERE notification_id > %s AND notification_id <= %s AND topic = ANY(%s) "
                "ORDER BY notification_id LIMIT %s"
            ).format(Identifier(self.recorder.datastore.schema), Identifier(table))
            params = [after, upto, list(topics), limit]
        return self._select(sql, params)

    def _select(self, sql, params) -> list[Notification]:
        if self.backend != "sqlite":
            return self._copy_out(sql, params)
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(sql, params)
            return [
                Notification(
                    id=r["id"],
                    originator_id=r["originator_id"],
                    originator_version=r["originator_version"],
                    topic=r["topic"],
                    state=bytes(r["state"]),
                )
                for r in c.fetchall()
            ]

    def _copy_out(self, sql, params) -> list[Notification]:
        """The rows of a SELECT of (id, originator_id, originator_version, topic, state), through a
        binary COPY: a fold of the whole log reads it 2x faster than row by row (bench/projections.py)."""
        with self.recorder.datastore.transaction(commit=False) as c:
            with c.copy(SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(sql), params) as copy:
                copy.set_types(["int8", "uuid", "int8", "text", "bytea"])
                return [
                    Notification(id=i, originator_id=o, originator_version=v, topic=t, state=s)
                    for i, o, v, t, s in copy.rows()
                ]

    def erasure_positions(self) -> list[int]:
        """Where the log records an erasure (``user_erased``), in log order: a snapshot names
        them, since the text they destroyed cannot be read at any position any more."""
        positions, after, end = [], 0, self.max_position()
        while page := self.read_topics(after, end, ["user_erased"]):
            positions += [n.id for n in page]
            after = page[-1].id
        return positions

    def count_events(self, after: int, upto: int) -> int:
        """How many events the log holds at positions in (after, upto]."""
        table = self.recorder.events_table_name
        if self.backend == "sqlite":
            sql, params = f"SELECT count(*) AS n FROM {table} WHERE rowid > ? AND rowid <= ?", [after, upto]
        else:
            sql = SQL("SELECT count(*) AS n FROM {}.{} WHERE notification_id > %s AND notification_id <= %s").format(
                Identifier(self.recorder.datastore.schema), Identifier(table)
            )
            params = [after, upto]
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(sql, params)
            return c.fetchone()["n"]

    def max_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    def stored_response(self, client_id: UUID, key: str) -> StoredResponse | None:
        if self.backend == "sqlite":
            sql = "SELECT status, body, position FROM command_responses WHERE api_client_id=? AND key=?"
        else:
            sql = SQL(
                "SELECT status, body, position FROM {schema}.command_responses WHERE api_client_id=%s AND key=%s"
            ).format(schema=Identifier(self.recorder.datastore.schema))
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(sql, (str(client_id), key))
            row = c.fetchone()
        if row is None:
            return None
        return StoredResponse(row["status"], bytes(row["body"]), row["position"])


SCHEMA_LOCK = 0x6F61737374  # the advisory lock key of table creation ("oasst")


class GroupCommitter:
    """Collects concurrent appends and writes each collection in one transaction.

    A commit starts in a worker thread as soon as an append arrives and none is in
    flight, so deciding the next commands overlaps with writing the previous ones;
    whatever arrives meanwhile goes into the next transaction. Each caller gets the
    positions of its own events. If a transaction fails, every caller in it and
    behind it gets the error (nothing of theirs was written)."""

    def __init__(self, store: EventStore, on_failure=None, max_batch_events: int = 5000):
        self.store = store
        self.on_failure = on_failure  # called after a failed transaction, once its waiters know
        self.max_batch_events = max_batch_events
        self._queue: list[tuple[Pending, asyncio.Future]] = []
        self._in_flight: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_position = 0  # of the last event committed through this committer

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def drain(self) -> None:
        """Until everything submitted so far is committed (or failed)."""
        while self._in_flight is not None or self._queue:
            await asyncio.sleep(0.001)

    def submit(self, pending: Pending) -> asyncio.Future:
        future = self._loop.create_future()
        self._queue.append((pending, future))
        if self._in_flight is None:
            self._commit_next()
        return future

    def _commit_next(self) -> None:
        batch, size = [], 0
        while self._queue and size < self.max_batch_events:
            item = self._queue.pop(0)
            batch.append(item)
            size += len(item[0].events)
        self._in_flight = self._loop.run_in_executor(None, self.store.append, [p for p, _ in batch])
        self._in_flight.add_done_callback(lambda done: self._finish(batch, done))

    def _finish(self, batch: list[tuple[Pending, asyncio.Future]], done: asyncio.Future) -> None:
        self._in_flight = None
        exc = done.exception()
        if exc is not None:
            # Later queued commands may have been decided on top of this batch: fail them too.
            failed, self._queue = batch + self._queue, []
            for _, future in failed:
                if not future.done():
                    future.set_exception(exc)
            if self.on_failure:
                self.on_failure(exc)
            return
        ids, start = done.result(), 0
        if ids:
            self.last_position = max(self.last_position, ids[-1])
        for pending, future in batch:
            end = start + len(pending.events)
            if not future.done():
                future.set_result(ids[start:end])
            start = end
        if self._queue:
            self._commit_next()
