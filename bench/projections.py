"""Projection benchmark on PostgreSQL: catch-up of all views vs merely reading and
decoding the same log, in the same run.

The log: a history made through the command API (users answering random tasks), then
copied with fresh ids until it has the wanted size, so the event mix is realistic
while generation stays fast. Goals (issue #3): catch-up >= 150,000 events/s and
>= 0.7x the read+decode rate.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import msgspec

from bench import common
from command_api.service import CommandService
from domain import events as ev
from domain import protocol as p
from domain.config import TreeConfig
from domain.errors import OasstError
from infra.settings import Settings
from infra.store import EventStore, Pending
from projections.runner import ProjectionRunner

TREE = TreeConfig(
    num_reviews_initial_prompt=2,
    num_reviews_reply=2,
    goal_tree_size=5,
    num_required_rankings=2,
    max_active_trees=50,
    max_pending_tasks_per_user=100,
)


async def base_history(url: str, interactions: int, users: int = 40) -> None:
    store = EventStore(url)
    service = CommandService(Settings(database_url=url, bootstrap_api_key="bench", tree=TREE), store)
    await service.start()
    client = service.client_for_key("bench")
    people = [p.User(id=f"u{i}", display_name=f"User {i}", auth_method="local") for i in range(users)]
    from devkit.frontend import answer_for  # the same answers a diligent frontend gives

    for n in range(interactions):
        who = people[n % users]
        try:
            task = json.loads((await service.request_task(client, p.TaskRequest(user=who, lang="en"))).body)
            await service.ack(client, task["id"], p.TaskAck(f"f{n}"))
            body = answer_for(task, msgspec.to_builtins(who), f"f{n}")
            await service.interaction(client, msgspec.convert(body, p.Interaction))
        except OasstError:
            continue
    await service.stop()
    store.close()


def multiply(store: EventStore, target: int) -> None:
    """Append copies of the log (every id replaced per copy) until it holds ``target`` events."""
    base = store.read_stored(0, 10_000_000)
    dec = msgspec.json.Decoder()
    while store.max_position() < target:
        ids: dict[str, str] = {}

        def fresh(match: str, ids: dict[str, str] = ids) -> str:
            return ids.setdefault(match, str(uuid.uuid4()))

        batch = []
        for n in base:
            data = ev.to_builtins(ev.decode(n.state))
            text = json.dumps(data)
            for old in {v for v in _uuids(data)}:
                text = text.replace(old, fresh(old))
            event = msgspec.convert(dec.decode(text), ev.AnyEvent)
            batch.append((uuid.UUID(fresh(str(n.originator_id))), n.originator_version, event))
            if len(batch) >= 20_000:
                store.append([Pending(batch)])
                batch = []
        if batch:
            store.append([Pending(batch)])


def _uuids(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _uuids(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _uuids(v)
    elif isinstance(obj, str) and len(obj) == 36 and obj.count("-") == 4:
        yield obj


def big_log(url: str, target: int, quick: bool) -> EventStore:
    """A log of about ``target`` events: a real history, copied with fresh ids."""
    t = time.perf_counter()
    asyncio.run(base_history(url, 600 if quick else 2000))
    store = EventStore(url)
    multiply(store, target)
    common.console.print(f"log: {store.max_position()} events, made in {time.perf_counter() - t:.0f} s")
    return store


def run(quick: bool) -> list[dict]:
    target = 200_000 if quick else 1_000_000
    with common.postgres_database("oasst_bench_views") as url:
        store = big_log(url, target, quick)
        total = store.max_position()

        t = time.perf_counter()
        after = 0
        while page := store.read_stored(after, 10_000):
            for n in page:
                ev.decode(n.state)
            after = page[-1].id
        read_rate = total / (time.perf_counter() - t)

        runner = ProjectionRunner(store)
        t = time.perf_counter()
        runner.catch_up()
        catch_up_seconds = time.perf_counter() - t
        catch_up_rate = total / catch_up_seconds

        t = time.perf_counter()
        restored = ProjectionRunner(store)
        restored.restore()
        restore_seconds = time.perf_counter() - t
        store.close()
    common.console.print(
        f"read+decode {read_rate:,.0f} events/s; catch-up of all views {catch_up_rate:,.0f} "
        f"events/s ({catch_up_seconds:.1f} s); restoring the views from storage {restore_seconds:.1f} s"
    )
    return [
        {
            "name": "views.catch_up_events_per_s",
            "value": round(catch_up_rate),
            "unit": "events/s",
            "goal": ">= 150000",
            "baseline": round(read_rate),
            "ratio": catch_up_rate / read_rate,
        },
        {
            "name": "views.catch_up_ratio_to_read_decode",
            "value": round(catch_up_rate / read_rate, 3),
            "unit": "ratio (goal on ratio)",
            "goal": ">= 0.7",
            "baseline": None,
            "ratio": catch_up_rate / read_rate,
        },
        {
            "name": "views.read_decode_events_per_s",
            "value": round(read_rate),
            "unit": "events/s",
            "goal": None,
            "baseline": None,
            "ratio": None,
        },
        {"name": "views.log_events", "value": total, "unit": "events", "goal": None, "baseline": None, "ratio": None},
        {
            "name": "views.catch_up_seconds",
            "value": round(catch_up_seconds, 1),
            "unit": "s",
            "goal": None,
            "baseline": None,
            "ratio": None,
        },
        {
            "name": "views.restore_seconds",
            "value": round(restore_seconds, 1),
            "unit": "s",
            "goal": None,
            "baseline": None,
            "ratio": None,
        },
    ]
