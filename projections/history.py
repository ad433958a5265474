"""The history index: which log positions concern a user, a tree or a message, so that
moderators can list them and replay a tree as it was at any position."""

from __future__ import annotations

from uuid import UUID

import msgspec

from domain import events as ev
from projections.base import View


class TreeOf(msgspec.Struct, array_like=True):
    tree_id: UUID


class HistoryView(View):
    name = "history"
    version = "v1"
    key_types = {"tree_of": UUID}

    def __init__(self) -> None:
        super().__init__()
        self.tree_of = self.table("tree_of", TreeOf)  # message -> tree
        # (entity as its 128-bit int, position) not yet stored: an int hashes in C and formats as
        # hex in C (a UUID's hash and str are Python code, ~20M calls in an OA rebuild)
        self.entries: list[tuple[int, int]] = []
        self.in_flight: list[tuple[int, int]] = []  # taken by a flush that has not committed yet

    def unflushed(self, entity: str, until: int | None = None) -> list[int]:
        """Positions for ``entity`` folded but not yet written (the last second or so)."""
        wanted = UUID(entity).int
        return [p for e, p in (*self.in_flight, *self.entries) if e == wanted and (until is None or p <= until)]

    def take_entries(self) -> list[tuple[int, int]]:
        self.in_flight, self.entries = self.in_flight + self.entries, []
        return self.in_flight

    def entries_written(self, ok: bool) -> None:
        if not ok:
            self.entries = self.in_flight + self.entries
        self.in_flight = []

    def apply(self, position: int, event: ev.Event) -> None:
        kind = type(event)
        entities = {}  # int -> None: an ordered set
        for name in _ENTITY_FIELDS[kind]:
            value = getattr(event, name)
            if value is not None:
                entities[value.int] = None
        messages = [getattr(event, name) for name in _MESSAGE_FIELDS[kind]]
        if kind in _TASKS and event.target_message_id:
            messages.append(event.target_message_id)
        elif kind in _RANKINGS:
            messages.extend(event.ranked_message_ids)
        if kind is ev.InitialPromptSubmitted:
            self.tree_of.put(event.message_id, TreeOf(event.message_id))
        elif kind is ev.ReplySubmitted:
            self.tree_of.put(event.message_id, TreeOf(event.tree_id))
        rows = self.tree_of.rows
        for mid in messages:
            if mid is None:
                continue
            entities[mid.int] = None
            owner = rows.get(mid)
            if owner is not None:
                entities[owner.tree_id.int] = None
        self.entries.extend([(e, position) for e in entities])
        self.position = position


_TASKS = (ev.TaskAssigned, ev.TaskAssignedSummary)
_RANKINGS = (ev.RankingSubmitted, ev.RanksComputed)


def _fields(names: tuple[str, ...]) -> dict[type, tuple[str, ...]]:
    types = [*ev.EVENT_TYPES.values(), ev.TaskAssignedSummary]
    return {t: tuple(f for f in names if f in t.__struct_fields__) for t in types}


# which fields of each event type name an entity whose history includes the event
_ENTITY_FIELDS = _fields(("user_id", "subject_id", "tree_id", "task_id"))
_MESSAGE_FIELDS = _fields(("message_id", "parent_id"))
_MESSAGE_FIELDS[ev.SnapshotCreated] = ()  # its parent_id is the parent snapshot's id (or None), no message
