"""How a spam mark would change the total leaderboard, from the read side: the command service's
preview says which decisions it would emit (acceptances and ranks that flip); this adds what
the leaderboard view would then count differently (``projections/leaderboard.py``'s rules):
the gifts the user gave (places in rankings) taken back or given again, the acceptances that
flip, the rankings that become good or stop being good, and the user leaving or joining the
board. What those decisions set off in turn is not counted."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from uuid import UUID

from projections.leaderboard import INDEX, LeaderboardView, leader_score
from query_api.boards import leaderboard_rows
from query_api.common import Views

FRAME = "total"


def _gift_deltas(board: LeaderboardView, user_id: UUID, sign: int, deltas: dict) -> None:
    given = board.given.get(user_id)
    for author, _hour, stat, delta in given.items if given else ():
        if stat in INDEX:
            deltas[author][stat] += int(sign * delta)


def _review_deltas(board: LeaderboardView, d: dict, deltas: dict) -> None:
    fact = board.messages.get(UUID(d["message_id"]))
    if fact is not None and fact.accepted != d["accepted"] and not fact.deleted:
        deltas[fact.author]["accepted_" + fact.kind] += 1 if d["accepted"] else -1


def _rank_deltas(board: LeaderboardView, d: dict, deltas: dict) -> None:
    best = d["ranked_message_ids"][0] if d["ranked_message_ids"] else None
    parent = board.parents.get(UUID(d["parent_id"]))
    for task_id in parent.task_ids if parent else ():
        r = board.rankings[task_id]
        good = bool(r.order) and str(r.order[0]) == best
        if good != r.good:
            deltas[r.ranker]["rankings_good"] += 1 if good else -1


def board_effect(views: Views, preview: dict) -> list[dict]:
    """Users whose total score would change: score and rank before and after, biggest change first."""
    board, tree = views.board, views.tree
    user_id, spammer = UUID(preview["user_id"]), preview["spammer"]
    deltas: dict[UUID, Counter] = defaultdict(Counter)
    if preview["decisions"]:  # nothing changes when the user already is what is asked
        _gift_deltas(board, user_id, -1 if spammer else 1, deltas)
        for d in preview["decisions"]:
            if d["type"] == "message_reviewed":
                _review_deltas(board, d, deltas)
            elif d["type"] == "ranks_computed":
                _rank_deltas(board, d, deltas)
    rows, _ = leaderboard_rows(views, FRAME)
    before = {UUID(r["user_id"]): r["leader_score"] for r in rows}
    after = dict(before)
    now = datetime.now(UTC)
    for uid, delta in deltas.items():
        user = tree.users.get(uid)
        if uid in before or (user and user.enabled and not user.deleted and user.show_on_leaderboard):
            stats = board.stats(uid, FRAME, now)
            after[uid] = leader_score({k: stats[k] + delta.get(k, 0) for k in stats})
    if preview["decisions"] and spammer:
        after.pop(user_id, None)
    elif preview["decisions"]:
        after[user_id] = leader_score(board.stats(user_id, FRAME, now))
    return _changes(views, before, after, {user_id, *deltas})


def _ranks(scores: dict[UUID, int]) -> dict[UUID, int]:
    ranked = sorted((s, u) for u, s in scores.items() if s > 0)
    ranked.sort(key=lambda x: (-x[0], str(x[1])))
    return {u: i for i, (_, u) in enumerate(ranked, start=1)}


def _changes(views: Views, before: dict, after: dict, touched: set[UUID]) -> list[dict]:
    rank_before, rank_after = _ranks(before), _ranks(after)
    out = []
    for uid in touched:
        if before.get(uid, 0) == after.get(uid, 0) and rank_before.get(uid) == rank_after.get(uid):
            continue
        user = views.tree.users.get(uid)
        out.append(
            {
                "user_id": str(uid),
                "display_name": user.display_name if user else str(uid),
                "score_before": before.get(uid),
                "score_after": after.get(uid),
                "rank_before": rank_before.get(uid),
                "rank_after": rank_after.get(uid),
            }
        )
    out.sort(key=lambda r: -abs((r["score_after"] or 0) - (r["score_before"] or 0)))
    return out
