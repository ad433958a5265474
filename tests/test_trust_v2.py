"""trust-v2: its fits against crowd-kit's on small data, and the decisions it takes."""

from __future__ import annotations

import random
from uuid import UUID, uuid4

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import check_grad

from domain.config import TreeConfig
from projections import trust_v2
from projections.consensus import ConsensusView, LabelFacts, RankingFacts, ranked_pairs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")  # crowd-kit on pandas 3


def _ids(n: int, seed: int) -> list[UUID]:
    rng = random.Random(seed)
    return sorted((UUID(int=rng.getrandbits(128)) for _ in range(n)), key=str)


def view_with(votes: dict[UUID, dict[UUID, int]], rankings: dict[UUID, list] | None = None) -> ConsensusView:
    """A consensus view holding review votes {message: {user: spam 0/1}} and rankings."""
    view = ConsensusView()
    for mid, by in votes.items():
        labels = {u: {"spam": float(v), "lang_mismatch": 0.0} for u, v in by.items()}
        view.labels.put(mid, LabelFacts(by_user=labels, task_users=list(by), task_labels=labels))
    for pid, items in (rankings or {}).items():
        view.rankings.put(pid, RankingFacts(rankings=items))
    return view


def crowd(seed: int, n_users: int = 12, n_messages: int = 150, bad: int = 3) -> tuple[dict, list, dict]:
    """Three votes per message; the first ``bad`` users say "not spam" to everything."""
    rng = random.Random(seed)
    users, messages = _ids(n_users, seed), _ids(n_messages, seed + 1)
    truth = {m: rng.random() < 0.4 for m in messages}
    votes = {}
    for m in messages:
        votes[m] = {
            u: 0 if users.index(u) < bad else int(truth[m] != (rng.random() < 0.1)) for u in rng.sample(users, 3)
        }
    return votes, users, truth


def test_two_coin_em_without_smoothing_is_crowd_kits_dawid_skene():
    from crowdkit.aggregation import DawidSkene

    votes, users, _ = crowd(1)
    items = [sorted(by.items(), key=lambda v: str(v[0])) for _, by in sorted(votes.items(), key=lambda x: str(x[0]))]
    index = {u: i for i, u in enumerate(users)}
    who, vote, msg = trust_v2._arrays(items, index)
    sens, spec, p_spam, prior = trust_v2.two_coin_em(who, vote, msg, len(users), len(items), 10, prior_weight=0.0)
    frame = pd.DataFrame({"task": msg, "worker": who, "label": vote.astype(int)})
    ds = DawidSkene(n_iter=10, tol=-1e9).fit(frame)
    assert np.allclose(p_spam, ds.probas_.sort_index()[1].to_numpy(), atol=1e-6)
    assert prior == pytest.approx(ds.priors_[1], abs=1e-6)
    errors = ds.errors_  # P(observed | true), indexed by (worker, observed)
    for w in range(len(users)):
        if (w, 1) in errors.index:
            assert sens[w] == pytest.approx(errors.loc[(w, 1), 1], abs=1e-6)
        if (w, 0) in errors.index:
            assert spec[w] == pytest.approx(errors.loc[(w, 0), 0], abs=1e-6)


def test_noisy_bradley_terry_likelihood_is_crowd_kits_without_side_bias():
    from crowdkit.aggregation import NoisyBradleyTerry

    rng = np.random.default_rng(3)
    n_items, n_users, n_pairs = 7, 4, 40
    who = rng.integers(0, n_users, n_pairs)
    left = rng.integers(0, n_items - 1, n_pairs)
    right = left + 1 + rng.integers(0, n_items - 1 - left)
    y = rng.choice([-1.0, 1.0], n_pairs)
    x = rng.normal(size=n_items + n_users)
    ours, _ = trust_v2.nbt_objective(x, who, left, right, y, n_items, n_users, 0.0, 0.0)
    # crowd-kit's layout: [reference, scores, side biases q, skills γ], items numbered from 1
    ck = np.concatenate([[0.0], x[:n_items], np.zeros(n_users), x[n_items:]])
    label = np.where(y > 0, left, right) + 1
    data = np.stack([left + 1, right + 1, label], axis=1)
    theirs = NoisyBradleyTerry._compute_log_likelihood(ck, data, who, n_items, n_users, 0.0)
    assert ours == pytest.approx(theirs, rel=1e-12)
    args = (who, left, right, y, n_items, n_users, 0.3, 1.0)
    error = check_grad(lambda v: trust_v2.nbt_objective(v, *args)[0], lambda v: trust_v2.nbt_objective(v, *args)[1], x)
    assert error < 1e-5


@pytest.mark.parametrize("voters", [1, 2, 3, 5])
@pytest.mark.parametrize("spam", [0, 1])
def test_unanimous_votes_decide_as_oas_rule(voters, spam):
    votes, users, _ = crowd(2, bad=0)
    message = uuid4()
    votes[message] = {u: spam for u in users[:voters]}
    model = trust_v2.fit(view_with(votes))
    oa = view_with(votes).acceptance(message) > TreeConfig().acceptance_threshold_reply
    assert model.accepted(message) is oa is (spam == 0)


def test_split_votes_follow_the_reliable_annotators_and_yes_sayers_are_suspected():
    votes, users, truth = crowd(4, bad=3)
    yes_sayers, honest = users[:3], users[3:]
    model = trust_v2.fit(view_with(votes))
    # a spam message the yes-sayers outvote: OA accepts it, trust-v2 does not
    message = uuid4()
    votes[message] = {yes_sayers[0]: 0, yes_sayers[1]: 0, honest[0]: 1}
    view = view_with(votes)
    model = trust_v2.fit(view)
    assert view.acceptance(message) > 0.6 and model.accepted(message) is False
    assert all(model.trust[u].suspected for u in yes_sayers)
    assert not any(model.trust[u].suspected for u in honest)
    assert "spam labels no better than chance" in model.trust[yes_sayers[0]].reasons[0]
    assert min(model.trust[u].score for u in honest) > max(model.trust[u].score for u in yes_sayers)


def rankings_with_a_random_ranker(seed: int) -> tuple[dict, list[UUID], UUID, dict]:
    """Parents of four replies each ranked by two of three honest rankers and a random one."""
    rng = random.Random(seed)
    honest, (shuffler,) = _ids(3, seed), _ids(1, seed + 7)
    parents, truth = {}, {}
    for pid in _ids(40, seed + 1):
        replies = _ids(4, rng.getrandbits(32))
        truth[pid] = replies  # best first
        random_order = replies[:]
        rng.shuffle(random_order)
        parents[pid] = [(u, replies) for u in rng.sample(honest, 2)] + [(shuffler, random_order)]
    return parents, honest, shuffler, truth


def test_a_random_ranker_is_weighed_down_and_suspected_with_the_reason():
    parents, honest, shuffler, truth = rankings_with_a_random_ranker(5)
    model = trust_v2.fit(view_with({}, parents))
    skill = {u: model.trust[u].ranking_skill for u in [*honest, shuffler]}
    assert skill[shuffler] < trust_v2.SUSPECT_SKILL < min(skill[u] for u in honest)
    assert model.trust[shuffler].suspected and not any(model.trust[u].suspected for u in honest)
    assert "rankings follow the consensus order" in model.trust[shuffler].reasons[0]
    for pid, best_first in truth.items():
        assert model.ranking_consensus(pid) == best_first


def test_trust_is_a_probability_with_its_evidence_and_the_same_view_gives_the_same_scores():
    votes, users, _ = crowd(6)
    parents, *_ = rankings_with_a_random_ranker(6)
    view = view_with(votes, parents)
    first, again = trust_v2.compute_trust(view), trust_v2.compute_trust(view)
    assert first == again
    for t in first.values():
        assert 0.0 <= t.score <= 1.0 and t.evidence == t.labels + t.rankings > 0
        assert t.as_dict()["policy"] == "trust-v2"


def test_users_marked_spammers_are_left_out():
    votes, users, _ = crowd(7)
    view = view_with(votes)
    view.spammers.add(users[5])
    assert users[5] not in trust_v2.compute_trust(view)


def test_no_votes_no_rankings():
    model = trust_v2.fit(ConsensusView())
    assert model.trust == {} and model.accepted(uuid4()) is None and model.ranking_consensus(uuid4()) == []
    assert ranked_pairs([]) == []
