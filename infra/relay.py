"""The relay: every event of the log, in log order, into the Kafka topic ``oasst.events``.

Each record is one event: key = the tree id for events about a tree (messages, labels,
rankings, reactions, tree decisions, tasks that name a tree), else the event's stream id;
value = the stored msgpack bytes, untouched; headers ``position`` (log position, decimal),
``type`` (the event's tag) and ``schema`` (its schema version). Every event of a tree
lands in one partition, in log order. ``SnapshotCreated`` events also go to
``oasst.snapshots`` (JSON: the manifest and where it was taken).

At least once: the relay's position is stored in the database (``kafka_relay``) only after
the broker acknowledged everything up to it; after a crash it publishes again from there.
Consumers drop a record whose position is not above the last one they applied from the
same partition (a key never changes partition, and a partition gets its records in order,
re-sent ones after the originals).

Speed: rows are read with one SQL query per page, only the few fields a key needs are
decoded (msgspec skips the rest), and each page becomes one record batch per partition
(see infra.kafka).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Union

import msgspec
from psycopg.sql import SQL, Identifier

from command_api import events as ev
from infra import kafka
from infra.settings import KafkaSettings
from infra.store import EventStore

log = logging.getLogger("oasst.relay")

MAX_BATCH_BYTES = 900_000  # per partition and request: brokers refuse batches over ~1 MB by default


# --- what a key needs, decoded lazily ------------------------------------------------------


class _Light(msgspec.Struct, tag_field="type", kw_only=True):
    schema: int = ev.SCHEMA_VERSION


class _ImportedId(msgspec.Struct):
    message_id: str


_NEEDS = {  # tag -> the fields its key needs (ids stay strings: no UUID objects)
    "reply_submitted": {"message_id": str, "tree_id": str},
    "labels_submitted": {"message_id": str},
    "emoji_added": {"message_id": str},
    "emoji_removed": {"message_id": str},
    "ranking_submitted": {"parent_id": str},
    "task_assigned": {"tree_id": str | None},
    "tree_state_changed": {"tree_id": str},
    "tree_halted": {"tree_id": str},
    "tree_resumed": {"tree_id": str},
    "ranks_computed": {"tree_id": str},
    "tree_imported": {"tree_id": str, "messages": list[_ImportedId]},
}
_LIGHT = {
    tag: msgspec.defstruct(f"_Light_{tag}", [(f, t, None) if t == str | None else (f, t) for f, t in
                                              _NEEDS.get(tag, {}).items()], bases=(_Light,), tag=tag, kw_only=True)
    for tag in ev.EVENT_TYPES
}
_decode_light = msgspec.msgpack.Decoder(Union[tuple(_LIGHT.values())]).decode
_MESSAGE_EVENTS = {"message_edited", "message_deleted", "message_undeleted", "message_reviewed"}  # stream = message id


def _dashed(stream: str) -> str:
    """SQLite stores stream ids as 32 hex digits; keys use the canonical form."""
    if len(stream) == 32:
        return f"{stream[:8]}-{stream[8:12]}-{stream[12:16]}-{stream[16:20]}-{stream[20:]}"
    return stream


class KeyIndex:
    """Chooses each event's key. Replies name their tree, but later events about a message
    (labels, reactions, edits, rankings of its replies) name only the message: the index
    remembers which tree each reply belongs to (a prompt's tree is its own id)."""

    def __init__(self) -> None:
        self.tree_of: dict[str, str] = {}

    def load(self, store: EventStore, upto: int) -> None:
        """Learn the trees of every reply and imported message up to ``upto`` (one scan
        that returns only those events' rows)."""
        for topic, state in _select(store, "SELECT topic, {state} FROM {table} WHERE {id} <= ? AND topic IN "
                                           "('reply_submitted', 'tree_imported') ORDER BY {id}", (upto,)):
            self.key(topic, "", bytes(state))

    def key(self, topic: str, stream: str, state: bytes) -> tuple[str, int]:
        """(key, schema version) of one stored event."""
        try:
            e = _decode_light(state)
        except msgspec.DecodeError:  # a tag this version does not know: its stream keeps its order
            return _dashed(stream), ev.SCHEMA_VERSION
        if topic in _MESSAGE_EVENTS:
            stream = _dashed(stream)
            return self.tree_of.get(stream, stream), e.schema
        match topic:
            case "reply_submitted":
                self.tree_of[e.message_id] = e.tree_id
                return e.tree_id, e.schema
            case "labels_submitted" | "emoji_added" | "emoji_removed":
                return self.tree_of.get(e.message_id, e.message_id), e.schema
            case "ranking_submitted":
                return self.tree_of.get(e.parent_id, e.parent_id), e.schema
            case "task_assigned":
                return e.tree_id or _dashed(stream), e.schema
            case "tree_state_changed" | "tree_halted" | "tree_resumed" | "ranks_computed":
                return e.tree_id, e.schema
            case "tree_imported":
                for m in e.messages:
                    self.tree_of[m.message_id] = e.tree_id
                return e.tree_id, e.schema
        return _dashed(stream), e.schema


# --- storage of the relay's position --------------------------------------------------------


def _select(store: EventStore, sql: str, params: tuple) -> list:
    """Rows of a query over the events table, the same on both backends: ``{table}``,
    ``{id}`` (log position), ``{stream}`` (text), ``{state}``, ``?`` parameters."""
    table = store.recorder.events_table_name
    if store.backend == "sqlite":
        text = sql.format(table=table, id="rowid", stream="originator_id", state="state")
        query, args = text, params
    else:
        text = sql.replace("?", "%s").format(table="{t}", id="notification_id", stream="originator_id::text",
                                             state="state")
        query = SQL(text).format(t=SQL("{}.{}").format(Identifier(store.recorder.datastore.schema), Identifier(table)))
        args = params
    with store.recorder.datastore.transaction(commit=False) as c:
        c.execute(query, args)
        rows = c.fetchall()
    if store.backend == "sqlite":
        return [tuple(r) for r in rows]
    return [tuple(r.values()) for r in rows]


class RelayPositions:
    """``kafka_relay``: how far the log was published to each topic."""

    def __init__(self, store: EventStore):
        self.store = store
        self.pg = store.backend == "postgresql"
        self.table = SQL("{}.kafka_relay").format(Identifier(store.recorder.datastore.schema)) if self.pg \
            else "kafka_relay"
        with store.recorder.datastore.transaction(commit=True) as c:
            c.execute(self._sql("CREATE TABLE IF NOT EXISTS {t} (topic TEXT PRIMARY KEY, position BIGINT NOT NULL)"))

    def _sql(self, text: str):
        if self.pg:
            return SQL(text.replace("?", "%s")).format(t=self.table)
        return text.format(t=self.table)

    def get(self, topic: str) -> int:
        with self.store.recorder.datastore.transaction(commit=False) as c:
            c.execute(self._sql("SELECT position FROM {t} WHERE topic = ?"), (topic,))
            row = c.fetchone()
        return row["position"] if row else 0

    def set(self, topic: str, position: int) -> None:
        upsert = "INSERT INTO {t} VALUES (?, ?) ON CONFLICT (topic) DO UPDATE SET position = excluded.position"
        with self.store.recorder.datastore.transaction(commit=True) as c:
            c.execute(self._sql(upsert), (topic, position))


# --- the relay ---------------------------------------------------------------------------


_H_POSITION = b"\x10position"  # varint(8) + name: header names are pre-encoded once
_H_REST: dict[tuple[str, int], bytes] = {}


def _headers_after_position(topic: str, schema: int) -> bytes:
    h = _H_REST.get((topic, schema))
    if h is None:
        h = _H_REST[(topic, schema)] = kafka.header("type", topic.encode()) + kafka.header("schema", b"%d" % schema)
    return h


class Relay:
    def __init__(self, store: EventStore, cfg: KafkaSettings, page_size: int | None = None):
        if not cfg.bootstrap:
            raise ValueError("no Kafka bootstrap servers (OASST_KAFKA_BOOTSTRAP)")
        self.store, self.cfg = store, cfg
        self.page_size = page_size or cfg.relay_page
        self.positions = RelayPositions(store)
        self.position = self.positions.get(cfg.events_topic)
        self.index = KeyIndex()
        self.index.load(store, self.position)
        kafka.ensure_topics(cfg)
        self.producer = kafka.BatchProducer(cfg)
        self.partitions = self.producer.partitions(cfg.events_topic)
        self.producer.partitions(cfg.snapshots_topic)
        self._partition_cache: dict[str, int] = {}
        self.published = 0  # events sent since start (re-sent ones included)
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def close(self) -> None:
        self.producer.close()

    # --- one page --------------------------------------------------------------------

    def read(self, after: int, limit: int) -> list[tuple[int, str, str, bytes]]:
        """(position, stream id, topic, stored state) of the events after ``after``."""
        return _select(self.store, "SELECT {id}, {stream}, topic, {state} FROM {table} WHERE {id} > ? "
                                   "ORDER BY {id} LIMIT ?", (after, limit))

    def partitions_of(self, keys: list[str]) -> list[int]:
        cache = self._partition_cache
        new = list({k for k in keys if k not in cache})
        if new:
            if len(cache) > 1_000_000:  # task ids come and go: keep the cache bounded
                cache.clear()
            cache.update(zip(new, kafka.partitions_for([k.encode() for k in new], self.partitions), strict=True))
        return [cache[k] for k in keys]

    def requests(self, rows) -> list[dict[tuple[str, int], bytes]]:
        """The produce requests for a page: one batch per partition each, a new request
        whenever a partition's batch would pass MAX_BATCH_BYTES."""
        key_of = self.index.key
        keyed = [key_of(topic, stream, state := bytes(raw)) + (state,) for _, stream, topic, raw in rows]
        partitions = self.partitions_of([k for k, _, _ in keyed])
        out: list[dict[tuple[str, int], bytes]] = []
        parts: dict[int, list[bytes]] = {}
        sizes: dict[int, int] = {}
        snapshots: list[bytes] = []
        now = int(time.time() * 1000)
        varint, vcache, headers = kafka.varint, kafka._VARINTS, _headers_after_position

        def cut() -> None:
            request = {(self.cfg.events_topic, p): kafka.record_batch(recs, now, self.cfg.compression)
                       for p, recs in parts.items()}
            if snapshots:
                request[(self.cfg.snapshots_topic, 0)] = kafka.record_batch(snapshots, now)
            out.append(request)
            parts.clear(), sizes.clear(), snapshots.clear()

        for (position, _, topic, _), (key, schema, state), p in zip(rows, keyed, partitions, strict=True):
            recs = parts.get(p)
            if recs is None:
                recs = parts[p] = []
                sizes[p] = 0
            pos = b"%d" % position
            key_bytes = key.encode()
            # one record, inlined (this loop is the relay's hot path): attributes 0, timestamp
            # delta 0, offset delta, then key, value and 3 headers (position, type, schema)
            tail = b"".join((vcache[len(key_bytes)], key_bytes, varint(len(state)), state, b"\x06", _H_POSITION,
                             vcache[len(pos)], pos, headers(topic, schema)))
            size = len(tail) + 8
            if sizes[p] + size > MAX_BATCH_BYTES and recs:
                cut()
                recs = parts[p] = []
                sizes[p] = 0
            body = b"\x00\x00" + varint(len(recs)) + tail
            recs.append(varint(len(body)) + body)
            sizes[p] += size
            if topic == "snapshot_created":
                snapshot = ev.decode(state)
                snapshots.append(kafka.record(len(snapshots), snapshot.snapshot_id.encode(),
                                              kafka.snapshot_message(snapshot), kafka.header("position", pos), 1))
        if parts or snapshots:
            cut()
        return out

    def publish(self, rows) -> None:
        """Send a page and wait until the broker has all of it (its position not yet stored)."""
        for request in self.requests(rows):
            self.producer.send(request)

    def step(self) -> int:
        """Publish the next page and store the new position; returns the number of events."""
        rows = self.read(self.position, self.page_size)
        if rows:
            self.publish(rows)
            self.commit(rows[-1][0])
        return len(rows)

    def commit(self, position: int) -> None:
        self.positions.set(self.cfg.events_topic, position)
        self.position = position

    def run(self, stop: Callable[[], bool] = lambda: False, poll: float = 0.2,
            progress: Callable[[int], None] | None = None, until_idle: bool = False) -> int:
        """Follow the log until ``stop()`` (or, with ``until_idle``, until it is all out);
        when there is nothing new, wait ``poll`` s or until notify(). Pipelined: the next
        page is read and encoded while the broker stores this one's last request; a page's
        position is stored once all of it is acknowledged. Returns the events published."""
        total = 0
        rows = self.read(self.position, self.page_size)
        requests = self.requests(rows) if rows else []
        while not stop():
            if not rows:
                if until_idle:
                    break
                self._wakeup.wait(poll)
                self._wakeup.clear()
                rows = self.read(self.position, self.page_size)
                requests = self.requests(rows) if rows else []
                continue
            for request in requests[:-1]:
                self.producer.send(request)
            in_flight = self.producer.begin(requests[-1])
            following = self.read(rows[-1][0], self.page_size)
            following_requests = self.requests(following) if following else []
            self.producer.finish(in_flight)
            self.commit(rows[-1][0])
            total += len(rows)
            self.published += len(rows)
            if progress:
                progress(len(rows))
            rows, requests = following, following_requests
        return total

    def catch_up(self) -> int:
        """Publish everything in the log now; returns the number of events."""
        return self.run(until_idle=True)

    # --- inside oasst serve -----------------------------------------------------------

    def notify(self) -> None:
        """New events were committed (called by the command service)."""
        self._wakeup.set()

    async def start(self) -> None:
        """Run in a thread of its own: publishing is blocking I/O and must not hold up requests."""
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.run(stop=self._stop.is_set, poll=0.5)
                except Exception:  # noqa: BLE001 - the broker may come back: retry from the stored position
                    log.exception("relay failed; retrying in 2 s")
                    self.position = self.positions.get(self.cfg.events_topic)
                    self._stop.wait(2.0)
                    continue
                with contextlib.suppress(Exception):  # stopping: publish what the last commands appended
                    self.run(until_idle=True)

        self._thread = threading.Thread(target=loop, name="oasst-relay", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        self._wakeup.set()
        if self._thread:
            await asyncio.to_thread(self._thread.join, 30)
        self.close()


async def serve_relay(store: EventStore, cfg: KafkaSettings, on_commit: list) -> Relay:
    """Start a relay inside ``oasst serve``, woken after every commit of the command service."""
    relay = await asyncio.to_thread(Relay, store, cfg)
    on_commit.append(lambda position: relay.notify())
    await relay.start()
    return relay
