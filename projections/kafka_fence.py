"""Fencing of Kafka projectors: a process that lost a partition cannot write its shard.

Kafka tells a member that it lost its partitions only when it next polls; a member stalled
past its session (or poll) timeout has been replaced by then, and a flush it makes before it
polls would overwrite the new owner's rows with older ones. So every shard has an *epoch* in
``kafka_owners`` (key: the shard's offset key ``kafka:<group>:<topic>:<partition>``): a
process that is assigned a partition bumps it (committed before it reads the shard), and a
flush first re-writes the epochs it holds, in the same transaction as the rows. The flush of
a process whose epoch was bumped touches no row there, so it is rolled back, and its shards
are dropped; one that raced the bump either committed first (the new owner reads its rows)
or waits on the epoch row's lock and then finds the new epoch. The epochs live beside the
rows, not in Kafka: a restarted broker's generations start again, the database's do not.
"""

from __future__ import annotations

from psycopg.sql import SQL, Identifier

from infra.store import EventStore


class Fenced(Exception):
    """The shards (offset keys) whose epoch another process bumped."""

    def __init__(self, shards: set[str]):
        super().__init__(f"fenced: {sorted(shards)} belong to another projector now")
        self.shards = shards


class Owners:
    """``kafka_owners``: the epoch of each shard's current owner."""

    def __init__(self, store: EventStore):
        self.pg = store.backend == "postgresql"
        self.datastore = store.recorder.datastore
        self.table = SQL("{}.kafka_owners").format(Identifier(self.datastore.schema)) if self.pg else "kafka_owners"
        with self.datastore.transaction(commit=True) as c:
            if self.pg:  # projectors start together: CREATE ... IF NOT EXISTS alone can race
                c.execute("SELECT pg_advisory_xact_lock(hashtext('oasst.kafka_owners'))")
            c.execute(self._sql("CREATE TABLE IF NOT EXISTS {t} (shard TEXT PRIMARY KEY, epoch BIGINT NOT NULL)"))

    def _sql(self, text: str):
        if self.pg:
            return SQL(text.replace("?", "%s")).format(t=self.table)
        return text.format(t=self.table)

    def claim(self, shard: str) -> int:
        """Take a shard over: its epoch, bumped and committed."""
        bump = "INSERT INTO {t} VALUES (?, 1) ON CONFLICT (shard) DO UPDATE SET epoch = {t}.epoch + 1 RETURNING epoch"
        with self.datastore.transaction(commit=True) as c:
            c.execute(self._sql(bump), (shard,))
            return c.fetchone()["epoch"]

    def check(self, c, held: dict[str, int]) -> None:
        """In the flush's transaction: raise Fenced unless every shard still has our epoch
        (an update, so the epoch rows stay locked, or on SQLite the database, until commit)."""
        if self.pg:
            c.execute(
                self._sql(
                    "UPDATE {t} AS o SET epoch = o.epoch FROM unnest(?::text[], ?::bigint[]) AS m(shard, epoch) "
                    "WHERE o.shard = m.shard AND o.epoch = m.epoch RETURNING o.shard"
                ),
                (list(held), list(held.values())),
            )
            kept = {row["shard"] for row in c.fetchall()}
        else:
            kept = set()
            for shard, epoch in held.items():
                update = "UPDATE {t} SET epoch = epoch WHERE shard = ? AND epoch = ? RETURNING shard"
                c.execute(self._sql(update), (shard, epoch))
                kept.update(row["shard"] for row in c.fetchall())
        if kept != set(held):
            raise Fenced(set(held) - kept)
