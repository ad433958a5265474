"""Where views live between runs: ``view_rows`` (one encoded row per view, table and
key) and ``view_positions`` (how far each view has folded the log), in the event
store's own database. A flush writes a view's changed rows and its new position in
one transaction, so after a crash a view resumes exactly where its rows are. The same
transaction keeps the SQL read models (projections/relational.py) in step with the live
message-tree and leaderboard views."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterable, Iterator
from uuid import UUID

import psycopg
from eventsourcing.persistence import ProgrammingError
from psycopg.sql import SQL, Identifier

from domain import events as ev
from infra.store import EventStore
from projections.relational import FOLLOWS, VOTE_TOPICS, Changes, RelationalTables
from projections.relational import VIEW as RELATIONAL_VIEW
from projections.relational_boards import VIEW as BOARD_VIEW

REBUILD_SUFFIX = "~rebuild"  # a view built anew beside the live one (projections/rebuild.py)
OWN_TABLE = "history_rows_"  # PostgreSQL: a generation of history rows named so is a table of its own
OWN_ROWS = "view_rows_"  # PostgreSQL: a rebuilt view's rows in a table of its own (see _rows_table)


class ViewStorage:
    def __init__(self, store: EventStore):
        self.store = store
        self.datastore = store.recorder.datastore
        self.pg = store.backend == "postgresql"
        if self.pg:
            schema = Identifier(self.datastore.schema)
            self.rows_table = SQL("{}.view_rows").format(schema)
            self.positions_table = SQL("{}.view_positions").format(schema)
            self.history_table = SQL("{}.history_index").format(schema)
            self.generations_table = SQL("{}.history_generations").format(schema)
            self.row_tables = SQL("{}.view_row_tables").format(schema)
        self.relational = RelationalTables(self.datastore, self.pg)
        self._create()

    def _sql(self, text: str):
        """One statement for both backends: ``{rows}``/``{positions}`` tables, ``?`` params."""
        names = {
            "rows": "view_rows",
            "positions": "view_positions",
            "history": "history_index",
            "generations": "history_generations",
        }
        if not self.pg:
            return text.format(**names)
        for i, name in enumerate(names):
            text = text.replace(f"{{{name}}}", f"{{{i}}}")
        text = text.replace("?", "%s")
        return SQL(text).format(self.rows_table, self.positions_table, self.history_table, self.generations_table)

    def _create(self) -> None:
        blob = "bytea" if self.pg else "BLOB"
        with self.store.schema_lock(), self.datastore.transaction(commit=True) as c:
            c.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {rows} (view TEXT, tbl TEXT, key TEXT, value " + blob + ", "
                    "PRIMARY KEY (view, tbl, key))"
                )
            )
            c.execute(self._sql("CREATE TABLE IF NOT EXISTS {positions} (view TEXT PRIMARY KEY, position BIGINT)"))
            entity = "uuid" if self.pg else "TEXT"
            c.execute(
                self._sql(f"CREATE TABLE IF NOT EXISTS {{history}} (view TEXT, entity {entity}, position BIGINT)")
            )
            c.execute(self._sql("CREATE INDEX IF NOT EXISTS history_index_entity ON {history} (entity, position)"))
            self._create_generations(c)
            if self.pg:
                c.execute(
                    SQL("CREATE TABLE IF NOT EXISTS {} (view TEXT PRIMARY KEY, tbl TEXT)").format(self.row_tables)
                )
            secret = SQL("{}.view_secret").format(Identifier(self.datastore.schema)) if self.pg else "view_secret"
            # new tables on a store whose views were stored before them
            for view in self.relational.create(c, secret):
                self._reload_relational(c, view)

    def _create_generations(self, c) -> None:
        """History rows are stored under a generation name per view, so that switching a rebuilt
        history live renames one mapping row instead of millions of index rows. Rows written
        before generations existed keep their view's name as their generation."""
        exists = "to_regclass(?) IS NOT NULL" if self.pg else "EXISTS (SELECT 1 FROM sqlite_master WHERE name = ?)"
        c.execute(self._sql(f"SELECT {exists} AS found"), (self._table_name("history_generations"),))
        if not c.fetchone()["found"]:
            c.execute(self._sql("CREATE TABLE {generations} (view TEXT PRIMARY KEY, generation TEXT)"))
            c.execute(self._sql("INSERT INTO {generations} SELECT DISTINCT view, view FROM {history}"))
        if self.pg:
            self._own_tables(c)

    def _own_tables(self, c) -> None:
        """PostgreSQL keeps each generation in a table of its own: a rebuild loads its rows into a
        table without an index and builds the index once, at the switch (one sort instead of
        millions of B-tree inserts: 8 s instead of 24 s for OA's 9M rows, measured), and the
        generation switched out goes with a DROP TABLE instead of a DELETE of every row. Rows a
        store kept in the shared ``history_index`` (stores from before) move to their own table, once."""
        c.execute(self._sql("LOCK TABLE {generations} IN EXCLUSIVE MODE"))  # one process moves them
        c.execute(
            self._sql("SELECT view, generation FROM {generations} WHERE generation NOT LIKE ?"), (OWN_TABLE + "%",)
        )
        for row in c.fetchall():
            table = self._new_generation_name()
            c.execute(
                SQL("CREATE TABLE {} AS SELECT entity, position FROM {} WHERE view = %s").format(
                    self._own(table), self.history_table
                ),
                (row["generation"],),
            )
            self._index(c, table)
            c.execute(self._sql("DELETE FROM {history} WHERE view = ?"), (row["generation"],))
            c.execute(self._sql("UPDATE {generations} SET generation = ? WHERE view = ?"), (table, row["view"]))

    def _own(self, generation: str):
        return SQL("{}.{}").format(Identifier(self.datastore.schema), Identifier(generation))

    def _index(self, c, generation: str) -> None:
        c.execute(
            SQL("CREATE INDEX IF NOT EXISTS {} ON {} (entity, position)").format(
                Identifier(generation + "_entity"), self._own(generation)
            )
        )

    def _new_generation_name(self) -> str:
        return f"{OWN_TABLE}{secrets.token_hex(6)}"

    def _table_name(self, table: str) -> str:
        return f'"{self.datastore.schema}".{table}' if self.pg else table

    def _generation(self, c, view: str, create: bool = False) -> str | None:
        """The generation the view's history rows are stored under (a new one if asked). The
        insert comes first: a SQLite transaction that reads before it writes cannot wait for
        another writer (``database is locked``)."""
        if create:
            new = self._new_generation_name() if self.pg else f"{view}#{secrets.token_hex(4)}"
            c.execute(
                self._sql("INSERT INTO {generations} VALUES (?, ?) ON CONFLICT (view) DO NOTHING RETURNING generation"),
                (view, new),
            )
            if c.fetchone() is not None and self.pg:  # a new generation: its table (once: two writers
                # creating an index on every write deadlock, the index's lock against the other's COPY)
                c.execute(SQL("CREATE TABLE {} (entity uuid, position bigint)").format(self._own(new)))
                if not view.endswith(REBUILD_SUFFIX):  # a rebuilt one is indexed when it is switched live
                    self._index(c, new)
        c.execute(self._sql("SELECT generation FROM {generations} WHERE view = ?"), (view,))
        row = c.fetchone()
        return row["generation"] if row else None

    def _rows_table(self, c, view: str, create: bool = False):
        """Where a view's rows are: PostgreSQL keeps a rebuilt view's rows in a table of its own,
        loaded without its primary key, which is built once at the switch; the switch then maps
        the live name to that table and drops the one it replaces, instead of rewriting every
        row under the new name (an UPDATE and a DELETE of ~1 GB at OA's size: 16 s, measured).
        Every other view (a live one never rebuilt, Kafka shards, all on SQLite) shares ``view_rows``."""
        if not self.pg:
            return None
        if create and view.endswith(REBUILD_SUFFIX):
            own = f"{OWN_ROWS}{secrets.token_hex(6)}"
            c.execute(
                SQL("INSERT INTO {} VALUES (%s, %s) ON CONFLICT (view) DO NOTHING RETURNING tbl").format(
                    self.row_tables
                ),
                (view, own),
            )
            if c.fetchone() is not None:
                c.execute(SQL("CREATE TABLE {} (tbl TEXT, key TEXT, value bytea)").format(self._own(own)))
        c.execute(SQL("SELECT tbl FROM {} WHERE view = %s").format(self.row_tables), (view,))
        row = c.fetchone()
        return self._own(row["tbl"]) if row else self.rows_table

    def _own_rows(self, c, view: str) -> str | None:
        """The name of the view's own rows table, if it has one."""
        if not self.pg:
            return None
        c.execute(SQL("SELECT tbl FROM {} WHERE view = %s").format(self.row_tables), (view,))
        row = c.fetchone()
        return row["tbl"] if row else None

    def _reload_relational(self, c, view: str) -> None:
        """The SQL read models that follow ``view`` anew: from its stored rows (the message-tree
        view's with the submissions it has folded, read again from the log)."""
        if view == BOARD_VIEW:
            self.relational.reload_board(c, self._stored_rows(c, BOARD_VIEW))
            return
        row = self._position_row(c, RELATIONAL_VIEW)
        submissions = self._submissions(row["position"] if row else 0)
        self.relational.reload(c, self._stored_rows(c, RELATIONAL_VIEW), submissions)

    def _submissions(self, upto: int) -> Iterable[tuple[int, ev.Event]]:
        """(position, event) of every label and ranking submission up to ``upto``, from the log."""
        after = 0
        while page := self.store.read_topics(after, upto, VOTE_TOPICS):
            yield from ((n.id, ev.decode_summary(n.state)) for n in page)
            after = page[-1].id

    def _stored_rows(self, c, view: str) -> Iterator[tuple[str, str, bytes]]:
        table = self._rows_table(c, view)
        if table is None or table is self.rows_table:
            c.execute(self._sql("SELECT tbl, key, value FROM {rows} WHERE view = ?"), (view,))
        else:
            c.execute(SQL("SELECT tbl, key, value FROM {}").format(table))
        return ((row["tbl"], row["key"], bytes(row["value"])) for row in c.fetchall())

    def position(self, view: str) -> int:
        with self.datastore.transaction(commit=False) as c:
            row = self._position_row(c, view)
        return row["position"] if row else 0

    def rows(self, view: str, retry: bool = True) -> Iterator[tuple[str, str, bytes]]:
        try:
            with self.datastore.transaction(commit=False) as c:
                stored = list(self._stored_rows(c, view))
        except ProgrammingError as exc:  # (eventsourcing's wrapper of psycopg's errors)
            if not retry or not isinstance(exc.__cause__, psycopg.errors.UndefinedTable):
                raise
            # a rebuilt view was switched live (and the table read dropped) between two statements
            stored = list(self.rows(view, retry=False))
        yield from stored

    def write(
        self,
        changes: list[tuple[str, int, list[tuple[str, str, bytes | None]]]],
        history: tuple[str, list[tuple[str, int]]] | None = None,
        relational: Changes | None = None,
    ) -> None:
        """For each (view, position, [(table, key, value or None)]): write the rows and the
        position; the new history entries (view, [(entity, position)]) and the SQL read
        models' changed rows; all in one transaction."""
        with self.datastore.transaction(commit=True) as c:
            if relational is not None:
                self.relational.write(c, relational)
            self.write_history(c, history)
            for view, position, rows in changes:
                upserts = [(view, t, k, v) for t, k, v in rows if v is not None]
                deletes = [(view, t, k) for t, k, v in rows if v is None]
                (self._write_rows_pg if self.pg else self._write_rows_sqlite)(c, view, position, upserts, deletes)

    def write_history(self, c, history: tuple[str, list[tuple[str, int]]] | None) -> None:
        """New history entries (view, [(entity as an int, position)]), in the caller's transaction."""
        if not history or not history[1]:
            return
        view, entries = history
        generation = self._generation(c, view, create=True)
        if self.pg:  # COPY: the history index gets several rows per event
            with c.copy(SQL("COPY {} (entity, position) FROM STDIN").format(self._own(generation))) as copy:
                # COPY's text format built by one %-format over all entries (no bytecode per entry:
                # 1.5x quicker than a join of f-strings); a uuid as 32 hex digits, which PostgreSQL reads
                copy.write(("%032x\t%d\n" * len(entries)) % tuple(itertools.chain.from_iterable(entries)))
        else:
            c.executemany(
                self._sql("INSERT INTO {history} VALUES (?, ?, ?)"),
                [(generation, str(UUID(int=e)), p) for e, p in entries],
            )

    def _write_rows_pg(self, c, view: str, position: int, upserts: list, deletes: list) -> None:
        table = self._rows_table(c, view, create=bool(upserts))
        shared = table is self.rows_table
        # the shared table's rows name their view; a view's own table holds only its rows
        where, keys = ("view = %s AND ", lambda r: r) if shared else ("", lambda r: r[1:])
        if upserts and self._position_row(c, view) is None:
            # the view's first write (a rebuild, a new view): every row is new, so a binary COPY
            names = "view, tbl, key, value" if shared else "tbl, key, value"
            with c.copy(SQL(f"COPY {{}} ({names}) FROM STDIN (FORMAT BINARY)").format(table)) as copy:
                copy.set_types(["text", "text", "text", "bytea"][0 if shared else 1 :])
                for row in upserts:
                    copy.write_row(keys(row))
        elif upserts:
            cols = [list(x) for x in zip(*map(keys, upserts), strict=True)]
            arrays = "%s::text[], %s::text[], %s::bytea[]"
            conflict = "(view, tbl, key)" if shared else "(tbl, key)"
            c.execute(
                SQL(
                    f"INSERT INTO {{}} SELECT * FROM unnest({'%s::text[], ' if shared else ''}{arrays}) "
                    f"ON CONFLICT {conflict} DO UPDATE SET value = excluded.value"
                ).format(table),
                cols,
                binary=True,  # arrays sent as binary: no per-value text escaping
            )
        if deletes:
            c.executemany(SQL(f"DELETE FROM {{}} WHERE {where}tbl = %s AND key = %s").format(table), map(keys, deletes))
        c.execute(
            self._sql(
                "INSERT INTO {positions} VALUES (?, ?) ON CONFLICT (view) DO UPDATE SET position = excluded.position"
            ),
            (view, position),
        )

    def _write_rows_sqlite(self, c, view: str, position: int, upserts: list, deletes: list) -> None:
        c.executemany(self._sql("INSERT OR REPLACE INTO {rows} VALUES (?, ?, ?, ?)"), upserts)
        c.executemany(self._sql("DELETE FROM {rows} WHERE view = ? AND tbl = ? AND key = ?"), deletes)
        c.execute(self._sql("INSERT OR REPLACE INTO {positions} VALUES (?, ?)"), (view, position))

    def _position_row(self, c, view: str):
        c.execute(self._sql("SELECT position FROM {positions} WHERE view = ?"), (view,))
        return c.fetchone()

    def history(self, view: str, entity: str, until: int | None = None, limit: int = 10_000) -> list[int]:
        until = until if until is not None else 2**62
        if self.pg:
            return self._history_pg(view, UUID(entity), until, limit)
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                self._sql(
                    "SELECT position FROM {history} WHERE entity = ? AND position <= ? "
                    "AND view = (SELECT generation FROM {generations} WHERE view = ?) ORDER BY position LIMIT ?"
                ),
                (entity, until, view, limit),
            )
            return [row["position"] for row in c.fetchall()]

    def _history_pg(self, view: str, entity: UUID, until: int, limit: int, retry: bool = True) -> list[int]:
        try:
            with self.datastore.transaction(commit=False) as c:
                generation = self._generation(c, view)
                if generation is None:
                    return []
                c.execute(
                    SQL(
                        "SELECT position FROM {} WHERE entity = %s AND position <= %s ORDER BY position LIMIT %s"
                    ).format(self._own(generation)),
                    (entity, until, limit),
                )
                return [row["position"] for row in c.fetchall()]
        except ProgrammingError as exc:  # (eventsourcing's wrapper of psycopg's errors)
            if not retry or not isinstance(exc.__cause__, psycopg.errors.UndefinedTable):
                raise
            # the generation was switched out (and its table dropped) between the two statements
            return self._history_pg(view, entity, until, limit, retry=False)

    def history_entries(self, view: str) -> list[tuple[str, int]]:
        """Every (entity, position) of a view's history index (for checks: a full scan)."""
        with self.datastore.transaction(commit=False) as c:
            generation = self._generation(c, view)
            if self.pg:
                if generation is None:
                    return []
                c.execute(SQL("SELECT entity, position FROM {}").format(self._own(generation)))
            else:
                c.execute(self._sql("SELECT entity, position FROM {history} WHERE view = ?"), (generation,))
            return [(str(r["entity"]), r["position"]) for r in c.fetchall()]

    def drop(self, view: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            self._drop_rows(c, view)
            c.execute(self._sql("DELETE FROM {positions} WHERE view = ?"), (view,))
            self._drop_generation(c, self._generation(c, view))
            c.execute(self._sql("DELETE FROM {generations} WHERE view = ?"), (view,))
            if view in FOLLOWS:
                self.relational.clear(c, view)

    def _drop_rows(self, c, view: str) -> None:
        own = self._own_rows(c, view)
        if own is None:
            c.execute(self._sql("DELETE FROM {rows} WHERE view = ?"), (view,))
            return
        c.execute(SQL("DROP TABLE IF EXISTS {}").format(self._own(own)))
        c.execute(SQL("DELETE FROM {} WHERE view = %s").format(self.row_tables), (view,))

    def _switch_rows(self, c, old: str, new: str) -> None:
        """The rows built under ``old`` become ``new``'s: its own table renamed in the map, with
        its primary key built now (PostgreSQL), else the shared table's rows renamed."""
        own = self._own_rows(c, old)
        self._drop_rows(c, new)
        if own is None:
            c.execute(self._sql("UPDATE {rows} SET view = ? WHERE view = ?"), (new, old))
            return
        c.execute(SQL("ALTER TABLE {} ADD PRIMARY KEY (tbl, key)").format(self._own(own)))
        c.execute(SQL("UPDATE {} SET view = %s WHERE view = %s").format(self.row_tables), (new, old))

    def _drop_generation(self, c, generation: str | None) -> None:
        if generation is None:
            return
        if self.pg:
            c.execute(SQL("DROP TABLE IF EXISTS {}").format(self._own(generation)))
        else:
            c.execute(self._sql("DELETE FROM {history} WHERE view = ?"), (generation,))

    def rename(self, old: str, new: str, tables: Changes | None = None) -> None:
        """Atomically replace view ``new`` by the rows and position built under ``old``; the SQL
        tables that follow it are reloaded from ``tables`` if given (the rebuilt view's rows in
        memory), else from its stored rows."""
        with self.datastore.transaction(commit=True) as c:
            self._switch_rows(c, old, new)
            c.execute(self._sql("DELETE FROM {positions} WHERE view = ?"), (new,))
            c.execute(self._sql("UPDATE {positions} SET view = ? WHERE view = ?"), (new, old))
            built = self._generation(c, old)
            if self.pg and built is not None:
                self._index(c, built)
            replaced = self._generation(c, new)  # the history rows of the view switched out
            c.execute(self._sql("DELETE FROM {generations} WHERE view = ?"), (new,))
            c.execute(self._sql("UPDATE {generations} SET view = ? WHERE view = ?"), (new, old))
            if new == RELATIONAL_VIEW and tables is not None:
                self.relational.replace(c, tables)
            elif new in FOLLOWS:  # the tables follow the live view: reload them from its new rows
                self._reload_relational(c, new)
        with self.datastore.transaction(commit=True) as c:  # nothing reads them any more
            self._drop_generation(c, replaced)
