"""Write models for tests: the domain core on a model in memory at a clock of our own
(no database, no HTTP), and folding a whole log into a model to compare models by."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from command_api.service import CommandService
from domain import commands as c
from domain import protocol as p
from domain.config import TreeConfig
from domain.decide import Batch, State, decide
from domain.errors import ErrorCode, OasstError
from domain.model import WriteModel
from domain.tree_manager import TreeManager
from infra.settings import Settings
from infra.store import EventStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)
CLIENT = uuid4()


class Core:
    """decide() with the tree manager's reactions, on a model in memory, at a clock of our own."""

    def __init__(self, **config):
        cfg = TreeConfig(
            **{
                "num_reviews_initial_prompt": 1,
                "num_reviews_reply": 1,
                "goal_tree_size": 3,
                "num_required_rankings": 1,
                "p_lonely_child_extension": 0.0,
                **config,
            }
        )
        self.model = WriteModel(cfg)
        self.state = State(self.model, TreeManager(self.model, cfg))
        self.now = T0
        self.emitted: list = []

    def run(self, command: c.Command):
        self.now += timedelta(seconds=1)
        b = Batch(self.model, command.client_id, self.now)
        reply = decide(command, self.state, b)
        i = 0
        while i < len(b.events):
            self.state.manager.react(b.events[i][2], b.system)
            i += 1
        self.emitted = [type(e).__name__ for _, _, e in b.events]
        return reply

    def refused(self, command: c.Command, code: ErrorCode) -> None:
        before = self.model.event_count
        with pytest.raises(OasstError) as caught:
            self.run(command)
        assert caught.value.code == code
        assert self.model.event_count == before  # a refused command emits nothing

    def task(self, who: p.User, task_type: str) -> dict:
        return self.run(c.RequestTask(client_id=CLIENT, user=who, task_type=task_type, lang="en"))

    def do(self, who: p.User, task_type: str, **answer) -> dict:
        """Request, ack and answer one task (text for text tasks, else the given labels or ranking)."""
        task = self.task(who, task_type)
        fid = f"fm-{uuid4()}"
        self.run(c.AckTask(client_id=CLIENT, task_id=task["id"], frontend_message_id=fid))
        if task_type.startswith("label_"):
            body = p.TextLabels(
                user=who,
                text="",
                labels=answer.get("labels", {"spam": 0.0, "lang_mismatch": 0.0, "quality": 1.0}),
                message_id=task["message_id"],
                task_id=task["id"],
            )
        elif task_type.startswith("rank_"):
            body = p.MessageRanking(user=who, message_id=fid, ranking=answer["ranking"])
        else:
            body = p.TextReplyToMessage(
                user=who,
                message_id=fid,
                user_message_id=f"um-{uuid4()}",
                text=answer.get("text", f"text {uuid4()}"),
                lang="en",
            )
        self.run(c.SubmitInteraction(client_id=CLIENT, interaction=body))
        return task


def person(name: str) -> p.User:
    return p.User(id=name, display_name=name.title(), auth_method="local")


def summary(m: WriteModel) -> dict:
    """What a write model holds, in a form two models can be compared by."""
    return {
        "position": m.position,
        "events": m.event_count,
        "versions": dict(m.versions),
        "clients": sorted(m.clients_by_key),
        "users": {u.id: (u.display_name, u.enabled, u.deleted, u.spammer) for u in m.users.values()},
        "tasks": {t.id: (t.status, t.frontend_message_id, t.request_sha256) for t in m.tasks.values()},
        "pending": {u: sorted(map(str, ts)) for u, ts in m.user_pending.items() if ts},
        "messages": {
            x.id: (
                x.deleted,
                x.review_result,
                x.late,
                x.children,
                sorted(x.task_labels.items()),
                {k: sorted(v) for k, v in x.emojis.items() if v},
                x.reports,
                x.rank,
                x.text,
            )
            for x in m.messages.values()
        },
        "trees": {
            t.id: (
                t.state,
                t.goal_tree_size,
                sorted(t.awaiting_review),
                sorted(t.reply_parents),
                t.message_ids,
                t.skip_replies,
                t.won_lottery,
                t.halted_from,
                t.spam_halted_from,
            )
            for t in m.trees.values()
        },
        "by_state": {s: sorted(ts) for s, ts in m.trees_by_state.items() if ts},
        "lottery": {lang: {str(a): sorted(ts) for a, ts in authors.items()} for lang, authors in m.lottery.items()},
        "replied": sorted(m.replied),
        "spammers": sorted(m.spammers),
        "user_texts": dict(m.user_texts),
        "rank1": dict(m.rank1_recent),
        "lottery_authors": {k: sorted(map(str, v)) for k, v in m.lottery_authors.items()},
        "labelled_by": {u: sorted(v) for u, v in m.labelled_by.items()},
    }


def fold(url: str, settings: Settings) -> WriteModel:
    """The model folded from the whole log, without checkpoints."""
    store = EventStore(url)
    try:
        service = CommandService(settings, store)
        service.load()
        return service.model
    finally:
        store.close()
