"""Annotator trust, policy ``trust-v2``: models of each annotator's errors, and decisions
taken from the models rather than from weighted means against fixed thresholds.

- labels: a two-coin Dawid–Skene model over the binarised ``spam`` review labels: each
  annotator has a sensitivity (says spam when it is) and a specificity (says not spam when
  it is not), the messages a class prior; fitted by EM as crowd-kit's ``DawidSkene`` does
  (majority-vote start, E then M), with pseudo-counts toward a prior annotator so that one
  with few labels is not certain after three votes (crowd-kit has no such smoothing; with
  ``prior_weight=0`` the fit is crowd-kit's: tests/test_trust_v2.py compares them).
  A message is accepted when P(not spam | its votes) − its lang_mismatch mean > 0.5:
  unanimous votes decide as OA's rule does; split votes are weighed by who cast them.
- rankings: each ranker's pair accuracy, P(a pair they rank is the right way round),
  measured against the accuracy-weighted vote of the *other* rankings of the same replies
  and re-weighted a few times; their vote in the consensus (ranked pairs) weighs the
  log-odds of that accuracy, so a random ranker (τ near 0 over many rankings) loses its say.
  (A noisy Bradley–Terry fit, crowd-kit's ``NoisyBradleyTerry`` likelihood, was measured
  first: with three rankings a parent, its free reply scores follow whoever ranked them, and
  random rankers came out with skills of 0.9 — README, "Trust and spam removal".)
- trust: the probability that one of the annotator's judgements is right — the balanced
  label accuracy (sensitivity + specificity) / 2 and the pair accuracy, averaged over their
  labels and rankings (the evidence count), so neither part alone decides.
- colluding groups (projections/collusion.py, version ``trust-v2.1``): pairs whose votes agree
  on shared messages more than their accuracies predict for independent voters, linked into
  groups; a group's votes on one message count as one vote (each member's weighs 1/k).
  Version ``trust-v2`` (what older snapshots record) leaves that out: ``fit(view, "trust-v2")``.
- suspected, with the reasons: labels no better than chance (P(chance or contrary | votes) >
  ``SUSPECT_CHANCE``, judged against the other votes of each message: yes-sayers, flippers
  and coin-flippers alike), a pair accuracy < ``SUSPECT_PAIR_ACCURACY`` over ≥
  ``MIN_RANKINGS`` rankings, or membership of a colluding group.

Deterministic: sorted users, messages and parents, fixed iterations, no randomness.
crowd-kit itself is not called here: on arrays the fit is many times faster (README).
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from uuid import UUID

import numpy as np

from projections import collusion
from projections.consensus import ConsensusView
from projections.trust import kendall_tau

POLICY = "trust-v2"
# the version snapshots record; "trust-v2" (no colluding groups weighed as one) stays computable
VERSION = "trust-v2.1"
VERSIONS = ("trust-v2", VERSION)
EM_ITERATIONS = 50
LABEL_PRIOR = 0.8  # the prior annotator's sensitivity and specificity
LABEL_PRIOR_WEIGHT = 4.0  # worth this many votes
RANKING_PRIOR = 0.8  # the prior ranker's pair accuracy (without labels to go by)
RANKING_PRIOR_WEIGHT = 6.0  # worth this many pairs
RANKING_ITERATIONS = 5
ACCEPT = 0.5  # P(not spam) - lang_mismatch mean must exceed this
INFORMED_PRIOR_WEIGHT = 10.0  # an informed annotator's sensitivity and specificity: Beta(8, 2) each
SUSPECT_CHANCE = 0.9  # suspected when P(votes no better than chance) is above this
MIN_RANKINGS = 5
SUSPECT_PAIR_ACCURACY = 0.65


# --- labels: two-coin Dawid–Skene -------------------------------------------------------------


@dataclass
class LabelFit:
    users: list[UUID]
    sensitivity: np.ndarray
    specificity: np.ndarray
    counts: np.ndarray
    prior_spam: float
    p_spam: dict[UUID, float]  # per message with votes: P(spam | votes)
    p_chance: np.ndarray  # per annotator: P(their votes are no better than chance | votes)
    groups: dict[UUID, tuple[UUID, int]] = field(default_factory=dict)  # colluder: (group, messages shared)


def _votes(view: ConsensusView) -> list[tuple[UUID, list[tuple[UUID, int]]]]:
    """(message, its binarised spam review votes by user id in the order cast), messages in id
    order. (UUIDs hash and compare in Python: keys and sorts go by their ``int``.)"""
    items = []
    for mid, facts in view.labels.rows.items():
        votes = [(u, int(lab["spam"] >= 0.5)) for u, lab in facts.task_labels.items() if "spam" in lab]
        if votes:
            items.append((mid, votes))
    items.sort(key=lambda x: x[0].int)
    return items


def two_coin_em(
    who: np.ndarray,
    vote: np.ndarray,
    message: np.ndarray,
    n_users: int,
    n_messages: int,
    iterations: int = EM_ITERATIONS,
    prior_weight: float = LABEL_PRIOR_WEIGHT,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """EM on arrays (one row per vote): (sensitivity, specificity, P(spam) per message, prior).
    Starts from the majority vote and alternates E and M steps as crowd-kit's DawidSkene."""
    votes_per = np.bincount(message, minlength=n_messages)
    t = np.bincount(message, weights=vote, minlength=n_messages) / np.maximum(votes_per, 1)
    sens, spec, prior = _m_step(who, vote, t[message], n_users, prior_weight) + (float(t.mean()),)
    for _ in range(iterations):
        t = _e_step(who, vote, message, n_messages, sens, spec, prior)
        prior = float(t.mean())
        sens, spec = _m_step(who, vote, t[message], n_users, prior_weight)
    return sens, spec, t, prior


def _m_step(who, vote, t, n_users, prior_weight) -> tuple[np.ndarray, np.ndarray]:
    eps = 1e-10
    said_spam = np.bincount(who, weights=vote * t, minlength=n_users)
    spam = np.bincount(who, weights=t, minlength=n_users)
    said_ok = np.bincount(who, weights=(1 - vote) * (1 - t), minlength=n_users)
    ok = np.bincount(who, weights=1 - t, minlength=n_users)
    w = prior_weight
    sens = (np.maximum(said_spam, eps) + w * LABEL_PRIOR) / (np.maximum(spam, 2 * eps) + w)
    spec = (np.maximum(said_ok, eps) + w * LABEL_PRIOR) / (np.maximum(ok, 2 * eps) + w)
    return np.clip(sens, eps, 1 - eps), np.clip(spec, eps, 1 - eps)


def _e_step(who, vote, message, n_messages, sens, spec, prior, weight=None) -> np.ndarray:
    """P(spam | votes) per message, from log-likelihoods summed per message (each vote's times
    its ``weight``, if given)."""
    s, c = sens[who], spec[who]
    ls, lo = np.where(vote == 1, np.log(s), np.log(1 - s)), np.where(vote == 0, np.log(c), np.log(1 - c))
    if weight is not None:
        ls, lo = ls * weight, lo * weight
    log_spam = np.bincount(message, weights=ls, minlength=n_messages)
    log_ok = np.bincount(message, weights=lo, minlength=n_messages)
    prior = min(max(prior, 1e-10), 1 - 1e-10)
    return 1.0 / (1.0 + np.exp(math.log(1 - prior) - math.log(prior) + log_ok - log_spam))


def fit_labels(view: ConsensusView, version: str = VERSION) -> LabelFit:
    """Fitted without the votes of users marked spammers, on messages with two or more votes
    (one vote cannot disagree with anyone); the posterior is then taken for every message with
    a vote, and every annotator (marked spammers too) is scored against it. One row per vote,
    subsets by masks."""
    every = _votes(view)
    users = sorted({u for _, votes in every for u, _ in votes}, key=lambda u: u.int)
    who, vote, msg = _arrays([votes for _, votes in every], {u.int: i for i, u in enumerate(users)})
    keep = ~np.array([u in view.spammers for u in users], dtype=bool)[who] if users else np.zeros(0, dtype=bool)
    kept = np.bincount(msg[keep], minlength=len(every))
    fit_rows = keep & (kept[msg] >= 2)
    if fit_rows.any():
        _, compact = np.unique(msg[fit_rows], return_inverse=True)
        sens, spec, _, prior = two_coin_em(who[fit_rows], vote[fit_rows], compact, len(users), int(compact.max()) + 1)
    else:
        sens = spec = np.full(len(users), LABEL_PRIOR)
        prior = 0.5
    p = _e_step(who[keep], vote[keep], msg[keep], len(every), sens, spec, prior)
    # colluding groups: their votes on one message count as one (each member's weighs 1/k)
    lo = _leave_one_out(p[msg], who, vote, keep, sens, spec)
    rows = keep & (kept[msg] >= 2)
    group = collusion.groups(*collusion.pair_evidence(who[rows], vote[rows], msg[rows], lo[rows], sens, spec))
    weight = np.ones(len(who))
    if group and version != "trust-v2":
        gid = np.array([group[x][0] if x in group else -1 for x in range(len(users))])[who]
        member = keep & (gid >= 0)
        _, inverse = np.unique(np.stack([msg[member], gid[member]]), axis=1, return_inverse=True)
        weight[member] = 1.0 / np.bincount(inverse.ravel())[inverse.ravel()]
        p = _e_step(who[keep], vote[keep], msg[keep], len(every), sens, spec, prior, weight[keep])
        lo = _leave_one_out(p[msg], who, vote, keep * weight, sens, spec)
    decided = np.flatnonzero(kept >= 1)
    p_spam = dict(zip([every[i][0] for i in decided.tolist()], p[decided].tolist(), strict=True))
    # chance or not: judged against the posterior of the *other* votes of each message (their
    # own vote would confirm itself: a yes-sayer's "fine" talks a junk message into looking fine)
    others = kept[msg] - keep >= 1
    t = 1.0 / (1.0 + np.exp(-lo))
    p_chance = _p_chance(who[others], vote[others], t[others], len(users))
    # everybody's accuracy against those posteriors: one more M step, over every vote
    rows = (kept >= 1)[msg]
    sens, spec = _m_step(who[rows], vote[rows], p[msg[rows]], len(users), LABEL_PRIOR_WEIGHT)
    groups = {users[x]: (users[g], n) for x, (g, n) in group.items()}
    return LabelFit(users, sens, spec, np.bincount(who, minlength=len(users)), prior, p_spam, p_chance, groups)


def _leave_one_out(p, who, vote, weight, sens, spec) -> np.ndarray:
    """The log-odds of P(spam) of each vote's message without that vote: its log-likelihood ratio
    (times its ``weight`` in the posterior, 0 for votes left out) taken off the posterior's."""
    s, c = sens[who], spec[who]
    own = np.where(vote == 1, np.log(s) - np.log(1 - c), np.log(1 - s) - np.log(c)) * weight
    p = np.clip(p, 1e-300, 1 - 1e-16)
    return np.log(p) - np.log1p(-p) - own


def _two_coins(said_spam, missed, said_ok, false_alarm, a, b) -> np.ndarray:
    """log P(votes | sensitivity and specificity each Beta(a, b))."""
    right = _lbeta(said_spam + a, missed + b) + _lbeta(said_ok + a, false_alarm + b)
    return (right - 2 * _lbeta(a, b)).astype(float)


_lbeta = np.frompyfunc(lambda a, b: math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b), 2, 1)


def _p_chance(who, vote, t, n_users) -> np.ndarray:
    """P(an annotator's votes are no better than chance | their votes): an informed two-coin
    annotator (sensitivity and specificity each Beta around ``LABEL_PRIOR``) against chance
    (MACE's spammer: "spam" at a rate of its own, uniform prior, whatever the message) or
    contrary (informed, the wrong way round), by Beta marginal likelihoods of the expected
    counts, even prior odds. A yes-sayer (all "fine"), a coin-flipper (half and half) and a
    flipper are explained better by chance or contrary; an honest annotator with a few slips is not."""
    said_spam = np.bincount(who, weights=vote * t, minlength=n_users)
    missed = np.bincount(who, weights=(1 - vote) * t, minlength=n_users)
    said_ok = np.bincount(who, weights=(1 - vote) * (1 - t), minlength=n_users)
    false_alarm = np.bincount(who, weights=vote * (1 - t), minlength=n_users)
    a, b = INFORMED_PRIOR_WEIGHT * LABEL_PRIOR, INFORMED_PRIOR_WEIGHT * (1 - LABEL_PRIOR)
    informed = _two_coins(said_spam, missed, said_ok, false_alarm, a, b)
    contrary = _two_coins(said_spam, missed, said_ok, false_alarm, b, a)  # the wrong way round
    chance = _lbeta(said_spam + false_alarm + 1, said_ok + missed + 1).astype(float)
    bad = np.logaddexp(chance, contrary)
    return 1.0 / (1.0 + np.exp(np.clip(informed - bad, -700, 700)))


def _arrays(items: list[list[tuple[UUID, int]]], index: dict[int, int]) -> tuple[np.ndarray, ...]:
    """(voter, vote, message) per vote; ``index``: a voter's row by the ``int`` of their id."""
    lengths = [len(v) for v in items]
    who = np.fromiter((index[u.int] for votes in items for u, _ in votes), dtype=np.int64)
    vote = np.fromiter((v for votes in items for _, v in votes), dtype=np.float64)
    message = np.repeat(np.arange(len(items)), lengths)
    return who, vote, message


# --- rankings: each ranker's pair accuracy against the others ---------------------------------------


@dataclass
class RankingFit:
    users: list[UUID]
    accuracy: np.ndarray  # per ranker: P(a pair they rank is the right way round)
    counts: np.ndarray  # rankings per ranker
    weights: dict[UUID, float]  # their votes' weight in the consensus: log-odds of the accuracy, >= 0


def _pair_rows(view: ConsensusView) -> tuple[list[UUID], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rankers, rankings per ranker, owner of each ranked pair, and one row per (pair, other
    ranking of both replies): the pair's index, the other ranker, +1 where they agree)."""
    parents = [
        [(u, {x: i for i, x in enumerate(order)}) for u, order in facts.rankings]
        for _, facts in sorted(view.rankings.rows.items(), key=lambda x: str(x[0]))
    ]
    users = sorted({u for rankings in parents for u, _ in rankings}, key=str)
    index = {u: i for i, u in enumerate(users)}
    owner, rows = [], []
    for rankings in parents:
        for i, (u, pos) in enumerate(rankings):
            for a, b in ((a, b) for a in pos for b in pos if pos[a] < pos[b]):
                pair = len(owner)
                owner.append(index[u])
                rows.extend(
                    (pair, index[v], 1.0 if other[a] < other[b] else -1.0)
                    for j, (v, other) in enumerate(rankings)
                    if j != i and a in other and b in other
                )
    counts = np.bincount([index[u] for rankings in parents for u, _ in rankings], minlength=len(users))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return (
        users,
        counts,
        np.array(owner, dtype=np.int64),
        arr[:, 0].astype(np.int64),
        arr[:, 1].astype(np.int64),
        arr[:, 2],
    )


def fit_rankings(view: ConsensusView, prior_accuracy: dict[UUID, float] | None = None) -> RankingFit:
    """A one-coin model of the pairs each ranking implies: each ranker ranks a pair right with
    probability ``accuracy``, measured against the weighted vote of the *other* rankings of the
    same replies (never their own, which with three rankings a parent would confirm itself),
    the weights re-derived from the accuracies a few times. ``prior_accuracy`` (from their
    labels) is where a ranker with little evidence stays. Users marked spammers are scored
    too, but their rankings weigh nothing."""
    users, counts, owner, pair, other, agrees = _pair_rows(view)
    prior = np.array([(prior_accuracy or {}).get(u, RANKING_PRIOR) for u in users])
    marked = np.array([u in view.spammers for u in users], dtype=bool)
    accuracy = prior.copy()
    n_pairs = len(owner)
    for _ in range(RANKING_ITERATIONS):
        w = np.where(marked, 0.0, np.log(accuracy / (1 - accuracy)).clip(min=0.0))
        margin = np.bincount(pair, weights=w[other] * agrees, minlength=n_pairs)
        right = np.bincount(owner, weights=(margin > 0).astype(float), minlength=len(users))
        decided = np.bincount(owner, weights=(margin != 0).astype(float), minlength=len(users))
        k = RANKING_PRIOR_WEIGHT
        accuracy = ((right + k * prior) / (decided + k)).clip(0.01, 0.99)
    weights = np.log(accuracy / (1 - accuracy)).clip(min=0.0)
    return RankingFit(users, accuracy, counts, dict(zip(users, weights.tolist(), strict=True)))


# --- trust --------------------------------------------------------------------------------------


@dataclass
class Trust:
    user_id: UUID
    score: float  # P(a judgement of theirs is right): labels and ranked pairs, by their counts
    label_accuracy: float | None  # balanced: (sensitivity + specificity) / 2
    labels: int
    ranking_accuracy: float | None  # P(a pair they rank is the right way round)
    rankings: int
    suspected: bool
    reasons: list[str] = field(default_factory=list)
    ranking_tau: float | None = None  # mean Kendall τ of their rankings with the consensus order (for display)

    @property
    def evidence(self) -> int:
        return self.labels + self.rankings

    def as_dict(self) -> dict:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "user_id": str(self.user_id),
            "score": round(self.score, 4),
            "policy": POLICY,
            "evidence": self.evidence,
            "label_accuracy": r(self.label_accuracy),
            "labels": self.labels,
            "ranking_accuracy": r(self.ranking_accuracy),
            "ranking_tau": r(self.ranking_tau),
            "rankings": self.rankings,
            "suspected_spammer": self.suspected,
            "reasons": self.reasons,
        }


@dataclass
class Model:
    """Both fits of one consensus view: trust per annotator, and the decisions they give."""

    view: ConsensusView
    labels: LabelFit
    rankings: RankingFit
    trust: dict[UUID, Trust]

    @property
    def weights(self) -> dict[UUID, float]:
        return {u: t.score for u, t in self.trust.items()}

    def acceptance(self, message_id: UUID) -> float | None:
        """P(not spam | votes) minus the trust-weighted lang_mismatch mean; None without votes."""
        p_spam = self.labels.p_spam.get(message_id)
        if p_spam is None:
            return None
        mismatch = self.view.label_aggregates(message_id, trust=self.weights).get("lang_mismatch")
        return 1.0 - p_spam - (mismatch["value"] if mismatch else 0.0)

    def accepted(self, message_id: UUID) -> bool | None:
        score = self.acceptance(message_id)
        return None if score is None else bool(round(score, 6) > ACCEPT)

    def ranking_consensus(self, parent_id: UUID) -> list[UUID]:
        """Ranked pairs with each ranker's vote weighted by the log-odds of their pair accuracy."""
        return self.view.ranking_consensus(parent_id, trust=self.rankings.weights)


def _reasons(p_chance: float | None, n_labels: int, rank_acc: float | None, n_rankings: int) -> list[str]:
    out = []
    if p_chance is not None and p_chance > SUSPECT_CHANCE:
        out.append(f"spam labels no better than chance: P = {p_chance:.2f} over {n_labels} labels")
    if rank_acc is not None and n_rankings >= MIN_RANKINGS and rank_acc < SUSPECT_PAIR_ACCURACY:
        out.append(
            f"rankings no better than chance: {rank_acc:.0%} of their ranked pairs agree with the other "
            f"rankers over {n_rankings} rankings"
        )
    return out


def _trust(user: UUID, lab: tuple | None, rank: tuple | None, p_chance: float | None, together: tuple | None) -> Trust:
    acc, n_l = lab if lab else (None, 0)
    rank_acc, n_r = rank if rank else (None, 0)
    parts = [part for part in (lab, rank) if part]
    total = sum(n for _, n in parts)
    score = sum(p * n for p, n in parts) / total if total else 0.5
    reasons = _reasons(p_chance, n_l, rank_acc, n_r)
    if together:
        reasons.append(f"votes together with {together[0]} others on {together[1]} shared messages")
    return Trust(user, score, acc, n_l, rank_acc, n_r, bool(reasons), reasons)


def fit(view: ConsensusView, version: str = VERSION) -> Model:
    """Both fits, as ``version`` of the policy made them. The cyclic garbage collector is paused
    meanwhile: the fit makes a million short-lived tuples at OA's size, and rescanning the views'
    long-lived rows for them doubled its time."""
    if version not in VERSIONS:
        raise ValueError(f"unknown trust-v2 version {version!r} (one of {VERSIONS})")
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _fit(view, version)
    finally:
        if enabled:
            gc.enable()


def _fit(view: ConsensusView, version: str) -> Model:
    """Labels first: a ranker's balanced label accuracy is their prior pair accuracy, so one who
    votes blindly needs less ranking evidence to lose their say there too."""
    labels = fit_labels(view, version)
    lab = {
        u: (float(labels.sensitivity[i] + labels.specificity[i]) / 2, int(labels.counts[i]))
        for i, u in enumerate(labels.users)
    }
    rankings = fit_rankings(view, prior_accuracy={u: min(max(acc, 0.5), 0.95) for u, (acc, _) in lab.items()})
    rank = {u: (float(rankings.accuracy[i]), int(rankings.counts[i])) for i, u in enumerate(rankings.users)}
    chance = dict(zip(labels.users, labels.p_chance.tolist(), strict=True))
    size: dict[UUID, int] = {}
    for g, _ in labels.groups.values():
        size[g] = size.get(g, 0) + 1
    together = {u: (size[g] - 1, n) for u, (g, n) in labels.groups.items()}
    trust = {
        u: _trust(u, lab.get(u), rank.get(u), chance.get(u), together.get(u))
        for u in sorted(set(lab) | set(rank), key=str)
    }
    model = Model(view, labels, rankings, trust)
    for u, tau in _taus(model).items():
        trust[u].ranking_tau = tau
    return model


def _taus(model: Model) -> dict[UUID, float]:
    """Each ranker's mean Kendall τ with the consensus order of the replies they ranked."""
    sums: dict[UUID, list] = {}
    out = model.view.spammers.frozen()
    for parent_id, facts in model.view.rankings.rows.items():
        consensus = model.ranking_consensus(parent_id)
        for u, order in facts.rankings:
            tau = kendall_tau(order, consensus) if u not in out else None
            if tau is not None:
                acc = sums.setdefault(u, [0.0, 0])
                acc[0] += tau
                acc[1] += 1
    return {u: total / n for u, (total, n) in sums.items()}


def compute_trust(view: ConsensusView) -> dict[UUID, Trust]:
    return fit(view).trust
