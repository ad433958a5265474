"""What the console's pages show, read through the query API: its views (``Views``), its
helpers and, where a route computes the answer, the route's own function called in-process."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from datetime import UTC, datetime
from uuid import UUID

from litestar.di import NamedDependency

from console.timeline import clip, line
from domain.errors import ErrorCode, OasstError
from domain.model import ACTIVE_STATES
from infra.settings import Settings
from projections.message_tree import MessageRow, MessageTreeView
from query_api.boards import leaderboard_rows, system_stats, tree_state_counts, trollboard
from query_api.common import Views, message_or_404, user_or_404
from query_api.history import events_at, events_concerning, positions_concerning
from query_api.messages import replay
from query_api.trust import get_trust, message_consensus, suspected_spammers
from query_api.users import user_score

# the funnel: states in the order a tree passes them, then where trees leave it
FUNNEL = ("initial_prompt_review", "prompt_lottery_waiting", "growing", "ranking", "ready_for_export")
EXITS = ("aborted_low_grade", "halted_by_moderator", "backlog_ranking", "scoring_failed")
RECENT_EVENTS = 25
TIMELINE_PAGE = 100
SettingsDep = NamedDependency[Settings]  # the ``settings`` dependency (infra/app.py)


async def overview(views: Views, service) -> dict:
    view, runner = views.tree, views.runner
    head = service.model.position  # the log's head as the command side has appended it
    counts = tree_state_counts(view)
    recent = await events_at(runner, list(range(max(1, head - RECENT_EVENTS + 1), head + 1)))
    return {
        "stats": system_stats(view),
        "users": len(view.users),
        "spammers": len(view.spammers),
        "flagged_open": sum(1 for f in view.flagged.values() if not f.processed),
        "funnel": [(s, counts.get(s, 0)) for s in FUNNEL],
        "widest": max(counts.values(), default=0) or 1,
        "exits": [(s, counts.get(s, 0)) for s in EXITS if counts.get(s)],
        "other_states": [(s, n) for s, n in counts.items() if s not in FUNNEL and s not in EXITS],
        "head": head,
        "lags": [(v.name, v.position, max(0, head - v.position)) for v in runner.views],
        "recent": [line(i, view) for i in reversed(recent)],
    }


def _node(past: MessageTreeView, m: MessageRow, votes: dict, live: MessageTreeView) -> dict:
    children = sorted(
        (past.messages[c] for c in m.children if c in past.messages),
        key=lambda c: (c.rank is None, c.rank or 0, c.created_date),
    )
    author = live.users.get(m.user_id) if m.user_id else None
    return {
        "id": str(m.id),
        "role": m.role,
        "text": clip(m.text, 300),
        "author": author.display_name if author else None,
        "author_id": str(m.user_id) if m.user_id else None,
        "review_count": m.review_count,
        "review_result": m.review_result,
        "rank": m.rank,
        "emojis": {e: len(us) for e, us in m.emojis.items() if not e.startswith("_")},
        "hidden": past.is_hidden(m),
        "votes": votes.get(str(m.id), []),
        "children": [_node(past, c, votes, live) for c in children],
    }


def _votes(lines: list[dict]) -> dict[str, list[str]]:
    """Per message: who labelled, ranked or reacted on it, as timeline lines (up to the position shown)."""
    out: dict[str, list[str]] = defaultdict(list)
    for ln in lines:
        if (
            ln["type"] in ("labels_submitted", "ranking_submitted", "emoji_added", "message_reviewed")
            and not ln["marker"]
        ):
            target = dict(ln["subjects"]).get("message_id") or dict(ln["subjects"]).get("parent_id")
            out[target].append(f"{ln['actor']}: {ln['text']}")
    return out


async def tree(views: Views, message_id: str, at: int | None, step: int | None) -> dict:
    """A tree replayed as of a position (``at``, or the ``step``-th event of its history)."""
    live = views.tree
    tree_id = message_or_404(live, message_id).tree_id
    history = await events_concerning(views.runner, str(tree_id), limit=1_000_000)
    positions = [item["position"] for item in history]
    if not positions:  # the history view has not indexed the tree yet
        raise OasstError(f"no events of tree {tree_id} yet", ErrorCode.NO_MESSAGE_TREE_FOUND, 404)
    if step is not None:
        at = positions[min(max(step, 0), len(positions) - 1)]
    at = positions[-1] if at is None else at
    index = max(bisect_right(positions, at) - 1, 0)  # before the tree's first event: the slider at its start
    past = replay(history, at)
    lines = [line(item, live) for item in history]
    root = past.messages.get(tree_id)
    state = past.trees[tree_id].state if tree_id in past.trees else None
    return {
        "tree_id": str(tree_id),
        "at": at,
        "index": index,
        "positions": positions,
        "state": state,
        "live_state": live.trees[tree_id].state,
        "halted": live.trees[tree_id].state == "halted_by_moderator",
        "active": live.trees[tree_id].state in ACTIVE_STATES,
        "root": _node(past, root, _votes(lines[: index + 1]), live) if root else None,
        "lines": lines,
    }


async def timeline(views: Views, entity: str, before: int | None) -> tuple[list[dict], int | None]:
    """The newest events concerning ``entity`` before a position (one page), and where the next page starts."""
    until = None if before is None else before - 1
    positions = await positions_concerning(views.runner, entity, until, limit=10_000_000)
    page = positions[-TIMELINE_PAGE:]
    items = await events_at(views.runner, page)
    older = page[0] if len(positions) > len(page) else None
    return [line(i, views.tree) for i in reversed(items)], older


async def user(views: Views, user_id: str, before: int | None) -> dict:
    u = user_or_404(views.tree, user_id)
    lines, older = await timeline(views, str(u.id), before)
    rows, _ = leaderboard_rows(views, "total")
    rank = next((r["rank"] for r in rows if r["user_id"] == str(u.id)), None)
    return {
        "user": u,
        "score": user_score(views.board, u, "total", datetime.now(UTC), rank),
        "trust": await get_trust.fn(views=views, user_id=str(u.id)),  # the route's own function
        "lines": lines,
        "older": older,
    }


async def message(views: Views, message_id: str) -> dict:
    live = views.tree
    m = message_or_404(live, message_id)
    author = live.users.get(m.user_id) if m.user_id else None
    revisions = live.revisions.get(m.id)
    history = await events_concerning(views.runner, str(m.id), limit=10_000)
    return {
        "m": m,
        "author": author,
        "hidden": live.is_hidden(m),
        "tree_state": live.trees[m.tree_id].state,
        "revisions": revisions.items if revisions else [],
        "consensus": await message_consensus.fn(views=views, message_id=str(m.id), policy=None),
        "reactions": {e: [_name(live, u) for u in us] for e, us in m.emojis.items() if not e.startswith("_")},
        "flag": live.flagged.get(m.id),
        "lines": [line(i, live) for i in history],
        "created_at": history[0]["position"] if history else None,
    }


def _name(view: MessageTreeView, user_id: UUID | str) -> str:
    u = view.users.get(UUID(str(user_id)))
    return u.display_name if u else str(user_id)


def flagged(views: Views, show_all: bool) -> list[dict]:
    view = views.tree
    items = sorted(view.flagged.rows.items(), key=lambda x: (x[1].processed, x[1].created_date))
    out = []
    for mid, flag in items:
        if flag.processed and not show_all:
            continue
        m = view.messages.get(mid)
        if m is None:
            continue
        out.append(
            {
                "id": str(mid),
                "tree_id": str(m.tree_id),
                "text": clip(m.text),
                "author": _name(view, m.user_id) if m.user_id else None,
                "author_id": str(m.user_id) if m.user_id else None,
                "red_flags": len(m.emojis.get("red_flag", ())),
                "flagged_at": flag.created_date.isoformat()[:19].replace("T", " "),
                "processed": flag.processed,
                "hidden": view.is_hidden(m),
            }
        )
    return out


async def boards(views: Views, frame: str) -> dict:
    rows, updated = leaderboard_rows(views, frame)
    trolls = await trollboard.fn(views=views, time_frame=frame, max_count=50, enabled=None)
    return {"leaderboard": rows[:100], "trollboard": trolls["trollboard"], "updated": updated}


def users_like(views: Views, query: str, limit: int = 50) -> list:
    q = query.lower()
    found = [u for u in views.tree.users.values() if q in u.display_name.lower() or q in u.username.lower()]
    return sorted(found, key=lambda u: u.display_name.lower())[:limit]


async def suspected(views: Views) -> list[dict]:
    """The query API's suspected spammers, lowest trust first."""
    return (await suspected_spammers.fn(views=views, max_count=50))["items"]


async def log_around(views: Views, at: int, before: int = 10, after: int = 10) -> list[dict]:
    positions = list(range(max(1, at - before), at + after + 1))
    return [line(i, views.tree) for i in await events_at(views.runner, positions)]
