"""A snapshot's training files (messages, SFT, prompts, reward-model and DPO sets) built column
by column from the dataset's trees.

Nested columns (a conversation is a list of turns; labels and emojis are structs of lists) are
made of flat Python lists and Arrow offsets, not of one Python dict per value: polars takes
~10 s to convert the dicts of an Open-Assistant-sized snapshot, Arrow a fraction of a second
(bench/snapshot.py). The files are the same bytes either way (tests/test_training_sets.py
checks the frames against the rows a plain walk gives).
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

ROLE = {"prompter": "user", "assistant": "assistant"}
TURN = pl.Struct({"role": pl.String, "content": pl.String})
CONVERSATION = pl.List(TURN)
SCHEMAS = {
    "messages.parquet": {
        "message_id": pl.String,
        "parent_id": pl.String,
        "user_id": pl.String,
        "created_date": pl.String,
        "text": pl.String,
        "role": pl.String,
        "lang": pl.String,
        "review_count": pl.Int32,
        "review_result": pl.Boolean,
        "deleted": pl.Boolean,
        "rank": pl.Int32,
        "synthetic": pl.Boolean,
        "model_name": pl.String,
        "message_tree_id": pl.String,
        "tree_state": pl.String,
        "emojis": pl.Struct({"name": pl.List(pl.String), "count": pl.List(pl.Int32)}),
        "labels": pl.Struct({"name": pl.List(pl.String), "value": pl.List(pl.Float64), "count": pl.List(pl.Int32)}),
    },
    "sft.parquet": {
        "messages": CONVERSATION,
        "message_id": pl.String,
        "message_tree_id": pl.String,
        "lang": pl.String,
        "rank": pl.Int32,
    },
    "prompts.parquet": {
        "messages": CONVERSATION,
        "message_id": pl.String,
        "message_tree_id": pl.String,
        "lang": pl.String,
    },
    "rm.parquet": {
        "prompt": CONVERSATION,
        "replies": pl.List(pl.String),
        "chosen": CONVERSATION,
        "rejected": CONVERSATION,
        "parent_id": pl.String,
        "message_tree_id": pl.String,
        "lang": pl.String,
    },
    "dpo.parquet": {
        "prompt": CONVERSATION,
        "chosen": CONVERSATION,
        "rejected": CONVERSATION,
        "parent_id": pl.String,
        "message_tree_id": pl.String,
        "lang": pl.String,
        "chosen_rank": pl.Int32,
        "rejected_rank": pl.Int32,
    },
}
# taken from the node as they are; the rest have defaults or come from the tree
PLAIN_MESSAGE_FIELDS = [
    k
    for k in SCHEMAS["messages.parquet"]
    if k not in ("emojis", "labels", "deleted", "synthetic", "message_tree_id", "tree_state")
]
SCALAR_ARROW = {pl.String: pa.large_string(), pl.Int32: pa.int32(), pl.Boolean: pa.bool_(), pl.Float64: pa.float64()}


class Lists:
    """A column of lists of records, kept as one flat list per field plus the offsets where
    each row's list starts (Arrow's layout)."""

    def __init__(self, fields: dict) -> None:
        self.fields = fields  # name -> polars scalar type
        self.values: dict[str, list] = {name: [] for name in fields}
        self.offsets = [0]

    def add(self, *columns: list) -> None:
        """One row: the values of each field, as parallel lists."""
        for name, values in zip(self.fields, columns, strict=True):
            self.values[name] += values
        self.offsets.append(len(self.values[next(iter(self.fields))]))

    def _list(self, name: str) -> pa.Array:
        values = pa.array(self.values[name], type=SCALAR_ARROW[self.fields[name]])
        return pa.LargeListArray.from_arrays(pa.array(self.offsets, type=pa.int64()), values)

    def struct_of_lists(self) -> pa.Array:
        """{field: [values]} per row (labels, emojis)."""
        return pa.StructArray.from_arrays([self._list(n) for n in self.fields], list(self.fields))

    def list_of_structs(self) -> pa.Array:
        """[{field: value}] per row (a conversation's turns)."""
        types = [SCALAR_ARROW[t] for t in self.fields.values()]
        records = pa.StructArray.from_arrays(
            [pa.array(self.values[n], type=t) for n, t in zip(self.fields, types, strict=True)], list(self.fields)
        )
        return pa.LargeListArray.from_arrays(pa.array(self.offsets, type=pa.int64()), records)

    def strings(self) -> pa.Array:
        """[value] per row, for a one-field column (replies)."""
        return self._list(next(iter(self.fields)))


class Frame:
    """One training file's columns: plain values in lists, nested ones in ``Lists``."""

    def __init__(self, schema: dict) -> None:
        self.schema = schema
        self.columns: dict[str, list | Lists] = {}
        for name, dtype in schema.items():
            if dtype == CONVERSATION:
                self.columns[name] = Lists({"role": pl.String, "content": pl.String})
            elif isinstance(dtype, pl.Struct):
                self.columns[name] = Lists({f.name: f.dtype.inner for f in dtype.fields})
            elif isinstance(dtype, pl.List):
                self.columns[name] = Lists({name: dtype.inner})
            else:
                self.columns[name] = []
        self._plain = [(name, c.append) for name, c in self.columns.items() if not isinstance(c, Lists)]
        self._nested = [(name, c.add) for name, c in self.columns.items() if isinstance(c, Lists)]

    def add(self, **values) -> None:
        """One row: a plain value, or for a nested column the parallel lists of its fields."""
        for name, append in self._plain:
            append(values.get(name))
        for name, add in self._nested:
            add(*values[name])

    def frame(self) -> pl.DataFrame:
        arrays = {}
        for name, dtype in self.schema.items():
            column = self.columns[name]
            if not isinstance(column, Lists):
                arrays[name] = pa.array(column, type=SCALAR_ARROW[dtype])
            elif dtype == CONVERSATION:
                arrays[name] = column.list_of_structs()
            elif isinstance(dtype, pl.Struct):
                arrays[name] = column.struct_of_lists()
            else:
                arrays[name] = column.strings()
        return pl.DataFrame(pl.from_arrow(pa.table(arrays)), schema=self.schema)


def _walk(item: dict):
    """(node, thread of nodes root..node) in depth-first order."""
    stack = [(item["prompt"], [item["prompt"]])]
    while stack:
        n, thread = stack.pop()
        yield n, thread
        stack.extend((c, [*thread, c]) for c in reversed(n.get("replies", ())))


def _turns(thread: list[dict]) -> tuple[list, list]:
    return [ROLE[n["role"]] for n in thread], [n["text"] for n in thread]


def _reply(n: dict) -> tuple[list, list]:
    return ["assistant"], [n["text"]]


def _message_row(frames: dict, n: dict, tree_id: str, state: str) -> None:
    emojis, labels = n.get("emojis", {}), n.get("labels", {})
    frames["messages.parquet"].add(
        **{k: n.get(k) for k in PLAIN_MESSAGE_FIELDS},
        deleted=n.get("deleted", False),
        synthetic=n.get("synthetic", False),
        message_tree_id=tree_id,
        tree_state=state,
        emojis=(list(emojis), list(emojis.values())),
        labels=(list(labels), [v["value"] for v in labels.values()], [v["count"] for v in labels.values()]),
    )


def _ranked_rows(frames: dict, n: dict, thread: list[dict], base: dict) -> None:
    """The reward-model row and the DPO pairs of a prompter message whose replies were ranked."""
    ranked = sorted(
        (c for c in n.get("replies", ()) if c["role"] == "assistant" and c.get("rank") is not None),
        key=lambda c: c["rank"],
    )
    if len(ranked) < 2:
        return
    prompt = _turns(thread)
    frames["rm.parquet"].add(
        prompt=prompt,
        replies=([c["text"] for c in ranked],),
        chosen=_reply(ranked[0]),
        rejected=_reply(ranked[-1]),
        parent_id=n["message_id"],
        **base,
    )
    for i in range(len(ranked)):
        for j in range(i + 1, len(ranked)):
            frames["dpo.parquet"].add(
                prompt=prompt,
                chosen=_reply(ranked[i]),
                rejected=_reply(ranked[j]),
                parent_id=n["message_id"],
                chosen_rank=ranked[i]["rank"],
                rejected_rank=ranked[j]["rank"],
                **base,
            )


def training_frames(items: list[dict], sft_max_rank: int | None = None) -> dict[str, pl.DataFrame]:
    """Every training file's frame, rows in the trees' depth-first order."""
    frames = {name: Frame(schema) for name, schema in SCHEMAS.items()}
    for item in items:
        tree_id, state = item["message_tree_id"], item["tree_state"]
        for n, thread in _walk(item):
            _message_row(frames, n, tree_id, state)
            base = {"message_tree_id": tree_id, "lang": n["lang"]}
            if n["role"] == "assistant":
                if sft_max_rank is None or n.get("rank") is None or n["rank"] < sft_max_rank:
                    frames["sft.parquet"].add(
                        messages=_turns(thread), message_id=n["message_id"], rank=n.get("rank"), **base
                    )
                continue
            frames["prompts.parquet"].add(messages=_turns(thread), message_id=n["message_id"], **base)
            _ranked_rows(frames, n, thread, base)
    return {name: f.frame() for name, f in frames.items()}
