"""The training files built column by column (projections/training_sets.py) hold exactly the rows
a plain walk of the trees gives, row dicts turned into frames by polars (how they were built
before): the same values, and parquet files of the same bytes, over random trees."""

from __future__ import annotations

import io

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.training_sets import ROLE, SCHEMAS, training_frames

LABELS = ("spam", "quality", "toxicity", "humor")


def _walk(item):
    stack = [(item["prompt"], [item["prompt"]])]
    while stack:
        n, thread = stack.pop()
        yield n, thread
        stack.extend((c, [*thread, c]) for c in reversed(n.get("replies", ())))


def _turns(thread):
    return [{"role": ROLE[n["role"]], "content": n["text"]} for n in thread]


def reference_rows(items, sft_max_rank=None):
    """The rows, one dict each, as the snapshot code wrote them before it built columns."""
    rows = {name: [] for name in SCHEMAS}
    for item in items:
        tree_id, state = item["message_tree_id"], item["tree_state"]
        for n, thread in _walk(item):
            emojis, labels = n.get("emojis", {}), n.get("labels", {})
            message = {k: n.get(k) for k in SCHEMAS["messages.parquet"]}
            message.update(
                deleted=n.get("deleted", False),
                synthetic=n.get("synthetic", False),
                message_tree_id=tree_id,
                tree_state=state,
                emojis={"name": list(emojis), "count": list(emojis.values())},
                labels={
                    "name": list(labels),
                    "value": [v["value"] for v in labels.values()],
                    "count": [v["count"] for v in labels.values()],
                },
            )
            rows["messages.parquet"].append(message)
            base = {"message_tree_id": tree_id, "lang": n["lang"]}
            if n["role"] == "assistant":
                if sft_max_rank is None or n.get("rank") is None or n["rank"] < sft_max_rank:
                    rows["sft.parquet"].append(
                        {"messages": _turns(thread), "message_id": n["message_id"], "rank": n.get("rank"), **base}
                    )
                continue
            rows["prompts.parquet"].append({"messages": _turns(thread), "message_id": n["message_id"], **base})
            ranked = sorted(
                (c for c in n.get("replies", ()) if c["role"] == "assistant" and c.get("rank") is not None),
                key=lambda c: c["rank"],
            )
            if len(ranked) < 2:
                continue
            reply = [[{"role": "assistant", "content": c["text"]}] for c in ranked]
            rows["rm.parquet"].append(
                {
                    "prompt": _turns(thread),
                    "replies": [c["text"] for c in ranked],
                    "chosen": reply[0],
                    "rejected": reply[-1],
                    "parent_id": n["message_id"],
                    **base,
                }
            )
            for i in range(len(ranked)):
                for j in range(i + 1, len(ranked)):
                    rows["dpo.parquet"].append(
                        {
                            "prompt": _turns(thread),
                            "chosen": reply[i],
                            "rejected": reply[j],
                            "parent_id": n["message_id"],
                            "chosen_rank": ranked[i]["rank"],
                            "rejected_rank": ranked[j]["rank"],
                            **base,
                        }
                    )
    return rows


texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
ids = st.text(alphabet="0123456789abcdef", min_size=4, max_size=8)


@st.composite
def nodes(draw, role: str, depth: int):
    """A message node as Dataset.tree_item writes it: optional fields left out when empty."""
    n = {"message_id": draw(ids), "text": draw(texts), "role": role, "lang": draw(st.sampled_from(["en", "de", "es"]))}
    n["created_date"] = f"2023-0{draw(st.integers(1, 9))}-01T00:00:00+00:00"
    for key, values in (
        ("parent_id", ids),
        ("user_id", ids),
        ("review_count", st.integers(0, 5)),
        ("review_result", st.booleans()),
        ("deleted", st.booleans()),
        ("synthetic", st.booleans()),
        ("model_name", st.sampled_from(["m1", "m2"])),
        ("rank", st.integers(0, 3)),
    ):
        if draw(st.booleans()):
            n[key] = draw(values)
    if draw(st.booleans()):
        n["emojis"] = draw(st.dictionaries(st.sampled_from(["+1", "-1", "red_flag"]), st.integers(1, 9), min_size=1))
    if draw(st.booleans()):
        n["labels"] = {
            name: {"value": draw(st.floats(0, 1)), "count": draw(st.integers(1, 5))}
            for name in draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=4, unique=True))
        }
    if depth:
        child = "assistant" if role == "prompter" else "prompter"
        replies = draw(st.lists(nodes(child, depth - 1), max_size=3))
        if replies:
            n["replies"] = replies
    return n


trees = st.lists(
    st.fixed_dictionaries(
        {
            "message_tree_id": ids,
            "tree_state": st.sampled_from(["ready_for_export", "growing"]),
            "prompt": nodes("prompter", 3),
        }
    ),
    max_size=4,
)


def _parquet(frame: pl.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.write_parquet(out, compression="zstd", statistics=False)
    return out.getvalue()


@settings(max_examples=60, deadline=None)
@given(items=trees, sft_max_rank=st.sampled_from([None, 1, 2]))
def test_frames_hold_the_rows_of_a_plain_walk(items, sft_max_rank):
    frames = training_frames(items, sft_max_rank)
    rows = reference_rows(items, sft_max_rank)
    assert set(frames) == set(rows)
    for name, schema in SCHEMAS.items():
        expected = pl.DataFrame(rows[name], schema=schema, orient="row" if not rows[name] else None)
        assert frames[name].schema == expected.schema
        assert frames[name].to_dicts() == expected.to_dicts(), name
        assert _parquet(frames[name]) == _parquet(expected), name


def test_a_ranked_prompt_gives_reward_and_pairs_rows():
    def reply(i: int, rank: int) -> dict:
        return {"message_id": f"r{i}", "text": f"reply {i}", "role": "assistant", "lang": "en", "rank": rank}

    prompt = {
        "message_id": "p",
        "text": "hi",
        "role": "prompter",
        "lang": "en",
        "replies": [reply(1, 1), reply(2, 0), reply(3, 2)],
    }
    frames = training_frames([{"message_tree_id": "t", "tree_state": "ready_for_export", "prompt": prompt}])
    rm = frames["rm.parquet"].to_dicts()
    assert rm[0]["replies"] == ["reply 2", "reply 1", "reply 3"]
    assert rm[0]["chosen"] == [{"role": "assistant", "content": "reply 2"}]
    dpo = frames["dpo.parquet"]
    assert dpo.height == 3
    assert dpo.select("chosen_rank", "rejected_rank").rows() == [(0, 1), (0, 2), (1, 2)]
    assert frames["sft.parquet"].get_column("messages").to_list()[0] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "reply 1"},
    ]
