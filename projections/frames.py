"""Polars frames of the SQL read models for notebooks (issue #16): ``live(url)`` reads every
table of ``relational.TABLES`` read-only, ``snapshot(ref)`` scans a snapshot's parquet files.

Live columns are typed from the table's msgspec Struct, the same on both backends: ids and
pseudonyms ``String``, timestamps ``Datetime("us", "UTC")``, booleans ``Boolean`` (SQLite's 0/1
converted), JSON columns (``emojis``) as ``String`` holding the JSON text (decode with
``pl.col("emojis").str.json_decode()``: a dict's keys differ per row, so no fixed struct fits)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from uuid import UUID

import msgspec
import polars as pl

from projections import relational
from projections.snapshot import open_snapshot
from projections.sql import parquet_frames, read_only_cursor


def _json(v):
    return v if isinstance(v, str) else msgspec.json.encode(v).decode()


def _when_text(parse):
    return lambda v: parse(v) if isinstance(v, str) else v


_COLUMN_TYPES = {  # python type -> (polars type, value converter); others: String holding JSON
    UUID: (pl.String, str),
    str: (pl.String, str),
    int: (pl.Int64, int),
    float: (pl.Float64, float),
    bool: (pl.Boolean, bool),  # SQLite stores 0/1
    datetime: (pl.Datetime("us", "UTC"), _when_text(datetime.fromisoformat)),  # SQLite stores ISO text
    date: (pl.Date, _when_text(date.fromisoformat)),
}


def _column_type(tp) -> tuple[pl.DataType, object]:
    return _COLUMN_TYPES.get(relational.column_type(tp), (pl.String, _json))


def schema(table: str) -> dict[str, pl.DataType]:
    """The polars schema of a live table, from its Struct in ``relational.TABLES``."""
    return {f.name: _column_type(f.type)[0] for f in msgspec.structs.fields(relational.TABLES[table])}


def _read(cursor, table: str) -> pl.DataFrame:
    fields = msgspec.structs.fields(relational.TABLES[table])
    cursor.execute(f"SELECT {', '.join(f.name for f in fields)} FROM {table}")  # names from the registry
    rows = cursor.fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(fields)
    data = {}
    for f, values in zip(fields, columns, strict=True):
        convert = _column_type(f.type)[1]
        data[f.name] = [None if v is None else convert(v) for v in values]
    return pl.DataFrame(data, schema=schema(table))


def live(database_url: str, tables: list[str] | None = None) -> dict[str, pl.LazyFrame]:
    """Every table of ``relational.TABLES`` (or just ``tables``) of the store at ``database_url``,
    read in one read-only transaction (so the frames agree with each other) into memory."""
    names = list(relational.TABLES) if tables is None else tables
    with read_only_cursor(database_url) as c:
        return {name: _read(c, name).lazy() for name in names}


def snapshot(snapshot_id_or_path: str | Path, data_dir: str | Path | None = None) -> dict[str, pl.LazyFrame]:
    """A snapshot's parquet files (id, folder path or ``latest``), each scanned lazily and named
    by its file stem as ``oasst sql --snapshot`` names them: ``messages`` (Hugging Face layout),
    ``sft``, ``prompts``, ``rm``, ``dpo``."""
    return parquet_frames(open_snapshot(snapshot_id_or_path, data_dir).dir)
