"""The rules the write side and the views share: OA's acceptance score, Tideman's ranked
pairs for ranking consensus, what "hidden" means, which reactions are internal, and when a
streak ends. Pure functions, imported by the tree manager and by the projections alike (the
write side never imports the read side)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from datetime import datetime, timedelta
from typing import Any

STREAK_RESET = timedelta(hours=36)  # a streak ends after this long without activity


def acceptance_score(labels: Sequence[dict[str, float]], weights: Sequence[float] | None = None) -> float:
    """OA's rule: 1 - (mean spam + mean lang_mismatch) over a message's task labels
    (weighted means when ``weights`` are given: the trust policy)."""
    weights = weights or [1.0] * len(labels)

    def mean(name: str) -> float:
        pairs = [(lab[name], w) for lab, w in zip(labels, weights, strict=True) if name in lab]
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total > 0 else 0.0

    return 1.0 - (mean("spam") + mean("lang_mismatch"))


def is_hidden(message: Any, parent_of: Callable[[Any], Any | None], spammers: set) -> bool:
    """Deleted, written by a user marked spammer, or below such a message. ``message`` has
    ``deleted``, ``user_id`` and ``parent_id``; ``parent_of(id)`` finds a message by id."""
    m = message
    while m is not None:
        if m.deleted or m.user_id in spammers:
            return True
        m = parent_of(m.parent_id) if m.parent_id else None
    return False


def is_skip_marker(emoji: str) -> bool:
    """OA records a skipped task as a hidden reaction (``_skip_reply``...): never shown or exported."""
    return emoji.startswith("_")


def current_streak(days: int, last_activity: datetime | None, now: datetime) -> tuple[int, datetime | None]:
    """OA's streak: (full days of consecutive activity, 0 before the first full day; the last
    activity), or (0, None) after ``STREAK_RESET`` without any."""
    if last_activity is None or now - last_activity > STREAK_RESET:
        return 0, None
    return days, last_activity


def ranked_pairs(rankings: Sequence[Sequence[Hashable]], weights: Sequence[float] | None = None) -> list:
    """Tideman's ranked pairs, as Open-Assistant computed ranking consensus.

    ``rankings`` are best first; the result is best first. Only ids present in every
    ranking take part (fewer than two: empty result). Ties go to the lower sorted id.
    ``weights`` (one per ranking, default 1) turn voter counts into weighted votes.
    """
    if not rankings:
        return []
    common = set(rankings[0]).intersection(*map(set, rankings[1:]))
    if len(common) < 2:
        return []
    ids = sorted(common)
    index = {c: i for i, c in enumerate(ids)}
    n = len(ids)
    wins = [[0.0] * n for _ in range(n)]  # wins[a][b]: (weighted) voters putting a above b
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        order = [index[c] for c in ranking if c in common]
        for i, a in enumerate(order):
            for b in order[i + 1 :]:
                wins[a][b] += weight
    pairs = [
        (wins[a][b] - wins[b][a], a, b) for a in range(n) for b in range(n) if a != b and wins[a][b] - wins[b][a] >= 0
    ]
    # stable sort by margin descending: equal margins keep sorted-id (a, b) order
    pairs.sort(key=lambda p: -p[0])
    locked: set[tuple[int, int]] = set()
    for _, a, b in pairs:
        if not _reaches(locked, b, a):
            locked.add((a, b))
    remaining = list(range(n))
    order: list[int] = []
    while remaining:
        beaten = {b for a, b in locked if a in remaining and b in remaining}
        winner = next(c for c in remaining if c not in beaten)
        order.append(winner)
        remaining.remove(winner)
    return [ids[i] for i in order]


def _reaches(edges: set[tuple[int, int]], start: int, goal: int) -> bool:
    """Is there a path start -> goal along locked edges (would a -> b close a cycle)?"""
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        for a, b in edges:
            if a == node and b not in seen:
                seen.add(b)
                stack.append(b)
    return False
