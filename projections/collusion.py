"""Colluding groups for trust-v2: annotators whose votes agree on the messages they share more
often than their own accuracies allow for independent voters.

For each pair of annotators and each message both voted on, the chance that two independent
voters agree is P(spam) of the message without both votes times the chance both say spam or
both say not spam given spam, plus the same given not spam (each from their own sensitivity and
specificity). Against that, a colluding pair agrees with probability ``1 - SLIP``. The pair's
log-likelihood ratio summed over the shared messages is its evidence; pairs above
``MIN_LLR`` (and with ``MIN_SHARED`` messages) are linked, and the linked components are the
groups. An honest pair agrees often too, but then its accuracies predict it: their agreement
earns little, and each of their slips costs log(SLIP / P(disagree)).
"""

from __future__ import annotations

import math

import numpy as np

SLIP = 0.05  # a colluding pair disagrees at most this often
MIN_LLR = math.log(1000.0)  # the pair's evidence for voting together: odds of 1000 to 1
MIN_SHARED = 5  # messages both voted on


def pair_evidence(
    who: np.ndarray, vote: np.ndarray, msg: np.ndarray, log_odds: np.ndarray, sens: np.ndarray, spec: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first voter, second voter, shared messages, log-likelihood ratio) per pair of voters that
    share a message. Rows: one per vote; ``log_odds``: the log-odds of P(spam) of each row's
    message *without* that row's vote (so a pair's reference leaves out both)."""
    order = np.lexsort((who, msg))
    who, vote, msg, lo = who[order], vote[order], msg[order], log_odds[order]
    s, c = sens[who], spec[who]
    own = np.where(vote == 1, np.log(s) - np.log(1 - c), np.log(1 - s) - np.log(c))
    firsts, seconds, llrs = [], [], []
    for d in range(1, _max_run(msg)):
        i = np.flatnonzero(msg[:-d] == msg[d:])
        j = i + d
        q = 1.0 / (1.0 + np.exp(-(lo[i] - own[j])))  # P(spam) without either vote
        agree_if_spam = s[i] * s[j] + (1 - s[i]) * (1 - s[j])
        agree_if_ok = c[i] * c[j] + (1 - c[i]) * (1 - c[j])
        p = np.clip(q * agree_if_spam + (1 - q) * agree_if_ok, 1e-6, 1 - 1e-6)
        agree = vote[i] == vote[j]
        llrs.append(np.where(agree, np.log(1 - SLIP) - np.log(p), np.log(SLIP) - np.log(1 - p)))
        firsts.append(who[i])
        seconds.append(who[j])
    if not llrs:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0)
    a, b, llr = np.concatenate(firsts), np.concatenate(seconds), np.concatenate(llrs)
    _, index, inverse = np.unique(a * (int(b.max()) + 1) + b, return_index=True, return_inverse=True)
    return a[index], b[index], np.bincount(inverse), np.bincount(inverse, weights=llr)


def _max_run(msg: np.ndarray) -> int:
    """The most rows of one message (``msg`` sorted)."""
    return int(np.bincount(msg).max()) if len(msg) else 0


def groups(first, second, shared, llr) -> dict[int, tuple[int, int]]:
    """{voter: (group id: its lowest voter, messages shared with the rest of the group)} for every
    voter in a group of two or more: the components of the pairs whose evidence clears the bar.
    (Merging clusters on the sum of their pairs' evidence, to find groups whose members share
    only a message or two pairwise, was tried: it gathered honest annotators into groups too,
    each honest pair agreeing a little more than their shrunk accuracies predict.)"""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for k in np.flatnonzero((llr > MIN_LLR) & (shared >= MIN_SHARED)).tolist():
        ra, rb = root(int(first[k])), root(int(second[k]))
        parent.setdefault(ra, ra)
        parent.setdefault(rb, rb)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members = {x: root(x) for x in parent}
    together = dict.fromkeys(members, 0)
    for a, b, n in zip(first.tolist(), second.tolist(), shared.tolist(), strict=True):
        if a in members and b in members and members[a] == members[b]:
            together[a] += n
            together[b] += n
    return {x: (g, together[x]) for x, g in members.items()}
