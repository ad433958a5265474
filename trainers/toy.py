"""A generated, separable snapshot for tests and benchmarks, in the layout of
``oasst snapshot create`` (manifest.json + sft/rm/dpo/prompts parquet, same columns).

Replies are ranked by a visible marker: the best ones are polite and offer help, the worst
are curt refusals, so a reward model that learns anything should rank held-out pairs right.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from pathlib import Path

TOPICS = [
    "bread",
    "the sea",
    "paris",
    "python",
    "recursion",
    "the moon",
    "printing",
    "water",
    "music",
    "cats",
    "trees",
    "rain",
    "chess",
    "coffee",
    "volcanoes",
    "bicycles",
    "gardening",
    "the sun",
    "maps",
    "birds",
    "clocks",
    "bridges",
    "tea",
    "snow",
    "rivers",
    "robots",
    "poetry",
    "history",
    "stars",
    "football",
]
QUESTIONS = ["Tell me about {t}.", "What do you know about {t}?", "Can you explain {t} to me?", "Why is {t} important?"]
# best first: the rank of a template is its index
REPLIES = [
    [
        "Sure! Here is what I know about {t}. It is interesting and I am happy to help.",
        "Great question about {t}. Thank you for asking, I am happy to help with more.",
    ],
    ["{t} is a topic. Some people like it.", "There are many things about {t}."],
    ["No.", "I don't care about {t}.", "Ask someone else."],
]


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def toy_rows(n: int, seed: int = 0, topics: list[str] | None = None) -> dict[str, list[dict]]:
    """Rows of the four snapshot files for ``n`` prompts with three ranked replies each."""
    rng = random.Random(seed)
    topics = topics or TOPICS
    out: dict[str, list[dict]] = {"sft": [], "rm": [], "dpo": [], "prompts": []}
    for _ in range(n):
        topic = rng.choice(topics)
        prompt = [{"role": "user", "content": rng.choice(QUESTIONS).format(t=topic)}]
        replies = [rng.choice(group).format(t=topic) for group in REPLIES]
        parent, tree = _uid(rng), _uid(rng)
        ids = [_uid(rng) for _ in replies]
        answer = [{"role": "assistant", "content": text} for text in replies]
        common = {"message_tree_id": tree, "lang": "en"}
        out["prompts"].append({"messages": prompt, "message_id": parent, **common})
        out["sft"].append({"messages": prompt + answer[:1], "message_id": ids[0], **common, "rank": 0})
        out["rm"].append(
            {
                "prompt": prompt,
                "replies": replies,
                "chosen": answer[:1],
                "rejected": answer[-1:],
                "parent_id": parent,
                **common,
            }
        )
        for better in range(len(replies)):
            for worse in range(better + 1, len(replies)):
                out["dpo"].append(
                    {
                        "prompt": prompt,
                        "chosen": answer[better : better + 1],
                        "rejected": answer[worse : worse + 1],
                        "parent_id": parent,
                        **common,
                        "chosen_rank": better,
                        "rejected_rank": worse,
                    }
                )
    return out


def write_toy_snapshot(
    root: str | Path, n: int = 64, seed: int = 0, snapshot_id: str | None = None, topics: list[str] | None = None
) -> Path:
    """Write a toy snapshot folder ``root/<id>`` and return it."""
    import polars as pl

    snapshot_id = snapshot_id or f"toy-{seed}-{n}"
    path = Path(root) / snapshot_id
    path.mkdir(parents=True, exist_ok=True)
    files, counts = {}, {}
    for name, rows in toy_rows(n, seed, topics).items():
        target = path / f"{name}.parquet"
        pl.DataFrame(rows).write_parquet(target)
        data = target.read_bytes()
        files[target.name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        counts[name] = len(rows)
    manifest = {
        "id": snapshot_id,
        "position": n,
        "policy": {"name": "toy", "version": "1"},
        "files": files,
        "counts": counts,
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def toy_texts(n: int = 64, seed: int = 0) -> list[str]:
    """Texts of a toy snapshot, to train a tiny tokenizer on."""
    rows = toy_rows(n, seed)
    return [m["content"] for r in rows["sft"] for m in r["messages"]] + [t for r in rows["rm"] for t in r["replies"]]
