"""Retroactive spam removal and trust (both backends, over HTTP)."""

from __future__ import annotations

import pytest

from devkit.simulator import seed_history_async
from infra.store import EventStore
from projections.consensus import ConsensusView
from projections.trust import EM_ITERATIONS, kendall_tau, label_accuracies, spam_votes
from tests.frontend import acked_task, answer_for, do_task, events, user

ALICE, BOB, CAROL, DAVE, MALLORY = (user(n) for n in ("alice", "bob", "carol", "dave", "mallory"))


async def position(client) -> int:
    return (await client.get("/api/v1/events", params={"limit": 10000})).json()["last_position"]


async def get(client, url: str, **params):
    r = await client.get(url, params={"min_position": await position(client), **params})
    assert r.status_code == 200, r.text
    return r.json()


async def review(client, who, spam: float) -> None:
    task, fid = await acked_task(client, who, "label_initial_prompt")
    r = await client.post("/api/v1/tasks/interaction", json=answer_for(task, who, fid, spam=spam))
    assert r.status_code == 200, r.text


async def uid(client, who) -> str:
    return (await get(client, f"/api/v1/frontend_users/local/{who['id']}"))["user_id"]


async def test_marking_a_spammer_recomputes_acceptance_tree_state_and_boards_and_unmarking_restores(client):
    await do_task(client, ALICE, "initial_prompt")
    prompt = next(e["event"]["message_id"] for e in await events(client) if e["type"] == "initial_prompt_submitted")
    await review(client, MALLORY, spam=1.0)
    await review(client, BOB, spam=0.0)
    # one spam vote in two: 1 - 0.5 = 0.5 <= 0.6, rejected
    assert (await get(client, f"/api/v1/messages/{prompt}/tree/state"))["state"] == "aborted_low_grade"
    assert (await get(client, f"/api/v1/messages/{prompt}"))["review_result"] is False
    assert (await get(client, f"/api/v1/consensus/messages/{prompt}"))["policies"]["oa"]["acceptance"] == 0.5
    mallory = await uid(client, MALLORY)
    board = {r["username"] for r in (await get(client, "/api/v1/leaderboards/total"))["leaderboard"]}
    assert "mallory" in board

    assert (await client.post(f"/api/v1/admin/users/{mallory}/spammer")).status_code == 204
    state = (await get(client, f"/api/v1/messages/{prompt}/tree/state"))["state"]
    assert state in ("prompt_lottery_waiting", "growing")  # accepted after all, back in the flow
    assert (await get(client, f"/api/v1/messages/{prompt}"))["review_result"] is True
    consensus = await get(client, f"/api/v1/consensus/messages/{prompt}")
    assert consensus["policies"]["oa"]["acceptance"] == 1.0
    assert [a["excluded_as_spammer"] for a in consensus["annotators"] if a["user_id"] == mallory] == [True]
    board = {r["username"] for r in (await get(client, "/api/v1/leaderboards/total"))["leaderboard"]}
    assert "mallory" not in board and "bob" in board
    reasons = [e["event"]["reason"] for e in await events(client) if e["type"] == "tree_state_changed"]
    assert "review_changed" in reasons

    assert (await client.delete(f"/api/v1/admin/users/{mallory}/spammer")).status_code == 204
    assert (await get(client, f"/api/v1/messages/{prompt}/tree/state"))["state"] == "aborted_low_grade"
    assert (await get(client, f"/api/v1/messages/{prompt}"))["review_result"] is False
    assert (await get(client, f"/api/v1/consensus/messages/{prompt}"))["policies"]["oa"]["acceptance"] == 0.5


async def test_a_spammers_messages_and_their_subtrees_disappear_from_reads_until_unmarked(client):
    await do_task(client, MALLORY, "initial_prompt")
    prompt = next(e["event"]["message_id"] for e in await events(client) if e["type"] == "initial_prompt_submitted")
    assert len(await get(client, "/api/v1/messages/")) == 1
    mallory = await uid(client, MALLORY)
    await client.post(f"/api/v1/admin/users/{mallory}/spammer")
    assert await get(client, "/api/v1/messages/") == []
    assert (await get(client, "/api/v1/stats/"))["active"] == 0
    assert (await get(client, f"/api/v1/messages/{prompt}/tree/state"))["state"] == "halted_by_moderator"
    await client.delete(f"/api/v1/admin/users/{mallory}/spammer")
    assert len(await get(client, "/api/v1/messages/")) == 1
    assert (await get(client, f"/api/v1/messages/{prompt}/tree/state"))["state"] == "initial_prompt_review"


async def test_a_contrarian_labeller_loses_trust_and_is_suspected(three_reviewers):
    client = three_reviewers
    for i in range(6):
        await do_task(client, user(f"author{i}"), "initial_prompt")
        await review(client, BOB, 0.0)
        await review(client, CAROL, 0.0)
        await review(client, MALLORY, 1.0)  # says spam where everybody else says not
    trust = {t["user_id"]: t for t in (await get(client, "/api/v1/trust", policy="trust-v1"))["items"]}
    bob, carol, mallory = [trust[await uid(client, w)] for w in (BOB, CAROL, MALLORY)]
    assert bob["score"] > 0.6 and carol["score"] > 0.6 and bob["labels"] == 6
    assert mallory["score"] < 0.35 and mallory["suspected_spammer"]
    assert not bob["suspected_spammer"]
    assert (await get(client, f"/api/v1/trust/{mallory['user_id']}", policy="trust-v1"))["score"] == mallory["score"]
    suspects = await client.get("/api/v1/admin/suspected_spammers", params={"policy": "trust-v1"})
    assert [s["username"] for s in suspects.json()["items"]] == ["mallory"]
    # OA counts mallory's vote like any other; the trust policy almost ignores it
    prompt = next(e["event"]["message_id"] for e in await events(client) if e["type"] == "initial_prompt_submitted")
    policies = (await get(client, f"/api/v1/consensus/messages/{prompt}"))["policies"]
    assert round(policies["oa"]["acceptance"], 3) == 0.667
    assert policies["trust"]["acceptance"] > 0.85
    assert (await get(client, f"/api/v1/consensus/messages/{prompt}", policy="trust"))["policies"].keys() == {"trust"}


def test_kendall_tau():
    assert kendall_tau(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert kendall_tau(["a", "b", "c"], ["c", "b", "a"]) == -1.0
    assert kendall_tau(["a", "b"], ["x", "a"]) is None


def loop_accuracies(items: list[list[tuple]]) -> tuple[dict, dict]:
    """The one-coin Dawid–Skene EM as a plain loop over messages and votes (the reference)."""
    counts: dict = {}
    for votes in items:
        for u, _ in votes:
            counts[u] = counts.get(u, 0) + 1
    accuracy, prior_spam = {u: 0.8 for u in counts}, 0.2
    for _ in range(EM_ITERATIONS):
        posteriors = []
        for votes in items:
            p_spam, p_ok = prior_spam, 1 - prior_spam
            for u, v in votes:
                a = min(max(accuracy[u], 0.01), 0.99)
                p_spam *= a if v == 1 else 1 - a
                p_ok *= a if v == 0 else 1 - a
            posteriors.append(p_spam / (p_spam + p_ok))
        agree = {u: 0.0 for u in counts}
        for votes, p in zip(items, posteriors, strict=True):
            for u, v in votes:
                agree[u] += p if v == 1 else 1 - p
        accuracy = {u: (agree[u] + 1) / (counts[u] + 2) for u in counts}
        prior_spam = min(max(sum(posteriors) / len(posteriors), 0.01), 0.99) if posteriors else 0.2
    return accuracy, counts


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_label_accuracies_on_arrays_equal_the_loop_to_the_bit(tmp_path, seed):
    url = f"sqlite:///{tmp_path / 'trust.sqlite3'}"
    await seed_history_async(url, trees=30, users=20, seed=seed)
    store = EventStore(url)
    view = ConsensusView()
    for position, event in store.read(0, 1_000_000):
        view.apply(position, event)
    store.close()
    items = spam_votes(view)
    assert len(items) > 50 and any(v == 1 for votes in items for _, v in votes)  # spam among the votes
    accuracy, counts = label_accuracies(view)
    want_accuracy, want_counts = loop_accuracies(items)
    assert counts == want_counts and list(accuracy) == list(want_accuracy)
    assert accuracy == want_accuracy  # floats compared exactly: the same operations in the same order
    assert label_accuracies(ConsensusView()) == ({}, {})
