"""The leaderboards as SQL (issue #16): the leaderboard view's hourly counters per user as a table
``user_hours``, and a SQL view ``leaderboards`` that sums them over OA's time frames (day = the
last 24 hours, week/month = from midnight UTC 7/30 days back, total) with OA's score formula,
so a board is as current as the clock when it is read, like ``GET /leaderboards/{frame}``.

``projections.relational`` registers both and writes the rows; this module says what they are."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from uuid import UUID

import msgspec

from projections.leaderboard import STATS, LeaderboardView, UserCounts

VIEW = f"{LeaderboardView.name}@{LeaderboardView.version}"  # the live view user_hours follows

# one row per user and hour with any count: user_id (pseudonym), hour (hours since the epoch, UTC), STATS
UserHour = msgspec.defstruct(
    "UserHour", [("user_id", str), ("hour", int)] + [(name, int) for name in STATS], kw_only=True
)

# OA's leader score (projections.leaderboard.leader_score) over the frame's sums; x / 10 is int(0.1 * x)
_SCORE = (
    "prompts / 10 + 4 * replies_assistant + replies_prompter + labels_simple + 2 * labels_full"
    " + rankings_total + rankings_good + accepted_prompts / 10 + 4 * accepted_replies_assistant"
    " + accepted_replies_prompter + 9 * reply_ranked_1 + 3 * reply_ranked_2 + reply_ranked_3"
)
_SUMS = ", ".join(f"CAST(sum(h.{s}) AS bigint) AS {s}" for s in STATS)
# first hour inside each frame, from the hour now ({now_hour}: per backend)
_FRAMES = """SELECT 'day' AS frame, {now_hour} - 23 AS start
             UNION ALL SELECT 'week', ({now_hour} / 24) * 24 - 7 * 24
             UNION ALL SELECT 'month', ({now_hour} / 24) * 24 - 30 * 24
             UNION ALL SELECT 'total', -1"""
# users as GET /leaderboards shows them: enabled, not deleted, on the board, not spammers, score > 0
LEADERBOARDS = f"""
    SELECT frame, user_id, score, rank() OVER (PARTITION BY frame ORDER BY score DESC) AS rank, {", ".join(STATS)}
    FROM (
        SELECT s.*, {_SCORE} AS score
        FROM (
            SELECT f.frame, h.user_id, {_SUMS}
            FROM {{user_hours}} AS h
            JOIN {{users}} AS u ON u.id = h.user_id
            CROSS JOIN ({_FRAMES}) AS f
            WHERE h.hour >= f.start AND u.enabled AND NOT u.deleted AND u.show_on_leaderboard AND NOT u.spammer
            GROUP BY f.frame, h.user_id
        ) AS s
    ) AS scored
    WHERE score > 0"""
NOW_HOUR = {
    True: "CAST(floor(extract(epoch FROM now()) / 3600) AS bigint)",
    False: "(CAST(strftime('%s', 'now') AS INTEGER) / 3600)",
}


# the SQL view's rows (frames.live types them from here)
Leaderboard = msgspec.defstruct(
    "Leaderboard",
    [("frame", str), ("user_id", str), ("score", int), ("rank", int)] + [(name, int) for name in STATS],
    kw_only=True,
)

COMMENTS = {
    "user_hours": {
        "": "The leaderboard view's counters: per user and UTC hour, what OA's leaderboard counts",
        "user_id": "the user's pseudonym (users.id)",
        "hour": "hours since 1970-01-01 UTC (hour * 3600 is the epoch second it starts)",
        **{s: f"{s.replace('_', ' ')} in that hour" for s in STATS},
    },
    "leaderboards": {
        "": "SQL view: OA's leaderboards for day, week, month and total, as of the clock now",
        "frame": "day (last 24 h), week, month (from midnight UTC 7/30 days back) or total",
        "user_id": "the user's pseudonym (users.id)",
        "score": "OA's leader score over the frame",
        "rank": "rank in the frame, 1 best (ties share a rank)",
        **{s: f"{s.replace('_', ' ')} in the frame" for s in STATS},
    },
}


def user_hours(pseudonym: str, counts: UserCounts) -> list:
    return [
        UserHour(user_id=pseudonym, hour=h, **dict(zip(STATS, row, strict=True))) for h, row in counts.hours.items()
    ]


def hour_changes(pseudonym: Callable[[UUID], str], users: dict, keys) -> tuple[list, list]:
    """Rows of the changed users (``keys`` of the view's ``users`` table): every user's hours are
    replaced whole, so (pseudonyms whose old rows go, new rows)."""
    replaced, rows = [], []
    for key in keys:
        p = pseudonym(key)
        replaced.append(p)
        counts = users.get(key)
        if counts is not None:
            rows.extend(user_hours(p, counts))
    return replaced, rows


def stored_users(stored: Iterator[tuple[str, str, bytes]]) -> dict[UUID, UserCounts]:
    """The ``users`` rows of a stored leaderboard view (``(table, key, msgpack)``)."""
    return {
        UUID(key): msgspec.msgpack.decode(value, type=UserCounts) for table, key, value in stored if table == "users"
    }
