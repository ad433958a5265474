"""Consensus functions shared by the tree manager and the views."""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def ranked_pairs(rankings: Sequence[Sequence[Hashable]]) -> list:
    """Tideman's ranked pairs, as Open-Assistant computed ranking consensus.

    ``rankings`` are best first; the result is best first. Only ids present in every
    ranking take part (fewer than two: empty result). Ties go to the lower sorted id.
    """
    if not rankings:
        return []
    common = set(rankings[0]).intersection(*map(set, rankings[1:]))
    if len(common) < 2:
        return []
    ids = sorted(common)
    index = {c: i for i, c in enumerate(ids)}
    n = len(ids)
    wins = [[0] * n for _ in range(n)]  # wins[a][b]: voters putting a above b
    for ranking in rankings:
        order = [index[c] for c in ranking if c in common]
        for i, a in enumerate(order):
            for b in order[i + 1 :]:
                wins[a][b] += 1
    pairs = [
        (wins[a][b] - wins[b][a], a, b)
        for a in range(n)
        for b in range(n)
        if a != b and wins[a][b] - wins[b][a] >= 0
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


def acceptance_score(labels: Sequence[dict[str, float]]) -> float:
    """OA's rule: 1 - (mean spam + mean lang_mismatch) over a message's task labels."""

    def mean(name: str) -> float:
        values = [lab[name] for lab in labels if name in lab]
        return sum(values) / len(values) if values else 0.0

    return 1.0 - (mean("spam") + mean("lang_mismatch"))
