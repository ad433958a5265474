"""Leaderboards, trollboard, statistics and label descriptions."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Annotated

from litestar import get, post
from litestar.params import FromPath, FromQuery, QueryParameter

from command_api.auth import api_client, trusted_client
from domain import labels as lab
from domain.model import ACTIVE_STATES
from domain.shapes import iso
from projections.leaderboard import troll_score
from query_api.common import CaughtUp, Views, message_or_404
from query_api.users import _frame, user_score

MaxCount = Annotated[int, QueryParameter(ge=1, le=10_000)]
BOARD_TTL_SECONDS = 1.0  # boards are recomputed at most once a second (OA: every 5-240 minutes)


def leaderboard_rows(views: Views, frame: str) -> tuple[list[dict], str]:
    """All ranked rows of a board (enabled users on the leaderboard, score > 0), cached."""
    runner, cache = views.runner, views.board_cache
    hit = cache.get(("leader", frame))
    if hit and hit[0] == runner.position and time.monotonic() - hit[1] < BOARD_TTL_SECONDS:
        return [dict(r) for r in hit[2]], hit[3]
    now = datetime.now(UTC)
    view, board = views.tree, views.board
    rows = []
    for user in view.users.values():
        if not user.enabled or user.deleted or not user.show_on_leaderboard or user.spammer:
            continue
        row = user_score(board, user, frame, now)
        if row["leader_score"] > 0:
            rows.append(row)
    rows.sort(key=lambda r: (-r["leader_score"], r["user_id"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    cache[("leader", frame)] = (runner.position, time.monotonic(), rows, iso(now))
    return [dict(r) for r in rows], iso(now)


@get("/leaderboards/{time_frame:str}", summary="Leaderboard (day, week, month, total), kept live", guards=[api_client])
async def leaderboard(views: CaughtUp, time_frame: FromPath[str], max_count: MaxCount = 100) -> dict:
    rows, updated = leaderboard_rows(views, _frame(time_frame))
    return {"time_frame": time_frame, "last_updated": updated, "leaderboard": rows[:max_count]}


@post(
    "/leaderboards/update",
    status_code=204,
    summary="Refresh all leaderboards (they are live: nothing to do)",
    guards=[trusted_client],
)
async def update_leaderboards(views: CaughtUp) -> None:
    """Nothing to do: declaring ``views`` is enough to answer once they caught up with the caller."""


@post(
    "/leaderboards/update/{time_frame:str}",
    status_code=204,
    summary="Refresh one leaderboard (it is live: nothing to do)",
    guards=[trusted_client],
)
async def update_leaderboard(views: CaughtUp, time_frame: FromPath[str]) -> None:
    _frame(time_frame)  # an unknown time frame is refused as OA does


@get("/trollboards/{time_frame:str}", summary="Trollboard (trusted clients)", guards=[trusted_client])
async def trollboard(
    views: CaughtUp, time_frame: FromPath[str], max_count: MaxCount = 100, enabled: FromQuery[bool | None] = None
) -> dict:
    frame = _frame(time_frame)
    now = datetime.now(UTC)
    view, board = views.tree, views.board
    rows = []
    for user in view.users.values():
        if enabled is not None and user.enabled != enabled:
            continue
        t = board.troll_stats(user.id, frame, now)
        score = troll_score(t)
        if score <= 0:
            continue
        rows.append(
            {
                "user_id": str(user.id),
                "highlighted": False,
                "username": user.username,
                "auth_method": user.auth_method,
                "display_name": user.display_name,
                "last_activity_date": iso(user.last_activity_date),
                "enabled": user.enabled,
                "deleted": user.deleted,
                "show_on_leaderboard": user.show_on_leaderboard,
                "troll_score": score,
                "base_date": None,
                "modified_date": iso(now),
                "red_flags": int(t["red_flags"]),
                "upvotes": int(t["upvotes"]),
                "downvotes": int(t["downvotes"]),
                "spam_prompts": int(t["spam_prompts"]),
                "quality": t["quality"],
                "humor": t["humor"],
                "toxicity": t["toxicity"],
                "violence": t["violence"],
                "helpfulness": t["helpfulness"],
                "spam": int(t["spam"]),
                "lang_mismach": int(t["lang_mismatch"]),
                "not_appropriate": int(t["not_appropriate"]),
                "pii": int(t["pii"]),
                "hate_speech": int(t["hate_speech"]),
                "sexual_content": int(t["sexual_content"]),
                "political_content": int(t["political_content"]),
            }
        )
    rows.sort(key=lambda r: (-r["troll_score"], r["user_id"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return {"time_frame": time_frame, "last_updated": iso(now), "trollboard": rows[:max_count]}


def system_stats(view) -> dict:
    active_by_lang: Counter = Counter()
    total = active = roots = 0
    for m in view.messages.values():
        total += 1
        roots += m.parent_id is None
        if not view.is_hidden(m):
            active += 1
            active_by_lang[m.lang] += 1
    return {
        "all": total,
        "active": active,
        "active_by_lang": dict(sorted(active_by_lang.items())),
        "deleted": total - active,
        "message_trees": roots,
    }


@get("/stats/", summary="Message counts", guards=[api_client])
async def stats(views: CaughtUp) -> dict:
    return system_stats(views.tree)


def tree_state_counts(view) -> dict[str, int]:
    return dict(sorted(Counter(t.state for t in view.trees.values()).items()))


def _message_counts(view, only_active: bool, default_goal: int) -> list[dict]:
    out = []
    for t in view.trees.values():
        if only_active and t.state not in ACTIVE_STATES:
            continue
        live = [view.messages[i] for i in t.message_ids if not view.is_hidden(view.messages[i])]
        out.append(
            {
                "message_tree_id": str(t.id),
                "state": t.state,
                "depth": max((m.depth for m in live), default=0),
                "oldest": iso(t.created_date),
                "youngest": iso(max((m.created_date for m in live), default=None)),
                # a tree still in review has no goal yet: the configured one (OA stores it at creation)
                "count": len(live),
                "goal_tree_size": t.goal_tree_size or default_goal,
            }
        )
    return sorted(out, key=lambda r: r["message_tree_id"])


@get("/stats/tree_manager/state_counts", summary="Trees per state", guards=[api_client])
async def state_counts(views: CaughtUp) -> dict:
    return tree_state_counts(views.tree)


@get("/stats/tree_manager/message_counts", summary="Messages per tree", guards=[api_client])
async def message_counts(views: CaughtUp, only_active: FromQuery[bool] = True) -> list[dict]:
    return _message_counts(views.tree, only_active, views.tree_config.goal_tree_size)


@get("/stats/tree_manager", summary="Tree manager statistics", guards=[api_client])
async def tree_manager_stats(views: CaughtUp) -> dict:
    view = views.tree
    return {
        "state_counts": tree_state_counts(view),
        "message_counts": _message_counts(view, True, views.tree_config.goal_tree_size),
    }


@get("/text_labels/valid_labels", summary="Label descriptions (for a message: what its task asks)", guards=[api_client])
async def valid_labels(views: CaughtUp, message_id: FromQuery[str | None] = None) -> dict:
    names = lab.ANY_MESSAGE_LABELS
    if message_id:
        m = message_or_404(views.tree, message_id)
        task = "label_initial_prompt" if m.parent_id is None else f"label_{m.role}_reply"
        names = lab.valid_labels(task, "full")
    return {"valid_labels": lab.describe(names)}


@get("/text_labels/report_labels", summary="Labels a report may carry", guards=[api_client])
async def report_labels(views: CaughtUp) -> dict:
    return {"valid_labels": lab.describe(lab.REPORT_LABELS)}


board_handlers = [
    leaderboard,
    update_leaderboards,
    update_leaderboard,
    trollboard,
    stats,
    state_counts,
    message_counts,
    tree_manager_stats,
    valid_labels,
    report_labels,
]
