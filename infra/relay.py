"""The relay: every event of the log, in log order, into the Kafka topic ``oasst.events``.

Each record is one event: key = the tree id for events about a tree (messages, labels,
rankings, reactions, tree decisions, tasks that name a tree), else the event's stream id;
value = the stored msgpack bytes, untouched; headers ``position`` (log position, decimal),
``type`` (the event's tag) and ``schema`` (its schema version). Every event of a tree
lands in one partition, in log order. ``SnapshotCreated`` events also go to
``oasst.snapshots`` (JSON: the manifest and where it was taken).

At least once: the relay's position is stored in the database (``kafka_relay``) only after
the broker acknowledged everything up to it; after a crash it publishes again from there.
Before sending again what it may have sent (at start, and after the broker was away) it
reads each partition's last record and leaves out what the broker already holds (one
request in flight: a partition holds a prefix of what was sent), so neither its own crash
nor the broker's death leaves a copy on the wire. A copy can still come from a request that
lands after that read (a broker cut off, not dead) or from a second relay: consumers drop
a record whose position is not above the last one they applied from the same partition (a
key never changes partition, and a partition gets its records in order).

The broker going away (killed, restarting, unreachable) does not stop the relay: it keeps
its position, logs it, tries again every second at most and, once the broker answers,
publishes from where it was.

Speed: rows are read with one SQL query per page, only the few fields a key needs are
decoded (msgspec skips the rest), and each page becomes one record batch per partition
(see infra.kafka).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Union

import msgspec
from psycopg.sql import SQL, Identifier

from domain import events as ev
from infra import kafka
from infra import kafka_wire as wire
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
    tag: msgspec.defstruct(
        f"_Light_{tag}",
        [(f, t, None) if t == str | None else (f, t) for f, t in _NEEDS.get(tag, {}).items()],
        bases=(_Light,),
        tag=tag,
        kw_only=True,
    )
    for tag in ev.EVENT_TYPES
}
_decode_light = msgspec.msgpack.Decoder(Union[tuple(_LIGHT.values())]).decode
# how each tag finds its key (numbers, not a match on strings: this runs for every event);
# a new event type about a tree or message must be added here (and to _NEEDS), or it is keyed by its stream
_STREAM, _MESSAGE_STREAM, _REPLY, _ON_MESSAGE, _RANKING, _TASK, _TREE, _IMPORT = range(8)
_KIND = {
    **dict.fromkeys(ev.EVENT_TYPES, _STREAM),
    **dict.fromkeys(
        ("message_edited", "message_deleted", "message_undeleted", "message_reviewed", "flagged_message_processed"),
        _MESSAGE_STREAM,
    ),
    "reply_submitted": _REPLY,
    **dict.fromkeys(("labels_submitted", "emoji_added", "emoji_removed"), _ON_MESSAGE),
    "ranking_submitted": _RANKING,
    "task_assigned": _TASK,
    **dict.fromkeys(("tree_state_changed", "tree_halted", "tree_resumed", "ranks_computed"), _TREE),
    "tree_imported": _IMPORT,
}


class KeyIndex:
    """Chooses each event's key. Replies name their tree, but later events about a message
    (labels, reactions, edits, rankings of its replies) name only the message: the index
    remembers which tree each reply belongs to (a prompt's tree is its own id)."""

    def __init__(self) -> None:
        self.tree_of: dict[str, str] = {}

    def load(self, store: EventStore, upto: int) -> None:
        """Learn the trees of every reply and imported message up to ``upto`` (one scan
        that returns only those events' rows)."""
        for topic, state in _select(
            store,
            "SELECT topic, {state} FROM {table} WHERE {id} <= ? AND topic IN "
            "('reply_submitted', 'tree_imported') ORDER BY {id}",
            (upto,),
        ):
            self.key(topic, "", bytes(state))

    def key(self, topic: str, stream: str, state: bytes) -> tuple[str, int]:
        """(key, schema version) of one stored event; ``stream`` in canonical form."""
        try:
            e = _decode_light(state)
        except msgspec.DecodeError:  # a tag this version does not know: its stream keeps its order
            return stream, ev.SCHEMA_VERSION
        kind = _KIND[topic]
        if kind == _TASK:
            return e.tree_id or stream, e.schema
        if kind == _STREAM:
            return stream, e.schema
        if kind == _ON_MESSAGE:
            return self.tree_of.get(e.message_id, e.message_id), e.schema
        if kind == _MESSAGE_STREAM:
            return self.tree_of.get(stream, stream), e.schema
        if kind == _REPLY:
            self.tree_of[e.message_id] = e.tree_id
            return e.tree_id, e.schema
        if kind == _TREE:
            return e.tree_id, e.schema
        if kind == _RANKING:
            return self.tree_of.get(e.parent_id, e.parent_id), e.schema
        for m in e.messages:  # _IMPORT
            self.tree_of[m.message_id] = e.tree_id
        return e.tree_id, e.schema


# --- storage of the relay's position --------------------------------------------------------


_SQLITE_DASHED = (
    "substr(originator_id, 1, 8) || '-' || substr(originator_id, 9, 4) || '-' || "
    "substr(originator_id, 13, 4) || '-' || substr(originator_id, 17, 4) || '-' || "
    "substr(originator_id, 21)"
)  # SQLite keeps 32 hex digits


def _select(store: EventStore, sql: str, params: tuple) -> list:
    """Rows of a query over the events table, the same on both backends: ``{table}``,
    ``{id}`` (log position), ``{stream}`` (text), ``{state}``, ``?`` parameters."""
    table = store.recorder.events_table_name
    if store.backend == "sqlite":
        text = sql.format(table=table, id="rowid", stream=_SQLITE_DASHED, state="state")
        query, args = text, params
    else:
        text = sql.replace("?", "%s").format(
            table="{t}", id="notification_id", stream="originator_id::text", state="state"
        )
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
        self.table = (
            SQL("{}.kafka_relay").format(Identifier(store.recorder.datastore.schema)) if self.pg else "kafka_relay"
        )
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
_HEADERS: dict[int, dict[str, bytes]] = {}  # schema -> topic -> the encoded type and schema headers


def _headers(topic: str, schema: int) -> bytes:
    by_topic = _HEADERS.setdefault(schema, {})
    if topic not in by_topic:
        by_topic[topic] = wire.header("type", topic.encode()) + wire.header("schema", b"%d" % schema)
    return by_topic[topic]


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
        self.landed: dict[str, dict[int, int]] = {}  # topic -> partition -> last position it holds past ours
        self.reconcile()

    def reconcile(self, restarted: bool = False) -> None:
        """Learn what the broker holds past our stored position (a page sent, not recorded).
        ``restarted``: the broker was away, and a broker killed may have lost records it had
        acknowledged (Tansu SIGKILLed before storing them: the outage test saw thousands go);
        only what it holds counts, so the relay reads again from the lowest position a
        partition of the events topic holds, leaving out what each partition has."""
        landed = kafka.last_positions(self.cfg, {self.cfg.events_topic: self.partitions, self.cfg.snapshots_topic: 1})
        if restarted:
            held = landed.get(self.cfg.events_topic, {})
            self.position = min([self.position] + [held.get(p, 0) for p in range(self.partitions)])
        self.landed = {t: {p: n for p, n in ps.items() if n > self.position} for t, ps in landed.items()}
        self.landed = {t: ps for t, ps in self.landed.items() if ps}

    def close(self) -> None:
        self.producer.close()

    # --- one page --------------------------------------------------------------------

    def read(self, after: int, limit: int) -> list[tuple[int, str, str, bytes]]:
        """(position, stream id, topic, stored state) of the events after ``after``."""
        return _select(
            self.store,
            "SELECT {id}, {stream}, topic, {state} FROM {table} WHERE {id} > ? ORDER BY {id} LIMIT ?",
            (after, limit),
        )

    def partitions_of(self, keys: list[str]) -> list[int]:
        cache = self._partition_cache
        new = list({k for k in keys if k not in cache})
        if new:
            if len(cache) > 1_000_000:  # task ids come and go: keep the cache bounded
                cache.clear()
            cache.update(zip(new, wire.partitions_for([k.encode() for k in new], self.partitions), strict=True))
        return [cache[k] for k in keys]

    def _held(self, rows, partitions: list[int]) -> set[int]:
        """Positions of ``rows`` whose records the broker already holds (see ``reconcile``)."""
        events = self.landed.get(self.cfg.events_topic, {})
        snapshots = self.landed.get(self.cfg.snapshots_topic, {}).get(0, 0)
        held = {
            row[0]
            for row, p in zip(rows, partitions, strict=True)
            if row[0] <= events.get(p, 0) and (row[2] != "snapshot_created" or row[0] <= snapshots)
        }
        if rows[-1][0] >= max(n for ps in self.landed.values() for n in ps.values()):
            self.landed = {}  # past everything it held: nothing more to leave out
        return held

    def requests(self, rows) -> list[dict[tuple[str, int], list[bytes]]]:
        """The produce requests for a page, unfinished: the encoded records of one batch per
        partition each, a new request whenever a batch would pass MAX_BATCH_BYTES."""
        key_of = self.index.key
        keyed = [key_of(topic, stream, state := bytes(raw)) + (state,) for _, stream, topic, raw in rows]
        partitions = self.partitions_of([k for k, _, _ in keyed])
        held = self._held(rows, partitions) if self.landed else ()
        out: list[dict[tuple[str, int], list[bytes]]] = []
        parts: list[list[bytes]] = [[] for _ in range(self.partitions)]
        sizes = [0] * self.partitions
        snapshots: list[bytes] = []
        varint, vcache, limit = wire.varint, wire._VARINTS, len(wire._VARINTS)
        current = _HEADERS.setdefault(ev.SCHEMA_VERSION, {})

        def cut() -> None:
            request = {(self.cfg.events_topic, p): recs for p, recs in enumerate(parts) if recs}
            if snapshots:
                request[(self.cfg.snapshots_topic, 0)] = list(snapshots)
            out.append(request)
            parts[:] = [[] for _ in range(self.partitions)]
            sizes[:] = [0] * self.partitions
            snapshots.clear()

        for (position, _, topic, _), (key, schema, state), p in zip(rows, keyed, partitions, strict=True):
            if position in held:
                continue
            pos = b"%d" % position
            kb = key.encode()
            n = len(state)
            headers = current.get(topic) if schema == ev.SCHEMA_VERSION else None
            if headers is None:
                headers = _headers(topic, schema)
            # one record, inlined (the relay's hot path): attributes 0, timestamp delta 0,
            # offset delta; key, value; 3 headers: position, type, schema
            tail = b"".join(
                (
                    vcache[len(kb)],
                    kb,
                    vcache[n] if n < limit else varint(n),
                    state,
                    b"\x06",
                    _H_POSITION,
                    vcache[len(pos)],
                    pos,
                    headers,
                )
            )
            size = len(tail) + 8
            recs = parts[p]
            if sizes[p] + size > MAX_BATCH_BYTES and recs:
                cut()
            offset = len(recs)
            body = b"\x00\x00" + (vcache[offset] if offset < limit else varint(offset)) + tail
            n = len(body)
            recs.append((vcache[n] if n < limit else varint(n)) + body)
            sizes[p] += size
            if topic == "snapshot_created":
                snapshot = ev.decode(state)
                snapshots.append(
                    wire.record(
                        len(snapshots),
                        snapshot.snapshot_id.encode(),
                        kafka.snapshot_message(snapshot),
                        wire.header("position", pos),
                        1,
                    )
                )
        if any(parts) or snapshots:
            cut()
        return out

    def finish(self, request: dict[tuple[str, int], list[bytes]]) -> dict[tuple[str, int], bytes]:
        """Record batches of a request: gzip and CRC32C, C and numpy code that lets go of the
        GIL, so the relay runs it in a thread while it encodes the next page."""
        now = int(time.time() * 1000)
        return {
            (topic, p): wire.record_batch(recs, now, self.cfg.compression if topic == self.cfg.events_topic else "none")
            for (topic, p), recs in request.items()
        }

    def publish(self, rows) -> None:
        """Send a page and wait until the broker has all of it (its position not yet stored)."""
        for request in self.requests(rows):
            self.producer.send(self.finish(request))

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

    def run(
        self,
        stop: Callable[[], bool] = lambda: False,
        poll: float = 0.2,
        progress: Callable[[int], None] | None = None,
        until_idle: bool = False,
    ) -> int:
        """Follow the log until ``stop()`` (or, with ``until_idle``, until it is all out);
        when there is nothing new, wait ``poll`` s. Pipelined, one page ahead: while page k
        is compressed and checksummed (in a thread), page k+1 is read and encoded; while
        the broker stores page k, page k+1 is compressed. A page's position is stored once
        all of it is acknowledged; requests go out one at a time, in order. While the broker
        is away it waits (``wait_for_broker``), then sends again from its position. Returns
        the number of events published."""
        total = 0
        with ThreadPoolExecutor(1, thread_name_prefix="oasst-relay-batches") as finisher:
            rows, batches = self._prepare(finisher, self.position)
            while not stop():
                if not rows:
                    if until_idle:
                        break
                    time.sleep(poll)
                    rows, batches = self._prepare(finisher, self.position)
                    continue
                try:
                    following = self._send_page(finisher, rows, batches)
                except _broker_errors() as exc:
                    if not self.wait_for_broker(exc, stop):
                        break
                    rows, batches = self._prepare(finisher, self.position)
                    continue
                total += len(rows)
                if progress:
                    progress(len(rows))
                rows, batches = following
        return total

    def _prepare(self, finisher: ThreadPoolExecutor, after: int) -> tuple[list, list]:
        """The page after ``after`` and its batches, being finished in the thread."""
        rows = self.read(after, self.page_size)
        return rows, [finisher.submit(self.finish, r) for r in self.requests(rows)] if rows else []

    def _send_page(self, finisher: ThreadPoolExecutor, rows: list, batches: list) -> tuple[list, list]:
        """Send a page (the next one is prepared meanwhile), store its position; returns the next."""
        following = self.read(rows[-1][0], self.page_size)
        following_requests = self.requests(following) if following else []
        for batch in batches[:-1]:
            self.producer.send(batch.result())
        in_flight = self.producer.begin(batches[-1].result()) if batches else None  # none: the broker held it all
        following_batches = [finisher.submit(self.finish, r) for r in following_requests]
        if in_flight:
            self.producer.finish(in_flight)
        self.commit(rows[-1][0])
        return following, following_batches

    def wait_for_broker(self, error: Exception, stop: Callable[[], bool]) -> bool:
        """The broker did not take a page: keep the stored position (nothing past it counts as
        published) and try every second at most until the broker answers, then learn what of
        the page it holds. False if ``stop()`` came first."""
        down = said = time.monotonic()
        log.warning("broker unreachable (%s); position %d kept; retrying", _short(error), self.position)
        delay = 0.1
        while not stop():
            time.sleep(delay)
            try:
                kafka.listening(self.cfg.bootstrap)  # at once where nothing listens (a client waits seconds)
                self.reconcile(restarted=True)
                self.producer.close()  # a new client connects now; the old one would back off first
                self.producer = kafka.BatchProducer(self.cfg)
            except _broker_errors() as exc:
                delay = min(2 * delay, 0.5)
                if time.monotonic() - said >= 10:
                    said = time.monotonic()
                    log.warning("broker still unreachable after %.0f s (%s)", said - down, _short(exc))
                continue
            held = sum(len(ps) for ps in self.landed.values())
            log.warning(
                "broker back after %.1f s; publishing from position %d (%d partitions already hold part of the page)",
                time.monotonic() - down,
                self.position,
                held,
            )
            return True
        return False

    def catch_up(self) -> int:
        """Publish everything in the log now; returns the number of events."""
        return self.run(until_idle=True)


def _broker_errors() -> tuple[type[Exception], ...]:
    from kafka.errors import KafkaError

    return (kafka.ProduceError, KafkaError, OSError)


def _short(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}"


def connect(store: EventStore, cfg: KafkaSettings, page_size: int | None, stop: Callable[[], bool]) -> Relay | None:
    """A Relay, once the broker answers (tried every second at most; logged); None if ``stop()`` first."""
    delay, down, said = 0.1, time.monotonic(), 0.0
    while not stop():
        try:
            kafka.listening(cfg.bootstrap)
            return Relay(store, cfg, page_size=page_size)
        except _broker_errors() as exc:
            if time.monotonic() - said >= 10:
                said = time.monotonic()
                log.warning("no broker at %s for %.0f s (%s); retrying", cfg.bootstrap, said - down, _short(exc))
            time.sleep(delay)
            delay = min(2 * delay, 1.0)
    return None


def main(argv: list[str] | None = None) -> None:
    """``python -m infra.relay [--poll S] [--page-size N] [--once]``: the relay alone, from
    the environment's settings (what ``oasst relay`` and ``oasst serve`` run). SIGTERM or
    Ctrl-C: it publishes what the log holds, stores its position and exits."""
    import argparse

    from infra.settings import Settings

    parser = argparse.ArgumentParser(prog="oasst relay")
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--page-size", type=int, default=None)
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if not settings.kafka.bootstrap:
        raise SystemExit("set OASST_KAFKA_BOOTSTRAP (host:port of the Kafka brokers)")
    stopping: list = []  # signals only raise a flag: a page is never left sent and unrecorded
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    # our warnings to stdout (oasst serve logs the child's lines); kafka-python's own would
    # repeat every refused connection while a broker is away
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="relay: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    store = EventStore(settings.database_url)
    relay = connect(store, settings.kafka, args.page_size, lambda: bool(stopping))
    if relay is None:
        store.close()
        return
    print(
        f"relay: log at {store.max_position()}, published up to {relay.position}; to "
        f"{settings.kafka.events_topic} ({relay.partitions} partitions) on {settings.kafka.bootstrap}",
        flush=True,
    )
    started = time.monotonic()
    try:
        done = relay.run(stop=lambda: bool(stopping), poll=args.poll, until_idle=args.once)
        give_up = time.monotonic() + 10  # what the last commands appended, unless the broker is away
        done += relay.run(stop=lambda: time.monotonic() > give_up, until_idle=True)
    finally:
        relay.close()
        store.close()
    print(
        f"relay: published {done} events in {time.monotonic() - started:.1f} s, position {relay.position}", flush=True
    )


class RelayProcess:
    """The relay of ``oasst serve``: a child process (its own interpreter, so publishing
    never competes with requests for the GIL; under load a relay thread added ~100 ms of
    lag and took ~20% of the command rate), restarted if it dies. It polls the log every
    10 ms; on stop it publishes what the last commands appended, then exits."""

    def __init__(self, database_url: str, cfg: KafkaSettings, poll: float = 0.01):
        self.env = {**os.environ, "OASST_DATABASE_URL": database_url, **kafka.environment(cfg)}
        self.poll = poll
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()  # the child said it is publishing (a signal before that would kill it)
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def _supervise(self) -> None:
        while not self._stopping:
            self._ready.clear()
            self._proc = await asyncio.create_subprocess_exec(  # it dies with the server, even by SIGKILL
                sys.executable,
                "-m",
                "infra.relay",
                "--poll",
                str(self.poll),
                env=self.env,
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=kafka.die_with_parent,
            )
            while line := await self._proc.stdout.readline():
                self._ready.set()
                log.info(line.decode().rstrip())
            code = await self._proc.wait()
            self._ready.set()
            if not self._stopping:
                log.error("the relay exited with %s; starting it again in 2 s", code)
                await asyncio.sleep(2)

    async def stop(self, timeout: float = 30) -> None:
        self._stopping = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        proc = self._proc
        if proc and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 5)


async def serve_relay(store: EventStore, cfg: KafkaSettings, on_commit: list) -> RelayProcess:
    """Start the relay of ``oasst serve`` (see RelayProcess; ``on_commit`` is not needed:
    the child polls)."""
    relay = RelayProcess(store.url, cfg)
    await relay.start()
    return relay


if __name__ == "__main__":
    main()
