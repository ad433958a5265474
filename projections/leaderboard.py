"""Leaderboards, trollboard and user stats, with OA's formula, kept live.

Facts per message (author, hour, role, accepted, deleted) and per ranking are kept; the
per-user hourly counters are derived from them and re-derived when a fact flips (a
review changes its mind, a message is deleted or undeleted, a consensus is computed).
A board for a time frame sums the hour buckets inside the frame at query time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import msgspec

from domain import events as ev
from domain.rules import current_streak
from projections.base import View

STATS = (
    "prompts",
    "replies_assistant",
    "replies_prompter",
    "labels_simple",
    "labels_full",
    "rankings_total",
    "rankings_good",
    "accepted_prompts",
    "accepted_replies_assistant",
    "accepted_replies_prompter",
    "reply_ranked_1",
    "reply_ranked_2",
    "reply_ranked_3",
)
INDEX = {name: i for i, name in enumerate(STATS)}
TROLL = (
    "red_flags",
    "upvotes",
    "downvotes",
    "spam_prompts",
    "spam",
    "lang_mismatch",
    "not_appropriate",
    "pii",
    "hate_speech",
    "sexual_content",
    "political_content",
    "quality",
    "humor",
    "toxicity",
    "violence",
    "helpfulness",
)
TROLL_INDEX = {name: i for i, name in enumerate(TROLL)}
TIME_FRAMES = ("day", "week", "month", "total")
# OA's level thresholds: 0, then round(sum_{k=1..n}(k*1.1521 + 3)) for n = 1..99
LEVELS = [0] + [round(sum(k * 1.1521 + 3 for k in range(1, n + 1))) for n in range(1, 100)]


def leader_score(s: dict[str, int]) -> int:
    """OA's formula (docs/oa-rules.md, "Leaderboards")."""
    return (
        int(0.1 * s["prompts"])
        + 4 * s["replies_assistant"]
        + s["replies_prompter"]
        + s["labels_simple"]
        + 2 * s["labels_full"]
        + s["rankings_total"]
        + s["rankings_good"]
        + int(0.1 * s["accepted_prompts"])
        + 4 * s["accepted_replies_assistant"]
        + s["accepted_replies_prompter"]
        + 9 * s["reply_ranked_1"]
        + 3 * s["reply_ranked_2"]
        + s["reply_ranked_3"]
    )


def level(score: int) -> int:
    return sum(1 for threshold in LEVELS if threshold <= score)


def troll_score(t: dict[str, float]) -> int:
    return int(
        3 * t["red_flags"]
        - t["upvotes"]
        + t["downvotes"]
        + t["spam_prompts"]
        + t["lang_mismatch"]
        + t["not_appropriate"]
        + t["pii"]
        + t["hate_speech"]
        + t["sexual_content"]
        + t["political_content"]
    )


def hour_of(at: datetime) -> int:
    return int(at.timestamp()) // 3600


def frame_start_hour(frame: str, now: datetime) -> int | None:
    """First hour bucket inside a time frame: day = last 24 h, week/month = from midnight
    7/30 days back, total = everything (None)."""
    if frame == "day":
        return hour_of(now) - 23
    if frame in ("week", "month"):
        days = 7 if frame == "week" else 30
        midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return hour_of(midnight - timedelta(days=days))
    return None


def _sum_frame(hours: dict[int, list], names: tuple[str, ...], frame: str, now: datetime, zero):
    """Add up the hourly rows inside a time frame, by stat name."""
    start = frame_start_hour(frame, now)
    totals = [zero] * len(names)
    for hour, row in hours.items():
        if start is None or hour >= start:
            for i, v in enumerate(row):
                totals[i] += v
    return dict(zip(names, totals, strict=True))


class MessageFact(msgspec.Struct, array_like=True):
    author: UUID | None
    hour: int
    kind: str  # prompts | replies_assistant | replies_prompter
    accepted: bool = False
    deleted: bool = False
    parent_id: UUID | None = None  # an undelete restores the ancestors too


class RankingFact(msgspec.Struct, array_like=True):
    ranker: UUID
    hour: int
    parent_id: UUID
    order: list[UUID]
    good: bool = False


class Given(msgspec.Struct, array_like=True):
    items: list[tuple[UUID, int, str, float]] = []  # (author, hour, stat, delta)


class UserCounts(msgspec.Struct, array_like=True):
    hours: dict[int, list[int]] = {}  # hour -> counts in STATS order
    troll: dict[int, list[float]] = {}  # hour -> troll facts in TROLL order
    active_days: list[int] = []  # days since epoch with any activity, ascending
    last_activity: datetime | None = None


class LeaderboardView(View):
    name = "leaderboard"
    version = "oa-v3"  # v2: undelete restores ancestors; v3: spammers' contributions taken back
    key_types = {"messages": UUID, "rankings": UUID, "users": UUID, "parents": UUID, "given": UUID, "spammers": UUID}

    def __init__(self) -> None:
        super().__init__()
        self.messages = self.table("messages", MessageFact)
        self.rankings = self.table("rankings", RankingFact)  # key: the ranking task id
        self.parents = self.table("parents", _ParentRankings)
        self.given = self.table("given", Given)  # contributor -> what they gave others
        self.spammer_rows = self.table("spammers", Given)
        self.users = self.table("users", UserCounts)

    # --- counters ------------------------------------------------------------------

    def _counts(self, user: UUID) -> UserCounts:
        counts = self.users.get(user) or self.users.put(user, UserCounts())
        self.users.touch(user)
        return counts

    def _add(self, user: UUID | None, hour: int, stat: str, delta: float = 1) -> None:
        """Bump one hourly counter: a leaderboard stat (int) or a trollboard fact (float)."""
        self._add_all(user, hour, ((stat, delta),))

    def _add_all(self, user: UUID | None, hour: int, deltas) -> None:
        """Bump several of a user's counters of one hour: (stat, delta) in order."""
        if user is None:
            return
        counts = self._counts(user)
        for stat, delta in deltas:
            if stat in INDEX:
                rows, names, i, value = counts.hours, STATS, INDEX[stat], int(delta)
            else:
                rows, names, i, value = counts.troll, TROLL, TROLL_INDEX[stat], float(delta)
            row = rows.get(hour)
            if row is None:
                row = rows[hour] = [type(value)()] * len(names)
            row[i] += value

    def _give(self, giver: UUID | None, author: UUID | None, hour: int, gifts: list[tuple[str, float]]) -> None:
        """Contributions by ``giver`` to ``author``'s counters, (stat, delta) each (a ranking
        placing their reply, the labels or a reaction on their message): recorded per giver,
        so that marking the giver a spammer takes them back and unmarking gives them again.
        One event's gifts at once: a label event gives up to ~15 (5M gifts at OA's size)."""
        if giver is None or author is None or not gifts:
            return
        given = self.given.get(giver) or self.given.put(giver, Given())
        given.items.extend([(author, hour, stat, float(delta)) for stat, delta in gifts])
        self.given.touch(giver)
        if giver not in self.spammers:
            self._add_all(author, hour, gifts)

    def on_user_marked_spammer(self, e: ev.UserMarkedSpammer) -> None:
        if e.subject_id not in self.spammers:
            self._set_spammer(e.subject_id, True)

    def on_user_unmarked_spammer(self, e: ev.UserUnmarkedSpammer) -> None:
        if e.subject_id in self.spammers:
            self._set_spammer(e.subject_id, False)

    def _set_spammer(self, user: UUID, spammer: bool) -> None:
        if spammer:
            self.spammer_rows.put(user, Given())
        else:
            self.spammer_rows.delete(user)
        given = self.given.get(user)
        for author, hour, stat, delta in given.items if given else ():
            self._add(author, hour, stat, -delta if spammer else delta)

    @property
    def spammers(self):
        return self.spammer_rows.rows

    def _active(self, e: ev.Event) -> None:
        if e.user_id is None:
            return
        counts = self._counts(e.user_id)
        day = hour_of(e.at) // 24
        if not counts.active_days or counts.active_days[-1] != day:
            counts.active_days.append(day)
        counts.last_activity = e.at

    # --- events --------------------------------------------------------------------

    def on_initial_prompt_submitted(self, e: ev.InitialPromptSubmitted) -> None:
        self.messages.put(e.message_id, MessageFact(e.user_id, hour_of(e.at), "prompts"))
        self._add(e.user_id, hour_of(e.at), "prompts")
        self._active(e)

    def on_reply_submitted(self, e: ev.ReplySubmitted) -> None:
        kind = f"replies_{e.role}"
        self.messages.put(e.message_id, MessageFact(e.user_id, hour_of(e.at), kind, parent_id=e.parent_id))
        self._add(e.user_id, hour_of(e.at), kind)
        self._active(e)

    def on_message_reviewed(self, e: ev.MessageReviewed) -> None:
        m = self.messages[e.message_id]
        if m.accepted != e.accepted and not m.deleted:
            self._add(m.author, m.hour, "accepted_" + m.kind, 1 if e.accepted else -1)
        m.accepted = e.accepted
        self.messages.touch(e.message_id)

    def _set_deleted(self, message_id: UUID, deleted: bool) -> None:
        m = self.messages[message_id]
        if m.deleted == deleted:
            return
        delta = -1 if deleted else 1
        if m.kind == "prompts":  # OA counts live prompts only
            self._add(m.author, m.hour, "prompts", delta)
        if m.accepted:
            self._add(m.author, m.hour, "accepted_" + m.kind, delta)
        m.deleted = deleted
        self.messages.touch(message_id)

    def on_message_deleted(self, e: ev.MessageDeleted) -> None:
        self._set_deleted(e.message_id, True)

    def on_message_undeleted(self, e: ev.MessageUndeleted) -> None:
        """Restores the message and its ancestors (as the event says and the write model does)."""
        message_id: UUID | None = e.message_id
        while message_id is not None:
            self._set_deleted(message_id, False)
            message_id = self.messages[message_id].parent_id

    def on_labels_submitted(self, e: ev.LabelsSubmitted) -> None:
        if e.kind == "task":
            self._add(e.user_id, hour_of(e.at), "labels_full" if e.mode == "full" else "labels_simple")
        m = self.messages.get(e.message_id)
        if m is not None:
            gifts = [(name, value) for name, value in e.labels.items() if name in TROLL_INDEX]
            if e.kind == "report":
                gifts.append(("red_flags", 1))
            self._give(e.user_id, m.author, m.hour, gifts)
        self._active(e)

    def on_ranking_submitted(self, e: ev.RankingSubmitted) -> None:
        hour = hour_of(e.at)
        self.rankings.put(e.task_id, RankingFact(e.user_id, hour, e.parent_id, list(e.ranked_message_ids)))
        parent = self.parents.get(e.parent_id) or self.parents.put(e.parent_id, _ParentRankings())
        parent.task_ids = [*parent.task_ids, e.task_id]
        self.parents.touch(e.parent_id)
        self._add(e.user_id, hour, "rankings_total")
        for place, mid in enumerate(e.ranked_message_ids[:3], start=1):
            m = self.messages.get(mid)
            if m is not None:
                self._give(e.user_id, m.author, hour, [(f"reply_ranked_{place}", 1)])
        self._active(e)

    def on_ranks_computed(self, e: ev.RanksComputed) -> None:
        """rankings_good (OA never computed it): a ranking whose first reply is the
        consensus' first reply."""
        best = e.ranked_message_ids[0] if e.ranked_message_ids else None
        parent = self.parents.get(e.parent_id)
        for task_id in parent.task_ids if parent else ():
            r = self.rankings[task_id]
            good = bool(r.order) and r.order[0] == best
            if good != r.good:
                self._add(r.ranker, r.hour, "rankings_good", 1 if good else -1)
                r.good = good
                self.rankings.touch(task_id)

    def on_emoji_added(self, e: ev.EmojiAdded) -> None:
        self._emoji(e, 1)

    def on_emoji_removed(self, e: ev.EmojiRemoved) -> None:
        self._emoji(e, -1)

    def _emoji(self, e: ev.EmojiAdded | ev.EmojiRemoved, delta: int) -> None:
        stat = {"+1": "upvotes", "-1": "downvotes", "red_flag": "red_flags"}.get(e.emoji)
        m = self.messages.get(e.message_id)
        if stat and m is not None:
            self._give(e.user_id, m.author, m.hour, [(stat, delta)])

    def on_tree_state_changed(self, e: ev.TreeStateChanged) -> None:
        m = self.messages.get(e.tree_id)
        if m is None:
            return
        if e.new_state == "aborted_low_grade":
            self._add(m.author, m.hour, "spam_prompts", 1)
        elif e.old_state == "aborted_low_grade":
            self._add(m.author, m.hour, "spam_prompts", -1)

    def on_users_merged(self, e: ev.UsersMerged) -> None:
        """OA's merge_users: the sources' facts, counters and gifts are the destination's
        (no user marked spammer is merged, so what was counted stays counted)."""
        dest, sources = e.subject_id, set(e.source_user_ids)
        self._reassign_facts(sources, dest)
        for source in sources:
            self._move_gifts(source, dest)
            self._move_counts(source, dest)

    def _reassign_facts(self, sources: set[UUID], dest: UUID) -> None:
        """Messages, rankings and gifts received by a source are the destination's."""
        for key, m in self.messages.rows.items():  # no index by author (a merge is rare)
            if m.author in sources:
                m.author = dest
                self.messages.touch(key)
        for key, r in self.rankings.rows.items():
            if r.ranker in sources:
                r.ranker = dest
                self.rankings.touch(key)
        for giver, given in self.given.rows.items():
            if any(item[0] in sources for item in given.items):
                given.items = [(dest if a in sources else a, h, s, d) for a, h, s, d in given.items]
                self.given.touch(giver)

    def _move_gifts(self, source: UUID, dest: UUID) -> None:
        """What a source gave others is the destination's gift."""
        given = self.given.get(source)
        if given is not None:
            into = self.given.get(dest) or self.given.put(dest, Given())
            into.items = [*into.items, *given.items]
            self.given.touch(dest)
            self.given.delete(source)

    def _move_counts(self, source: UUID, dest: UUID) -> None:
        """A source's counters add to the destination's; active days unite; the later last activity wins."""
        counts = self.users.get(source)
        if counts is None:
            return
        into = self._counts(dest)
        for rows, theirs in ((into.hours, counts.hours), (into.troll, counts.troll)):
            for hour, values in theirs.items():
                mine = rows.setdefault(hour, [type(v)() for v in values])
                rows[hour] = [a + b for a, b in zip(mine, values, strict=True)]
        into.active_days = sorted(set(into.active_days) | set(counts.active_days))
        if counts.last_activity and (into.last_activity is None or counts.last_activity > into.last_activity):
            into.last_activity = counts.last_activity
        self.users.delete(source)

    # --- reading -------------------------------------------------------------------

    def stats(self, user: UUID, frame: str, now: datetime) -> dict[str, int]:
        counts = self.users.get(user)
        return _sum_frame(counts.hours if counts else {}, STATS, frame, now, 0)

    def troll_stats(self, user: UUID, frame: str, now: datetime) -> dict[str, float]:
        counts = self.users.get(user)
        return _sum_frame(counts.troll if counts else {}, TROLL, frame, now, 0.0)

    def streak(self, user: UUID, now: datetime) -> tuple[int, datetime | None]:
        """``rules.current_streak``, the days counted from the active days' last run."""
        counts = self.users.get(user)
        if not counts or not counts.last_activity:
            return 0, None
        days = counts.active_days
        streak = 0
        for a, b in zip(reversed(days[:-1]), reversed(days[1:]), strict=True):
            if b - a != 1:
                break
            streak += 1
        return current_streak(streak, counts.last_activity, now)


class _ParentRankings(msgspec.Struct, array_like=True):
    task_ids: list[UUID] = []
