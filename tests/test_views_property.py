"""Property: views maintained incrementally (in pages of any size, flushed and restored
at arbitrary points, as after crashes) equal views rebuilt from scratch, for random
histories made through the command API."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from command_api.service import CommandService
from domain import protocol as p
from domain.errors import OasstError
from infra.settings import Settings
from infra.store import EventStore
from projections.runner import ProjectionRunner
from tests.conftest import SMALL_TREE
from tests.frontend import answer_for

USERS = [p.User(id=f"u{i}", display_name=f"U{i}", auth_method="local") for i in range(5)]
action = st.one_of(
    st.tuples(st.just("task"), st.integers(0, 4), st.floats(0, 1)),
    st.tuples(st.just("nack"), st.integers(0, 4), st.just(0.0)),
    st.tuples(st.just("emoji"), st.integers(0, 4), st.sampled_from(["+1", "-1", "red_flag", "heart_eyes"])),
    st.tuples(st.just("delete"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("halt"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("spammer"), st.integers(0, 4), st.booleans()),
    st.tuples(st.just("report"), st.integers(0, 4), st.integers(0, 50)),
)


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
                who = USERS[a]
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
                await service.emoji(client, str(msg), p.MessageEmojiRequest(user=USERS[a], emoji=b))
            elif kind == "delete" and messages():
                msg = str(messages()[a % len(messages())])
                await (service.delete_message(client, msg) if b else service.undelete_message(client, msg))
            elif kind == "halt" and messages():
                await service.set_tree_halted(client, str(messages()[a % len(messages())]), b)
            elif kind == "spammer" and users():
                await service.set_spammer(client, str(users()[a % len(users())]), b)
            elif kind == "report" and messages():
                msg = messages()[b % len(messages())]
                await service.free_labels(client, p.TextLabels(user=USERS[a], text="", labels={"spam": 1.0},
                                                               message_id=str(msg), is_report=True))
        except OasstError:
            pass  # refused commands are part of life; they append nothing
    await service.stop()
    return store


def snapshot(runner: ProjectionRunner) -> dict:
    enc = msgspec.msgpack.Encoder()
    return {
        (v.key, t.name, str(k)): enc.encode(row)
        for v in runner.views for t in v.tables.values() for k, row in t.rows.items()
    }


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(action, min_size=5, max_size=60), pages=st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_incremental_views_equal_a_rebuild(actions, pages):
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'log.sqlite3'}"
        store = asyncio.run(make_history(url, actions))
        # incremental: pages of varying size, a flush and a restart (restore) after each
        runner = ProjectionRunner(store, page_size=pages[0])
        runner.restore()
        for size in pages * 50:
            runner.page_size = size
            page = store.read_stored(runner.position, size)
            if not page:
                break
            runner.fold(page)
            runner.flush()
            runner = ProjectionRunner(store, page_size=size)  # as after a crash
            runner.restore()
        runner.catch_up()
        incremental = snapshot(runner)
        # a rebuild from scratch, in memory only
        fresh = ProjectionRunner(store)
        fresh.fold(store.read_stored(0, 1_000_000))
        assert incremental == snapshot(fresh)
        store.close()
