"""SQL read models: the message-tree view's messages, trees and users as plain tables that
SQL tools can read (issue #16), with every label and ranking submission (``label_votes``,
``rankings``) and two SQL views over them (``label_aggregates``, ``daily_activity``). On
PostgreSQL they live in a schema ``views`` (``<schema>_views`` for a store under ``?schema=``),
on SQLite as ``views_messages``, ``views_trees``, ...

They follow the live ``message_tree`` view only: the runner writes the changed rows with the
view's rows and position in one transaction; a rebuild (``~rebuild`` copy) writes none, and
switching it live reloads the tables from the rebuilt rows in the switching transaction.
No view keeps every submission with its time and kind (consensus keeps each user's latest
labels, undated), so the runner hands the submissions the live message-tree view folds
straight to ``label_votes`` and ``rankings``; a reload reads them again from the log.

Users appear under a pseudonym: HMAC-SHA256 of the user id's 16 bytes with a random per-store
secret (``view_secret``, beside the event store's tables, never in the views schema), as 16 hex
characters. No names and no message text here (text comes with erasure, #19)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from types import UnionType
from typing import Union, get_args, get_origin
from uuid import UUID

import msgspec
import numpy as np
import polars as pl
from psycopg.sql import SQL, Identifier

from domain import events as ev
from projections import relational_boards as boards
from projections.message_tree import MessageRow, MessageTreeView, TreeRow, UserRow, emoji_counts

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


class LabelVote(msgspec.Struct, kw_only=True):
    position: int
    label: str
    message_id: UUID
    value: float
    annotator: str | None
    kind: str
    created: datetime
    latest: bool


class Ranking(msgspec.Struct, kw_only=True):
    position: int
    parent_id: UUID
    annotator: str | None
    ranked: list[UUID]
    not_rankable: bool
    created: datetime


class LabelAggregate(msgspec.Struct, kw_only=True):  # a SQL view (SQL_VIEWS)
    message_id: UUID
    label: str
    mean: float
    count: int


class DailyActivity(msgspec.Struct, kw_only=True):  # a SQL view (SQL_VIEWS)
    day: date
    lang: str
    role: str
    messages: int
    labels: int
    rankings: int


# every table and SQL view, by name (projections/frames.py reads them from here)
TABLES: dict[str, type[msgspec.Struct]] = {
    "messages": Message,
    "trees": Tree,
    "users": User,
    "label_votes": LabelVote,
    "rankings": Ranking,
    "user_hours": boards.UserHour,
    "label_aggregates": LabelAggregate,
    "daily_activity": DailyActivity,
    "leaderboards": boards.Leaderboard,
}
# primary keys other than ``id``
KEYS = {"label_votes": "position, label", "rankings": "position", "user_hours": "user_id, hour"}
DELETE_BY = {"user_hours": "user_id"}  # the column a delete names, where not ``id``
VOTE_EVENTS = (ev.LabelsSubmitted, ev.RankingSubmitted)  # what label_votes and rankings are made of
VOTE_TOPICS = ("labels_submitted", "ranking_submitted")
_FALSE = "FALSE"  # both backends (SQLite >= 3.23)
# SQL views: computed when read, so never out of step with the tables. ``{day}`` is a UTC date per backend.
# label_aggregates is the consensus view's label_aggregates: each annotator's latest labels, spammers left out.
SQL_VIEWS = {
    "label_aggregates": f"""
        SELECT v.message_id, v.label, avg(v.value) AS mean, count(*) AS count
        FROM {{label_votes}} AS v LEFT JOIN {{users}} AS u ON u.id = v.annotator
        WHERE v.latest AND v.kind <> 'report' AND NOT coalesce(u.spammer, {_FALSE})
        GROUP BY v.message_id, v.label""",
    "daily_activity": """
        SELECT day, lang, role, CAST(sum(messages) AS bigint) AS messages, CAST(sum(labels) AS bigint) AS labels,
               CAST(sum(rankings) AS bigint) AS rankings
        FROM (
            SELECT {day:m.created} AS day, m.lang, m.role, count(*) AS messages, 0 AS labels, 0 AS rankings
            FROM {messages} AS m GROUP BY 1, 2, 3
            UNION ALL
            SELECT {day:v.created}, m.lang, m.role, 0, count(DISTINCT v.position), 0
            FROM {label_votes} AS v JOIN {messages} AS m ON m.id = v.message_id GROUP BY 1, 2, 3
            UNION ALL
            SELECT {day:r.created}, m.lang, m.role, 0, 0, count(*)
            FROM {rankings} AS r JOIN {messages} AS m ON m.id = r.parent_id GROUP BY 1, 2, 3
        ) AS a GROUP BY day, lang, role""",
    "leaderboards": boards.LEADERBOARDS,
}
STORED = [t for t in TABLES if t not in SQL_VIEWS]
# the stored tables by the live view they follow (a rebuild of one reloads only its tables)
FOLLOWS = {VIEW: [t for t in STORED if t != "user_hours"], boards.VIEW: ["user_hours"]}

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
    "label_votes": {
        "": "Every label submission, one row per label (reports included)",
        "position": "log position of the submission (with label: the key)",
        "label": "label name",
        "message_id": "the labelled message",
        "value": "label value, 0 to 1",
        "annotator": "annotator's pseudonym (users.id) as cast; null when the annotator was deleted",
        "kind": "task (a review task), free (labelled unasked) or report",
        "created": "when it was submitted",
        "latest": "the annotator's latest task/free labels on the message: what consensus counts",
    },
    "rankings": {
        "": "Every ranking submission",
        "position": "log position of the submission (the key)",
        "parent_id": "the message whose replies were ranked",
        "annotator": "ranker's pseudonym (users.id) as cast; null when the ranker was deleted",
        "ranked": "the replies' ids, best first (JSON array)",
        "not_rankable": "the ranker said the replies cannot be ranked",
        "created": "when it was submitted",
    },
    "label_aggregates": {
        "": "SQL view: per message and label, over each annotator's latest labels, spammers left out",
        "message_id": "the labelled message",
        "label": "label name",
        "mean": "mean value (Open-Assistant's, unweighted)",
        "count": "annotators who gave this label",
    },
    "daily_activity": {
        "": "SQL view: submissions per UTC day, language and role of the message acted on",
        "day": "UTC date",
        "lang": "language of the message (of the labelled message, of the ranked replies' parent)",
        "role": "role of that message",
        "messages": "messages submitted (deleted ones included)",
        "labels": "label submissions (one per submission, not per label)",
        "rankings": "ranking submissions",
    },
    **boards.COMMENTS,
}

_TYPES = {  # python type -> (PostgreSQL, SQLite)
    UUID: ("uuid", "TEXT"),
    str: ("text", "TEXT"),
    int: ("bigint", "INTEGER"),
    float: ("double precision", "REAL"),
    bool: ("boolean", "INTEGER"),
    datetime: ("timestamptz", "TEXT"),
    dict: ("jsonb", "TEXT"),
    list: ("jsonb", "TEXT"),
}
INDEXES = {
    "messages_lang_created": ("messages", "lang, created"),
    "messages_tree": ("messages", "tree_id"),
    "messages_author": ("messages", "author"),
    "trees_state": ("trees", "state"),
    "label_votes_message": ("label_votes", "message_id, label"),  # few indexes: every label is a row to index
    "rankings_parent": ("rankings", "parent_id"),
    "user_hours_hour": ("user_hours", "hour"),
}
_BATCH = 20_000  # rows per upsert statement


def schema_name(store_schema: str) -> str:
    """PostgreSQL: ``views`` beside the default schema, ``<schema>_views`` beside another."""
    return "views" if store_schema == "public" else f"{store_schema}_views"


def column_type(tp):
    """A table field's type without its ``| None`` (every column may be null), generics bare."""
    if get_origin(tp) in (Union, UnionType):
        tp = next(t for t in get_args(tp) if t is not type(None))
    return get_origin(tp) or tp


def _sql_type(tp, pg: bool) -> str:
    return _TYPES[column_type(tp)][0 if pg else 1]


def columns(table: str) -> list[str]:
    return list(TABLES[table].__struct_fields__)


def _latest_labels(submissions: list[tuple[int, ev.Event]]) -> dict:
    """(message, user) -> position of their latest task or free labels among the submissions."""
    latest = {}
    for position, e in submissions:
        if isinstance(e, ev.LabelsSubmitted) and e.kind != "report":
            latest[e.message_id, e.user_id] = position
    return latest


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

    def create(self, c, secret_table) -> list[str]:
        """Create the tables, SQL views (and the secret) if missing; the live views whose tables are new."""
        self._load_secret(c, secret_table)
        new = [view for view, tables in FOLLOWS.items() if any([self._missing(c, t) for t in tables])]
        if self.pg:
            c.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(self.schema)))
        for table in STORED:
            c.execute(self._create_statement(table))
        for index, (table, cols) in INDEXES.items():
            c.execute(self._sql(f"CREATE INDEX IF NOT EXISTS {PREFIX}{index} ON {{t}} ({cols})", t=table))
        for view in SQL_VIEWS:
            c.execute(self._view_statement(view))
        if new and self.pg:
            self._comment(c)
        return new

    def _missing(self, c, table: str) -> bool:
        if self.pg:
            c.execute("SELECT to_regclass(%s) IS NULL AS new", (f'"{self.schema}".{table}',))
            return c.fetchone()["new"]
        c.execute("SELECT count(*) AS n FROM sqlite_master WHERE name = ?", (PREFIX + table,))
        return c.fetchone()["n"] == 0

    def _create_statement(self, table: str):
        fields = msgspec.structs.fields(TABLES[table])
        cols = ", ".join(f"{f.name} {_sql_type(f.type, self.pg)}" for f in fields)
        key = KEYS.get(table, "id")
        return self._sql(f"CREATE TABLE IF NOT EXISTS {{t}} ({cols}, PRIMARY KEY ({key}))", t=table)

    def _view_statement(self, view: str):
        day = r"(\1 AT TIME ZONE 'UTC')::date" if self.pg else r"date(\1)"
        text = re.sub(r"\{day:(\w+\.\w+)\}", day, SQL_VIEWS[view]).replace("{now_hour}", boards.NOW_HOUR[self.pg])
        create = "CREATE OR REPLACE VIEW" if self.pg else "CREATE VIEW IF NOT EXISTS"
        return self._sql(f"{create} {{{view}}} AS {text}", **{t: t for t in TABLES})

    def _comment(self, c) -> None:
        for table, notes in COMMENTS.items():
            kind = "VIEW" if table in SQL_VIEWS else "TABLE"
            for col, note in notes.items():
                target = f"{kind} {{t}}" if not col else "COLUMN {t}." + col
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

    def _annotator(self, user_id: UUID | None, users: dict[UUID, UserRow]) -> str | None:
        """As ``messages.author``: null for a deleted user."""
        user = users.get(user_id) if user_id else None
        return None if user_id is None or (user and user.deleted) else self.pseudonym(user_id)

    def votes(
        self, submissions: list[tuple[int, ev.Event]], users: dict[UUID, UserRow], as_frame: bool = False
    ) -> dict[str, list]:
        """label_votes and rankings rows of (position, event) submissions, in log order
        (``as_frame``: label_votes as one frame, for a whole reload)."""
        latest = _latest_labels(submissions)
        labels = (self._vote_frame if as_frame else self._vote_rows)(submissions, users, latest)
        return {"label_votes": labels, "rankings": self._rankings(submissions, users)}

    def _rankings(self, submissions: list[tuple[int, ev.Event]], users: dict[UUID, UserRow]) -> list:
        return [
            Ranking(
                position=position,
                parent_id=e.parent_id,
                annotator=self._annotator(e.user_id, users),
                ranked=list(e.ranked_message_ids),
                not_rankable=e.not_rankable,
                created=e.at,
            )
            for position, e in submissions
            if isinstance(e, ev.RankingSubmitted)
        ]

    def _vote_rows(self, submissions: list, users: dict[UUID, UserRow], latest: dict) -> list:
        return [
            LabelVote(
                position=position,
                label=name,
                message_id=e.message_id,
                value=value,
                annotator=self._annotator(e.user_id, users),
                kind=e.kind,
                created=e.at,
                latest=latest.get((e.message_id, e.user_id)) == position,
            )
            for position, e in submissions
            if isinstance(e, ev.LabelsSubmitted)
            for name, value in sorted(e.labels.items())
        ]

    def _vote_frame(self, submissions: list, users: dict[UUID, UserRow], latest: dict) -> pl.DataFrame:
        """label_votes as votes() makes them: the event's columns once per event, repeated by
        polars for each of its labels (5.2M votes at OA's size: a struct per vote, or a list per
        event for polars to convert, cost a reload 13 s)."""
        cols: dict[str, list] = {n: [] for n in ("position", "message_id", "annotator", "kind", "created", "latest")}
        counts, names, values = [], [], []
        for position, e in submissions:
            if not isinstance(e, ev.LabelsSubmitted) or not e.labels:
                continue
            labels = sorted(e.labels.items())
            cols["position"].append(position)
            cols["message_id"].append(str(e.message_id))
            cols["annotator"].append(self._annotator(e.user_id, users))
            cols["kind"].append(e.kind)
            cols["created"].append(e.at.isoformat())
            cols["latest"].append(latest.get((e.message_id, e.user_id)) == position)
            counts.append(len(labels))
            names += [name for name, _ in labels]
            values += [float(value) for _, value in labels]
        events = pl.DataFrame(cols, schema_overrides={"position": pl.Int64, "latest": pl.Boolean})
        frame = events[np.repeat(np.arange(len(counts)), counts)].with_columns(
            label=pl.Series(names, dtype=pl.String), value=pl.Series(values, dtype=pl.Float64)
        )
        return frame.select(columns("label_votes"))

    def changes(
        self,
        rows: dict[str, dict],
        users: dict[UUID, UserRow],
        keys: dict[str, Iterable],
        submissions: list,
        whole: bool = False,
    ) -> Changes:
        """Table rows for the changed ``keys`` (per view table) of the view's ``rows``, and for the submissions."""
        maps = {"messages": lambda m: self.message(m, users), "trees": self.tree, "users": self.user}
        out = Changes({}, {})
        for table, make in maps.items():
            found = [(k, rows[table].get(k)) for k in keys.get(table, ())]
            out.upserts[table] = [make(r) for _, r in found if r is not None]
            out.deletes[table] = [self.pseudonym(k) if table == "users" else k for k, r in found if r is None]
        out.upserts.update(self.votes(submissions, users, as_frame=whole and self.pg))
        return out

    def board_changes(self, changes: Changes, users: dict, taken: list) -> None:
        """Add the live leaderboard view's changed users (``taken``: its [(view table, keys)]) to a flush."""
        keys = [k for t, keys in taken if t.name == "users" for k in keys]
        replaced, rows = boards.hour_changes(self.pseudonym, users, keys)
        changes.deletes["user_hours"], changes.upserts["user_hours"] = replaced, rows

    def view_changes(self, view: MessageTreeView, taken: list, submissions: list) -> Changes:
        """The runner's flush: ``taken`` is its [(view table, keys)] of this view, ``submissions``
        the (position, event) label and ranking submissions it folded since the last flush."""
        rows = {name: view.tables[name].rows for name in ("messages", "trees", "users")}
        keys = {t.name: keys for t, keys in taken if t.name in rows}
        return self.changes(rows, view.users.rows, keys, submissions)

    def whole_view(self, view: MessageTreeView, submissions: list) -> Changes:
        """Every row of a view in memory and the given submissions: for a full reload."""
        rows = {name: view.tables[name].rows for name in ("messages", "trees", "users")}
        return self.changes(rows, view.users.rows, {t: list(r) for t, r in rows.items()}, submissions, whole=True)

    def decoded_changes(self, stored: Iterator[tuple[str, str, bytes]], submissions: Iterable) -> Changes:
        """Every row of the stored view (``(table, key, msgpack)``) and every submission: for a full reload."""
        types = {"messages": MessageRow, "trees": TreeRow, "users": UserRow}
        rows: dict[str, dict] = {t: {} for t in types}
        for table, key, value in stored:
            if table in types:
                rows[table][UUID(key)] = msgspec.msgpack.decode(value, type=types[table])
        return self.changes(rows, rows["users"], {t: list(r) for t, r in rows.items()}, list(submissions), whole=True)

    # --- writing ----------------------------------------------------------------------

    def write(self, c, changes: Changes, fresh: bool = False) -> None:
        """Upsert and delete the rows, then re-count messages of every user they touch
        (``fresh``: the tables were just emptied, so no earlier vote is superseded)."""
        self._recount(c, changes, self._load(c, changes, fresh))

    def _load(self, c, changes: Changes, fresh: bool) -> set[str]:
        """Upsert and delete the rows; the authors whose messages were there before."""
        messages = changes.upserts.get("messages", []) + changes.deletes.get("messages", [])
        touched = self._authors(c, [m.id if isinstance(m, Message) else m for m in messages])
        for table, keys in changes.deletes.items():
            if keys:
                clause, param = self._in(keys)
                column = DELETE_BY.get(table, "id")
                c.execute(self._sql(f"DELETE FROM {{t}} WHERE {column} {clause}", t=table), (param,))
        if not fresh:
            self._supersede(c, changes.upserts.get("label_votes", []))
        for table, rows in changes.upserts.items():
            if self.pg and table in KEYS:  # insert-only tables: a COPY
                self._copy(c, table, rows)
                continue
            for start in range(0, len(rows), _BATCH):
                self._upsert(c, table, rows[start : start + _BATCH])
        return touched

    def _recount(self, c, changes: Changes, touched: set[str]) -> None:
        """Forget deleted users as authors; count the messages of every user touched (by their
        author index: a load without indexes builds them first)."""
        touched |= {m.author for m in changes.upserts.get("messages", []) if m.author}
        users = changes.upserts.get("users", [])
        self._forget_authors(c, [u.id for u in users if u.deleted])
        self._count_messages(c, touched | {u.id for u in users})

    def _supersede(self, c, votes: list[LabelVote]) -> None:
        """Earlier flushes' labels by an annotator on a message are no longer their latest."""
        pairs = sorted({(str(v.message_id), v.annotator) for v in votes if v.latest and v.annotator})
        if not pairs:
            return
        if self.pg:
            among, params = "SELECT * FROM unnest(?::uuid[], ?::text[])", [list(x) for x in zip(*pairs, strict=True)]
        else:
            among = "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)"
            params = [msgspec.json.encode(pairs).decode()]
        c.execute(
            self._sql(
                f"UPDATE {{v}} SET latest = {_FALSE} WHERE latest AND (message_id, annotator) IN ({among})",
                v="label_votes",
            ),
            params,
        )

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
        # votes are only ever added (exactly once, with the view's position): a plain insert
        conflict = "" if table in KEYS else f"ON CONFLICT (id) DO UPDATE SET {update}"
        if self.pg:  # one statement per batch: PostgreSQL types the JSON rows by the table's row type
            c.execute(
                self._sql(
                    f"INSERT INTO {{t}} SELECT * FROM json_populate_recordset(NULL::{{t}}, ?::json) {conflict}",
                    t=table,
                ),
                (msgspec.json.encode(rows).decode(),),
            )
        else:
            names = ", ".join(f":{col}" for col in cols)
            c.executemany(f"INSERT OR REPLACE INTO {PREFIX}{table} VALUES ({names})", map(_sqlite_params, rows))

    def _copy(self, c, table: str, rows: list) -> None:
        """Rows of a table that only ever gains rows (votes, rankings, a user's hours after their
        old ones went), through COPY: several times quicker than an INSERT of JSON rows."""
        if isinstance(rows, pl.DataFrame):
            self._copy_frame(c, table, rows)
            return
        if not rows:
            return
        fields = msgspec.structs.fields(TABLES[table])
        json_columns = [i for i, f in enumerate(fields) if column_type(f.type) in (dict, list)]
        binary = "" if json_columns else " (FORMAT BINARY)"  # binary needs no text escaping; JSON goes as text
        with c.copy(self._sql(f"COPY {{t}} ({', '.join(columns(table))}) FROM STDIN{binary}", t=table)) as copy:
            if binary:
                copy.set_types([_sql_type(f.type, pg=True) for f in fields])
            for row in rows:
                values = msgspec.structs.astuple(row)
                if json_columns:
                    values = tuple(_json_text(v) if i in json_columns else v for i, v in enumerate(values))
                copy.write_row(values)

    def _copy_frame(self, c, table: str, frame: pl.DataFrame) -> None:
        """A whole table's rows as CSV written by polars (floats in their shortest exact form, an
        empty field for null), in blocks."""
        statement = f"COPY {{t}} ({', '.join(frame.columns)}) FROM STDIN (FORMAT csv)"
        with c.copy(self._sql(statement, t=table)) as copy:
            for start in range(0, frame.height, 500_000):
                copy.write(frame.slice(start, 500_000).write_csv(include_header=False))

    def _forget_authors(self, c, pseudonyms: list[str]) -> None:
        """A deleted user's messages, labels and rankings stay, without an author (as in snapshots)."""
        if pseudonyms:
            clause, param = self._in(pseudonyms)
            c.execute(self._sql(f"UPDATE {{m}} SET author = NULL WHERE author {clause}", m="messages"), (param,))
            for table in ("label_votes", "rankings"):
                c.execute(self._sql(f"UPDATE {{t}} SET annotator = NULL WHERE annotator {clause}", t=table), (param,))

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

    def clear(self, c, view: str) -> None:
        """Empty the tables that follow ``view`` (the live view was dropped, or is reloaded).
        PostgreSQL truncates (millions of vote rows at OA's size: a DELETE would visit each);
        SQLite's unqualified DELETE truncates by itself."""
        empty = "TRUNCATE {t}" if self.pg else "DELETE FROM {t}"
        for table in FOLLOWS[view]:
            c.execute(self._sql(empty, t=table))

    def reload(self, c, stored: Iterator[tuple[str, str, bytes]], submissions: Iterable) -> None:
        """Replace the tables' rows by the stored view's and the log's submissions (a rebuild switched live)."""
        self.replace(c, self.decoded_changes(stored, submissions))

    def replace(self, c, changes: Changes) -> None:
        """Replace the rows of the tables that follow the message-tree view by ``changes``."""
        self.clear(c, VIEW)
        with self._indexes_after(c, FOLLOWS[VIEW]):
            touched = self._load(c, changes, fresh=True)
        self._recount(c, changes, touched)

    def reload_board(self, c, stored: Iterator[tuple[str, str, bytes]]) -> None:
        """Replace ``user_hours`` by the stored leaderboard view's counters."""
        self.clear(c, boards.VIEW)
        users = boards.stored_users(stored)
        rows = [row for key, counts in users.items() for row in boards.user_hours(self.pseudonym(key), counts)]
        with self._indexes_after(c, FOLLOWS[boards.VIEW]):
            self.write(c, Changes({"user_hours": rows}, {}), fresh=True)

    @contextmanager
    def _indexes_after(self, c, tables: Iterable[str]) -> Iterator[None]:
        """PostgreSQL: tables emptied and loaded whole are loaded without their secondary indexes,
        which are built after, in the same transaction: one sort each instead of millions of
        B-tree inserts in random places (5.2M label votes at OA's size; measured on 9M history
        rows: a load into an indexed table 24 s, the load and then the index 8 s)."""
        ours = [(index, table, cols) for index, (table, cols) in INDEXES.items() if table in tables]
        for index, _, _ in ours if self.pg else ():
            c.execute(SQL("DROP INDEX IF EXISTS {}.{}").format(Identifier(self.schema), Identifier(PREFIX + index)))
        yield
        for index, table, cols in ours if self.pg else ():
            c.execute(self._sql(f"CREATE INDEX IF NOT EXISTS {PREFIX}{index} ON {{t}} ({cols})", t=table))


def _json_text(value) -> str:
    """A JSON column's value as COPY's text format takes it (ids as strings)."""
    return msgspec.json.encode(value).decode()


def _sqlite_params(row: msgspec.Struct) -> dict:
    """SQLite takes plain values: ISO dates, string ids, JSON text for dicts and lists."""
    d = msgspec.to_builtins(row)
    return {k: msgspec.json.encode(v).decode() if isinstance(v, dict | list) else v for k, v in d.items()}
