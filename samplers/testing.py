"""A small synthetic snapshot (prompts.parquet and its manifest, no database) for
``make gpu-check``, benchmarks and tests that need threads but no history."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from samplers.job import MESSAGES

QUESTIONS = [
    "Can you tell me about the history of the printing press?",
    "How do I bake bread at home?",
    "Write a short poem about the sea and the moon.",
    "Why is water called the universal solvent?",
    "What is the capital of France?",
    "Explain recursion to a child.",
    "What does a Python function return?",
    "Please summarise the main points of the article in three sentences.",
]
ANSWERS = [
    "The printing press made books cheaper.",
    "Mix flour, water, salt and yeast, then bake.",
    "Paris.",
    "A function returns a value.",
]


def write_snapshot(root: str | Path, threads: int = 8, *, snapshot_id: str = "synthetic", seed: int = 0) -> Path:
    """``<root>/snapshots/<snapshot_id>/`` with ``threads`` threads (every third one a
    three-turn conversation), laid out as `oasst snapshot create` writes it."""
    rng = random.Random(seed)
    rows = []
    for i in range(threads):
        messages = [{"role": "user", "content": rng.choice(QUESTIONS)}]
        if i % 3 == 2:
            messages += [
                {"role": "assistant", "content": rng.choice(ANSWERS)},
                {"role": "user", "content": "Thank you! Can you say more?"},
            ]
        ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(2)]
        rows.append({"messages": messages, "message_id": ids[0], "message_tree_id": ids[1], "lang": "en"})
    schema = pa.schema(
        [("messages", MESSAGES), ("message_id", pa.string()), ("message_tree_id", pa.string()), ("lang", pa.string())]
    )
    path = Path(root) / "snapshots" / snapshot_id
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path / "prompts.parquet")
    data = (path / "prompts.parquet").read_bytes()
    manifest = {
        "id": snapshot_id,
        "position": 0,
        "policy": {"name": "synthetic"},
        "files": {"prompts.parquet": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}},
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return path
