"""From generated samples to ranking-only oasst trees, posted through the import route.

As Open-Assistant did (model_eval/manual/create_synth_import.py): per thread, exact
duplicates go, a thread with fewer than two unique replies goes, at most five replies are
kept; the thread is copied into a new tree in ``backlog_ranking`` with the replies as
synthetic assistant siblings under its last prompter message. Every id is derived from
the run and the content (uuid5), so posting the same completions again adds nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from uuid import NAMESPACE_URL, UUID, uuid5

NAMESPACE = uuid5(NAMESPACE_URL, "oasst-data-engine/samplers")
MAX_REPLIES = 5  # OA's --num-replies: what a ranker is shown at most
IMPORT_STATE = "backlog_ranking"


def tree_id_for(run_key: str, message_id: str) -> str:
    """The new tree of one thread in one sampling run (run_key names snapshot, model, configs, seed...)."""
    return str(uuid5(NAMESPACE, f"{run_key}|{message_id}"))


def thread_ids(tree_id: str, length: int) -> list[str]:
    """Ids of the copied thread's messages: the root's is the tree's (as in OA)."""
    return [tree_id, *(str(uuid5(UUID(tree_id), f"message:{i}")) for i in range(1, length))]


def reply_id(parent_id: str, model_name: str, text: str) -> str:
    return str(uuid5(UUID(parent_id), f"{model_name}\n{text}"))


def select_replies(samples: list[dict], *, seed: int, key: str, limit: int = MAX_REPLIES) -> tuple[list[dict], dict]:
    """The replies kept for one thread from its samples (dicts with ``text``, already
    cleaned, in generation order): non-empty, first of each text, at most ``limit``
    (a seeded draw, order kept), none at all when fewer than two are unique."""
    seen: set[str] = set()
    unique = []
    for s in samples:
        if s["text"] and s["text"] not in seen:
            seen.add(s["text"])
            unique.append(s)
    stats = {
        "empty": sum(1 for s in samples if not s["text"]),
        "duplicates": sum(1 for s in samples if s["text"]) - len(unique),
    }
    if len(unique) < 2:
        return [], stats
    if len(unique) > limit:
        keep = sorted(random.Random(f"{seed}|{key}").sample(range(len(unique)), limit))
        unique = [unique[i] for i in keep]
    return unique, stats


def build_tree(rows: list[dict]) -> dict:
    """One oasst tree (export format) from the completions rows of one thread."""
    first = rows[0]
    messages, lang = first["messages"], first["lang"]
    ids = thread_ids(first["tree_id"], len(messages))
    replies = [
        {
            "message_id": r["reply_id"],
            "parent_id": ids[-1],
            "text": r["text"],
            "role": "assistant",
            "lang": lang,
            "review_count": 0,
            "review_result": True,
            "synthetic": True,
            "model_name": r["model_name"],
            "replies": [],
        }
        for r in rows
    ]
    node = None
    for i in reversed(range(len(messages))):
        m = messages[i]
        node = {
            "message_id": ids[i],
            "parent_id": ids[i - 1] if i else None,
            "text": m["content"],
            "role": "prompter" if m["role"] == "user" else "assistant",
            "lang": lang,
            "review_count": 0,
            "review_result": True,
            "synthetic": False,
            "model_name": None,
            "replies": [node] if node else replies,
        }
    return {"message_tree_id": first["tree_id"], "tree_state": IMPORT_STATE, "prompt": node}


def build_trees(rows: Iterable[dict]) -> list[dict]:
    """Trees from completions rows, grouped by tree_id in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["tree_id"], []).append(r)
    return [build_tree(g) for g in groups.values()]


def post_trees(
    trees: list[dict],
    *,
    origin: str,
    api_url: str | None = None,
    api_key: str | None = None,
    client=None,
    batch_size: int = 50,
) -> dict:
    """POST the trees to ``{api_url}/admin/import`` in batches; ``client`` is any
    httpx-compatible client (a base URL of its own lets api_url be left out)."""
    import httpx

    url = f"{(api_url or '/api/v1').rstrip('/')}/admin/import"
    headers = {"X-API-Key": api_key} if api_key else {}
    own = client is None
    client = client or httpx.Client(timeout=120)
    totals = {"trees_imported": 0, "trees_skipped": 0, "messages_imported": 0, "requests": 0}
    try:
        for start in range(0, len(trees), batch_size):
            r = client.post(url, json={"origin": origin, "items": trees[start : start + batch_size]}, headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"import of trees {start}..{start + batch_size} failed: {r.status_code} {r.text}")
            for k, v in r.json().items():
                totals[k] = totals.get(k, 0) + v
            totals["requests"] += 1
    finally:
        if own:
            client.close()
    return totals
