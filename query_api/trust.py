"""Trust scores, consensus under each policy, suspected spammers. Trust routes answer under
``trust-v2`` unless ``?policy=trust-v1`` asks for the older policy."""

from __future__ import annotations

import time
from typing import Annotated, Literal
from uuid import UUID

from litestar import get
from litestar.params import FromPath, FromQuery, QueryParameter

from command_api.auth import api_client, trusted_client
from domain.errors import ErrorCode, OasstError
from projections import trust_v2
from projections.trust import Trust
from query_api.common import CaughtUp, Views, message_or_404

POLICIES = ("oa", "trust", "trust-v2")  # consensus: OA's rule, trust-v1's weights, trust-v2's posteriors
TrustPolicy = Literal["trust-v1", "trust-v2"]


def trust_scores(views: Views, policy: str = trust_v2.POLICY) -> dict[UUID, Trust]:
    return views.trust.get(views.consensus, time.monotonic(), policy)


@get("/trust", summary="Annotator trust scores (paged, sortable)", guards=[api_client])
async def list_trust(
    views: CaughtUp,
    sort: FromQuery[Literal["score", "labels", "rankings"]] = "score",
    desc: FromQuery[bool] = False,
    offset: Annotated[int, QueryParameter(ge=0)] = 0,
    max_count: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100,
    policy: FromQuery[TrustPolicy] = trust_v2.POLICY,
) -> dict:
    scores = sorted(
        trust_scores(views, policy).values(), key=lambda t: (getattr(t, sort), str(t.user_id)), reverse=desc
    )
    return {"policy": policy, "total": len(scores), "items": [t.as_dict() for t in scores[offset : offset + max_count]]}


@get("/trust/{user_id:str}", summary="One user's trust score and its evidence", guards=[api_client])
async def get_trust(views: CaughtUp, user_id: FromPath[str], policy: FromQuery[TrustPolicy] = trust_v2.POLICY) -> dict:
    try:
        uid = UUID(user_id)
    except ValueError:
        raise OasstError(f"user {user_id} not found", ErrorCode.USER_NOT_FOUND) from None
    t = trust_scores(views, policy).get(uid)
    if t is None:
        if uid not in views.tree.users:
            raise OasstError(f"user {user_id} not found", ErrorCode.USER_NOT_FOUND)
        t = (Trust if policy == "trust-v1" else trust_v2.Trust)(uid, 0.5, None, 0, None, 0, False)
    return t.as_dict()


@get(
    "/consensus/messages/{message_id:str}",
    summary="Label aggregates and ranking consensus under each policy",
    guards=[api_client],
)
async def message_consensus(
    views: CaughtUp, message_id: FromPath[str], policy: FromQuery[Literal["oa", "trust", "trust-v2"] | None] = None
) -> dict:
    m = message_or_404(views.tree, message_id)
    consensus = views.consensus
    weights = views.trust.weights(consensus, time.monotonic(), "trust-v1")
    threshold = views.tree_config.acceptance_threshold(m.parent_id is None)
    out = {}
    for name in [policy] if policy else POLICIES:
        if name == "trust-v2":
            out[name] = _posterior_consensus(views, m.id)
            continue
        trust = weights if name == "trust" else None
        score = consensus.acceptance(m.id, trust=trust)
        out[name] = {
            "labels": consensus.label_aggregates(m.id, trust=trust),
            "acceptance": None if score is None else round(score, 6),
            "accepted": None if score is None else score > threshold,
            "ranking": [str(x) for x in consensus.ranking_consensus(m.id, trust=trust)],
        }
    facts = consensus.labels.get(m.id)
    scores = trust_scores(views)
    annotators = (
        [
            {
                "user_id": str(u),
                "labels": labels,
                "review": u in facts.task_labels,
                "trust": round(scores[u].score if u in scores else 0.5, 4),  # under the default policy
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


def _posterior_consensus(views: Views, message_id: UUID) -> dict:
    """trust-v2: acceptance is P(not spam | votes) less the lang_mismatch mean (accepted above 0.5)."""
    model = views.trust.fit(views.consensus, time.monotonic(), trust_v2.POLICY)
    score = model.acceptance(message_id)
    return {
        "labels": views.consensus.label_aggregates(message_id, trust=model.weights),
        "acceptance": None if score is None else round(score, 6),
        "accepted": model.accepted(message_id),
        "ranking": [str(x) for x in model.ranking_consensus(message_id)],
    }


@get("/consensus/agreement/{label:str}", summary="Krippendorff's alpha of one label", guards=[api_client])
async def agreement(views: CaughtUp, label: FromPath[str]) -> dict:
    return views.consensus.agreement(label)


@get(
    "/admin/suspected_spammers",
    summary="Users whose work disagrees with the consensus (trusted)",
    guards=[trusted_client],
)
async def suspected_spammers(
    views: CaughtUp,
    max_count: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100,
    policy: FromQuery[TrustPolicy] = trust_v2.POLICY,
) -> dict:
    users = views.tree.users
    items = []
    for t in sorted(trust_scores(views, policy).values(), key=lambda t: (t.score, str(t.user_id))):
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
    return {"policy": policy, "items": items[:max_count]}


trust_handlers = [list_trust, get_trust, message_consensus, agreement, suspected_spammers]
