"""SQL read models: the message-tree view's messages, trees and users as plain tables that
SQL tools can read (issue #16). On PostgreSQL they live in a schema ``views`` (``<schema>_views``
for a store under ``?schema=``), on SQLite as ``views_messages``, ``views_trees``, ``views_users``.

They follow the live ``message_tree`` view only: the runner writes the changed rows with the
view's rows and position in one transaction; a rebuild (``~rebuild`` copy) writes none, and
switching it live reloads the tables from the rebuilt rows in the switching transaction.

Users appear under a pseudonym: HMAC-SHA256 of the user id's 16 bytes with a random per-store
secret (``view_secret``, beside the event store's tables, never in the views schema), as 16 hex
characters. No names and no message text here (text comes with erasure, #19)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Iterator
from datetime import datetime
from types import UnionType
from typing import Union, get_args, get_origin
from uuid import UUID

import msgspec
from psycopg.sql import SQL, Identifier

from domain.rules import is_skip_marker
from projections.message_tree import MessageRow, MessageTreeView, TreeRow, UserRow

VIEW = f"{MessageTreeView.name}@{MessageTreeView.version}"  # the live view the tables follow
PREFIX = "views_"  # SQLite: tables are views_<name>
COMMON_EMOJIS = {"plus_one": "+1", "minus_one": "-1", "red_flag": "red_flag"}


class Message(msgspec.Struct, kw_only=True):
    id: UUID
    tree_id: UUID
    parent_id: UUID | None
    role: str
    lang: str
    depth: int
    author: str | None
    created: datetime
    deleted: bool
    synthetic: bool
    model_name: str | None
    review_count: int
    review_result: bool | None
    rank: int | None
    plus_one: int
    minus_one: int
    red_flag: int
    emojis: dict[str, int]
    edited: bool


class Tree(msgspec.Struct, kw_only=True):
    id: UUID
    state: str
    lang: str
    size: int
    created: datetime
    goal_size: int | None
    origin: str | None


class User(msgspec.Struct, kw_only=True):
    id: str
    created: datetime
    messages: int
    enabled: bool
    deleted: bool
    spammer: bool
    show_on_leaderboard: bool


TABLES: dict[str, type[msgspec.Struct]] = {"messages": Message, "trees": Tree, "users": User}

COMMENTS = {
    "messages": {
        "": "Messages of the message_tree view, one row each (no text)",
        "id": "message id",
        "tree_id": "id of the tree (its initial prompt)",
        "parent_id": "parent message; null for the initial prompt",
        "role": "prompter or assistant",
        "lang": "language code",
        "depth": "0 for the initial prompt",
        "author": "author's pseudonym (users.id); null when the author was deleted",
        "created": "when it was submitted",
        "deleted": "deleted by a moderator",
        "synthetic": "written by a model",
        "model_name": "the model of a synthetic message",
        "review_count": "review (label) tasks done on it",
        "review_result": "accepted by review; null while undecided",
        "rank": "rank among its siblings, 0 best; null if unranked",
        "plus_one": "+1 reactions",
        "minus_one": "-1 reactions",
        "red_flag": "red flag reactions",
        "emojis": "every reaction count, JSON {emoji: count}",
        "edited": "its text was edited",
    },
    "trees": {
        "": "Message trees of the message_tree view",
        "id": "tree id (its initial prompt's id)",
        "state": "tree state (Open-Assistant's)",
        "lang": "language of the initial prompt",
        "size": "messages in the tree",
        "created": "when the initial prompt was submitted",
        "goal_size": "messages the tree grows to",
        "origin": "import origin (file name); null for trees grown here",
    },
    "users": {
        "": "Users under a pseudonym (no names)",
        "id": "pseudonym: HMAC-SHA256 of the user id with a per-store secret, 16 hex chars",
        "created": "first seen",
        "messages": "messages authored",
        "enabled": "may take tasks",
        "deleted": "deleted (anonymised: their messages have no author)",
        "spammer": "marked a spammer",
        "show_on_leaderboard": "shown on leaderboards",
    },
}

_TYPES = {  # python type -> (PostgreSQL, SQLite)
    UUID: ("uuid", "TEXT"),
    str: ("text", "TEXT"),
    int: ("bigint", "INTEGER"),
    bool: ("boolean", "INTEGER"),
    datetime: ("timestamptz", "TEXT"),
    dict: ("jsonb", "TEXT"),
}
INDEXES = {
    "messages_lang_created": ("messages", "lang, created"),
    "messages_tree": ("messages", "tree_id"),
    "messages_author": ("messages", "author"),
    "trees_state": ("trees", "state"),
}
_BATCH = 20_000  # rows per upsert statement


def schema_name(store_schema: str) -> str:
    """PostgreSQL: ``views`` beside the default schema, ``<schema>_views`` beside another."""
    return "views" if store_schema == "public" else f"{store_schema}_views"


def _sql_type(tp, pg: bool) -> str:
    if get_origin(tp) in (Union, UnionType):  # X | None: a nullable X
        tp = next(t for t in get_args(tp) if t is not type(None))
    return _TYPES[get_origin(tp) or tp][0 if pg else 1]


def columns(table: str) -> list[str]:
    return list(TABLES[table].__struct_fields__)


def emoji_counts(m: MessageRow) -> dict[str, int]:
    """Reactions as the exports count them: imported counts plus ours, skip markers left out."""
    counts = dict(m.emoji_counts)
    for code, users in m.emojis.items():
        if not is_skip_marker(code):
            counts[code] = counts.get(code, 0) + len(users)
    return {k: v for k, v in sorted(counts.items()) if v}


class Changes(msgspec.Struct):
    """One flush's rows: per table, the rows to upsert and the keys to delete."""

    upserts: dict[str, list] = {}
    deletes: dict[str, list] = {}


class RelationalTables:
    def __init__(self, datastore, pg: bool):
        self.datastore = datastore
        self.pg = pg
        self.schema = schema_name(datastore.schema) if pg else ""
        self._pseudonyms: dict[UUID, str] = {}
        self.secret = b""

    # --- names and statements --------------------------------------------------------

    def name(self, table: str):
        return SQL("{}.{}").format(Identifier(self.schema), Identifier(table)) if self.pg else PREFIX + table

    def _sql(self, text: str, **tables):
        """A statement with ``{table}`` names (of TABLES) and ``?`` params, for this backend."""
        return self._statement(text, **{k: self.name(v) for k, v in tables.items()})

    def _statement(self, text: str, **names):
        """A statement with ``{name}`` placeholders filled by ready names, and ``?`` params."""
        return SQL(text.replace("?", "%s")).format(**names) if self.pg else text.format(**names)

    def _in(self, values: Iterable) -> tuple[str, object]:
        """``= ANY(array)`` on PostgreSQL, ``IN (json_each)`` on SQLite, and its parameter."""
        if self.pg:
            return "= ANY(?)", list(values)
        return "IN (SELECT value FROM json_each(?))", msgspec.json.encode([str(v) for v in values]).decode()

    # --- creation ---------------------------------------------------------------------

    def create(self, c, secret_table) -> bool:
        """Create the tables (and the secret) if missing; true if the tables are new."""
        self._load_secret(c, secret_table)
        if self.pg:
            c.execute("SELECT to_regclass(%s) IS NULL AS new", (f'"{self.schema}".messages',))
            new = c.fetchone()["new"]
            c.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(self.schema)))
        else:
            c.execute("SELECT count(*) AS n FROM sqlite_master WHERE name = ?", (PREFIX + "messages",))
            new = c.fetchone()["n"] == 0
        for table in TABLES:
            c.execute(self._create_statement(table))
        for index, (table, cols) in INDEXES.items():
            c.execute(self._sql(f"CREATE INDEX IF NOT EXISTS {PREFIX}{index} ON {{t}} ({cols})", t=table))
        if new and self.pg:
            self._comment(c)
        return new

    def _create_statement(self, table: str):
        fields = msgspec.structs.fields(TABLES[table])
        cols = ", ".join(f"{f.name} {_sql_type(f.type, self.pg)}" for f in fields)
        return self._sql(f"CREATE TABLE IF NOT EXISTS {{t}} ({cols}, PRIMARY KEY (id))", t=table)

    def _comment(self, c) -> None:
        for table, notes in COMMENTS.items():
            for col, note in notes.items():
                target = "TABLE {t}" if not col else "COLUMN {t}." + col
                c.execute(SQL(f"COMMENT ON {target} IS {{note}}").format(t=self.name(table), note=note))

    def _load_secret(self, c, secret_table) -> None:
        """The per-store pseudonym key: made once, kept outside the views schema."""
        blob, q = "bytea" if self.pg else "BLOB", lambda text: self._statement(text, s=secret_table)
        c.execute(q(f"CREATE TABLE IF NOT EXISTS {{s}} (name TEXT PRIMARY KEY, secret {blob})"))
        c.execute(
            q("INSERT INTO {s} VALUES ('pseudonyms', ?) ON CONFLICT (name) DO NOTHING"), (secrets.token_bytes(32),)
        )
        c.execute(q("SELECT secret FROM {s} WHERE name = 'pseudonyms'"))
        self.secret = bytes(c.fetchone()["secret"])

    # --- mapping view rows to table rows ----------------------------------------------

    def pseudonym(self, user_id: UUID) -> str:
        p = self._pseudonyms.get(user_id)
        if p is None:
            p = self._pseudonyms[user_id] = hmac.new(self.secret, user_id.bytes, hashlib.sha256).hexdigest()[:16]
        return p

    def message(self, m: MessageRow, users: dict[UUID, UserRow]) -> Message:
        author = users.get(m.user_id) if m.user_id else None
        emojis = emoji_counts(m)
        return Message(
            id=m.id,
            tree_id=m.tree_id,
            parent_id=m.parent_id,
            role=m.role,
            lang=m.lang,
            depth=m.depth,
            author=None if m.user_id is None or (author and author.deleted) else self.pseudonym(m.user_id),
            created=m.created_date,
            deleted=m.deleted,
            synthetic=m.synthetic,
            model_name=m.model_name,
            review_count=m.review_count,
            review_result=m.review_result,
            rank=m.rank,
            **{col: emojis.get(code, 0) for col, code in COMMON_EMOJIS.items()},
            emojis=emojis,
            edited=m.edited,
        )

    @staticmethod
    def tree(t: TreeRow) -> Tree:
        return Tree(
            id=t.id,
            state=t.state,
            lang=t.lang,
            size=len(t.message_ids),
            created=t.created_date,
            goal_size=t.goal_tree_size,
            origin=t.origin,
        )

    def user(self, u: UserRow) -> User:
        return User(
            id=self.pseudonym(u.id),
            created=u.created_date,
            messages=0,  # counted in SQL after the messages are written
            enabled=u.enabled,
            deleted=u.deleted,
            spammer=u.spammer,
            show_on_leaderboard=u.show_on_leaderboard,
        )

    def changes(self, rows: dict[str, dict], users: dict[UUID, UserRow], keys: dict[str, Iterable]) -> Changes:
        """Table rows for the changed ``keys`` (per view table) of the view's ``rows``."""
        maps = {"messages": lambda m: self.message(m, users), "trees": self.tree, "users": self.user}
        out = Changes({}, {})
        for table, make in maps.items():
            found = [(k, rows[table].get(k)) for k in keys.get(table, ())]
            out.upserts[table] = [make(r) for _, r in found if r is not None]
            out.deletes[table] = [self.pseudonym(k) if table == "users" else k for k, r in found if r is None]
        return out

    def view_changes(self, view: MessageTreeView, taken: list) -> Changes:
        """The runner's flush: ``taken`` is its [(view table, keys)] of this view."""
        rows = {name: view.tables[name].rows for name in TABLES}
        return self.changes(rows, view.users.rows, {t.name: keys for t, keys in taken if t.name in TABLES})

    def decoded_changes(self, stored: Iterator[tuple[str, str, bytes]]) -> Changes:
        """Every row of the stored view (``(table, key, msgpack)``): for a full reload."""
        types = {"messages": MessageRow, "trees": TreeRow, "users": UserRow}
        rows: dict[str, dict] = {t: {} for t in types}
        for table, key, value in stored:
            if table in types:
                rows[table][UUID(key)] = msgspec.msgpack.decode(value, type=types[table])
        return self.changes(rows, rows["users"], {t: list(r) for t, r in rows.items()})

    # --- writing ----------------------------------------------------------------------

    def write(self, c, changes: Changes) -> None:
        """Upsert and delete the rows, then re-count messages of every user they touch."""
        messages = changes.upserts.get("messages", []) + changes.deletes.get("messages", [])
        touched = self._authors(c, [m.id if isinstance(m, Message) else m for m in messages])
        for table, keys in changes.deletes.items():
            if keys:
                clause, param = self._in(keys)
                c.execute(self._sql(f"DELETE FROM {{t}} WHERE id {clause}", t=table), (param,))
        for table, rows in changes.upserts.items():
            for start in range(0, len(rows), _BATCH):
                self._upsert(c, table, rows[start : start + _BATCH])
        touched |= {m.author for m in changes.upserts.get("messages", []) if m.author}
        users = changes.upserts.get("users", [])
        self._forget_authors(c, [u.id for u in users if u.deleted])
        self._count_messages(c, touched | {u.id for u in users})

    def _authors(self, c, message_ids: list) -> set[str]:
        """Current authors of these messages (a merge may move them to another user)."""
        if not message_ids:
            return set()
        clause, param = self._in(message_ids)
        c.execute(self._sql(f"SELECT DISTINCT author FROM {{m}} WHERE id {clause}", m="messages"), (param,))
        return {r["author"] for r in c.fetchall() if r["author"]}

    def _upsert(self, c, table: str, rows: list) -> None:
        if not rows:
            return
        cols = columns(table)
        update = ", ".join(f"{col} = excluded.{col}" for col in cols if col != "id")
        if self.pg:  # one statement per batch: PostgreSQL types the JSON rows by the table's row type
            c.execute(
                self._sql(
                    f"INSERT INTO {{t}} SELECT * FROM json_populate_recordset(NULL::{{t}}, ?::json) "
                    f"ON CONFLICT (id) DO UPDATE SET {update}",
                    t=table,
                ),
                (msgspec.json.encode(rows).decode(),),
            )
        else:
            names = ", ".join(f":{col}" for col in cols)
            c.executemany(f"INSERT OR REPLACE INTO {PREFIX}{table} VALUES ({names})", map(_sqlite_params, rows))

    def _forget_authors(self, c, pseudonyms: list[str]) -> None:
        """A deleted user's messages stay, without an author (as in snapshots)."""
        if pseudonyms:
            clause, param = self._in(pseudonyms)
            c.execute(self._sql(f"UPDATE {{m}} SET author = NULL WHERE author {clause}", m="messages"), (param,))

    def _count_messages(self, c, pseudonyms: set[str]) -> None:
        if pseudonyms:
            clause, param = self._in(pseudonyms)
            c.execute(
                self._sql(
                    f"UPDATE {{u}} AS u SET messages = (SELECT count(*) FROM {{m}} AS m WHERE m.author = u.id) "
                    f"WHERE u.id {clause}",
                    u="users",
                    m="messages",
                ),
                (param,),
            )

    def clear(self, c) -> None:
        for table in TABLES:
            c.execute(self._sql("DELETE FROM {t}", t=table))

    def reload(self, c, stored: Iterator[tuple[str, str, bytes]]) -> None:
        """Replace the tables' rows by the stored view's (a rebuild switched live)."""
        self.clear(c)
        self.write(c, self.decoded_changes(stored))


def _sqlite_params(row: msgspec.Struct) -> dict:
    """SQLite takes plain values: ISO dates, string ids, JSON text for dicts."""
    d = msgspec.to_builtins(row)
    return {k: msgspec.json.encode(v).decode() if isinstance(v, dict) else v for k, v in d.items()}
