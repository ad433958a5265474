"""Views split by Kafka partition, and their merge.

The relay keys every event about a tree by the tree, so a tree's events all reach one
partition, in log order; user events are keyed by the user. A projector folds each
partition it owns into a *shard*: one instance of every view, fed only that partition's
events. Rows of a tree (messages, trees, label and ranking facts, leaderboard message
facts, the history's message->tree index) live in exactly one shard and come out exactly
as a fold of the whole log makes them. Only three things cross trees during a fold, and
those are kept as per-shard partials and merged on read:

- a user's last activity (message tree and leaderboard): ``activity`` rows of (position,
  time) per shard; the merge takes the latest position;
- a user's leaderboard counters: per-shard sums (merge: add them up) and active days
  (merge: their union);
- what a contributor gave others (rankings placing their reply, labels and reactions on
  their messages): the fold of the whole log adds it to the author unless the giver is a
  spammer, and takes it back when the giver is marked; its end result is "counted iff the
  giver is not a spammer now", so shards only record it (``given``) and the merge adds
  what non-spammers gave.

Aggregates computed when asked (consensus, trust) need nothing more: they are derived
from the merged facts. A new view whose fold reads rows of another tree or user must
keep partials like these to be projected from Kafka. Not followed yet: ``users_merged``
(keyed by its user, it rewrites rows of every tree) is folded by one shard only.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from domain import events as ev
from projections.base import View
from projections.consensus import ConsensusView
from projections.history import HistoryView
from projections.leaderboard import Given, LeaderboardView, UserCounts
from projections.message_tree import MessageTreeView
from projections.storage import ViewStorage


class Activity(msgspec.Struct, array_like=True):
    position: int
    at: datetime


class _Positioned:
    """Knows the position of the event being applied (View.apply sets it only after)."""

    applying = 0

    def apply(self, position: int, event: ev.Event) -> None:
        self.applying = position
        super().apply(position, event)


class ShardMessageTreeView(_Positioned, MessageTreeView):
    key_types = {**MessageTreeView.key_types, "activity": UUID}

    def __init__(self) -> None:
        super().__init__()
        self.activity = self.table("activity", Activity)

    def _active(self, e: ev.Event) -> None:
        if e.user_id is not None:  # the user's row may live in another shard
            self.activity.put(e.user_id, Activity(self.applying, e.at))


class ShardLeaderboardView(_Positioned, LeaderboardView):
    key_types = {**LeaderboardView.key_types, "activity": UUID}

    def __init__(self) -> None:
        super().__init__()
        self.activity = self.table("activity", Activity)

    def _give(self, giver: UUID | None, author: UUID | None, hour: int, gifts: list[tuple[str, float]]) -> None:
        if giver is None or author is None or not gifts:
            return
        given = self.given.get(giver) or self.given.put(giver, Given())
        given.items.extend([(author, hour, stat, float(delta)) for stat, delta in gifts])
        self.given.touch(giver)

    def _set_spammer(self, user: UUID, spammer: bool) -> None:
        if spammer:
            self.spammer_rows.put(user, Given())
        else:
            self.spammer_rows.delete(user)

    def _active(self, e: ev.Event) -> None:
        super()._active(e)
        if e.user_id is not None:
            self.activity.put(e.user_id, Activity(self.applying, e.at))


def shard_views() -> list[View]:
    return [ShardMessageTreeView(), ConsensusView(), ShardLeaderboardView(), HistoryView()]


# --- merging ---------------------------------------------------------------------------


def _latest(shards: list[list[View]], index: int) -> dict[UUID, Activity]:
    latest: dict[UUID, Activity] = {}
    for shard in shards:
        for user, a in shard[index].activity.rows.items():
            if user not in latest or a.position > latest[user].position:
                latest[user] = a
    return latest


def merge(shards: list[list[View]]) -> list[View]:
    """The views of the whole log from the shards of every partition (each made by
    ``shard_views``): the same classes the local runner folds, ready to be queried."""
    tree, consensus, board, history = MessageTreeView(), ConsensusView(), LeaderboardView(), HistoryView()
    merged = [tree, consensus, board, history]
    for shard in shards:
        for whole, part in zip(merged, shard, strict=True):
            whole.position = max(whole.position, part.position)
            for name, table in whole.tables.items():
                if name not in ("users", "given"):  # rows that live in one shard only
                    table.rows.update(part.tables[name].rows)
        tree.users.rows.update(shard[0].users.rows)
    _merge_tree_activity(tree, shards)
    _merge_counters(board, shards)
    _merge_gifts(board, shards)
    for view in merged:
        for table in view.tables.values():
            table.dirty.clear()
    return merged


def _merge_tree_activity(tree: MessageTreeView, shards: list[list[View]]) -> None:
    """Message tree: a user's last activity is the latest of any shard."""
    for user, a in _latest(shards, 0).items():
        row = tree.users.get(user)
        if row is not None:
            row.last_activity_date = a.at
    tree.restored()


def _merge_counters(board: LeaderboardView, shards: list[list[View]]) -> None:
    """Leaderboard: counters add up, active days unite, the last activity is the latest."""
    latest = _latest(shards, 2)
    for shard in shards:
        for user, part in shard[2].users.rows.items():
            counts = board.users.get(user) or board.users.put(user, UserCounts())
            _add_rows(counts.hours, part.hours)
            _add_rows(counts.troll, part.troll)
            counts.active_days = sorted(set(counts.active_days) | set(part.active_days))
    for user, a in latest.items():
        board.users.get(user).last_activity = a.at


def _merge_gifts(board: LeaderboardView, shards: list[list[View]]) -> None:
    """Leaderboard: gifts count unless the giver is a spammer (after the counters: they add to them)."""
    gifts: dict[UUID, list] = {}
    for shard in shards:
        for giver, given in shard[2].given.rows.items():
            gifts.setdefault(giver, []).extend(given.items)
    for giver, items in gifts.items():
        board.given.put(giver, Given(sorted(items, key=lambda i: (str(i[0]), i[1], i[2], i[3]))))
        if giver not in board.spammers:
            for author, hour, stat, delta in items:
                board._add(author, hour, stat, delta)


def _add_rows(into: dict[int, list], rows: dict[int, list]) -> None:
    for hour, values in rows.items():
        mine = into.get(hour)
        if mine is None:
            into[hour] = list(values)
        else:
            for i, v in enumerate(values):
                mine[i] += v


# --- storage ---------------------------------------------------------------------------


def shard_suffix(group: str, partition: int) -> str:
    return f"#{group}.p{partition}"


def history_key(group: str) -> str:
    """The history index of a group: every shard's entries under one name."""
    return f"{HistoryView.name}@{HistoryView.version}#{group}"


def restore_shard(storage: ViewStorage, group: str, partition: int) -> list[View]:
    views = shard_views()
    for view in views:
        view.suffix = shard_suffix(group, partition)
        view.position = storage.position(view.key)
        for table, key, value in storage.rows(view.key):
            view.tables[table].restore(key, value, view.key_types[table])
        view.restored()
    return views


def load_merged(storage: ViewStorage, group: str, partitions: int) -> list[View]:
    """The merged views of a projector group, as stored (e.g. for a query server)."""
    return merge([restore_shard(storage, group, p) for p in range(partitions)])


def normalized_rows(view: View) -> dict:
    """A view's rows, encoded, for comparing a merge with a fold of the whole log. What the
    merge cannot reproduce means nothing to any query, and is normalised: the order of a
    contributor's gifts and of a user's hour buckets, and buckets left at zero by a gift
    taken back."""
    enc = msgspec.msgpack.Encoder()
    out = {}
    for table in view.tables.values():
        for key, row in table.rows.items():
            if isinstance(row, UserCounts):
                row = UserCounts(
                    {h: v for h, v in sorted(row.hours.items()) if any(v)},
                    {h: v for h, v in sorted(row.troll.items()) if any(v)},
                    row.active_days,
                    row.last_activity,
                )
            elif isinstance(row, Given):
                row = Given(sorted(row.items, key=lambda i: (str(i[0]), i[1], i[2], i[3])))
            out[(table.name, str(key))] = enc.encode(row)
    return out
