"""Histories for tests, made through the command API: a small scripted tree over HTTP
(every step chosen) and random histories from a list of actions (property tests)."""

from __future__ import annotations

import json

import msgspec

from command_api.service import CommandService
from domain import protocol as p
from domain.errors import OasstError
from infra.settings import Settings
from infra.store import EventStore
from tests.config import SMALL_TREE
from tests.frontend import acked_task, answer_for, do_task, events, user

ALICE, BOB, CAROL, DAVE, ERIN = (user(n) for n in ("alice", "bob", "carol", "dave", "erin"))


async def must(client, who: dict, kind: str, **kw) -> dict:
    task = await do_task(client, who, kind, **kw)
    assert task is not None and task["type"] == kind, (who, kind)
    return task


async def rank(client, who: dict, first: str):
    """A ranking task answered with the reply ``first`` placed first."""
    task, fid = await acked_task(client, who, "rank_assistant_replies")
    ids = [m["id"] for m in task["reply_messages"]]
    order = [ids.index(first)] + [i for i, x in enumerate(ids) if x != first]
    r = await client.post("/api/v1/tasks/interaction", json=answer_for(task, who, fid, ranking=order))
    assert r.status_code == 200, r.text
    return task


async def scripted_history(client) -> dict:
    """A small known tree (SMALL_TREE settings), every step chosen:

    alice: prompt P; bob and carol review it (full labels) -> accepted, lottery -> growing;
    bob and dave: assistant replies RB and RD to P; alice and carol review both;
    erin: a prompter reply RE to one of them; alice and carol review it -> ranking;
    alice ranks RB first, carol ranks RD first -> consensus: the lower id first -> ready_for_export.
    """
    await must(client, ALICE, "initial_prompt")
    await must(client, BOB, "label_initial_prompt")
    await must(client, CAROL, "label_initial_prompt")
    await must(client, BOB, "assistant_reply")
    await must(client, DAVE, "assistant_reply")
    for who in (ALICE, ALICE, CAROL, CAROL):
        await must(client, who, "label_assistant_reply")
    await must(client, ERIN, "prompter_reply")
    for who in (ALICE, CAROL):
        await must(client, who, "label_prompter_reply")
    log = await events(client)
    msgs = {
        e["event"]["message_id"]: e["event"]
        for e in log
        if e["type"] in ("initial_prompt_submitted", "reply_submitted")
    }
    uid = {e["event"]["username"]: e["event"]["subject_id"] for e in log if e["type"] == "user_seen"}
    by_author = {e["user_id"]: mid for mid, e in msgs.items()}
    h = {
        "P": by_author[uid["alice"]],
        "RB": by_author[uid["bob"]],
        "RD": by_author[uid["dave"]],
        "RE": by_author[uid["erin"]],
        "uid": uid,
    }
    await rank(client, ALICE, h["RB"])
    await rank(client, CAROL, h["RD"])
    log = await events(client)
    assert [e["event"]["new_state"] for e in log if e["type"] == "tree_state_changed"][-1] == "ready_for_export"
    h["log"] = log
    h["msgs"] = msgs
    h["fe"] = {mid: e["frontend_message_id"] for mid, e in msgs.items()}
    h["position"] = log[-1]["position"]
    return h


PEOPLE = [p.User(id=f"u{i}", display_name=f"U{i}", auth_method="local") for i in range(5)]


async def make_history(url: str, actions) -> EventStore:
    store = EventStore(url)
    service = CommandService(Settings(database_url=url, bootstrap_api_key="k", tree=SMALL_TREE), store)
    await service.start()
    client = service.client_for_key("k")
    messages = lambda: sorted(service.model.messages, key=str)  # noqa: E731
    users = lambda: sorted(service.model.users, key=str)  # noqa: E731
    for n, (kind, a, b) in enumerate(actions):
        try:
            if kind in ("task", "nack"):
                who = PEOPLE[a]
                r = await service.request_task(client, p.TaskRequest(user=who, type="random", lang="en"))
                task = json.loads(r.body)
                if kind == "nack":
                    await service.nack(client, task["id"], p.TaskNAck("skip"))
                    continue
                await service.ack(client, task["id"], p.TaskAck(f"f{n}"))
                body = answer_for(task, msgspec.to_builtins(who), f"f{n}", spam=round(b))
                await service.interaction(client, msgspec.convert(body, p.Interaction))
            elif kind == "emoji" and messages():
                msg = messages()[n % len(messages())]
                await service.emoji(client, str(msg), p.MessageEmojiRequest(user=PEOPLE[a], emoji=b))
            elif kind == "delete" and messages():
                msg = str(messages()[a % len(messages())])
                await (service.delete_message(client, msg) if b else service.undelete_message(client, msg))
            elif kind == "halt" and messages():
                await service.set_tree_halted(client, str(messages()[a % len(messages())]), b)
            elif kind == "spammer" and users():
                await service.set_spammer(client, str(users()[a % len(users())]), b)
            elif kind == "report" and messages():
                msg = messages()[b % len(messages())]
                await service.free_labels(
                    client,
                    p.TextLabels(user=PEOPLE[a], text="", labels={"spam": 1.0}, message_id=str(msg), is_report=True),
                )
        except OasstError:
            pass  # refused commands are part of life; they append nothing
    await service.stop()
    return store
