"""Request bodies of Open-Assistant's HTTP protocol (names as in backend-openapi.json)."""

from __future__ import annotations

from typing import Annotated, Literal, Union
from uuid import UUID

import msgspec

AuthMethod = Literal["discord", "google", "local", "system"]
TaskRequestType = Literal[
    "random",
    "summarize_story",
    "rate_summary",
    "initial_prompt",
    "prompter_reply",
    "assistant_reply",
    "rank_initial_prompts",
    "rank_prompter_replies",
    "rank_assistant_replies",
    "label_initial_prompt",
    "label_assistant_reply",
    "label_prompter_reply",
]
EmojiCode = Literal[
    "+1",
    "-1",
    "red_flag",
    "100",
    "rofl",
    "clap",
    "diamond",
    "heart_eyes",
    "disappointed",
    "poop",
    "skull",
    "_skip_reply",
    "_skip_ranking",
    "_skip_labeling",
]
NonEmptyId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class User(msgspec.Struct, forbid_unknown_fields=False):
    id: NonEmptyId
    display_name: Annotated[str, msgspec.Meta(max_length=256)]
    auth_method: AuthMethod


class TaskRequest(msgspec.Struct):
    user: User | None = None
    type: TaskRequestType = "random"
    collective: bool = False
    lang: str | None = None


class TaskAck(msgspec.Struct):
    message_id: NonEmptyId


class TaskNAck(msgspec.Struct):
    reason: str | None = None


class TaskClose(msgspec.Struct):
    message_id: NonEmptyId


class TextReplyToMessage(msgspec.Struct, tag="text_reply_to_message", tag_field="type"):
    user: User
    message_id: NonEmptyId
    user_message_id: NonEmptyId
    text: str
    lang: str | None = None


class MessageRating(msgspec.Struct, tag="message_rating", tag_field="type"):
    user: User
    message_id: NonEmptyId
    rating: int


class MessageRanking(msgspec.Struct, tag="message_ranking", tag_field="type"):
    user: User
    message_id: NonEmptyId
    ranking: list[int]
    not_rankable: bool | None = False


class TextLabels(msgspec.Struct, tag="text_labels", tag_field="type"):
    user: User
    text: str
    labels: dict[str, float]
    message_id: str
    task_id: str | None = None
    is_report: bool | None = None


Interaction = Union[TextReplyToMessage, MessageRating, MessageRanking, TextLabels]


class MessageEmojiRequest(msgspec.Struct):
    user: User
    emoji: EmojiCode
    op: Literal["toggle", "add", "remove"] = "toggle"


class CreateFrontendUserRequest(msgspec.Struct):
    id: NonEmptyId
    display_name: Annotated[str, msgspec.Meta(max_length=256)]
    auth_method: AuthMethod
    show_on_leaderboard: bool = True
    enabled: bool = True
    tos_acceptance: bool | None = None
    notes: str | None = None


class CreateApiClientRequest(msgspec.Struct):
    description: str
    frontend_type: str
    trusted: bool | None = False
    admin_email: str | None = None


class ImportRequest(msgspec.Struct):
    """oasst lines (trees or flat messages) to import; ``origin`` names their source."""

    origin: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    items: list[dict]


class MessageEditRequest(msgspec.Struct):
    user: User
    new_content: str


class MergeUsersRequest(msgspec.Struct):
    destination_user_id: UUID
    source_user_ids: list[UUID]
