"""Read-only SQL over the SQL read models (``oasst sql``), or over a snapshot's parquet files.

Live tables are named without their prefix on both backends: PostgreSQL reads through
``search_path`` = the views schema, in a ``READ ONLY`` transaction; SQLite opens the file
read-only (``mode=ro``, ``query_only``) with a temporary view per table (``messages`` ->
``views_messages``). A write statement fails with the database's own error."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse
from uuid import UUID

import msgspec
import polars as pl
import psycopg
from psycopg.sql import SQL, Identifier

from projections.relational import PREFIX, TABLES, schema_name


class SQLError(Exception):
    """The query failed (a syntax error, a write refused, an unknown table...)."""


def _plain(value):
    """Values polars can hold in any column: ids and JSON as text, decimals as floats."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict | list):
        return msgspec.json.encode(value).decode()
    return value


def _frame(names: list[str], rows: list) -> pl.DataFrame:
    data = [[_plain(v) for v in row] for row in rows]
    return pl.DataFrame(data, schema=names, orient="row", infer_schema_length=None)


def live_query(url: str, query: str) -> pl.DataFrame:
    """Run ``query`` read-only over the live tables of the store at ``url``."""
    return live_queries(url, {"": query})[""]


def live_queries(url: str, queries: dict[str, str]) -> dict[str, pl.DataFrame]:
    """Several queries by name, over one connection in one read-only transaction (so their
    answers agree with each other)."""
    try:
        with read_only_cursor(url) as c:
            return {name: _answer(c, query) for name, query in queries.items()}
    except (psycopg.Error, sqlite3.Error) as exc:
        raise SQLError(str(exc).strip()) from exc


def _answer(cursor, query: str) -> pl.DataFrame:
    cursor.execute(query)
    if cursor.description is None:
        return pl.DataFrame()
    return _frame([d[0] for d in cursor.description], cursor.fetchall())


@contextmanager
def read_only_cursor(url: str) -> Iterator:
    """A DB-API cursor over the live tables (named without prefix), in one read-only transaction
    that sees one state of the store (PostgreSQL: REPEATABLE READ; SQLite: one BEGIN), so
    several queries through it agree with each other (``projections.frames`` reads every table)."""
    parsed = urlparse(url)
    opener = _postgres if parsed.scheme in ("postgresql", "postgres") else _sqlite
    with opener(url) as c:
        yield c


@contextmanager
def _postgres(url: str) -> Iterator:
    from infra.store import _open_recorder  # the store's own URL rules (host, ?schema=)

    datastore = _open_recorder(url)[1].datastore
    kwargs = {k: v for k, v in datastore.pool.kwargs.items() if k != "row_factory"}
    with psycopg.connect(**kwargs) as conn:
        conn.read_only = True  # every transaction of this connection is READ ONLY
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.cursor() as c:
            c.execute(SQL("SET search_path TO {}").format(Identifier(schema_name(datastore.schema))))
            yield c


@contextmanager
def _sqlite(url: str) -> Iterator:
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else urlparse(url).path
    if not Path(path).is_file():
        raise SQLError(f"no SQLite store at {path}")
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        for table in TABLES:  # temporary views live in the connection, not in the file
            conn.execute(f"CREATE TEMP VIEW {table} AS SELECT * FROM {PREFIX}{table}")
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")  # reads until the end see one state of the file
        yield conn.cursor()
    finally:
        conn.close()


def parquet_frames(folder: Path) -> dict[str, pl.LazyFrame]:
    """A snapshot folder's parquet files, each named by its file stem (``messages``, ``sft``...)."""
    return {p.stem: pl.scan_parquet(p) for p in sorted(folder.glob("*.parquet"))}


def snapshot_query(folder: Path, query: str) -> pl.DataFrame:
    """Run ``query`` over a snapshot's parquet files, each a table named by its file stem."""
    ctx = pl.SQLContext(parquet_frames(folder))
    try:
        return ctx.execute(query, eager=True)
    except (pl.exceptions.PolarsError, pl.exceptions.SQLInterfaceError) as exc:
        raise SQLError(str(exc).strip()) from exc
