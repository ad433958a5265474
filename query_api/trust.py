"""Trust scores, consensus under each policy, suspected spammers."""

from __future__ import annotations

import time
from typing import Annotated, Literal
from uuid import UUID

from litestar import get
from litestar.params import FromPath, FromQuery, QueryParameter

from command_api.auth import api_client, trusted_client
from domain.errors import ErrorCode, OasstError
from projections.trust import POLICY, Trust
from query_api.common import CaughtUp, Views, message_or_404

POLICIES = ("oa", "trust")


def trust_scores(views: Views) -> dict[UUID, Trust]:
    return views.trust.get(views.consensus, time.monotonic())


@get("/trust", summary="Annotator trust scores (paged, sortable)", guards=[api_client])
async def list_trust(
    views: CaughtUp,
    sort: FromQuery[Literal["score", "labels", "rankings"]] = "score",
    desc: FromQuery[bool] = False,
    offset: Annotated[int, QueryParameter(ge=0)] = 0,
    max_count: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100,
) -> dict:
    scores = sorted(trust_scores(views).values(), key=lambda t: (getattr(t, sort), str(t.user_id)), reverse=desc)
    return {"policy": POLICY, "total": len(scores), "items": [t.as_dict() for t in scores[offset : offset + max_count]]}


@get("/trust/{user_id:str}", summary="One user's trust score and its evidence", guards=[api_client])
async def get_trust(views: CaughtUp, user_id: FromPath[str]) -> dict:
    try:
        uid = UUID(user_id)
    except ValueError:
        raise OasstError(f"user {user_id} not found", ErrorCode.USER_NOT_FOUND) from None
    t = trust_scores(views).get(uid)
    if t is None:
        if uid not in views.tree.users:
            raise OasstError(f"user {user_id} not found", ErrorCode.USER_NOT_FOUND)
        t = Trust(uid, 0.5, None, 0, None, 0, False)
    return t.as_dict()


@get(
    "/consensus/messages/{message_id:str}",
    summary="Label aggregates and ranking consensus under each policy",
    guards=[api_client],
)
async def message_consensus(
    views: CaughtUp, message_id: FromPath[str], policy: FromQuery[Literal["oa", "trust"] | None] = None
) -> dict:
    m = message_or_404(views.tree, message_id)
    consensus = views.consensus
    weights = {u: t.score for u, t in trust_scores(views).items()}
    threshold = views.tree_config.acceptance_threshold(m.parent_id is None)
    out = {}
    for name in [policy] if policy else POLICIES:
        trust = weights if name == "trust" else None
        score = consensus.acceptance(m.id, trust=trust)
        out[name] = {
            "labels": consensus.label_aggregates(m.id, trust=trust),
            "acceptance": None if score is None else round(score, 6),
            "accepted": None if score is None else score > threshold,
            "ranking": [str(x) for x in consensus.ranking_consensus(m.id, trust=trust)],
        }
    facts = consensus.labels.get(m.id)
    annotators = (
        [
            {
                "user_id": str(u),
                "labels": labels,
                "review": u in facts.task_labels,
                "trust": round(weights.get(u, 0.5), 4),
                "excluded_as_spammer": u in consensus.spammers,
            }
            for u, labels in sorted(facts.by_user.items(), key=lambda x: str(x[0]))
        ]
        if facts
        else []
    )
    return {
        "message_id": str(m.id),
        "policies": out,
        "annotators": annotators,
        "reports": facts.reports if facts else 0,
    }


@get("/consensus/agreement/{label:str}", summary="Krippendorff's alpha of one label", guards=[api_client])
async def agreement(views: CaughtUp, label: FromPath[str]) -> dict:
    return views.consensus.agreement(label)


@get(
    "/admin/suspected_spammers",
    summary="Users whose work disagrees with the consensus (trusted)",
    guards=[trusted_client],
)
async def suspected_spammers(views: CaughtUp, max_count: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100) -> dict:
    users = views.tree.users
    items = []
    for t in sorted(trust_scores(views).values(), key=lambda t: (t.score, str(t.user_id))):
        if t.suspected:
            u = users.get(t.user_id)
            items.append(
                {
                    **t.as_dict(),
                    "username": u.username if u else None,
                    "display_name": u.display_name if u else None,
                    "marked_spammer": bool(u and u.spammer),
                }
            )
    return {"policy": POLICY, "items": items[:max_count]}


trust_handlers = [list_trust, get_trust, message_consensus, agreement, suspected_spammers]
