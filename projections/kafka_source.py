"""Projecting from Kafka: ``oasst project run --source kafka --group G``.

Every process of a consumer group owns some partitions of ``oasst.events``; for each it
keeps a shard of every view (projections.sharded) and folds that partition's records
into it, in partition order. A flush writes the changed rows of all its shards, their
positions, each partition's next offset and the new history entries in one transaction,
so a shard resumes exactly where its rows are: the offsets live in the database (as
``kafka:<group>:<topic>:<partition>`` in ``view_positions``), never in Kafka. A record
whose log position is not above the shard's is a copy the relay sent again: skipped.

On a rebalance a process flushes the shards it gives up before any other process loads
them (Kafka calls every member's revoke before anyone's assign). A process that lost its
partitions without a revoke (evicted while stalled) is *fenced*: each shard has an epoch
that its new owner bumps on assignment, and a flush writes nothing unless the epochs it
holds are still current (projections.kafka_fence).

A broker that goes away stalls nothing but the fold: the consumer reconnects (at least every
second), rejoins its group, and a partition it gets again is read from the shard's stored
offset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from eventsourcing.persistence import PersistenceError

from domain import events as ev
from infra import kafka
from infra.settings import KafkaSettings
from infra.store import EventStore
from projections.base import View
from projections.history import HistoryView
from projections.kafka_fence import Fenced, Owners
from projections.runner import take_view_changes
from projections.sharded import history_key, restore_shard
from projections.storage import ViewStorage

log = logging.getLogger("oasst.projections.kafka")
CATCH_UP = 10_000  # records per poll


@dataclass
class Shard:
    partition: int
    views: list[View]
    position: int  # the last log position folded
    offset: int  # the next Kafka offset to read
    epoch: int = 0  # ours in kafka_owners while we own the partition
    changed: bool = False
    folded: int = 0  # events folded since start

    @property
    def history(self) -> HistoryView:
        return next(v for v in self.views if isinstance(v, HistoryView))


@dataclass
class _Flush:
    changes: list = field(default_factory=list)
    entries: list = field(default_factory=list)
    taken: list = field(default_factory=list)  # (table, keys) to give back if writing fails
    histories: list = field(default_factory=list)


class KafkaProjector:
    def __init__(self, store: EventStore, cfg: KafkaSettings, group: str, flush_interval: float = 0.05):
        if not cfg.bootstrap:
            raise ValueError("no Kafka bootstrap servers (OASST_KAFKA_BOOTSTRAP)")
        self.store, self.cfg, self.group = store, cfg, group
        self.storage = ViewStorage(store)
        self.owners = Owners(store)
        self.flush_interval = flush_interval  # while following; every 2 s while catching up
        self.shards: dict[int, Shard] = {}
        self.folded = 0  # events folded since start, over every partition it owned
        self.fenced = 0  # shards dropped because another process owned them when we flushed
        self.on_assigned: Callable[[list[int]], None] | None = None  # e.g. the CLI reports it
        kafka.ensure_topics(cfg)
        self.consumer = kafka.consumer(cfg, group, max_poll_records=CATCH_UP, fetch_max_wait_ms=20)
        self.consumer.subscribe([cfg.events_topic], listener=kafka.Listener(self._assigned, self._revoked, self._lost))
        self._last_flush = time.monotonic()

    def offset_key(self, partition: int) -> str:
        return f"kafka:{self.group}:{self.cfg.events_topic}:{partition}"

    # --- partitions come and go ---------------------------------------------------------

    def _assigned(self, partitions) -> None:
        from kafka.structs import TopicPartition

        for tp in partitions:
            # ours from now on (bumped before reading it: a fenced owner's last flush, if it
            # came first, is in what we read); what we held in memory may be stale: read anew
            epoch = self.owners.claim(self.offset_key(tp.partition))
            views = restore_shard(self.storage, self.group, tp.partition)
            shard = Shard(
                tp.partition,
                views,
                min(v.position for v in views),
                self.storage.position(self.offset_key(tp.partition)),
                epoch,
            )
            self.shards[tp.partition] = shard
            self.consumer.seek(TopicPartition(tp.topic, tp.partition), shard.offset)
        log.info("group %s: partitions %s", self.group, sorted(self.shards))
        if self.on_assigned:
            self.on_assigned(sorted(self.shards))

    def _revoked(self, partitions) -> None:
        self.flush()
        for tp in partitions:
            self.shards.pop(tp.partition, None)

    def _lost(self, partitions) -> None:
        """Evicted (e.g. stalled past the session timeout): another process may own these
        partitions already, so what was folded since the last flush is dropped, not written."""
        for tp in partitions:
            self.shards.pop(tp.partition, None)
        log.warning("group %s: lost partitions %s", self.group, sorted(tp.partition for tp in partitions))

    # --- folding ---------------------------------------------------------------------

    def poll(self, timeout_ms: int = 100) -> int:
        """Fold what the next poll brings; flush when it is time. Returns events folded."""
        folded = received = 0
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms, max_records=CATCH_UP).items():
            received += len(records)
            shard = self.shards.get(tp.partition)
            if shard is not None:  # else revoked meanwhile
                folded += self._fold(shard, records)
        # a full poll means a backlog: fewer, bigger transactions until it is gone
        interval = 2.0 if received >= CATCH_UP else self.flush_interval
        if time.monotonic() - self._last_flush >= interval:
            try:
                self.flush()
            except PersistenceError as exc:  # the rows were given back: the next flush writes them
                log.warning("group %s: writing the shards failed (%s); retrying at the next flush", self.group, exc)
        return folded

    def _fold(self, shard: Shard, records) -> int:
        folded = 0
        views = shard.views
        for r in records:
            position = _position(r.headers)
            if position > shard.position:
                event = ev.decode_summary(r.value)
                for view in views:
                    view.apply(position, event)
                shard.position = position
                folded += 1
        shard.offset = records[-1].offset + 1
        shard.changed = True
        shard.folded += folded
        self.folded += folded
        return folded

    # --- storage ---------------------------------------------------------------------

    def flush(self) -> None:
        """Write every changed shard (rows, positions, next offset) and the new history
        entries in one transaction; on failure the rows are kept for the next flush."""
        self._last_flush = time.monotonic()
        dirty = [s for s in self.shards.values() if s.changed]
        if not dirty:
            return
        flush = _Flush()
        for shard in dirty:
            for view in shard.views:
                flush.changes.append(take_view_changes(view, flush.taken))
            flush.changes.append((self.offset_key(shard.partition), shard.offset, []))
            flush.entries.extend(shard.history.take_entries())
            flush.histories.append(shard.history)
        try:
            self._write(flush, {self.offset_key(s.partition): s.epoch for s in dirty})
        except Exception as exc:
            for table, keys in flush.taken:
                table.untake(keys)
            for history in flush.histories:
                history.entries_written(False)
            if not isinstance(exc, Fenced):
                raise
            self._drop_fenced(exc.shards)
            return
        for history in flush.histories:
            history.entries_written(True)
        for shard in dirty:
            shard.changed = False

    def _write(self, flush: _Flush, held: dict[str, int]) -> None:
        with self.storage.datastore.transaction(commit=True) as c:
            if self.storage.pg:
                # a process frozen in here would hold its locks (the epochs' rows, the lock below)
                # and stall the group's new owners: PostgreSQL ends such a transaction after 5 s
                c.execute("SET LOCAL idle_in_transaction_session_timeout = '5s'")
                # the group's flushes one at a time: they all write one history generation, whose
                # table locks (an index made if missing, then a COPY) deadlock two flushes at once
                c.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (history_key(self.group),))
            self.owners.check(c, held)  # first: nothing is written for a shard that is no longer ours
            write = _write_pg if self.storage.pg else _write_sqlite
            write(self.storage, c, flush.changes, (history_key(self.group), flush.entries))

    def _drop_fenced(self, shards: set[str]) -> None:
        """Another process owns these now: forget what we folded (the others are written next time)."""
        lost = [p for p in self.shards if self.offset_key(p) in shards]
        for p in lost:
            del self.shards[p]
        self.fenced += len(lost)
        log.warning("group %s: partitions %s belong to another projector now; not written", self.group, lost)

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            self.poll()
        self.flush()

    def close(self) -> None:
        self.flush()
        self.consumer.close(autocommit=False)  # revokes (and so flushes) what it owned


def connect(store: EventStore, cfg: KafkaSettings, group: str, stop: Callable[[], bool]) -> KafkaProjector | None:
    """A KafkaProjector once the broker answers (a projector started while it is away waits,
    trying every second, logged every 10 s); None if ``stop()`` first."""
    from kafka.errors import KafkaError

    said = 0.0
    while not stop():
        try:
            kafka.listening(cfg.bootstrap)
            return KafkaProjector(store, cfg, group)
        except (KafkaError, OSError) as exc:
            if time.monotonic() - said >= 10:
                said = time.monotonic()
                log.warning("group %s: no broker at %s (%s); retrying", group, cfg.bootstrap, exc)
            time.sleep(1)
    return None


def _position(headers) -> int:
    for name, value in headers:
        if name == "position":
            return int(value)
    raise ValueError("record without a position header: not from the oasst relay")


def _write_sqlite(storage: ViewStorage, c, changes: list, history: tuple[str, list]) -> None:
    """ViewStorage.write in the caller's transaction (the one that checked the epochs)."""
    storage.write_history(c, history)
    for view, position, rows in changes:
        upserts = [(view, t, k, v) for t, k, v in rows if v is not None]
        deletes = [(view, t, k) for t, k, v in rows if v is None]
        storage._write_rows_sqlite(c, view, position, upserts, deletes)


def _write_pg(storage: ViewStorage, c, changes: list, history: tuple[str, list]) -> None:
    """ViewStorage.write in four statements whatever the number of views, in the caller's
    transaction: a flush here covers ~5 views per owned partition, and a round trip per view
    made it ~50 ms on PostgreSQL (the lag was mostly waiting for flushes)."""
    from psycopg.sql import SQL

    upserts = [(view, t, k, v) for view, _, rows in changes for t, k, v in rows if v is not None]
    deletes = [(view, t, k) for view, _, rows in changes for t, k, v in rows if v is None]
    positions = [(view, position) for view, position, _ in changes]
    columns = lambda rows, width: [list(c) for c in zip(*rows, strict=True)] if rows else [[]] * width  # noqa: E731
    storage.write_history(c, history)
    if upserts:
        c.execute(
            SQL(
                "INSERT INTO {} SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bytea[]) "
                "ON CONFLICT (view, tbl, key) DO UPDATE SET value = excluded.value"
            ).format(storage.rows_table),
            columns(upserts, 4),
            binary=True,  # arrays sent as binary: no per-value text escaping
        )
    if deletes:
        c.execute(
            SQL(
                "DELETE FROM {} WHERE (view, tbl, key) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))"
            ).format(storage.rows_table),
            columns(deletes, 3),
        )
    c.execute(
        SQL(
            "INSERT INTO {} SELECT * FROM unnest(%s::text[], %s::bigint[]) "
            "ON CONFLICT (view) DO UPDATE SET position = excluded.position"
        ).format(storage.positions_table),
        columns(positions, 2),
    )
