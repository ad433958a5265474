"""Trust scores, consensus under each policy, suspected spammers."""

from __future__ import annotations

import time
from typing import Annotated, Literal
from uuid import UUID

from litestar import Request, get
from litestar.params import FromPath, FromQuery, QueryParameter

from domain.errors import ErrorCode, OasstError
from projections.trust import POLICY, Trust
from query_api.common import message_or_404, tree_view, views

POLICIES = ("oa", "trust")


def _consensus(request: Request):
    return request.app.state.runner.by_name["consensus"]


def trust_scores(request: Request) -> dict[UUID, Trust]:
    return request.app.state.trust.get(_consensus(request), time.monotonic())


@get("/trust", summary="Annotator trust scores (paged, sortable)")
async def list_trust(
    request: Request, sort: FromQuery[Literal["score", "labels", "rankings"]] = "score",
    desc: FromQuery[bool] = False, offset: Annotated[int, QueryParameter(ge=0)] = 0,
    max_count: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100,
) -> dict:
    await views(request)
    scores = sorted(trust_scores(request).values(), key=lambda t: (getattr(t, sort), str(t.user_id)), reverse=desc)
    return {"policy": POLICY, "total": len(scores), "items": [t.as_dict() for t in scores[offset:offset + max_count]]}


@get("/trust/{user_id:str}", summary="One user's trust score and its evidence")
async def get_trust(request: Request, user_id: FromPath[str]) -> dict:
    await views(request)
    try:
        uid = UUID(user_id)
    except ValueError:
        raise OasstError(f"user {user_id} not found", ErrorCode.USER_NOT_FOUND) from None
    t = trust_scores(request).get(uid)
    if t is None:
        if uid not in tree_view(request.app.state.runner).users:
            raise OasstError(f"user {user_id} not found", ErrorCode.USER_NOT_FOUND)
        t = Trust(uid, 0.5, None, 0, None, 0, False)
    return t.as_dict()


@get("/consensus/messages/{message_id:str}", summary="Label aggregates and ranking consensus under each policy")
async def message_consensus(request: Request, message_id: FromPath[str],
                            policy: FromQuery[Literal["oa", "trust"] | None] = None) -> dict:
    _, runner = await views(request)
    m = message_or_404(tree_view(runner), message_id)
    consensus = _consensus(request)
    weights = {u: t.score for u, t in trust_scores(request).items()}
    settings = request.app.state.settings.tree
    threshold = settings.acceptance_threshold(m.parent_id is None)
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
    annotators = [
        {"user_id": str(u), "labels": labels, "review": u in facts.task_labels, "trust": round(weights.get(u, 0.5), 4),
         "excluded_as_spammer": u in consensus.spammers}
        for u, labels in sorted(facts.by_user.items(), key=lambda x: str(x[0]))
    ] if facts else []
    return {"message_id": str(m.id), "policies": out, "annotators": annotators,
            "reports": facts.reports if facts else 0}


@get("/consensus/agreement/{label:str}", summary="Krippendorff's alpha of one label")
async def agreement(request: Request, label: FromPath[str]) -> dict:
    await views(request)
    return _consensus(request).agreement(label)


@get("/admin/suspected_spammers", summary="Users whose work disagrees with the consensus (trusted)")
async def suspected_spammers(request: Request, max_count: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100) -> dict:
    _, runner = await views(request, trusted=True)
    users = tree_view(runner).users
    items = []
    for t in sorted(trust_scores(request).values(), key=lambda t: (t.score, str(t.user_id))):
        if t.suspected:
            u = users.get(t.user_id)
            items.append({**t.as_dict(), "username": u.username if u else None,
                          "display_name": u.display_name if u else None, "marked_spammer": bool(u and u.spammer)})
    return {"policy": POLICY, "items": items[:max_count]}


trust_handlers = [list_trust, get_trust, message_consensus, agreement, suspected_spammers]
