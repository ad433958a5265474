"""OA's cached statistics (``/stats/cached``), computed from the views. OA recomputed them
every few minutes into a table; here they are as fresh as the views, memoised per log
position, and ``POST /stats/cached/update`` has nothing left to do."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from litestar import get, post
from litestar.params import FromPath

from command_api.auth import api_client, trusted_client
from domain.errors import ErrorCode, OasstError
from projections.message_tree import MessageTreeView
from query_api.boards import tree_state_counts
from query_api.common import CaughtUp, Views


def _human_messages(view: MessageTreeView):
    """OA's filter: not deleted, accepted by review, not synthetic."""
    return (m for m in view.messages.values() if not m.deleted and m.review_result and not m.synthetic)


def _states_by_lang(view: MessageTreeView) -> list[dict]:
    counts = Counter((t.lang, t.state) for t in view.trees.values())
    return [{"lang": lang, "state": state, "count": n} for (lang, state), n in sorted(counts.items())]


def _counts(values) -> dict:
    return dict(sorted(Counter(values).items()))


STATS = {
    "human_messages_by_lang": lambda v: _counts(m.lang for m in _human_messages(v)),
    "human_messages_by_role": lambda v: _counts(m.role for m in _human_messages(v)),
    "message_trees_by_state": tree_state_counts,
    "message_trees_states_by_lang": _states_by_lang,
    "prompt_lottery_waiting_by_lang": lambda v: _counts(
        t.lang for t in v.trees.values() if t.state == "prompt_lottery_waiting"
    ),
    "users_accepted_tos": lambda v: {
        "count": sum(1 for u in v.users.values() if u.enabled and u.tos_acceptance_date is not None)
    },
}


def all_stats(views: Views) -> dict[str, dict]:
    runner, cache = views.runner, views.board_cache
    hit = cache.get("cached_stats")
    if hit and hit[0] == runner.position:
        return hit[1]
    view, now = views.tree, datetime.now(UTC).isoformat()
    stats = {name: {"name": name, "last_updated": now, "stats": compute(view)} for name, compute in STATS.items()}
    cache["cached_stats"] = (runner.position, stats)
    return stats


@get("/stats/cached", summary="OA's cached statistics, all of them (live)", guards=[api_client])
async def cached_stats_all(views: CaughtUp) -> dict:
    return {"stats_by_name": all_stats(views)}


@get("/stats/cached/{name:str}", summary="One of OA's cached statistics (live)", guards=[api_client])
async def cached_stats(views: CaughtUp, name: FromPath[str]) -> dict:
    stats = all_stats(views)
    if name not in stats:
        # OA's path parameter is an enum: an unknown name fails validation
        raise OasstError(
            f"no cached statistic {name!r}; one of {', '.join(stats)}", ErrorCode.REQUEST_VALIDATION_FAILED, 422
        )
    return stats[name]


@post(
    "/stats/cached/update",
    status_code=204,
    summary="Refresh the cached statistics (they are live: nothing to do)",
    guards=[trusted_client],
)
async def update_cached_stats() -> None:
    """Nothing to do (the guard is the whole route)."""


cached_stats_handlers = [cached_stats_all, cached_stats, update_cached_stats]
