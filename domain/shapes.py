"""Open-Assistant's response shapes, each built here once for both sides: the write model's
objects and the views' rows are read by the attributes they share (duck-typed: the domain
imports no view); what the two name or count differently is passed in as a value."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.config import TreeConfig
from domain.model import ACTIVE_STATES
from domain.rules import is_skip_marker


def iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def reaction_counts(emojis: Mapping[str, Collection]) -> dict[str, int]:
    """OA's ``emojis``: how many users gave each reaction, by emoji (skip markers are internal)."""
    return {k: len(v) for k, v in sorted(emojis.items()) if v and not is_skip_marker(k)}


def conversation_message(m: Any, me: UUID | None) -> dict:
    """OA's ConversationMessage, as user ``me`` sees it (None: no one in particular)."""
    return {
        "id": str(m.id),
        "user_id": str(m.user_id) if m.user_id else None,
        "frontend_message_id": m.frontend_message_id,
        "text": m.text,
        "lang": m.lang,
        "is_assistant": m.role == "assistant",
        "emojis": reaction_counts(m.emojis),
        "user_emojis": sorted(k for k, v in m.emojis.items() if me is not None and me in v),
        "user_is_author": me is not None and m.user_id == me,
        "synthetic": m.synthetic,
    }


def message(m: Any, me: UUID | None, *, created: datetime, deleted: bool, ranking_count: int) -> dict:
    """OA's Message (a ConversationMessage with its place in the tree and its review), less
    its ``user``, which each side adds. ``deleted``: hidden (``rules.is_hidden``)."""
    return {
        **conversation_message(m, me),
        "parent_id": str(m.parent_id) if m.parent_id else None,
        "created_date": iso(created),
        "review_result": m.review_result,
        "review_count": m.review_count,
        "deleted": deleted,
        "model_name": m.model_name,
        "message_tree_id": str(m.tree_id),
        "ranking_count": ranking_count,
        "rank": m.rank,
        "edited": m.edited,
    }


def frontend_user(
    u: Any, *, created: datetime | None, last_activity: datetime | None, streak: tuple[int, datetime | None]
) -> dict:
    """OA's FrontEndUser; ``streak`` is (days, last day) from ``rules.current_streak``."""
    return {
        "id": u.username,
        "display_name": u.display_name,
        "auth_method": u.auth_method,
        "user_id": str(u.id),
        "enabled": u.enabled,
        "deleted": u.deleted,
        "notes": u.notes,
        "created_date": iso(created),
        "show_on_leaderboard": u.show_on_leaderboard,
        "streak_days": streak[0],
        "streak_last_day_date": iso(streak[1]),
        "last_activity_date": iso(last_activity),
        "tos_acceptance_date": iso(u.tos_acceptance_date),
    }


def tree_state(tree: Any, cfg: TreeConfig) -> dict:
    """OA's MessageTreeStateResponse. A tree still in review has no goal yet: the configured one."""
    return {
        "message_tree_id": str(tree.id),
        "state": tree.state,
        "goal_tree_size": tree.goal_tree_size or cfg.goal_tree_size,
        "max_depth": cfg.max_tree_depth,
        "max_children_count": cfg.max_children_count,
        "active": tree.state in ACTIVE_STATES,
        "origin": tree.origin,
    }
