"""What a diligent Open-Assistant frontend submits for a task, as request bodies: shared by
tests/frontend.py and the benchmarks that act as frontends."""

from __future__ import annotations

import itertools

_ids = itertools.count()


def user(name: str) -> dict:
    return {"id": name, "display_name": name.title(), "auth_method": "local"}


def answer_for(task: dict, who: dict, frontend_id: str, *, spam: float = 0.0, ranking=None) -> dict:
    """The interaction a diligent user submits for ``task``."""
    kind = task["type"]
    if kind in ("initial_prompt", "prompter_reply", "assistant_reply"):
        n = next(_ids)
        return {
            "type": "text_reply_to_message",
            "user": who,
            "message_id": frontend_id,
            "user_message_id": f"msg-{n}",
            "text": f"{kind} number {n} by {who['id']}",
            "lang": "en",
        }
    if kind.startswith("label_"):
        labels = {"spam": spam, "lang_mismatch": 0.0}
        if "quality" in task["valid_labels"]:
            labels["quality"] = 0.75
        return {
            "type": "text_labels",
            "user": who,
            "message_id": task["message_id"],
            "task_id": task["id"],
            "text": "",
            "labels": labels,
        }
    order = ranking if ranking is not None else list(range(len(task["reply_messages"])))
    return {"type": "message_ranking", "user": who, "message_id": frontend_id, "ranking": order}
