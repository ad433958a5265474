"""Kafka clients: topics, a batch producer fast enough for the relay (record batches encoded
by infra/kafka_wire.py, one ProduceRequest per page through kafka-python's own network
client: metadata, leaders, SSL/SASL stay kafka-python's), consumers that join a group in
seconds, and the snapshot follower.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from infra.kafka_wire import crc32c
from infra.settings import KafkaSettings

if logging.getLogger("kafka").level == logging.NOTSET:
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python logs every connection at INFO


# --- clients ------------------------------------------------------------------------------


def environment(cfg: KafkaSettings) -> dict[str, str]:
    """``cfg`` as the OASST_KAFKA_* variables a child process reads it from."""
    from dataclasses import fields

    env = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is not None:
            env[f"OASST_KAFKA_{f.name.upper()}"] = json.dumps(value) if f.name == "client" else str(value)
    return env


def client_options(cfg: KafkaSettings) -> dict:
    # reconnect at least every second: kafka-python's backoff grows to 30 s, which after a
    # broker's outage would leave the relay and the projectors waiting long after it is back
    return {"bootstrap_servers": cfg.bootstrap, "reconnect_backoff_max_ms": 1000, **cfg.client}


class ProduceError(RuntimeError):
    pass


def listening(bootstrap: str) -> None:
    """Raise OSError unless one of the bootstrap servers accepts a TCP connection: at once
    where nothing listens, where a client waits up to 30 s to bootstrap."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        with contextlib.suppress(OSError), socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
            return
    raise OSError(f"nothing listens at {bootstrap}")


@dataclass
class BatchProducer:
    """Sends pre-built record batches, one ProduceRequest per leader, and waits for all of
    them (acks=all). A partition the broker refused with a retriable error, or whose request
    could not be sent, is sent again; a request that got no answer (the connection broke, a
    timeout) raises at once: the broker may hold it, and the caller (the relay) finds out
    before sending again. The caller only records progress once ``send`` returned (at least
    once, in order per partition: one request in flight)."""

    cfg: KafkaSettings
    client_id: str = "oasst-relay"
    retries: int = 10
    timeout_ms: int = 30_000
    _client: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from kafka.net.compat import KafkaNetClient

        options = {k: v for k, v in client_options(self.cfg).items() if k not in ("acks", "linger_ms", "batch_size")}
        self._client = KafkaNetClient(client_id=self.client_id, **options)
        self._client.check_version(timeout_ms=self.timeout_ms)

    def partitions(self, topic: str) -> int:
        """The topic's partition count, once every partition has a leader."""
        cluster = self._client.cluster
        cluster.add_topic(topic)
        deadline = time.monotonic() + self.timeout_ms / 1000
        while True:
            known = cluster.partitions_for_topic(topic)
            if known and len(cluster.available_partitions_for_topic(topic)) == len(known):
                return len(known)
            if time.monotonic() > deadline:
                raise ProduceError(f"no metadata for topic {topic!r}")
            self._client.poll(timeout_ms=50, future=cluster.request_update())

    def send(self, batches: dict[tuple[str, int], bytes]) -> None:
        self.finish(self.begin(batches))

    def begin(self, batches: dict[tuple[str, int], bytes]):
        """Send without waiting (the caller prepares the next page meanwhile); ``finish``
        waits, and retries what failed before anything else is sent."""
        return batches, *self._dispatch(batches)

    def finish(self, handle) -> None:
        from kafka import errors as Errors

        batches, futures, failed = handle
        failed = self._collect(futures, failed)
        attempt = 0
        while failed:
            attempt += 1
            retriable = all(
                getattr(e, "retriable", False) or isinstance(e, Errors.KafkaConnectionError) for e in failed.values()
            )
            if attempt > self.retries or not retriable:
                raise ProduceError(f"produce failed: {sorted((tp, repr(e)) for tp, e in failed.items())[:5]}")
            time.sleep(min(0.05 * 2**attempt, 0.5))  # then the caller backs off (the relay: until the broker is back)
            self._client.poll(timeout_ms=100, future=self._client.cluster.request_update())
            failed = self._collect(*self._dispatch({tp: batches[tp] for tp in failed}))

    def _dispatch(self, batches: dict[tuple[str, int], bytes]) -> tuple[list, dict]:
        from kafka import errors as Errors
        from kafka.protocol.producer import ProduceRequest
        from kafka.structs import TopicPartition

        Topic = ProduceRequest.TopicProduceData
        Partition = Topic.PartitionProduceData
        by_leader: dict[int, dict[str, list]] = {}
        failed: dict = {}
        for (topic, partition), data in batches.items():
            leader = self._client.cluster.leader_for_partition(TopicPartition(topic, partition))
            if leader is None or leader == -1:
                failed[(topic, partition)] = Errors.LeaderNotAvailableError()
                continue
            by_leader.setdefault(leader, {}).setdefault(topic, []).append(Partition(index=partition, records=data))
        futures = []
        for leader, topics in by_leader.items():
            request = ProduceRequest(
                transactional_id=None,
                acks=-1,
                timeout_ms=self.timeout_ms,
                max_version=9,
                topic_data=[Topic(name=t, partition_data=ps) for t, ps in topics.items()],
            )
            try:
                self._client.await_ready(leader, timeout_ms=self.timeout_ms)
            except Errors.KafkaError as exc:
                failed.update({(t, p.index): exc for t, ps in topics.items() for p in ps})
                continue
            futures.append((topics, self._client.send(leader, request)))
        return futures, failed

    def _collect(self, futures: list, failed: dict) -> dict:
        from kafka import errors as Errors

        unanswered = None
        for _, future in futures:
            self._client.poll(timeout_ms=self.timeout_ms, future=future)
            if not future.succeeded():  # after polling every request: none is left unread
                unanswered = future.exception if future.is_done else Errors.KafkaTimeoutError()
                continue
            for topic_response in future.value.responses:
                for pr in topic_response.partition_responses:
                    if pr.error_code:
                        failed[(topic_response.name, pr.index)] = Errors.for_code(pr.error_code)()
        if unanswered is not None:
            raise ProduceError(f"no answer from the broker, stored or not: {unanswered!r}")
        return failed

    def close(self) -> None:
        self._client.close()


def last_positions(cfg: KafkaSettings, topics: dict[str, int], timeout: float = 10) -> dict[str, dict[int, int]]:
    """Per topic (name -> partition count), the log position (``position`` header) of the
    last record of each non-empty partition: what the broker holds of the relay's output.
    Read from the end offset on until nothing more comes for 0.3 s (Tansu's end offset can
    be short of its last batch's records)."""
    from kafka.structs import TopicPartition

    reader = consumer(cfg, None)
    try:
        tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        reader.assign(tps)
        filled = {tp: end for tp, end in reader.end_offsets(tps).items() if end}
        reader.assign(list(filled))
        for tp, end in filled.items():
            reader.seek(tp, end - 1)
        found: dict[str, dict[int, int]] = {t: {} for t in topics}
        deadline, quiet_since = time.monotonic() + timeout, time.monotonic()
        # until every non-empty partition gave a record, then nothing more came for 0.3 s
        while filled and (sum(map(len, found.values())) < len(filled) or time.monotonic() - quiet_since < 0.3):
            if time.monotonic() > deadline:
                raise ProduceError(f"could not read the last records of {sorted(topics)}")
            for tp, records in reader.poll(timeout_ms=100).items():
                if records:
                    found[tp.topic][tp.partition] = int(dict(records[-1].headers)["position"])
                    quiet_since = time.monotonic()
        return found
    finally:
        reader.close(autocommit=False)


def ensure_topics(cfg: KafkaSettings) -> None:
    """Create the events topic (``cfg.partitions``) and the snapshots topic (one partition:
    one order of snapshots) unless they exist. Auto-creation would pick the broker's
    partition count, and the partition of a key must never change."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(client_id="oasst-admin", **client_options(cfg))
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(cfg.events_topic, cfg.partitions, cfg.replication),
            NewTopic(cfg.snapshots_topic, 1, cfg.replication),
        ]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
                admin.create_topics(missing)
    finally:
        admin.close()


def _fast_crc() -> None:
    """kafka-python checks each fetched batch with a pure-Python CRC32C (~9 MB/s) unless the
    crc32c package is installed: give it ours."""
    from kafka.record import default_records, util

    if util.crc32c_c is None:
        default_records.calc_crc32c = crc32c


def consumer(cfg: KafkaSettings, group: str | None, **options):
    """A KafkaConsumer with what makes a group join in seconds (session timeout a few
    seconds) and manual offsets (the caller commits where its results are)."""
    from kafka import KafkaConsumer

    _fast_crc()
    heartbeat = max(500, cfg.session_timeout_ms // 3)
    settings = {
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": cfg.session_timeout_ms,
        "heartbeat_interval_ms": heartbeat,
        "max_poll_interval_ms": max(30_000, cfg.session_timeout_ms),
        "fetch_max_wait_ms": 50,
        "client_id": f"oasst-{group or 'reader'}",
        **client_options(cfg),
        **options,
    }
    return KafkaConsumer(**settings)


def Listener(
    assigned: Callable[[list], None],
    revoked: Callable[[list], None],  # noqa: N802 - a class factory
    lost: Callable[[list], None] | None = None,
):
    """A rebalance listener calling ``assigned``/``revoked``/``lost`` with TopicPartitions
    (partitions lost to an eviction go to ``revoked`` unless ``lost`` is given)."""
    from kafka.consumer.subscription_state import ConsumerRebalanceListener

    class _Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, partitions):
            revoked(list(partitions))

        def on_partitions_assigned(self, partitions):
            assigned(list(partitions))

        def on_partitions_lost(self, partitions):
            (lost or revoked)(list(partitions))

    return _Listener()


# --- snapshots ---------------------------------------------------------------------------


def snapshot_message(event) -> bytes:
    """What ``oasst.snapshots`` carries for a SnapshotCreated event (JSON)."""
    return json.dumps(
        {
            "snapshot_id": event.snapshot_id,
            "position": event.position,
            "policy": event.policy,
            "parent_id": event.parent_id,
            "created_at": event.at.isoformat(),
            "manifest": event.manifest,
        },
        sort_keys=True,
        default=str,
    ).encode()


def follow_snapshots(
    cfg: KafkaSettings | str, group: str, timeout: float | None = None, from_beginning: bool = True
) -> Iterator[dict]:
    """Yield each new snapshot (its manifest and where it was taken) once per ``group``:
    a training job waits here for the next dataset. The group's offset is committed when
    the next one is asked for or the loop ends (a follower killed while handling one gets
    it again), with the highest log position handed out as its metadata, so a snapshot the
    relay published twice (after a crash) is skipped even by a restarted follower.
    ``cfg``: the Kafka settings, or just the bootstrap servers. ``timeout``: stop after that
    many seconds without a new snapshot (None: wait forever)."""
    from kafka.structs import OffsetAndMetadata, TopicPartition

    if isinstance(cfg, str):
        cfg = KafkaSettings(bootstrap=cfg)

    reader = consumer(cfg, group, auto_offset_reset="earliest" if from_beginning else "latest")
    tp = TopicPartition(cfg.snapshots_topic, 0)
    seen = {"position": -1, "assigned": False}

    def assigned(partitions: list) -> None:
        seen["assigned"] = tp in partitions  # read the group's mark outside the callback (network I/O)

    reader.subscribe([cfg.snapshots_topic], listener=Listener(assigned, lambda partitions: None))
    # the idle clock starts once the group gave us the partition (joining takes a few seconds)
    idle_since, pending = time.monotonic() + 2 * cfg.session_timeout_ms / 1000, None
    try:
        while timeout is None or time.monotonic() - idle_since < timeout:
            batches = reader.poll(timeout_ms=200)
            if seen["assigned"]:
                seen["assigned"] = False
                idle_since = time.monotonic()
                committed = reader.committed(tp, metadata=True)
                seen["position"] = int(committed.metadata) if committed and committed.metadata else -1
            for records in batches.values():
                for r in records:
                    item = json.loads(r.value)
                    mark = OffsetAndMetadata(r.offset + 1, str(max(seen["position"], item["position"])), -1)
                    if item["position"] > seen["position"]:
                        seen["position"], pending = item["position"], mark
                        yield item
                        idle_since = time.monotonic()
                    reader.commit({tp: mark})
                    pending = None
    finally:
        if pending is not None:  # the caller took the last one and stopped: it was seen
            with contextlib.suppress(Exception):
                reader.commit({tp: pending})
        reader.close(autocommit=False)


def die_with_parent() -> None:
    """In the child: Linux kills it when the process that started it dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
