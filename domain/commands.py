"""The commands the write side takes: typed records of what an API client asks for.

No HTTP here: the routes (command_api/routes.py) build commands from Open-Assistant's
request bodies, ``domain.decide.decide`` validates each against the write model and
emits its events, and the service appends them. Every command names the API client
acting for a user (``client_id``; None only for creating API clients). Where a command
carries one of OA's own payloads (``p.User``, an interaction), it keeps that typed Struct
rather than copying its fields: the idempotency digest of an interaction is its JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from domain import protocol as p


class Command(msgspec.Struct, frozen=True, kw_only=True):
    client_id: UUID | None


# --- API clients and users -------------------------------------------------------------------


class CreateApiClient(Command, frozen=True):
    key_sha256: str
    description: str
    frontend_type: str
    trusted: bool = False
    admin_email: str | None = None


class UpsertFrontendUser(Command, frozen=True):
    auth_method: str
    username: str
    display_name: str
    enabled: bool = True
    show_on_leaderboard: bool = True
    notes: str | None = None
    tos_accepted: bool | None = None
    trusted: bool = False  # the acting client's: OA lets trusted clients only change an existing user


class UpdateUser(Command, frozen=True):
    user_id: str
    enabled: bool | None = None
    notes: str | None = None
    show_on_leaderboard: bool | None = None
    tos_accepted: bool | None = None
    display_name: str | None = None


class DeleteUser(Command, frozen=True):
    user_id: str


class EraseUser(Command, frozen=True):
    """Destroy the user's key: their texts and display name read as erased (trusted clients)."""

    user_id: str
    reason: str = ""


class SetSpammer(Command, frozen=True):
    user_id: str
    spammer: bool
    ban: bool = False


# --- tasks -------------------------------------------------------------------------------------


class RequestTask(Command, frozen=True):
    user: p.User | None
    task_type: str = "random"
    lang: str | None = None
    collective: bool = False


class AckTask(Command, frozen=True):
    task_id: str
    frontend_message_id: str


class NackTask(Command, frozen=True):
    task_id: str
    reason: str | None = None


class SubmitInteraction(Command, frozen=True):
    """A task's result: a text reply, review labels or a ranking."""

    interaction: p.Interaction


class CloseTask(Command, frozen=True):
    frontend_message_id: str


# --- messages and trees --------------------------------------------------------------------------


class LabelMessage(Command, frozen=True):
    """Labels or a report on a message, without a task."""

    labels: p.TextLabels


class React(Command, frozen=True):
    message_id: str
    user: p.User
    emoji: str
    op: str = "toggle"  # toggle | add | remove


class DeleteMessage(Command, frozen=True):
    message_id: str


class UndeleteMessage(Command, frozen=True):
    message_id: str


class SetTreeHalted(Command, frozen=True):
    message_id: str
    halt: bool


class ImportTrees(Command, frozen=True):
    origin: str
    trees: list[Any]  # infra.oasst_format.ParsedTree, already checked


class RecordSnapshot(Command, frozen=True):
    manifest: dict


# --- moderation (issue #14: OA's routes added after April 2023) ------------------------------------


class EditMessage(Command, frozen=True):
    """A new revision of a message's text, by ``user`` (OA: trusted clients only)."""

    message_id: str
    user: p.User
    new_content: str


class DeleteUserMessages(Command, frozen=True):
    """Mark a user's messages deleted: all of them (OA's DELETE .../messages), or as OA's
    purge_user/{id}/messages picks them (replies only unless ``initial_prompts``, in a date range)."""

    user_id: str | None = None  # our id, or the frontend identity below (the client's own user)
    auth_method: str | None = None
    username: str | None = None
    initial_prompts: bool = True
    min_date: datetime | None = None
    max_date: datetime | None = None
    reason: str = "user_messages_deleted"


class ProcessFlaggedMessage(Command, frozen=True):
    message_id: str


class MergeUsers(Command, frozen=True):
    destination_user_id: str
    source_user_ids: list[str]
