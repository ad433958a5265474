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
        self.entries: list[tuple[UUID, int]] = []  # (entity, position) not yet stored
        self.in_flight: list[tuple[UUID, int]] = []  # taken by a flush that has not committed yet

    def unflushed(self, entity: str, until: int | None = None) -> list[int]:
        """Positions for ``entity`` folded but not yet written (the last second or so)."""
        return [p for e, p in (*self.in_flight, *self.entries) if str(e) == entity and (until is None or p <= until)]

    def take_entries(self) -> list[tuple[UUID, int]]:
        self.in_flight, self.entries = self.in_flight + self.entries, []
        return self.in_flight

    def entries_written(self, ok: bool) -> None:
        if not ok:
            self.entries = self.in_flight + self.entries
        self.in_flight = []

    def apply(self, position: int, event: ev.Event) -> None:
        entities = {getattr(event, f) for f in _ENTITY_FIELDS[type(event)]}
        entities.discard(None)
        messages = [getattr(event, f) for f in _MESSAGE_FIELDS[type(event)]]
        if isinstance(event, (ev.TaskAssigned, ev.TaskAssignedSummary)) and event.target_message_id:
            messages.append(event.target_message_id)
        if isinstance(event, (ev.RankingSubmitted, ev.RanksComputed)):
            messages.extend(event.ranked_message_ids)
        if isinstance(event, ev.InitialPromptSubmitted):
            self.tree_of.put(event.message_id, TreeOf(event.message_id))
        elif isinstance(event, ev.ReplySubmitted):
            self.tree_of.put(event.message_id, TreeOf(event.tree_id))
        rows = self.tree_of.rows
        for mid in messages:
            entities.add(mid)
            owner = rows.get(mid)
            if owner is not None:
                entities.add(owner.tree_id)
        self.entries.extend((e, position) for e in entities)
        self.position = position


def _fields(names: tuple[str, ...]) -> dict[type, tuple[str, ...]]:
    types = [*ev.EVENT_TYPES.values(), ev.TaskAssignedSummary]
    return {t: tuple(f for f in names if f in t.__struct_fields__) for t in types}


# which fields of each event type name an entity whose history includes the event
_ENTITY_FIELDS = _fields(("user_id", "subject_id", "tree_id", "task_id"))
_MESSAGE_FIELDS = _fields(("message_id", "parent_id"))
_MESSAGE_FIELDS[ev.SnapshotCreated] = ()  # its parent_id is the parent snapshot's id (or None), no message
