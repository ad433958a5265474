"""Annotator trust, policy ``trust-v2``: models of each annotator's errors, and decisions
taken from the models' posteriors rather than from weighted means against fixed thresholds.

- labels: a two-coin Dawid–Skene model over the binarised ``spam`` review labels: each
  annotator has a sensitivity (says spam when it is) and a specificity (says not spam when
  it is not), the messages a class prior; fitted by EM as crowd-kit's ``DawidSkene`` does
  (majority-vote start, E then M), with pseudo-counts toward a prior annotator so that
  one with few labels is not certain after three votes (crowd-kit has no such smoothing;
  with ``LABEL_PRIOR_WEIGHT = 0`` the fit is crowd-kit's, tests/test_trust_v2.py compares).
  A message is accepted when P(not spam | its votes) − its lang_mismatch mean clears 0.5:
  unanimous votes decide as OA's rule does; split votes are weighed by who cast them.
- rankings: a noisy Bradley–Terry model (crowd-kit's ``NoisyBradleyTerry`` likelihood) over
  the pairs each ranking implies: a ranker follows the replies' hidden scores with
  probability ``skill`` and flips a coin otherwise. Skills and scores are fitted jointly,
  so a random ranker (τ near 0 over many rankings) loses its say; replies are ordered by
  their fitted scores. Pairs have no left/right side here (they are ordered by id), so
  crowd-kit's per-worker side bias is left out, and Gaussian priors keep scores finite and
  a ranker with few rankings near the prior skill.
- trust: the probability that one of the annotator's judgements is right under the
  models — balanced label accuracy (sensitivity + specificity) / 2, and for rankings the
  model's probability that a pair they ranked agrees with the fitted order — averaged over
  their labels and rankings (the evidence count), so neither part alone decides.
- suspected, with the reason: labels no better than chance (sensitivity + specificity − 1 <
  ``SUSPECT_INFORMEDNESS`` over ≥ ``MIN_LABELS`` labels: yes-sayers, flippers and
  coin-flippers alike), or rankings followed with skill < ``SUSPECT_SKILL`` over ≥
  ``MIN_RANKINGS`` rankings.

Deterministic: sorted users and messages, fixed iterations, a deterministic optimiser start.
crowd-kit itself is not called here: on arrays the fit is ~20× faster at OA's size (README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from uuid import UUID

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from projections.consensus import ConsensusView, ranked_pairs

POLICY = "trust-v2"
EM_ITERATIONS = 50
LABEL_PRIOR = 0.8  # the prior annotator's sensitivity and specificity
LABEL_PRIOR_WEIGHT = 4.0  # worth this many votes
SKILL_PRIOR = 0.7  # the prior ranker follows the order this often
SKILL_PRIOR_PRECISION = 1.0  # of a Gaussian prior on the skill's log-odds
SCORE_PRECISION = 0.2  # of a Gaussian prior on the replies' scores (keeps them finite)
ACCEPT = 0.5  # P(not spam) - lang_mismatch mean must exceed this
MIN_LABELS = 8
SUSPECT_INFORMEDNESS = 0.35
MIN_RANKINGS = 5
SUSPECT_SKILL = 0.3


# --- labels: two-coin Dawid–Skene -------------------------------------------------------------


@dataclass
class LabelFit:
    users: list[UUID]
    sensitivity: np.ndarray
    specificity: np.ndarray
    counts: np.ndarray
    prior_spam: float
    p_spam: dict[UUID, float]  # per message with votes: P(spam | votes)


def _votes(view: ConsensusView) -> list[tuple[UUID, list[tuple[UUID, int]]]]:
    """(message, its binarised spam review votes by user id), users marked spammers left out."""
    out = view.spammers.frozen()
    items = []
    for mid, facts in view.labels.rows.items():
        votes = [
            (u, int(facts.task_labels[u]["spam"] >= 0.5))
            for u in facts.task_users
            if u not in out and "spam" in facts.task_labels.get(u, {})
        ]
        if votes:
            items.append((mid, sorted(votes, key=lambda v: str(v[0]))))
    items.sort(key=lambda x: str(x[0]))
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


def _e_step(who, vote, message, n_messages, sens, spec, prior) -> np.ndarray:
    """P(spam | votes) per message, from log-likelihoods summed per message."""
    s, c = sens[who], spec[who]
    log_spam = np.bincount(message, weights=np.where(vote == 1, np.log(s), np.log(1 - s)), minlength=n_messages)
    log_ok = np.bincount(message, weights=np.where(vote == 0, np.log(c), np.log(1 - c)), minlength=n_messages)
    prior = min(max(prior, 1e-10), 1 - 1e-10)
    return expit(math.log(prior) - math.log(1 - prior) + log_spam - log_ok)


def fit_labels(view: ConsensusView) -> LabelFit:
    """Fitted on messages with two or more votes (one vote cannot disagree with anyone); the
    posterior is then taken for every message with a vote."""
    items = _votes(view)
    users = sorted({u for _, votes in items for u, _ in votes}, key=str)
    index = {u: i for i, u in enumerate(users)}
    fit_items = [votes for _, votes in items if len(votes) >= 2]
    who, vote, msg = _arrays(fit_items, index)
    if len(fit_items):
        sens, spec, _, prior = two_coin_em(who, vote, msg, len(users), len(fit_items))
    else:
        sens = spec = np.full(len(users), LABEL_PRIOR)
        prior = 0.5
    who, vote, msg = _arrays([votes for _, votes in items], index)
    p = _e_step(who, vote, msg, len(items), sens, spec, prior) if items else np.zeros(0)
    counts = np.bincount(who, minlength=len(users))
    return LabelFit(users, sens, spec, counts, prior, dict(zip((m for m, _ in items), p.tolist(), strict=True)))


def _arrays(items: list[list[tuple[UUID, int]]], index: dict[UUID, int]) -> tuple[np.ndarray, ...]:
    lengths = [len(v) for v in items]
    who = np.fromiter((index[u] for votes in items for u, _ in votes), dtype=np.int64)
    vote = np.fromiter((v for votes in items for _, v in votes), dtype=np.float64)
    message = np.repeat(np.arange(len(items)), lengths)
    return who, vote, message


# --- rankings: noisy Bradley–Terry --------------------------------------------------------------


@dataclass
class RankingFit:
    users: list[UUID]
    skill: np.ndarray
    agreement: np.ndarray  # per ranker: the model's P(a pair they ranked agrees with the fitted order)
    counts: np.ndarray  # rankings per ranker
    scores: dict[UUID, float]  # per reply


def ranking_pairs(view: ConsensusView) -> tuple:
    """(rankers, replies, rankings per ranker, who, left, right, y): one row per pair a ranking
    implies, left the reply with the smaller id, y = +1 when the ranker put it first."""
    out = view.spammers.frozen()
    rankings = [
        (u, order)
        for _, facts in sorted(view.rankings.rows.items(), key=lambda x: str(x[0]))
        for u, order in facts.rankings
        if u not in out and len(order) >= 2
    ]
    users = sorted({u for u, _ in rankings}, key=str)
    replies = sorted({x for _, order in rankings for x in order}, key=str)
    ui, ri = {u: i for i, u in enumerate(users)}, {x: i for i, x in enumerate(replies)}
    rows = []
    for u, order in rankings:
        for i, a in enumerate(order):
            for b in order[i + 1 :]:  # a was ranked above b
                left, right = (a, b) if str(a) < str(b) else (b, a)
                rows.append((ui[u], ri[left], ri[right], 1.0 if left == a else -1.0))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 4)
    counts = np.bincount(np.fromiter((ui[u] for u, _ in rankings), dtype=np.int64), minlength=len(users))
    who, left, right = (arr[:, k].astype(np.int64) for k in range(3))
    return users, replies, counts, who, left, right, arr[:, 3]


def nbt_objective(x, who, left, right, y, n_items, n_users, score_precision, skill_precision):
    """Negative log-likelihood of crowd-kit's noisy Bradley–Terry without the side bias
    (P(y) = σ(γ_w)·σ(y(s_l − s_r)) + (1 − σ(γ_w))/2), plus the Gaussian priors; and its gradient."""
    s, gamma = x[:n_items], x[n_items:]
    g = expit(gamma)[who]
    p = expit(y * (s[left] - s[right]))
    lik = g * p + (1 - g) / 2
    gamma0 = math.log(SKILL_PRIOR / (1 - SKILL_PRIOR))
    value = -np.log(lik).sum() + score_precision * (s @ s) / 2 + skill_precision * ((gamma - gamma0) ** 2).sum() / 2
    d_delta = -(g * p * (1 - p) * y) / lik
    grad_s = np.bincount(left, weights=d_delta, minlength=n_items) - np.bincount(
        right, weights=d_delta, minlength=n_items
    )
    d_gamma = -(g * (1 - g) * (p - 0.5)) / lik
    grad_g = np.bincount(who, weights=d_gamma, minlength=n_users)
    return value, np.concatenate([grad_s + score_precision * s, grad_g + skill_precision * (gamma - gamma0)])


def fit_rankings(
    view: ConsensusView, score_precision: float = SCORE_PRECISION, skill_precision: float = SKILL_PRIOR_PRECISION
) -> RankingFit:
    users, replies, counts, who, left, right, y = ranking_pairs(view)
    if not len(y):
        return RankingFit(users, np.zeros(len(users)), np.zeros(len(users)), counts, {})
    x0 = np.concatenate([np.zeros(len(replies)), np.full(len(users), math.log(SKILL_PRIOR / (1 - SKILL_PRIOR)))])
    args = (who, left, right, y, len(replies), len(users), score_precision, skill_precision)
    x = minimize(nbt_objective, x0, args=args, jac=True, method="L-BFGS-B", options={"maxiter": 500}).x
    s, skill = x[: len(replies)], expit(x[len(replies) :])
    g = skill[who]
    agree = g * expit(np.abs(s[left] - s[right])) + (1 - g) / 2
    pairs = np.bincount(who, minlength=len(users))
    agreement = np.bincount(who, weights=agree, minlength=len(users)) / np.maximum(pairs, 1)
    return RankingFit(users, skill, agreement, counts, dict(zip(replies, s.tolist(), strict=True)))


# --- trust --------------------------------------------------------------------------------------


@dataclass
class Trust:
    user_id: UUID
    score: float  # P(a judgement of theirs is right)
    label_accuracy: float | None  # balanced: (sensitivity + specificity) / 2
    labels: int
    ranking_skill: float | None
    rankings: int
    suspected: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def evidence(self) -> int:
        return self.labels + self.rankings

    def as_dict(self) -> dict:
        return {
            "user_id": str(self.user_id),
            "score": round(self.score, 4),
            "policy": POLICY,
            "evidence": self.evidence,
            "label_accuracy": None if self.label_accuracy is None else round(self.label_accuracy, 4),
            "labels": self.labels,
            "ranking_skill": None if self.ranking_skill is None else round(self.ranking_skill, 4),
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
        """The ranked replies by fitted score (ranked pairs where no fitted score is known)."""
        facts = self.view.rankings.get(parent_id)
        if facts is None:
            return []
        fallback = ranked_pairs([o for u, o in facts.rankings if u not in self.view.spammers])
        scores = self.rankings.scores
        if not all(x in scores for x in fallback):
            return fallback
        return sorted(fallback, key=lambda x: (-scores[x], str(x)))


def _reasons(label_acc: float | None, n_labels: int, skill: float | None, n_rankings: int) -> list[str]:
    out = []
    if label_acc is not None and n_labels >= MIN_LABELS and 2 * label_acc - 1 < SUSPECT_INFORMEDNESS:
        out.append(f"spam labels no better than chance: balanced accuracy {label_acc:.2f} over {n_labels} labels")
    if skill is not None and n_rankings >= MIN_RANKINGS and skill < SUSPECT_SKILL:
        out.append(f"rankings follow the consensus order with skill {skill:.2f} over {n_rankings} rankings")
    return out


def _trust(user: UUID, lab: tuple | None, rank: tuple | None) -> Trust:
    acc, n_l = (lab[0], lab[1]) if lab else (None, 0)
    skill, agree, n_r = rank if rank else (None, None, 0)
    parts = [(acc, n_l)] if lab else []
    if rank:
        parts.append((agree, n_r))
    total = sum(n for _, n in parts)
    score = sum(p * n for p, n in parts) / total if total else 0.5
    reasons = _reasons(acc, n_l, skill, n_r)
    return Trust(user, score, acc, n_l, skill, n_r, bool(reasons), reasons)


def fit(view: ConsensusView) -> Model:
    labels, rankings = fit_labels(view), fit_rankings(view)
    lab = {
        u: (float(labels.sensitivity[i] + labels.specificity[i]) / 2, int(labels.counts[i]))
        for i, u in enumerate(labels.users)
    }
    rank = {
        u: (float(rankings.skill[i]), float(rankings.agreement[i]), int(rankings.counts[i]))
        for i, u in enumerate(rankings.users)
    }
    trust = {u: _trust(u, lab.get(u), rank.get(u)) for u in sorted(set(lab) | set(rank), key=str)}
    return Model(view, labels, rankings, trust)


def compute_trust(view: ConsensusView) -> dict[UUID, Trust]:
    return fit(view).trust
