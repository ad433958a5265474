"""The event store on SQLite and PostgreSQL: order, positions, optimistic
concurrency, idempotency rows in the same transaction, group commit."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from domain import events as ev
from infra.store import EventStore, GroupCommitter, IntegrityError, Pending


def user_seen(name: str) -> ev.UserSeen:
    return ev.UserSeen(
        id=uuid4(), at=datetime.now(UTC), subject_id=uuid4(), auth_method="local", username=name, display_name=name
    )


@pytest.fixture
def store(store_url):
    s = EventStore(store_url)
    yield s
    s.close()


def test_appends_are_read_back_in_log_order_with_positions(store):
    events = [user_seen(f"u{i}") for i in range(5)]
    positions = store.append([Pending([(e.subject_id, 1, e)]) for e in events])
    assert positions == sorted(positions) and len(set(positions)) == 5
    read = store.read(0, 100)
    assert [p for p, _ in read] == positions
    assert [e for _, e in read] == events  # decoded back to equal structs
    assert store.read(positions[2], 100) == read[3:]
    assert store.max_position() == positions[-1]


def test_a_taken_stream_version_rejects_the_whole_transaction(store):
    first = user_seen("a")
    store.append([Pending([(first.subject_id, 1, first)])])
    other = user_seen("b")
    with pytest.raises(IntegrityError):
        store.append([Pending([(other.subject_id, 1, other)]), Pending([(first.subject_id, 1, first)])])
    assert [e for _, e in store.read(0, 10)] == [first]  # nothing of the failed batch


def test_idempotent_response_is_stored_with_the_events(store):
    client = uuid4()
    e = user_seen("a")
    [position] = store.append([Pending([(e.subject_id, 1, e)], (client, "key-1", 201, b'{"ok":true}'))])
    stored = store.stored_response(client, "key-1")
    assert (stored.status, stored.body, stored.position) == (201, b'{"ok":true}', position)
    assert store.stored_response(client, "other") is None
    assert store.stored_response(uuid4(), "key-1") is None
    dup = user_seen("b")
    with pytest.raises(IntegrityError):  # the same key twice fails the transaction
        store.append([Pending([(dup.subject_id, 1, dup)], (client, "key-1", 200, b""))])
    assert len(store.read(0, 10)) == 1


async def test_group_commit_batches_concurrent_appends(store):
    calls = []
    append = store.append

    def counting_append(pending):
        calls.append(len(pending))
        return append(pending)

    store.append = counting_append
    committer = GroupCommitter(store)
    committer.start()
    events = [user_seen(f"u{i}") for i in range(200)]
    futures = [committer.submit(Pending([(e.subject_id, 1, e)])) for e in events]
    results = await asyncio.gather(*futures)
    await committer.drain()
    assert sum(calls) == 200 and len(calls) < 200  # fewer transactions than commands
    positions = [r[0] for r in results]
    assert positions == sorted(positions)
    assert [e for _, e in store.read(0, 1000)] == events


async def test_a_failed_batch_fails_every_waiter_and_reports(store):
    failures = []
    committer = GroupCommitter(store, on_failure=failures.append)
    committer.start()
    e = user_seen("a")
    await committer.submit(Pending([(e.subject_id, 1, e)]))
    bad = committer.submit(Pending([(e.subject_id, 1, e)]))  # version 1 again
    with pytest.raises(IntegrityError):
        await bad
    await committer.drain()
    assert len(failures) == 1


def _open_store_and_views(url: str) -> None:
    from projections.storage import ViewStorage

    store = EventStore(url)
    ViewStorage(store)
    store.close()


def test_processes_starting_together_create_the_tables_once(pg_url):
    """Six processes opening a new PostgreSQL store at once: every one starts (without the schema
    lock most of them failed: "tuple concurrently updated", a duplicate type name)."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    starting = [spawn.Process(target=_open_store_and_views, args=(pg_url,)) for _ in range(6)]
    for p in starting:
        p.start()
    for p in starting:
        p.join(120)
    assert [p.exitcode for p in starting] == [0] * 6
    store = EventStore(pg_url)  # and the store works
    assert store.max_position() == 0
    store.close()
