"""The history index: which log positions concern a user, a tree or a message, so that
moderators can list them and replay a tree as it was at any position."""

from __future__ import annotations

from uuid import UUID

import msgspec

from command_api import events as ev
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
        self.entries: list[tuple[str, int]] = []  # (entity, position) not yet stored

    def unflushed(self, entity: str, until: int | None = None) -> list[int]:
        """Positions for ``entity`` folded but not yet written (the last second or so)."""
        return [p for e, p in self.entries if e == entity and (until is None or p <= until)]

    def take_entries(self) -> list[tuple[str, int]]:
        entries, self.entries = self.entries, []
        return entries

    def apply(self, position: int, event: ev.Event) -> None:
        entities: set[UUID] = set()
        if event.user_id is not None:
            entities.add(event.user_id)
        subject = getattr(event, "subject_id", None)
        if subject is not None:
            entities.add(subject)
        messages = []
        for attr in ("message_id", "parent_id"):
            mid = getattr(event, attr, None)
            if mid is not None:
                messages.append(mid)
        if isinstance(event, ev.TaskAssigned) and event.target_message_id:
            messages.append(event.target_message_id)
        if isinstance(event, (ev.RankingSubmitted, ev.RanksComputed)):
            messages.extend(event.ranked_message_ids)
        if isinstance(event, ev.InitialPromptSubmitted):
            self.tree_of.put(event.message_id, TreeOf(event.message_id))
        elif isinstance(event, ev.ReplySubmitted):
            self.tree_of.put(event.message_id, TreeOf(event.tree_id))
        tree = getattr(event, "tree_id", None)
        if tree is not None:
            entities.add(tree)
        for mid in messages:
            entities.add(mid)
            owner = self.tree_of.get(mid)
            if owner is not None:
                entities.add(owner.tree_id)
        task = getattr(event, "task_id", None)
        if task is not None:
            entities.add(task)
        self.entries.extend((str(e), position) for e in entities)
        self.position = position
