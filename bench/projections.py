"""Rebuilds at Open-Assistant's size (issue #18), on a copy of the cached PostgreSQL store of
bench/scale.py (full: ``oa``; quick: ``oa/100``), in the same run:

1. reading and decoding the whole log (the baseline);
2. ``oasst project rebuild --all`` (projections/rebuild.py) in a fresh child process: the fold of
   every view into ``~rebuild`` copies, with their rows, the history index and the SQL tables
   written, then the switches live; its peak RSS;
3. restoring the views from their rows (a server's start);
4. trust recomputed over the stored consensus view, in a child (peak RSS).

Goals: rebuild >= 150,000 events/s and >= 0.7x read+decode; <= 40 s at OA's size; trust <= 10 s.
(``big_log`` below makes a generated log of a given size for bench/analytics.py.)
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import msgspec

from bench import common, scale
from bench.common import row
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


def rebuild_child(url: str) -> dict:
    from projections.rebuild import rebuild, view_names

    store = EventStore(url)
    try:
        return rebuild(store, view_names())
    finally:
        store.close()


def trust_child(url: str) -> dict:
    from projections import trust_v2
    from projections.consensus import ConsensusView
    from projections.trust import compute_trust

    store = EventStore(url)
    try:
        runner = ProjectionRunner(store, views=[ConsensusView()])
        started = time.perf_counter()
        runner.restore()
        restored = time.perf_counter() - started
        started = time.perf_counter()
        scores = compute_trust(runner.views[0])
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        trust_v2.fit(runner.views[0])  # the policy the trust routes, console and report use
        v2_seconds = time.perf_counter() - started
        return {"restore_seconds": restored, "seconds": seconds, "v2_seconds": v2_seconds, "users": len(scores)}
    finally:
        store.close()


def read_decode_rate(url: str) -> tuple[int, float]:
    store = EventStore(url)
    try:
        started, after, events = time.perf_counter(), 0, 0
        while page := store.read_stored(after, 20_000):
            for n in page:
                ev.decode_summary(n.state)
            events, after = events + len(page), page[-1].id
        return events, events / (time.perf_counter() - started)
    finally:
        store.close()


def restore_seconds(url: str) -> float:
    store = EventStore(url)
    try:
        started = time.perf_counter()
        ProjectionRunner(store).restore()
        return time.perf_counter() - started
    finally:
        store.close()


def run(quick: bool) -> list[dict]:
    size = "oa/100" if quick else "oa"
    name, record = scale.cached(size)
    with common.database_copy(name) as url:
        events, read_rate = read_decode_rate(url)
        built = common.in_child("bench.projections:rebuild_child", url)
        restored = restore_seconds(url)
        trust = common.in_child("bench.projections:trust_child", url)
    switches = sum(built["switch_seconds"].values())
    whole = built["fold_seconds"] + switches
    rate = events / whole
    common.console.print(
        f"{size}: {events:,} events; read+decode {read_rate:,.0f}/s; rebuild of all views {whole:.1f} s "
        f"({rate:,.0f} events/s: fold and writes {built['fold_seconds']:.1f} s, switches "
        + ", ".join(f"{v} {s:.1f} s" for v, s in built["switch_seconds"].items())
        + f"), peak RSS {built['peak_rss_mb']:,.0f} MB; restore {restored:.1f} s; trust of {trust['users']:,} users "
        f"{trust['seconds']:.1f} s, trust-v2's fit {trust['v2_seconds']:.1f} s (restoring consensus {trust['restore_seconds']:.1f} s), peak RSS {trust['peak_rss_mb']:,.0f} MB"
    )
    at_oa = size == "oa"
    return [
        row("views.rebuild_events_per_s", round(rate), "events/s", ">= 150000", round(read_rate), rate / read_rate),
        row(
            "views.rebuild_ratio_to_read_decode",
            round(rate / read_rate, 3),
            "ratio (goal on ratio)",
            ">= 0.7",
            None,
            rate / read_rate,
        ),
        row("views.rebuild_seconds", round(whole, 1), f"s on {size}", "<= 40" if at_oa else None),
        row("views.rebuild_fold_seconds", round(built["fold_seconds"], 1), "s (fold + writes)"),
        row("views.rebuild_switch_seconds", round(switches, 1), "s (all switches)"),
        row("views.rebuild_peak_rss_mb", round(built["peak_rss_mb"]), "MB"),
        row("views.read_decode_events_per_s", round(read_rate), "events/s"),
        row("views.log_events", events, "events"),
        row("views.restore_seconds", round(restored, 1), "s"),
        row(
            "trust.recompute_seconds", round(trust["seconds"], 2), f"s on {size} (trust-v1)", "<= 10" if at_oa else None
        ),
        row(
            "trust.v2_fit_seconds", round(trust["v2_seconds"], 2), f"s on {size} (trust-v2)", "<= 10" if at_oa else None
        ),
        row("trust.peak_rss_mb", round(trust["peak_rss_mb"]), "MB"),
    ]
