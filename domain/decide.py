"""The domain core: ``decide(command, state, batch) -> reply``.

Each handler checks a command (domain/commands.py) against the write model and emits
its events into the batch, which applies them to the model at once; the reply is plain
data (what Open-Assistant's API answers), never an HTTP status. A refused command raises
``OasstError`` with OA's error code and emits nothing; the routes map codes to statuses.
No database, no HTTP, no clock: the batch carries the command's time. The tree manager's
reactions to the events are the service's part (command_api/service.py).

Rule for handlers: check everything first, emit afterwards. An error raised after
something was emitted would leave the model ahead of the log (the service then rebuilds it).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import singledispatch
from typing import NoReturn
from uuid import UUID

import msgspec

from domain import commands as c
from domain import events as ev
from domain import labels as lab
from domain import protocol as p
from domain import shapes
from domain.errors import ErrorCode, OasstError
from domain.model import (
    DUPLICATE_TEXT_WINDOW,
    Message,
    Task,
    User,
    WriteModel,
    snapshot_stream,
    stream_of,
)
from domain.tree_manager import TreeManager

MAX_TEXT = 2000
_json = msgspec.json.Encoder()


@dataclass
class State:
    """What deciding reads: the write model, the tree manager over it, and the one setting
    outside the tree configuration that commands need."""

    model: WriteModel
    manager: TreeManager
    task_expire_minutes: int = 2880


class Batch:
    """The events one command emits, applied to the model as they are emitted."""

    def __init__(self, model: WriteModel, client_id: UUID | None, now: datetime):
        self.model, self.client_id, self.now = model, client_id, now
        self.events: list[tuple[UUID, int, ev.Event]] = []

    def emit(self, cls: type[ev.Event], *, user_id: UUID | None = None, **fields) -> ev.Event:
        event = cls(id=ev.new_id(), at=self.now, user_id=user_id, api_client_id=self.client_id, **fields)
        stream = stream_of(event)
        version = self.model.next_version(stream)
        self.model.apply(event, stream, version)
        self.events.append((stream, version, event))
        return event

    def system(self, cls: type[ev.Event], **fields) -> ev.Event:
        """A tree-manager decision: no acting user."""
        return self.emit(cls, **fields)

    def ensure_user(self, user: User, display_name: str | None = None) -> None:
        if not user.exists:
            self.emit(
                ev.UserSeen,
                user_id=user.id,
                subject_id=user.id,
                auth_method=user.auth_method,
                username=user.username,
                display_name=display_name or user.display_name,
            )
        elif display_name and display_name != user.display_name and not user.deleted:
            self.emit(ev.UserRenamed, user_id=user.id, subject_id=user.id, display_name=display_name)


@singledispatch
def decide(command: c.Command, state: State, b: Batch):
    """Check ``command``, emit its events into ``b``; return the reply (plain data or None)."""
    raise TypeError(f"no handler for {type(command).__name__}")


# --- looking things up ---------------------------------------------------------------------------


def parse_uuid(value: str, code: ErrorCode, what: str) -> UUID:
    try:
        return UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise OasstError(f"{what} {value!r} not found", code) from None


def acting_user(s: State, client_id: UUID, ref: p.User | None) -> User:
    if ref is None:
        raise OasstError("a user is required", ErrorCode.USER_NOT_SPECIFIED)
    user = s.model.user(client_id, ref.auth_method, ref.id)
    if user.deleted or not user.enabled:
        raise OasstError("user is disabled", ErrorCode.USER_DISABLED)
    return user


def message(s: State, message_id: str | UUID) -> Message:
    mid = message_id if isinstance(message_id, UUID) else parse_uuid(message_id, ErrorCode.MESSAGE_NOT_FOUND, "message")
    msg = s.model.messages.get(mid)
    if msg is None:
        raise OasstError(f"message {mid} not found", ErrorCode.MESSAGE_NOT_FOUND)
    return msg


def user_by_id(s: State, user_id: str) -> User:
    uid = parse_uuid(user_id, ErrorCode.USER_NOT_FOUND, "user")
    user = s.model.users.get(uid)
    if user is None:
        raise OasstError(f"user {uid} not found", ErrorCode.USER_NOT_FOUND)
    return user


def task_of(s: State, client_id: UUID, task_id: str | UUID, status: int | None = None) -> Task:
    """A task of this client. Not found is 400 in OA, except for an ack (404)."""
    try:
        tid = task_id if isinstance(task_id, UUID) else parse_uuid(task_id, ErrorCode.TASK_NOT_FOUND, "task")
    except OasstError as e:
        raise OasstError(e.message, e.code, status) from None
    task = s.model.tasks.get(tid)
    if task is None or task.api_client_id != client_id:
        raise OasstError(f"task {tid} not found", ErrorCode.TASK_NOT_FOUND, status)
    return task


def validate_task(task: Task, user: User | None, now: datetime, check_ack: bool = True) -> None:
    """OA's PromptRepository._validate_task, in its order (every refusal is a 400)."""
    if task.status == "expired" or (task.expires_at and task.expires_at < now):
        raise OasstError("task expired", ErrorCode.TASK_EXPIRED)
    if check_ack and task.status == "open":
        raise OasstError("task was not acknowledged", ErrorCode.TASK_NOT_ACK)
    if task.status == "done":
        raise OasstError("task already done", ErrorCode.TASK_ALREADY_DONE)
    if user is not None and task.user_id != user.id and not task.collective:
        raise OasstError("task was assigned to a different user", ErrorCode.TASK_NOT_ASSIGNED_TO_USER)


def skip_marker(task_type: str) -> str | None:
    """The hidden emoji a skipped task leaves, so the item is not offered again."""
    if task_type.startswith("label_"):
        return "_skip_labeling"
    if task_type.startswith("rank_"):
        return "_skip_ranking"
    return "_skip_reply" if task_type.endswith("_reply") else None


def check_text(s: State, user: User, text: str, now: datetime) -> None:
    if not text or not text.strip():
        raise OasstError("message text is empty", ErrorCode.TASK_MESSAGE_TEXT_EMPTY)
    if len(text) > MAX_TEXT:
        raise OasstError(f"message text is longer than {MAX_TEXT} characters", ErrorCode.TASK_MESSAGE_TOO_LONG)
    digest = hash(text)
    for at, h in reversed(s.model.user_texts.get(user.id, ())):
        if now - at > DUPLICATE_TEXT_WINDOW:
            break
        if h == digest:
            raise OasstError("you submitted this text recently", ErrorCode.TASK_MESSAGE_DUPLICATED)


def check_labels(labels: dict[str, float], allowed: list[str] | None, required: list[str]) -> None:
    for name, value in labels.items():
        if name not in lab.LABELS or (allowed is not None and name not in allowed):
            raise OasstError(f"invalid label {name!r}", ErrorCode.TEXT_LABELS_INVALID_LABEL)
        if not 0.0 <= value <= 1.0:
            raise OasstError(f"label {name!r} must be in [0, 1]", ErrorCode.TEXT_LABELS_INVALID_LABEL)
    missing = [n for n in required if n not in labels]
    if missing:
        raise OasstError(f"mandatory labels missing: {missing}", ErrorCode.TEXT_LABELS_MANDATORY_LABEL_MISSING)


def pending_count(s: State, user: User, now: datetime) -> int:
    """OA counts a user's open tasks handed out within the recent-task span."""
    span = timedelta(seconds=s.model.cfg.recent_tasks_span_sec)
    tasks = s.model.tasks
    return sum(1 for tid in s.model.user_pending.get(user.id, ()) if now - tasks[tid].created_at <= span)


# --- tasks ----------------------------------------------------------------------------------------


@decide.register
def _request_task(cmd: c.RequestTask, s: State, b: Batch) -> dict:
    user = acting_user(s, cmd.client_id, cmd.user)
    if pending_count(s, user, b.now) >= s.model.cfg.max_pending_tasks_per_user:
        raise OasstError("too many pending tasks", ErrorCode.TASK_TOO_MANY_PENDING)
    task_id = ev.new_id()
    plan = s.manager.plan(user, cmd.task_type, cmd.lang, b.now, random.Random(task_id.int))
    if plan is None:
        raise OasstError(f"no task of type {cmd.task_type!r} is available", ErrorCode.TASK_REQUESTED_TYPE_NOT_AVAILABLE)
    b.ensure_user(user, cmd.user.display_name)
    for tid in list(s.model.user_pending.get(user.id, ())):
        task = s.model.tasks[tid]
        if task.expires_at and task.expires_at < b.now:
            b.emit(ev.TaskExpired, user_id=user.id, task_id=tid)
    payload = {"id": str(task_id), **plan.payload}
    expires = None if cmd.collective else b.now + timedelta(minutes=s.task_expire_minutes)
    b.emit(
        ev.TaskAssigned,
        user_id=user.id,
        task_id=task_id,
        task_type=plan.task_type,
        collective=cmd.collective,
        lang=cmd.lang,
        expires_at=expires,
        payload=payload,
        target_message_id=plan.target_message_id,
        tree_id=plan.tree_id,
        label_mode=plan.label_mode,
        ranked_message_ids=plan.ranked_message_ids or [],
    )
    return payload


@decide.register
def _ack(cmd: c.AckTask, s: State, b: Batch) -> None:
    task = task_of(s, cmd.client_id, cmd.task_id, 404)
    if task.status == "acked" and task.frontend_message_id == cmd.frontend_message_id:
        return None  # a retry
    if task.status != "open":
        raise OasstError(f"task is {task.status}", ErrorCode.TASK_ALREADY_UPDATED)
    if task.expires_at and task.expires_at < b.now:
        raise OasstError("task expired", ErrorCode.TASK_EXPIRED)
    if (cmd.client_id, cmd.frontend_message_id) in s.model.tasks_by_frontend_id:
        raise OasstError("frontend message id already used", ErrorCode.INVALID_FRONTEND_MESSAGE_ID)
    b.emit(ev.TaskAcked, user_id=task.user_id, task_id=task.id, frontend_message_id=cmd.frontend_message_id)
    return None


@decide.register
def _nack(cmd: c.NackTask, s: State, b: Batch) -> None:
    task = task_of(s, cmd.client_id, cmd.task_id)
    if task.status == "skipped":
        return None  # a retry
    validate_task(task, None, b.now, check_ack=False)  # OA reads the nacking user from a header we do not take
    b.emit(ev.TaskSkipped, user_id=task.user_id, task_id=task.id, reason=cmd.reason)
    marker = skip_marker(task.type)
    target = s.model.messages.get(task.target_message_id) if task.target_message_id else None
    if marker and target and task.user_id and task.user_id not in target.emojis.get(marker, ()):
        b.emit(ev.EmojiAdded, user_id=task.user_id, message_id=target.id, emoji=marker)
    return None


@decide.register
def _interaction(cmd: c.SubmitInteraction, s: State, b: Batch) -> dict:
    body = cmd.interaction
    user = acting_user(s, cmd.client_id, body.user)
    if isinstance(body, p.MessageRating):
        _refuse_rating(s, cmd.client_id, user, body, b.now)
    task = _interaction_task(s, cmd.client_id, body)
    digest = hashlib.sha256(_json.encode(body)).hexdigest()
    done = {"type": "task_done", "id": str(task.id)}
    if task.status == "done":
        same_reply = isinstance(body, p.TextReplyToMessage) and task.user_message_id == body.user_message_id
        if task.request_sha256 == digest or same_reply:
            return done  # a retry: the first answer, nothing appended
        raise OasstError("task already done", ErrorCode.TASK_ALREADY_DONE)
    _check_task_open(task, user, b.now)
    emit_result = _decide_result(s, task, user, body, b.now)
    b.ensure_user(user, body.user.display_name)
    emit_result(b)
    b.emit(
        ev.TaskCompleted,
        user_id=user.id,
        task_id=task.id,
        request_sha256=digest,
        user_message_id=getattr(body, "user_message_id", None),
    )
    return done


def _interaction_task(s: State, client_id: UUID, body) -> Task:
    if isinstance(body, p.TextLabels):
        return task_of(s, client_id, body.task_id)
    tid = s.model.tasks_by_frontend_id.get((client_id, body.message_id))
    if tid is None:
        raise OasstError(f"no task acked with message id {body.message_id!r}", ErrorCode.TASK_NOT_FOUND)
    return s.model.tasks[tid]


def _check_task_open(task: Task, user: User, now: datetime) -> None:
    validate_task(task, user, now)
    if task.status != "acked":  # skipped: OA would still take an answer; a skipped task stays closed here
        raise OasstError(f"task is {task.status}", ErrorCode.TASK_ALREADY_UPDATED)


def _refuse_rating(s: State, client_id: UUID, user: User, body: p.MessageRating, now: datetime) -> NoReturn:
    """OA stores a rating only for a rate_summary task, and hands none out: it looks up the
    rated message and then the task by the frontend id, and refuses at the first that fails."""
    if (client_id, body.message_id) not in s.model.messages_by_frontend_id:
        raise OasstError(f"message {body.message_id!r} not found", ErrorCode.MESSAGE_NOT_FOUND)
    validate_task(_interaction_task(s, client_id, body), user, now)
    raise OasstError("a rating answers a rate_summary task only", ErrorCode.TASK_PAYLOAD_TYPE_MISMATCH)


def _decide_result(s: State, task: Task, user: User, body, now: datetime):
    """Validate a task's result against the task; return what to emit."""
    expected = {
        p.TextReplyToMessage: ("initial_prompt", "prompter_reply", "assistant_reply"),
        p.TextLabels: ("label_initial_prompt", "label_prompter_reply", "label_assistant_reply"),
        p.MessageRanking: ("rank_prompter_replies", "rank_assistant_replies", "rank_initial_prompts"),
    }[type(body)]
    if task.type not in expected:
        raise OasstError(f"a {task.type} task cannot take {type(body).__name__}", ErrorCode.TASK_PAYLOAD_TYPE_MISMATCH)
    if isinstance(body, p.TextReplyToMessage):
        return _decide_text(s, task, user, body, now)
    if isinstance(body, p.TextLabels):
        if body.message_id != str(task.target_message_id):
            raise OasstError("labels are for another message", ErrorCode.TEXT_LABELS_WRONG_MESSAGE_ID)
        msg = message(s, body.message_id)
        if msg.user_id == user.id:
            raise OasstError("you cannot label your own message", ErrorCode.TEXT_LABELS_NO_SELF_LABELING)
        check_labels(body.labels, task.valid_labels, lab.MANDATORY_LABELS)
        return lambda b: b.emit(
            ev.LabelsSubmitted,
            user_id=user.id,
            message_id=msg.id,
            labels=body.labels,
            kind="task",
            task_id=task.id,
            mode=task.label_mode,
            text=body.text,
        )
    n = len(task.ranked_message_ids)
    if sorted(body.ranking) != list(range(n)):
        raise OasstError(f"ranking must be a permutation of 0..{n - 1}", ErrorCode.INVALID_RANKING_VALUE)
    order = [task.ranked_message_ids[i] for i in body.ranking]
    return lambda b: b.emit(
        ev.RankingSubmitted,
        user_id=user.id,
        parent_id=task.target_message_id,
        task_id=task.id,
        ranked_message_ids=order,
        not_rankable=bool(body.not_rankable),
    )


def _decide_text(s: State, task: Task, user: User, body: p.TextReplyToMessage, now: datetime):
    check_text(s, user, body.text, now)
    if (task.api_client_id, body.user_message_id) in s.model.messages_by_frontend_id:
        raise OasstError("user_message_id already used", ErrorCode.INVALID_FRONTEND_MESSAGE_ID)
    message_id = ev.new_id()
    if task.type == "initial_prompt":
        return lambda b: b.emit(
            ev.InitialPromptSubmitted,
            user_id=user.id,
            message_id=message_id,
            frontend_message_id=body.user_message_id,
            task_id=task.id,
            text=body.text,
            lang=body.lang or task.lang or "en",
        )
    parent = s.model.messages.get(task.target_message_id)
    tree = s.model.trees[parent.tree_id]
    if tree.state in ("aborted_low_grade", "halted_by_moderator") or s.model.is_hidden(parent):
        raise OasstError("the conversation was closed", ErrorCode.TREE_IN_ABORTED_STATE)
    if (parent.id, user.id) in s.model.replied:
        raise OasstError("you already replied to this message", ErrorCode.TASK_MESSAGE_DUPLICATE_REPLY)
    role = "assistant" if task.type == "assistant_reply" else "prompter"
    return lambda b: b.emit(
        ev.ReplySubmitted,
        user_id=user.id,
        message_id=message_id,
        frontend_message_id=body.user_message_id,
        task_id=task.id,
        parent_id=parent.id,
        tree_id=tree.id,
        role=role,
        depth=parent.depth + 1,
        text=body.text,
        lang=body.lang or task.lang or parent.lang,
    )


@decide.register
def _close(cmd: c.CloseTask, s: State, b: Batch) -> dict:
    """OA's TaskRepository.close_task: only a collective task, once."""
    tid = s.model.tasks_by_frontend_id.get((cmd.client_id, cmd.frontend_message_id))
    if tid is None:
        raise OasstError(f"no task acked with message id {cmd.frontend_message_id!r}", ErrorCode.TASK_NOT_FOUND, 404)
    task = s.model.tasks[tid]
    if task.status == "expired" or (task.expires_at and task.expires_at < b.now):
        raise OasstError("task expired", ErrorCode.TASK_EXPIRED)
    if not task.collective:
        raise OasstError("this is not a collective task", ErrorCode.TASK_NOT_COLLECTIVE)
    if task.request_sha256 == "close":  # (a collective task answered once is still open in OA)
        raise OasstError("task already closed", ErrorCode.TASK_ALREADY_DONE)
    if task.status == "acked":
        b.emit(ev.TaskCompleted, user_id=task.user_id, task_id=task.id, request_sha256="close")
    elif task.status != "done":
        raise OasstError(f"task is {task.status}", ErrorCode.TASK_ALREADY_UPDATED)
    return {"type": "task_done", "id": str(task.id)}


# --- labels and reactions ----------------------------------------------------------------------------


@decide.register
def _label(cmd: c.LabelMessage, s: State, b: Batch) -> None:
    body = cmd.labels
    user = acting_user(s, cmd.client_id, body.user)
    msg = message(s, body.message_id)  # OA checks self-labelling for task labels only: free ones and reports pass
    report = bool(body.is_report)
    check_labels(body.labels, lab.REPORT_LABELS if report else None, [])
    b.ensure_user(user, body.user.display_name)
    b.emit(
        ev.LabelsSubmitted,
        user_id=user.id,
        message_id=msg.id,
        labels=body.labels,
        kind="report" if report else "free",
        text=body.text,
    )
    return None


@decide.register
def _react(cmd: c.React, s: State, b: Batch) -> dict:
    user = acting_user(s, cmd.client_id, cmd.user)
    msg = message(s, cmd.message_id)
    has = user.id in msg.emojis.get(cmd.emoji, ())
    add = {"toggle": not has, "add": True, "remove": False}[cmd.op]
    own_thumb = cmd.emoji in ("+1", "-1") and msg.user_id == user.id  # OA ignores it, no error
    b.ensure_user(user, cmd.user.display_name)
    if add and not has and not own_thumb:
        opposite = {"+1": "-1", "-1": "+1"}.get(cmd.emoji)
        if opposite and user.id in msg.emojis.get(opposite, ()):
            b.emit(ev.EmojiRemoved, user_id=user.id, message_id=msg.id, emoji=opposite)
        b.emit(ev.EmojiAdded, user_id=user.id, message_id=msg.id, emoji=cmd.emoji)
    elif not add and has:
        b.emit(ev.EmojiRemoved, user_id=user.id, message_id=msg.id, emoji=cmd.emoji)
    return message_dict(s, msg, user)


def message_dict(s: State, msg: Message, viewer: User) -> dict:
    """OA's Message as the write model knows it (the emoji route answers it)."""
    tree = s.model.trees[msg.tree_id]
    rankings = tree.rankings.get(msg.parent_id, ()) if msg.parent_id else ()
    ranking_count = sum(1 for _, order in rankings if msg.id in order)
    out = shapes.message(
        msg, viewer.id, created=msg.created_at, deleted=s.model.is_hidden(msg), ranking_count=ranking_count
    )
    out["user"] = None  # (OA's emoji answer has no user either)
    return out


# --- moderation ------------------------------------------------------------------------------------------


@decide.register
def _delete(cmd: c.DeleteMessage, s: State, b: Batch) -> None:
    msg = message(s, cmd.message_id)
    if not msg.deleted:
        b.emit(ev.MessageDeleted, message_id=msg.id)
    return None


@decide.register
def _undelete(cmd: c.UndeleteMessage, s: State, b: Batch) -> None:
    msg = message(s, cmd.message_id)
    if s.model.is_hidden(msg):
        b.emit(ev.MessageUndeleted, message_id=msg.id)
    return None


@decide.register
def _halt(cmd: c.SetTreeHalted, s: State, b: Batch) -> dict:
    tree = s.model.trees[message(s, cmd.message_id).tree_id]
    if cmd.halt and tree.state != "halted_by_moderator":
        b.emit(ev.TreeHalted, tree_id=tree.id)
    elif not cmd.halt and tree.state == "halted_by_moderator":
        b.emit(ev.TreeResumed, tree_id=tree.id)
    return shapes.tree_state(tree, s.model.cfg)


@decide.register
def _update_user(cmd: c.UpdateUser, s: State, b: Batch) -> None:
    user = user_by_id(s, cmd.user_id)
    if cmd.enabled is not None and cmd.enabled != user.enabled:
        b.emit(ev.UserEnabled if cmd.enabled else ev.UserDisabled, subject_id=user.id)
    changes = {
        k: v
        for k, v in (
            ("notes", cmd.notes),
            ("show_on_leaderboard", cmd.show_on_leaderboard),
            ("tos_accepted", cmd.tos_accepted),
        )
        if v is not None and v != getattr(user, k)
    }
    if changes:
        b.emit(ev.UserSettingsChanged, subject_id=user.id, **changes)
    # OA's display_name parameter; a deleted user keeps its anonymous name
    if cmd.display_name is not None and cmd.display_name != user.display_name and not user.deleted:
        b.emit(ev.UserRenamed, subject_id=user.id, display_name=cmd.display_name)
    return None


@decide.register
def _delete_user(cmd: c.DeleteUser, s: State, b: Batch) -> None:
    user = user_by_id(s, cmd.user_id)
    if not user.deleted:
        b.emit(ev.UserDeleted, subject_id=user.id)
    return None


@decide.register
def _erase_user(cmd: c.EraseUser, s: State, b: Batch) -> None:
    user = user_by_id(s, cmd.user_id)
    if not user.erased:  # erasing twice is one erasure
        b.emit(ev.UserErased, subject_id=user.id, reason=cmd.reason)
    return None


@decide.register
def _spammer(cmd: c.SetSpammer, s: State, b: Batch) -> None:
    user = user_by_id(s, cmd.user_id)
    if cmd.spammer and (not user.spammer or (cmd.ban and user.enabled)):
        b.emit(ev.UserMarkedSpammer, subject_id=user.id, ban=cmd.ban)
    elif not cmd.spammer and user.spammer:
        b.emit(ev.UserUnmarkedSpammer, subject_id=user.id)
    return None


def system_stats(s: State, exclude_user: UUID | None = None, exclude_messages: Collection[UUID] = ()) -> dict:
    """OA's SystemStats, optionally as if one user's messages, or some messages (and their
    subtrees), were gone."""
    m = s.model
    gone: set[UUID] = set()
    if exclude_user or exclude_messages:
        for msg in m.messages.values():  # parents come before their replies
            if (exclude_user and msg.user_id == exclude_user) or msg.id in exclude_messages or msg.parent_id in gone:
                gone.add(msg.id)
    live = [x for x in m.messages.values() if x.id not in gone]
    active = [x for x in live if not m.is_hidden(x)]
    by_lang: dict[str, int] = {}
    for x in active:
        by_lang[x.lang] = by_lang.get(x.lang, 0) + 1
    return {
        "all": len(live),
        "active": len(active),
        "active_by_lang": dict(sorted(by_lang.items())),
        "deleted": len(live) - len(active),
        "message_trees": sum(1 for x in live if x.parent_id is None),
    }


# --- imports and snapshots ------------------------------------------------------------------------------


def import_user(s: State, client_id: UUID) -> User:
    """The hidden system user that owns imported messages (as Open-Assistant's importer)."""
    return s.model.user(client_id, "system", "oasst-import")


@decide.register
def _import(cmd: c.ImportTrees, s: State, b: Batch) -> dict:
    """Parsed oasst trees become one TreeImported event each. Trees (or messages) already
    present are skipped, so importing a file twice adds nothing the second time."""
    user = import_user(s, cmd.client_id)
    imported = skipped = messages = 0
    for tree in cmd.trees:
        if tree.tree_id in s.model.trees or any(m.message_id in s.model.messages for m in tree.messages):
            skipped += 1
            continue
        if not user.exists:
            b.ensure_user(user, "Imported data")
            user = s.model.users[user.id]
        b.emit(
            ev.TreeImported,
            user_id=user.id,
            tree_id=tree.tree_id,
            state=tree.state,
            origin=tree.origin or cmd.origin,
            lang=tree.lang,
            messages=tree.messages,
        )
        imported += 1
        messages += len(tree.messages)
    return {"trees_imported": imported, "trees_skipped": skipped, "messages_imported": messages}


@decide.register
def _snapshot(cmd: c.RecordSnapshot, s: State, b: Batch) -> None:
    """A snapshot whose files were written is recorded once per id."""
    manifest = cmd.manifest
    if not s.model.has_stream(snapshot_stream(manifest["id"])):
        b.emit(
            ev.SnapshotCreated,
            snapshot_id=manifest["id"],
            position=manifest["position"],
            policy=manifest["policy"]["name"],
            manifest=manifest,
            parent_id=manifest["parent"],
        )
    return None


# --- API clients and users ------------------------------------------------------------------------------


@decide.register
def _api_client(cmd: c.CreateApiClient, s: State, b: Batch) -> None:
    if cmd.key_sha256 not in s.model.clients_by_key:
        b.emit(
            ev.ApiClientCreated,
            client_id=ev.new_id(),
            key_sha256=cmd.key_sha256,
            description=cmd.description,
            frontend_type=cmd.frontend_type,
            trusted=cmd.trusted,
            admin_email=cmd.admin_email,
        )
    return None


@decide.register
def _frontend_user(cmd: c.UpsertFrontendUser, s: State, b: Batch) -> dict:
    """OA's create_frontend_user: the user is found or created (a deleted user's name makes a
    new user); if anything sent differs from it, OA's update_user follows (trusted clients
    only): enabled and show_on_leaderboard as sent, notes if sent, the ToS accepted now if sent."""
    user = s.model.user(cmd.client_id, cmd.auth_method, cmd.username)
    system = cmd.auth_method == "system"  # OA creates system users off the boards, ToS accepted
    if user.exists:
        enabled, show, notes, tos = user.enabled, user.show_on_leaderboard, user.notes, user.tos_accepted
    else:
        enabled, show, notes, tos = True, not system, "", system
    update = (
        cmd.enabled != enabled
        or cmd.show_on_leaderboard != show
        or (cmd.notes is not None and cmd.notes != notes)
        or bool(cmd.tos_accepted and not tos)
    )
    if update and not cmd.trusted:
        raise OasstError("only trusted API clients may update users", ErrorCode.API_CLIENT_NOT_AUTHORIZED)
    if not user.exists:  # created and updated at once: one event with the values OA ends with
        b.emit(
            ev.UserSeen,
            user_id=user.id,
            subject_id=user.id,
            auth_method=cmd.auth_method,
            username=cmd.username,
            display_name=cmd.display_name,
            enabled=cmd.enabled,
            show_on_leaderboard=cmd.show_on_leaderboard,
            notes=cmd.notes or "",
            tos_accepted=tos or bool(cmd.tos_accepted),
        )
        return frontend_user(s.model.users[user.id], b.now)
    b.ensure_user(user, cmd.display_name)
    if update:
        if cmd.enabled != user.enabled:
            b.emit(ev.UserEnabled if cmd.enabled else ev.UserDisabled, subject_id=user.id)
        changes = {"show_on_leaderboard": cmd.show_on_leaderboard} if cmd.show_on_leaderboard != show else {}
        if cmd.notes is not None and cmd.notes != notes:
            changes["notes"] = cmd.notes
        if cmd.tos_accepted:  # OA stamps the acceptance date again on every update that sends it
            changes["tos_accepted"] = True
        if changes:
            b.emit(ev.UserSettingsChanged, subject_id=user.id, **changes)
    return frontend_user(s.model.users[user.id], b.now)


def frontend_user(user: User, now: datetime) -> dict:
    """OA's FrontEndUser, with the user's stored values (streak and activity as the views count them)."""
    return shapes.frontend_user(
        user, created=user.created_at, last_activity=user.last_activity, streak=user.streak(now)
    )


# --- moderation: edits, a user's messages, the flagged queue, merging users (issue #14) -----------------


@decide.register
def _edit(cmd: c.EditMessage, s: State, b: Batch) -> None:
    """OA's revise_message: a new revision by the acting user. OA checks no authorship here:
    the route takes trusted clients only, whose frontend lets authors and moderators edit."""
    user = acting_user(s, cmd.client_id, cmd.user)
    msg = message(s, cmd.message_id)
    text = cmd.new_content
    if not text.strip():
        raise OasstError("message text is empty", ErrorCode.TASK_MESSAGE_TEXT_EMPTY)
    if len(text) > MAX_TEXT:
        raise OasstError(f"message text is longer than {MAX_TEXT} characters", ErrorCode.TASK_MESSAGE_TOO_LONG)
    b.ensure_user(user, cmd.user.display_name)
    b.emit(ev.MessageEdited, user_id=user.id, message_id=msg.id, text=text)
    return None


def user_messages_to_delete(s: State, cmd: c.DeleteUserMessages) -> list[Message]:
    """The messages a DeleteUserMessages picks, already deleted ones too (a purge counts them)."""
    if cmd.user_id is not None:
        user = user_by_id(s, cmd.user_id)
    else:
        user = s.model.user(cmd.client_id, cmd.auth_method, cmd.username)
        if not user.exists:
            raise OasstError(f"user {cmd.auth_method}:{cmd.username} not found", ErrorCode.USER_NOT_FOUND)
    picked = []
    for mid in s.model.authored.get(user.id, ()):
        m = s.model.messages[mid]
        if (
            (cmd.initial_prompts or m.parent_id is not None)
            and (cmd.min_date is None or m.created_at >= cmd.min_date)
            and (cmd.max_date is None or m.created_at <= cmd.max_date)
        ):
            picked.append(m)
    return picked


@decide.register
def _delete_user_messages(cmd: c.DeleteUserMessages, s: State, b: Batch) -> None:
    """One MessageDeleted per message (each hides its subtree, as a moderator's delete)."""
    for m in user_messages_to_delete(s, cmd):
        if not m.deleted:
            b.emit(ev.MessageDeleted, message_id=m.id, reason=cmd.reason)
    return None


def flagged_message(message_id: UUID, flag: tuple[datetime, bool]) -> dict:
    """OA's FlaggedMessageResponse."""
    return {"message_id": str(message_id), "processed": flag[1], "created_date": flag[0].isoformat()}


@decide.register
def _process_flagged(cmd: c.ProcessFlaggedMessage, s: State, b: Batch) -> dict:
    mid = parse_uuid(cmd.message_id, ErrorCode.MESSAGE_NOT_FOUND, "flagged message")
    flag = s.model.flagged.get(mid)
    if flag is None:
        raise OasstError(f"message {mid} is not flagged", ErrorCode.MESSAGE_NOT_FOUND)
    if not flag[1]:
        b.emit(ev.FlaggedMessageProcessed, message_id=mid)
    return flagged_message(mid, s.model.flagged[mid])


@decide.register
def _merge_users(cmd: c.MergeUsers, s: State, b: Batch) -> None:
    """OA's merge_users: the sources' contributions become the destination's. A user marked
    spammer is refused: the mark re-decided what their votes decided, and a merge would move
    that silently (unmark first)."""
    dest = user_by_id(s, cmd.destination_user_id)
    sources: dict[UUID, User] = {}
    for ref in cmd.source_user_ids:
        user = user_by_id(s, ref)
        if user.id != dest.id:
            sources[user.id] = user
    if any(u.spammer for u in (dest, *sources.values())):
        raise OasstError("a user marked spammer cannot be merged; unmark them first", ErrorCode.GENERIC_ERROR)
    if sources:
        b.emit(ev.UsersMerged, subject_id=dest.id, source_user_ids=list(sources))
    return None
