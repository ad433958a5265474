"""End to end over HTTP: several users grow a tree, with small settings, from the
initial prompt through review, growing, labelling and ranking to ready_for_export."""

from __future__ import annotations

from uuid import UUID

from litestar.testing import AsyncTestClient

from infra.app import create_app
from tests.config import API_KEY, make_settings
from tests.frontend import USERS, do_task, events


def tree_states(log: list[dict], tree_id: str) -> list[str]:
    return [
        e["event"]["new_state"] for e in log if e["type"] == "tree_state_changed" and e["event"]["tree_id"] == tree_id
    ]


async def grow_one_tree(client) -> str:
    prompt_task = await do_task(client, USERS[0], "initial_prompt")
    assert prompt_task["type"] == "initial_prompt"
    log = await events(client)
    tree_id = next(e["event"]["message_id"] for e in log if e["type"] == "initial_prompt_submitted")
    for _ in range(200):
        progressed = False
        for who in USERS:
            task = await do_task(client, who)
            progressed |= task is not None
        log = await events(client)
        if tree_states(log, tree_id)[-1:] == ["ready_for_export"]:
            return tree_id
        assert progressed
    raise AssertionError(f"tree stuck in {tree_states(log, tree_id)}")


async def test_a_tree_goes_from_prompt_to_ready_for_export(client):
    tree_id = await grow_one_tree(client)
    log = await events(client)
    assert tree_states(log, tree_id) == [
        "prompt_lottery_waiting",
        "growing",
        "ranking",
        "ready_for_scoring",
        "ready_for_export",
    ]
    types = {e["type"] for e in log}
    assert {
        "task_assigned",
        "task_acked",
        "task_completed",
        "reply_submitted",
        "labels_submitted",
        "message_reviewed",
        "ranking_submitted",
        "ranks_computed",
    } <= types
    ranks = [e["event"] for e in log if e["type"] == "ranks_computed"]
    assert ranks and all(len(r["ranked_message_ids"]) >= 2 and r["ranking_count"] >= 2 for r in ranks)
    # positions are strictly increasing and every event has its envelope
    positions = [e["position"] for e in log]
    assert positions == sorted(set(positions))
    assert all(e["event"]["id"] and e["event"]["at"] and e["event"]["schema"] == 1 for e in log)


async def test_replaying_the_log_rebuilds_the_same_write_model(store_url, tmp_path):
    settings = make_settings(store_url, tmp_path)
    async with AsyncTestClient(create_app(settings)) as c:
        c.headers["X-API-Key"] = API_KEY
        tree_id = await grow_one_tree(c)
        model = c.app.state.service.model
        before = {mid: (m.review_result, m.rank, m.deleted, m.children) for mid, m in model.messages.items()}
        states = {tid: t.state for tid, t in model.trees.items()}
        versions = dict(model.versions)
    async with AsyncTestClient(create_app(settings)) as c:
        model = c.app.state.service.model
        assert {mid: (m.review_result, m.rank, m.deleted, m.children) for mid, m in model.messages.items()} == before
        assert {tid: t.state for tid, t in model.trees.items()} == states
        assert model.trees[UUID(tree_id)].state == "ready_for_export"
        assert model.versions == versions
