"""The event contract: every fact the system records, as msgspec Structs.

This module is public: Kafka consumers, projectors and training jobs outside this
repository decode these events. Rules (docs/design.md, principle 2):

* names are past tense; each type has an explicit, stable ``tag`` (the stored topic);
* fields are only ever added, and only with defaults; a tag is never reused;
* ``schema`` is the version of the event's shape; readers upcast older versions
  (``upcast`` below) so the rest of the code sees the current shape only.

Every event carries an envelope: its own ``id``, the time it happened (``at``, UTC),
the actor (``user_id`` and ``api_client_id``, either may be absent for system
decisions) and the schema version. Tree-manager decisions (reviews, state changes,
lottery draws, ranks) are events too, so a replay never re-decides anything.
"""

from __future__ import annotations

import os
import random
from datetime import datetime
from typing import Literal, Union
from uuid import UUID

import msgspec

SCHEMA_VERSION = 1

TaskType = Literal[
    "initial_prompt",
    "prompter_reply",
    "assistant_reply",
    "rank_initial_prompts",
    "rank_prompter_replies",
    "rank_assistant_replies",
    "label_initial_prompt",
    "label_prompter_reply",
    "label_assistant_reply",
]
Role = Literal["prompter", "assistant"]
LabelKind = Literal["task", "free", "report"]
LabelMode = Literal["simple", "full"]
AuthMethod = Literal["discord", "google", "local", "system"]
TreeState = Literal[
    "initial_prompt_review",
    "prompt_lottery_waiting",
    "growing",
    "ranking",
    "ready_for_scoring",
    "ready_for_export",
    "scoring_failed",
    "aborted_low_grade",
    "halted_by_moderator",
    "backlog_ranking",
]


class Event(msgspec.Struct, kw_only=True, frozen=True, tag_field="type"):
    """Envelope shared by every event."""

    id: UUID
    at: datetime
    user_id: UUID | None = None
    api_client_id: UUID | None = None
    schema: int = SCHEMA_VERSION


# --- API clients -------------------------------------------------------------------


class ApiClientCreated(Event, frozen=True, tag="api_client_created"):
    client_id: UUID
    key_sha256: str  # the key itself is never stored
    description: str
    frontend_type: str
    trusted: bool = False
    admin_email: str | None = None


# --- users -------------------------------------------------------------------------


class UserSeen(Event, frozen=True, tag="user_seen"):
    """First time a frontend user appears (created implicitly or explicitly)."""

    subject_id: UUID  # our user id
    auth_method: AuthMethod
    username: str  # the frontend's id for the user
    display_name: str
    enabled: bool = True
    show_on_leaderboard: bool = True
    notes: str = ""
    tos_accepted: bool = False


class UserRenamed(Event, frozen=True, tag="user_renamed"):
    subject_id: UUID
    display_name: str


class UserEnabled(Event, frozen=True, tag="user_enabled"):
    subject_id: UUID


class UserDisabled(Event, frozen=True, tag="user_disabled"):
    subject_id: UUID


class UserSettingsChanged(Event, frozen=True, tag="user_settings_changed"):
    """Notes, leaderboard visibility, terms-of-service acceptance (None = unchanged)."""

    subject_id: UUID
    notes: str | None = None
    show_on_leaderboard: bool | None = None
    tos_accepted: bool | None = None


class UserDeleted(Event, frozen=True, tag="user_deleted"):
    """The user is anonymised and hidden from boards; their messages stay."""

    subject_id: UUID


class UserErased(Event, frozen=True, tag="user_erased"):
    """The user's key was destroyed (crypto-shredding): every text sealed with it reads as
    ``ERASED`` from now on, in every reader and every replay (see ``SEALED`` below). Their
    rankings, labels, reactions and the trees' structure stay. Unlike ``UserDeleted`` (OA's
    anonymisation), nothing of what they wrote can be read back."""

    subject_id: UUID
    reason: str = ""


class UserMarkedSpammer(Event, frozen=True, tag="user_marked_spammer"):
    subject_id: UUID
    reason: str = ""
    ban: bool = False


class UserUnmarkedSpammer(Event, frozen=True, tag="user_unmarked_spammer"):
    subject_id: UUID
    reason: str = ""


class UsersMerged(Event, frozen=True, tag="users_merged"):
    """The source users become the destination (``subject_id``): their messages, votes,
    reactions, tasks and counters are the destination's from now on; the sources are gone."""

    subject_id: UUID
    source_user_ids: list[UUID]


# --- tasks -------------------------------------------------------------------------


class TaskAssigned(Event, frozen=True, tag="task_assigned"):
    """A task handed to a user; ``payload`` is exactly what the frontend received."""

    task_id: UUID
    task_type: TaskType
    collective: bool
    lang: str | None
    expires_at: datetime | None
    payload: dict
    target_message_id: UUID | None = None  # parent to reply to / message to label / parent to rank
    tree_id: UUID | None = None
    label_mode: LabelMode | None = None
    ranked_message_ids: list[UUID] = []  # reply_messages order of a ranking task


class TaskAcked(Event, frozen=True, tag="task_acked"):
    task_id: UUID
    frontend_message_id: str


class TaskSkipped(Event, frozen=True, tag="task_skipped"):
    task_id: UUID
    reason: str | None = None


class TaskExpired(Event, frozen=True, tag="task_expired"):
    task_id: UUID


class TaskCompleted(Event, frozen=True, tag="task_completed"):
    task_id: UUID
    request_sha256: str  # digest of the interaction, so a retry can be recognised
    user_message_id: str | None = None


# --- messages ----------------------------------------------------------------------


class InitialPromptSubmitted(Event, frozen=True, tag="initial_prompt_submitted"):
    """A new prompt; it opens a new tree whose id is the prompt's id."""

    message_id: UUID
    frontend_message_id: str
    task_id: UUID | None
    text: str
    lang: str
    synthetic: bool = False
    model_name: str | None = None
    origin: str | None = None


class ReplySubmitted(Event, frozen=True, tag="reply_submitted"):
    message_id: UUID
    frontend_message_id: str
    task_id: UUID | None
    parent_id: UUID
    tree_id: UUID
    role: Role
    depth: int
    text: str
    lang: str
    synthetic: bool = False
    model_name: str | None = None


class MessageEdited(Event, frozen=True, tag="message_edited"):
    """A new revision of the text; the envelope's ``user_id`` is who revised it."""

    message_id: UUID
    text: str


class MessageDeleted(Event, frozen=True, tag="message_deleted"):
    """Hides the message and its descendants (views derive the subtree)."""

    message_id: UUID
    reason: str = "moderator"


class MessageUndeleted(Event, frozen=True, tag="message_undeleted"):
    """Restores the message and its ancestors."""

    message_id: UUID


class FlaggedMessageProcessed(Event, frozen=True, tag="flagged_message_processed"):
    """A moderator dealt with a reported (flagged) message; a new report flags it again."""

    message_id: UUID


class MessageReviewed(Event, frozen=True, tag="message_reviewed"):
    """Tree-manager decision: acceptance after a review (OA's rule, docs/oa-rules.md, "Acceptance")."""

    message_id: UUID
    review_count: int
    score: float
    accepted: bool


# --- labels, rankings, reactions ---------------------------------------------------


class LabelsSubmitted(Event, frozen=True, tag="labels_submitted"):
    message_id: UUID
    labels: dict[str, float]
    kind: LabelKind
    task_id: UUID | None = None
    mode: LabelMode | None = None
    text: str = ""


class RankingSubmitted(Event, frozen=True, tag="ranking_submitted"):
    """One user's ranking of a parent's replies, best first."""

    parent_id: UUID
    task_id: UUID
    ranked_message_ids: list[UUID]
    not_rankable: bool = False


class EmojiAdded(Event, frozen=True, tag="emoji_added"):
    message_id: UUID
    emoji: str


class EmojiRemoved(Event, frozen=True, tag="emoji_removed"):
    message_id: UUID
    emoji: str


# --- trees -------------------------------------------------------------------------


class TreeStateChanged(Event, frozen=True, tag="tree_state_changed"):
    """Tree-manager decision; ``reason`` names the rule that fired (e.g. 'lottery')."""

    tree_id: UUID
    old_state: TreeState | None
    new_state: TreeState
    reason: str
    goal_tree_size: int | None = None


class TreeHalted(Event, frozen=True, tag="tree_halted"):
    tree_id: UUID


class TreeResumed(Event, frozen=True, tag="tree_resumed"):
    tree_id: UUID


class RanksComputed(Event, frozen=True, tag="ranks_computed"):
    """Ranking consensus of one parent's replies, best first (rank 0 = first)."""

    tree_id: UUID
    parent_id: UUID
    ranked_message_ids: list[UUID]
    ranking_count: int


# --- imports and snapshots -------------------------------------------------------------


class ImportedMessage(msgspec.Struct, kw_only=True, frozen=True):
    """One message of an imported oasst file, with the facts the file carries (kept as
    imported: no labels or votes behind them exist in our log)."""

    message_id: UUID
    parent_id: UUID | None
    text: str
    role: Role
    lang: str
    created_date: datetime | None = None
    user_ref: str | None = None  # the file's user_id (ours is the hidden system user)
    review_count: int = 0
    review_result: bool | None = None
    deleted: bool = False
    rank: int | None = None
    synthetic: bool = False
    model_name: str | None = None
    emojis: dict[str, int] = {}
    labels: dict[str, tuple[float, int]] = {}  # name -> (mean value, count)


class TreeImported(Event, frozen=True, tag="tree_imported"):
    """A whole tree from an oasst file (as Open-Assistant's importer: owned by the hidden
    system user, ``origin`` = the file's name). Messages are listed parents first."""

    tree_id: UUID
    state: TreeState
    origin: str
    lang: str
    messages: list[ImportedMessage]


class SnapshotCreated(Event, frozen=True, tag="snapshot_created"):
    """A dataset snapshot was written: the log up to ``position`` under ``policy``.
    ``manifest`` is manifest.json as written (id, files and their sha256, counts...)."""

    snapshot_id: str
    position: int
    policy: str
    manifest: dict
    parent_id: str | None = None


AnyEvent = Union[
    ApiClientCreated,
    UserSeen,
    UserRenamed,
    UserEnabled,
    UserDisabled,
    UserSettingsChanged,
    UserDeleted,
    UserErased,
    UserMarkedSpammer,
    UserUnmarkedSpammer,
    UsersMerged,
    TaskAssigned,
    TaskAcked,
    TaskSkipped,
    TaskExpired,
    TaskCompleted,
    InitialPromptSubmitted,
    ReplySubmitted,
    MessageEdited,
    MessageDeleted,
    MessageUndeleted,
    FlaggedMessageProcessed,
    MessageReviewed,
    LabelsSubmitted,
    RankingSubmitted,
    EmojiAdded,
    EmojiRemoved,
    TreeStateChanged,
    TreeHalted,
    TreeResumed,
    RanksComputed,
    TreeImported,
    SnapshotCreated,
]

EVENT_TYPES: dict[str, type[Event]] = {t.__struct_config__.tag: t for t in AnyEvent.__args__}


class TaskAssignedSummary(Event, frozen=True, tag="task_assigned"):
    """TaskAssigned read without its payload (what projections need; decodes ~5x faster)."""

    task_id: UUID
    task_type: TaskType
    collective: bool
    lang: str | None
    expires_at: datetime | None
    target_message_id: UUID | None = None
    tree_id: UUID | None = None
    label_mode: LabelMode | None = None
    ranked_message_ids: list[UUID] = []


AnyEventSummary = Union[tuple(TaskAssignedSummary if t is TaskAssigned else t for t in AnyEvent.__args__)]

# --- sealed fields (erasure by crypto-shredding) -------------------------------------------
#
# Personal text is stored sealed (AES-GCM) with a key per user, kept outside the log
# (infra/keys.py); erasing a user destroys the key. An event type listed here has its
# fields sealed with the key of the user its ``owner`` field names. On disk (and on
# Kafka) such a field holds ``SEAL_PREFIX`` + (key id, nonce, ciphertext) as latin-1; decode()
# gives it back as plaintext, or as ``ERASED`` once the key is gone. Logs written before
# sealing hold plaintext, which passes through unchanged. Empty strings are not sealed.
# A task's payload (``TaskAssigned.payload``, what the frontend got) quotes messages: each
# text in it is sealed with the key of the message's ``user_id`` (``SEALED_PAYLOAD_PATHS``;
# a label task's ``prompt``/``reply`` is its conversation's last message, a ranking task's
# ``replies[i]`` is ``reply_messages[i]``). decode_summary() leaves the payload out.
# Not sealed: usernames (the frontend's id, needed to find the user), moderator notes,
# imported oasst trees (published files whose authors are not our users).

SEALED: dict[type[Event], tuple[str, tuple[str, ...]]] = {  # type -> (owner field, sealed fields)
    InitialPromptSubmitted: ("user_id", ("text",)),
    ReplySubmitted: ("user_id", ("text",)),
    MessageEdited: ("user_id", ("text",)),  # the reviser's key; views erase an author's messages whole
    LabelsSubmitted: ("user_id", ("text",)),
    UserSeen: ("subject_id", ("display_name",)),
    UserRenamed: ("subject_id", ("display_name",)),
}
SEALED_PAYLOAD_PATHS = ("conversation.messages[].text", "reply_messages[].text", "replies[]", "prompt", "reply")
SEAL_PREFIX = "\x00sealed:"
ERASED = "[erased]"  # what a sealed field reads as once its key is destroyed

# The store layer installs the function that opens sealed fields (set_opener); decode()
# passes it every event of a type in SEALED, and every UserErased (so a reader's key cache
# forgets that user's keys). The domain never sees a sealed value.
_opener = None
_OPENED = frozenset([*SEALED, TaskAssigned, UserErased])


def set_opener(opener) -> None:
    global _opener
    _opener = opener


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyEvent)
_summary_decoder = msgspec.msgpack.Decoder(AnyEventSummary)
_json_encoder = msgspec.json.Encoder()


# Seeded from the OS (again in a forked child): ids need uniqueness, not secrecy.
_id_source = random.Random(random.SystemRandom().getrandbits(128))
os.register_at_fork(after_in_child=lambda: _id_source.seed(random.SystemRandom().getrandbits(128)))


def seed_ids(seed: int) -> None:
    """Make new_id() deterministic (the synthetic history generator; never in serving)."""
    _id_source.seed(seed)


def new_id() -> UUID:
    """A random (version 4) UUID, without a system call per id as uuid.uuid4() makes."""
    bits = _id_source.getrandbits(128)
    bits = (bits & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
    return UUID(int=bits)


def topic(event: Event) -> str:
    return event.__struct_config__.tag


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def upcast(data: bytes) -> bytes:
    """Bring an older stored shape up to the current one (none needed at schema 1)."""
    return data


def decode(data: bytes) -> AnyEvent:
    e = _decoder.decode(upcast(data))
    return _opener(e) if _opener is not None and type(e) in _OPENED else e


def decode_summary(data: bytes) -> AnyEvent:
    """Like decode(), but a task_assigned comes back as a TaskAssignedSummary."""
    e = _summary_decoder.decode(upcast(data))
    return _opener(e) if _opener is not None and type(e) in _OPENED else e


def to_json(event: Event) -> bytes:
    return _json_encoder.encode(event)


def to_builtins(event: Event) -> dict:
    return msgspec.to_builtins(event)
