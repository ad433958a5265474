"""What every view is made of: tables of msgspec rows kept in memory, with the rows
changed since the last flush remembered, so the runner can write exactly those (and
the view's position) in one transaction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

import msgspec

from domain import events as ev

Row = TypeVar("Row", bound=msgspec.Struct)


class Table(Generic[Row]):
    def __init__(self, name: str, row_type: type[Row]):
        self.name = name
        self.rows: dict = {}
        self.dirty: set = set()
        self.every_row = False  # a rebuild writes every row once, at its end: nothing to remember
        # ids as 16 bytes, not 36 characters: ~1 GB of rows at OA's size, mostly ids (the decoder reads both)
        self._encoder = msgspec.msgpack.Encoder(uuid_format="bytes")
        self._decoder = msgspec.msgpack.Decoder(row_type)
        self.key_type = None

    def get(self, key):
        return self.rows.get(key)

    def __getitem__(self, key) -> Row:
        return self.rows[key]

    def __contains__(self, key) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def values(self) -> Iterable[Row]:
        return self.rows.values()

    def put(self, key, row: Row) -> Row:
        self.rows[key] = row
        if not self.every_row:  # (hashing a UUID key runs Python code: ~19M times in an OA rebuild)
            self.dirty.add(key)
        return row

    def touch(self, key) -> None:
        """The row was changed in place."""
        if not self.every_row:
            self.dirty.add(key)

    def delete(self, key) -> None:
        if self.rows.pop(key, None) is not None and not self.every_row:
            self.dirty.add(key)

    def take_changes(self) -> tuple[set, list[tuple[str, bytes | None]]]:
        """The keys changed since the last call and (key, encoded row or None if deleted)
        for each; give the keys back with ``untake`` if writing them failed."""
        dirty, self.dirty = (set(self.rows) if self.every_row else self.dirty), set()
        rows = []
        for key in dirty:
            row = self.rows.get(key)
            rows.append((str(key), None if row is None else self._encoder.encode(row)))
        return dirty, rows

    def untake(self, keys: set) -> None:
        self.dirty |= keys

    def restore(self, key: str, value: bytes, key_type) -> None:
        self.rows[key_type(key)] = self._decoder.decode(value)


class View:
    """A deterministic fold of the log. ``name@version`` names the stored view, so a new
    policy version is built beside the old one."""

    name: str = ""
    version: str = "v1"
    key_types: dict[str, type] = {}  # table name -> type of its keys in memory

    def __init__(self) -> None:
        self.position = 0
        self.tables: dict[str, Table] = {}
        self.suffix = ""  # "~rebuild" while a new copy is built beside the live one

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}{self.suffix}"

    def table(self, name: str, row_type: type[Row]) -> Table[Row]:
        t = Table(name, row_type)
        self.tables[name] = t
        return t

    def apply(self, position: int, event: ev.Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(self, event)
        self.position = position

    def __init_subclass__(cls, **kwargs) -> None:
        """Map event types to ``on_<tag>`` methods once, not per event."""
        super().__init_subclass__(**kwargs)
        types = [*ev.EVENT_TYPES.items(), ("task_assigned", ev.TaskAssignedSummary)]
        cls._handlers = {t: getattr(cls, f"on_{tag}") for tag, t in types if hasattr(cls, f"on_{tag}")}

    def restored(self) -> None:
        """Called after rows were loaded from storage: rebuild derived in-memory indexes."""
