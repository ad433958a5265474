"""Open-Assistant's file format (docs/oa-rules.md, "Export format"): reading oasst files for
import, and writing message nodes for export and snapshots.

A line is a tree ``{message_tree_id, tree_state, prompt: node, origin?}`` or a flat
message (a node with ``message_tree_id``, possibly in the Hugging Face layout where
emojis and labels are columns of lists). Files are JSON Lines, gzip when named ``.gz``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, get_args
from uuid import UUID

from domain.events import ImportedMessage, TreeState

TREE_STATES = set(get_args(TreeState))
ROLES = ("prompter", "assistant")


class FormatError(ValueError):
    """A file that is not a valid oasst file; nothing of it is imported."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class ParsedTree:
    tree_id: UUID
    state: str
    lang: str
    origin: str | None
    messages: list[ImportedMessage]  # parents first


# --- reading -------------------------------------------------------------------------


def open_text(path: str | Path, mode: str = "rt") -> IO:
    """A JSON Lines file, gzip when its name ends in .gz (written without a timestamp or
    file name in the gzip header, so the same content gives the same bytes)."""
    path = Path(path)
    if not path.name.endswith(".gz"):
        return open(path, mode, encoding="utf-8", newline="\n")
    if "r" in mode:
        return gzip.open(path, mode, encoding="utf-8")
    raw = open(path, "wb")
    return io.TextIOWrapper(gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0), encoding="utf-8", newline="\n")


def read_lines(path: str | Path) -> Iterator[tuple[int, dict]]:
    try:
        with open_text(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    raise FormatError(f"line {number}", f"not JSON ({e.msg})") from None
                if not isinstance(item, dict):
                    raise FormatError(f"line {number}", "a line must be a JSON object")
                yield number, item
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise FormatError(str(path), f"cannot be read ({e})") from None


def parse_items(items: Iterable[tuple[int, dict]]) -> list[ParsedTree]:
    """Trees and flat messages (grouped into trees by message_tree_id), validated."""
    trees: list[ParsedTree] = []
    flat: dict[str, list[tuple[int, dict]]] = {}
    for number, item in items:
        if "prompt" in item:
            trees.append(_tree_from_nested(number, item))
        elif "message_id" in item:
            flat.setdefault(str(item.get("message_tree_id") or item["message_id"]), []).append((number, item))
        else:
            raise FormatError(f"line {number}", "neither a tree (prompt) nor a message (message_id)")
    for rows in flat.values():
        trees.append(_tree_from_flat(rows))
    seen: set[UUID] = set()
    for t in trees:
        for m in t.messages:
            if m.message_id in seen:
                raise FormatError(f"message {m.message_id}", "appears twice")
            seen.add(m.message_id)
    return trees


def _uuid(value, where: str, what: str) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise FormatError(where, f"{what} {value!r} is not a UUID") from None


def _counts(value, where: str, what: str) -> dict:
    """{name: x} or the Hugging Face layout {name: [...], <x>: [...]}."""
    if not value:
        return {}
    if not isinstance(value, dict):
        raise FormatError(where, f"{what} must be an object")
    if isinstance(value.get("name"), list):
        keys = [k for k in value if k != "name"]
        return {
            n: tuple(value[k][i] for k in keys) if len(keys) > 1 else value[keys[0]][i]
            for i, n in enumerate(value["name"])
        }
    return value


def _message(item: dict, parent: UUID | None, where: str) -> ImportedMessage:
    mid = _uuid(item.get("message_id"), where, "message_id")
    where = f"{where} (message {mid})"
    text, role, lang = item.get("text"), item.get("role"), item.get("lang") or "en"
    if not isinstance(text, str) or not text.strip():
        raise FormatError(where, "text must be a non-empty string")
    if role not in ROLES:
        raise FormatError(where, f"role must be one of {ROLES}, not {role!r}")
    if parent is None and role != "prompter":
        raise FormatError(where, "a tree's first message must be a prompter message")
    emojis = {str(k): int(v) for k, v in _counts(item.get("emojis"), where, "emojis").items()}
    labels = {}
    for name, v in _counts(item.get("labels"), where, "labels").items():
        value, count = (v["value"], v["count"]) if isinstance(v, dict) else v
        labels[str(name)] = (float(value), int(count))
    created = item.get("created_date")
    try:
        created_date = datetime.fromisoformat(created) if created else None
    except (TypeError, ValueError):
        raise FormatError(where, f"created_date {created!r} is not ISO 8601") from None
    try:
        return ImportedMessage(
            message_id=mid,
            parent_id=parent,
            text=text,
            role=role,
            lang=str(lang),
            created_date=created_date,
            user_ref=None if item.get("user_id") is None else str(item["user_id"]),
            review_count=int(item.get("review_count") or 0),
            review_result=item.get("review_result"),
            deleted=bool(item.get("deleted", False)),
            rank=item.get("rank"),
            synthetic=bool(item.get("synthetic", False)),
            model_name=item.get("model_name"),
            emojis=emojis,
            labels=labels,
        )
    except (TypeError, ValueError) as e:
        raise FormatError(where, str(e)) from None


def _state(value, where: str, messages: list[ImportedMessage]) -> str:
    if value is None:  # OA's importer: trees without ranks wait in the ranking backlog
        children: dict[UUID, list[ImportedMessage]] = {}
        for m in messages:
            if m.parent_id:
                children.setdefault(m.parent_id, []).append(m)
        unranked = any(len(c) > 1 and all(m.rank is None for m in c) for c in children.values())
        return "backlog_ranking" if unranked else "ready_for_export"
    if value not in TREE_STATES:
        raise FormatError(where, f"tree_state {value!r} is not one of {sorted(TREE_STATES)}")
    return value


def _tree_from_nested(number: int, item: dict) -> ParsedTree:
    where = f"line {number}"
    messages: list[ImportedMessage] = []
    stack = [(item["prompt"], None)]
    while stack:
        node, parent = stack.pop()
        if not isinstance(node, dict):
            raise FormatError(where, "a message node must be an object")
        m = _message(node, parent, where)
        if (
            node.get("parent_id") is not None
            and parent is not None
            and _uuid(node["parent_id"], where, "parent_id") != parent
        ):
            raise FormatError(where, f"message {m.message_id} names parent {node['parent_id']} but sits under {parent}")
        messages.append(m)
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            raise FormatError(where, "replies must be a list")
        stack.extend((r, m.message_id) for r in reversed(replies))
    tree_id = _uuid(item.get("message_tree_id") or messages[0].message_id, where, "message_tree_id")
    return ParsedTree(
        tree_id, _state(item.get("tree_state"), where, messages), messages[0].lang, item.get("origin"), messages
    )


def _tree_from_flat(rows: list[tuple[int, dict]]) -> ParsedTree:
    first_line = rows[0][0]
    by_id = {str(item["message_id"]): (n, item) for n, item in rows}
    roots = [(n, item) for n, item in rows if not item.get("parent_id")]
    if len(roots) != 1:
        raise FormatError(f"line {first_line}", f"tree {rows[0][1].get('message_tree_id')} has {len(roots)} roots")
    children: dict[str, list[tuple[int, dict]]] = {}
    for n, item in rows:
        if item.get("parent_id"):
            if str(item["parent_id"]) not in by_id:
                raise FormatError(f"line {n}", f"parent {item['parent_id']} is not in the file")
            children.setdefault(str(item["parent_id"]), []).append((n, item))
    messages: list[ImportedMessage] = []
    stack = [(roots[0], None)]
    while stack:
        (n, item), parent = stack.pop()
        m = _message(item, parent, f"line {n}")
        messages.append(m)
        stack.extend((c, m.message_id) for c in reversed(children.get(str(item["message_id"]), [])))
    if len(messages) != len(rows):
        raise FormatError(f"line {first_line}", "messages that no path from the root reaches (a cycle)")
    root = roots[0][1]
    tree_id = _uuid(root.get("message_tree_id") or root["message_id"], f"line {roots[0][0]}", "message_tree_id")
    return ParsedTree(
        tree_id,
        _state(root.get("tree_state"), f"line {roots[0][0]}", messages),
        messages[0].lang,
        root.get("origin"),
        messages,
    )


# --- writing -------------------------------------------------------------------------


def anonymise(collection: str, value: str | None, seed: str | None) -> str | None:
    """Open-Assistant's anonymiser: sha256 of "collection:id" + seed."""
    if value is None or seed is None:
        return value
    return hashlib.sha256(f"{collection}:{value}{seed}".encode()).hexdigest()


def node(fields: dict) -> dict:
    """A message node as OA writes it: null fields left out, review_result only when
    true or when more than two reviews stand behind it."""
    out = {k: v for k, v in fields.items() if v is not None}
    if "review_result" in out and not (out["review_result"] or (out.get("review_count") or 0) > 2):
        del out["review_result"]
    for empty in ("emojis", "labels", "events"):
        if empty in out and not out[empty]:
            del out[empty]
    return out


def dumps(item: dict) -> str:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
