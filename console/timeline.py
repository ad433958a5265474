"""Events as a moderator reads them: one line each, with who did it and what it is about.
``items`` are the query API's history items (``query_api.history.events_at``)."""

from __future__ import annotations

from uuid import UUID

from projections.message_tree import MessageTreeView

CLIP = 80  # characters of a message's text shown in a line


def clip(text: str, n: int = CLIP) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _labels(e: dict) -> str:
    values = ", ".join(f"{k}={v:g}" for k, v in sorted(e["labels"].items()))
    return f"{e['kind']} labels: {values or '(none)'}"


def _reviewed(e: dict) -> str:
    verdict = "accepted" if e["accepted"] else "rejected"
    return f"review: {verdict} (score {e['score']:.2f}, {e['review_count']} reviews)"


def _state(e: dict) -> str:
    return f"state {e['old_state'] or '–'} → {e['new_state']} ({e['reason']})"


SUMMARIES = {
    "initial_prompt_submitted": lambda e: f"prompt: «{clip(e['text'])}»",
    "reply_submitted": lambda e: f"{e['role']} reply: «{clip(e['text'])}»",
    "message_edited": lambda e: f"edited: «{clip(e['text'])}»",
    "labels_submitted": _labels,
    "message_reviewed": _reviewed,
    "ranking_submitted": lambda e: (
        f"ranked {len(e['ranked_message_ids'])} replies" + (" (not rankable)" if e.get("not_rankable") else "")
    ),
    "ranks_computed": lambda e: f"ranks computed from {e['ranking_count']} rankings",
    "tree_state_changed": _state,
    "emoji_added": lambda e: f"reaction {e['emoji']} added",
    "emoji_removed": lambda e: f"reaction {e['emoji']} removed",
    "message_deleted": lambda e: f"message deleted ({e['reason']})",
    "task_assigned": lambda e: f"task {e['task_type']} assigned",
    "task_skipped": lambda e: f"task skipped ({e.get('reason') or 'no reason'})",
    "user_marked_spammer": lambda e: "marked spammer" + (" and banned" if e.get("ban") else ""),
    "user_seen": lambda e: f"user {e['display_name']} seen",
    "user_renamed": lambda e: f"renamed to {e['display_name']}",
}
# the tree manager's decisions: emitted without an acting user, in reaction to another event
DECISIONS = {"message_reviewed", "tree_state_changed", "ranks_computed", "task_expired"}
# what an event is about, in the order a line links it
SUBJECT_FIELDS = ("message_id", "parent_id", "tree_id", "subject_id")


def line(item: dict, view: MessageTreeView) -> dict:
    """One history item as a line of a timeline."""
    e = item["event"]
    summary = SUMMARIES.get(item["type"])
    actor = item["actor"]["user_id"]
    user = view.users.get(UUID(actor)) if actor else None
    return {
        "position": item["position"],
        "at": item["at"][:19].replace("T", " "),
        "type": item["type"],
        "text": summary(e) if summary else item["type"].replace("_", " "),
        "actor_id": actor,
        "actor": user.display_name if user else _actor_without_user(item),
        "subjects": [(f, e[f]) for f in SUBJECT_FIELDS if e.get(f)],
        "marker": str(e.get("emoji", "")).startswith("_"),  # a skip marker, not a reaction
    }


def _actor_without_user(item: dict) -> str:
    if item["type"] in DECISIONS:
        return "tree manager"
    client = item["actor"]["api_client_id"]
    return f"API client {client[:8]}" if client else "system"
