"""Annotator trust: a deterministic estimate per user from the consensus facts.

Policy ``trust-v1``:
- labels: a one-coin Dawid–Skene model (each annotator has one accuracy; each message
  a hidden true class) over the binarised ``spam`` review labels, fitted by EM, as
  crowd-kit's OneCoinDawidSkene does. Accuracy 0.5 is a coin flip.
- rankings: Kendall's tau between each ranking and the consensus of the *other*
  rankings of the same replies (leave-one-out ranked pairs). Random rankers sit near 0.
- trust = the lower of the available parts, label part ``2·accuracy − 1`` and ranking
  part ``tau``, each clipped to [0, 1] and shrunk toward the prior 0.5 by how little
  evidence there is (a spammer in one kind of work is not redeemed by the other). A user
  with no evidence gets 0.5.
- suspected spammer: label accuracy below ``SUSPECT_ACCURACY`` over at least ``MIN_EVIDENCE``
  review labels, or a mean tau below ``SUSPECT_TAU`` over at least ``MIN_RANKINGS`` rankings.
  (Rankings are few per user and replies few per parent, so tau alone is weak evidence:
  it weighs into trust, and flags only a clear contrarian.)

The same log gives the same scores (sorted iteration, fixed iterations, no randomness).
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import numpy as np

from projections.consensus import ConsensusView, ranked_pairs

POLICY = "trust-v1"
PRIOR = 0.5
PRIOR_WEIGHT = 3.0  # evidence items worth as much as the prior
MIN_EVIDENCE = 5
SUSPECT_ACCURACY = 0.65
MIN_RANKINGS = 8
SUSPECT_TAU = -0.1
EM_ITERATIONS = 20


@dataclass
class Trust:
    user_id: UUID
    score: float
    label_accuracy: float | None
    labels: int
    ranking_tau: float | None
    rankings: int
    suspected: bool

    def as_dict(self) -> dict:
        return {
            "user_id": str(self.user_id),
            "score": round(self.score, 4),
            "policy": POLICY,
            "label_accuracy": None if self.label_accuracy is None else round(self.label_accuracy, 4),
            "labels": self.labels,
            "ranking_tau": None if self.ranking_tau is None else round(self.ranking_tau, 4),
            "rankings": self.rankings,
            "suspected_spammer": self.suspected,
        }


def kendall_tau(a: list, b: list) -> float | None:
    """Kendall's tau-a of two orders over their common items (None with fewer than two)."""
    common = [x for x in a if x in set(b)]
    if len(common) < 2:
        return None
    pos = {x: i for i, x in enumerate(b)}
    concordant = discordant = 0
    for i, x in enumerate(common):
        for y in common[i + 1 :]:
            if pos[x] < pos[y]:
                concordant += 1
            else:
                discordant += 1
    return (concordant - discordant) / (concordant + discordant)


def spam_votes(view: ConsensusView) -> list[list[tuple[UUID, int]]]:
    """Per message with two or more, the binarised ``spam`` review labels (user, 0/1), by user id."""
    items: list[list[tuple[UUID, int]]] = []
    for facts in view.labels.values():
        votes = [
            (u, int(facts.task_labels[u]["spam"] >= 0.5))
            for u in facts.task_users
            if "spam" in facts.task_labels.get(u, {})
        ]
        if len(votes) >= 2:
            items.append(sorted(votes, key=lambda v: str(v[0])))
    return items


def label_accuracies(view: ConsensusView) -> tuple[dict[UUID, float], dict[UUID, int]]:
    """One-coin Dawid–Skene over binarised spam review labels, fitted by EM on arrays (one row
    per vote): every product and sum is taken in the order a loop over messages and votes would
    take it (``multiply.reduceat`` and ``bincount`` run left to right; the prior is each
    message's first factor), so the scores are the same to the last bit as the plain loop's
    (tests/test_trust_and_spam.py compares them), at OA's size in a fraction of its time."""
    items = spam_votes(view)
    users = list(dict.fromkeys(u for votes in items for u, _ in votes))  # first seen first
    if not items:
        return {}, {}
    index = {u: i for i, u in enumerate(users)}
    lengths = np.fromiter((len(votes) for votes in items), dtype=np.int64, count=len(items))
    who = np.fromiter((index[u] for votes in items for u, _ in votes), dtype=np.int64)
    vote = np.fromiter((v for votes in items for _, v in votes), dtype=np.int64)
    counts = np.bincount(who, minlength=len(users))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    segments = starts + np.arange(len(items))  # where each message's factors start, the prior first
    message_of = np.repeat(np.arange(len(items)), lengths)
    accuracy, prior_spam = np.full(len(users), 0.8), 0.2
    for _ in range(EM_ITERATIONS):
        # E: probability each message is spam, given annotator accuracies
        a = np.minimum(np.maximum(accuracy[who], 0.01), 0.99)
        p_spam = np.multiply.reduceat(np.insert(np.where(vote == 1, a, 1 - a), starts, prior_spam), segments)
        p_ok = np.multiply.reduceat(np.insert(np.where(vote == 0, a, 1 - a), starts, 1 - prior_spam), segments)
        posteriors = p_spam / (p_spam + p_ok)
        # M: accuracy = expected agreement with the hidden class (smoothed)
        p = posteriors[message_of]
        agree = np.bincount(who, weights=np.where(vote == 1, p, 1 - p), minlength=len(users))
        accuracy = (agree + 1) / (counts + 2)
        prior_spam = min(max(sum(posteriors.tolist()) / len(posteriors), 0.01), 0.99)
    return dict(zip(users, accuracy.tolist(), strict=True)), dict(zip(users, counts.tolist(), strict=True))


def _quality_order(view: ConsensusView, replies: list[UUID], ranker: UUID) -> list[UUID] | None:
    """The replies ordered by their mean ``quality`` label from everybody but the ranker."""
    means = {}
    for r in replies:
        facts = view.labels.get(r)
        values = (
            [lab["quality"] for u, lab in facts.by_user.items() if u != ranker and "quality" in lab] if facts else []
        )
        if values:
            means[r] = sum(values) / len(values)
    if len(means) < 2:
        return None
    return sorted(means, key=lambda r: (-means[r], str(r)))


def ranking_taus(view: ConsensusView) -> tuple[dict[UUID, float], dict[UUID, int]]:
    """Each ranking against a reference the ranker did not make: the consensus of the
    other rankings of the same replies, or where there are none, the replies' quality
    labels by others."""
    sums: dict[UUID, float] = {}
    counts: dict[UUID, int] = {}
    for facts in view.rankings.values():
        for i, (user, order) in enumerate(facts.rankings):
            others = [o for j, (_, o) in enumerate(facts.rankings) if j != i]
            reference = ranked_pairs(others) if others else _quality_order(view, order, user)
            tau = kendall_tau(order, reference) if reference else None
            if tau is not None:
                sums[user] = sums.get(user, 0.0) + tau
                counts[user] = counts.get(user, 0) + 1
    return {u: sums[u] / counts[u] for u in counts}, counts


def _shrunk(value: float, n: int) -> float:
    return (value * n + PRIOR * PRIOR_WEIGHT) / (n + PRIOR_WEIGHT)


def compute_trust(view: ConsensusView) -> dict[UUID, Trust]:
    accuracy, n_labels = label_accuracies(view)
    taus, n_rankings = ranking_taus(view)
    out = {}
    for user in sorted(set(accuracy) | set(taus), key=str):
        parts = []
        if user in accuracy:
            parts.append(_shrunk(min(max(2 * accuracy[user] - 1, 0.0), 1.0), n_labels[user]))
        if user in taus:
            parts.append(_shrunk(min(max(taus[user], 0.0), 1.0), n_rankings[user]))
        score = min(parts)
        suspected = (n_labels.get(user, 0) >= MIN_EVIDENCE and accuracy[user] < SUSPECT_ACCURACY) or (
            n_rankings.get(user, 0) >= MIN_RANKINGS and taus[user] < SUSPECT_TAU
        )
        out[user] = Trust(
            user, score, accuracy.get(user), n_labels.get(user, 0), taus.get(user), n_rankings.get(user, 0), suspected
        )
    return out


class TrustCache:
    """Trust scores of the consensus view under each trust policy, recomputed when the view
    moved on (at most once every ``min_interval`` seconds while it keeps moving). ``trust-v2``
    (projections/trust_v2.py) is the default; ``trust-v1`` stays selectable."""

    def __init__(self, min_interval: float = 5.0):
        self.min_interval = min_interval
        self.entries: dict[str, tuple[int, float, object]] = {}  # policy -> (position, when, fit)

    def fit(self, view: ConsensusView, now: float, policy: str = "trust-v2"):
        """The policy's fit: trust-v1's scores, or trust-v2's model (scores and decisions)."""
        position, at, result = self.entries.get(policy, (-1, 0.0, None))
        if view.position != position and (now - at >= self.min_interval or position < 0):
            result = _fitters()[policy](view)
            self.entries[policy] = (view.position, now, result)
        return result

    def get(self, view: ConsensusView, now: float, policy: str = "trust-v2") -> dict:
        result = self.fit(view, now, policy)
        return result if policy == POLICY else result.trust

    def weights(self, view: ConsensusView, now: float, policy: str = "trust-v2") -> dict[UUID, float]:
        return {u: t.score for u, t in self.get(view, now, policy).items()}


def _fitters() -> dict:
    from projections import trust_v2

    return {POLICY: compute_trust, trust_v2.POLICY: trust_v2.fit}
