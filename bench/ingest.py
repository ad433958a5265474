"""Ingest benchmark: simulated users doing what OA's web frontend does, against the real
server on PostgreSQL and against a no-op server, with the same load generator in one run.

One interaction = POST /tasks/ (type random), POST /tasks/{id}/ack, POST /tasks/interaction
with whatever the task asks for. Goals: interaction rate >= 0.5x the no-op server's, and
interaction p99 <= 50 ms.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httptools
import msgspec

from bench import common
from bench.common import row

API_KEY = "bench-key"
# Small trees, so that every kind of task comes up within seconds.
TREE_ENV = {
    "OASST_TREE_NUM_REVIEWS_INITIAL_PROMPT": "2",
    "OASST_TREE_NUM_REVIEWS_REPLY": "2",
    "OASST_TREE_GOAL_TREE_SIZE": "5",
    "OASST_TREE_NUM_REQUIRED_RANKINGS": "2",
    "OASST_TREE_MAX_ACTIVE_TREES": "50",
    "OASST_TREE_MAX_PENDING_TASKS_PER_USER": "100",
}
TEXT_TASKS = ("initial_prompt", "prompter_reply", "assistant_reply")
LABELS = {"spam": 0.0, "lang_mismatch": 0.0, "quality": 0.8}

console = common.console
encode = msgspec.json.Encoder().encode
decode = msgspec.json.Decoder().decode


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # seconds, interactions done in the window
    no_task: int = 0  # 503 with error_code 1006: nothing to do right now
    errors: list[tuple[str, int, str]] = field(default_factory=list)  # (call, status, body)
    kinds: Counter = field(default_factory=Counter)
    max_position: int = 0
    total: int = 0  # interactions done, warm-up included
    window: float = 0.0  # seconds measured
    cpu: dict[str, float] = field(default_factory=dict)  # share of one core, per process


class Failed(Exception):
    """A call of an interaction did not succeed; the interaction does not count."""


def no_task_available(status: int, raw: bytes) -> bool:
    """OA's answer when there is nothing to do: 503 with error_code 1006."""
    try:
        return status == 503 and decode(raw).get("error_code") == 1006
    except (msgspec.DecodeError, AttributeError):
        return False


class Connection(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client, one request at a time. aiohttp took a whole
    core to drive the no-op server (so the load generator, not the server, set the
    baseline); this takes about half as much."""

    def __init__(self, api_key: str = API_KEY):
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.transport = None
        self.api_key = api_key.encode()

    @classmethod
    async def open(cls, port: int, api_key: str = API_KEY) -> Connection:
        _, conn = await asyncio.get_running_loop().create_connection(lambda: cls(api_key), "127.0.0.1", port)
        return conn

    async def post(self, path: str, body: bytes) -> tuple[int, bytes, str | None]:
        """(status, body, X-Log-Position header)"""
        self.body, self.position = [], None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.api_key, len(body), body)
        )
        return await self.waiter

    async def get(self, path: str, headers: bytes = b"") -> tuple[int, bytes, str | None]:
        self.body, self.position = [], None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(
            b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: %s\r\n%s\r\n" % (path.encode(), self.api_key, headers)
        )
        return await self.waiter

    def close(self) -> None:
        if self.transport:
            self.transport.close()

    # asyncio.Protocol and httptools callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-log-position":
            self.position = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.waiter.done():  # not cancelled meanwhile
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body), self.position))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))


class User:
    def __init__(self, port: int, tag: str, n: int, stats: Stats):
        self.port, self.stats, self.conn = port, stats, None
        self.user = {"id": f"bench-{tag}-{n}", "display_name": f"Bench User {n}", "auth_method": "local"}
        self.prefix, self.seq = f"{tag}-{n}", 0

    def unique(self, what: str) -> str:
        self.seq += 1
        return f"{what}-{self.prefix}-{self.seq}"

    async def post(self, call: str, path: str, body: dict) -> tuple[int, bytes]:
        if self.conn is None or self.conn.transport is None:
            self.conn = await Connection.open(self.port)
        status, raw, position = await self.conn.post(path, encode(body))
        if position:
            self.stats.max_position = max(self.stats.max_position, int(position))
        if not 200 <= status < 300 and not (call == "request" and no_task_available(status, raw)):
            self.stats.errors.append((call, status, raw.decode(errors="replace")[:500]))
            raise Failed
        return status, raw

    async def interaction(self) -> bool:
        """One whole interaction; False when no task was available."""
        status, raw = await self.post("request", "/api/v1/tasks/", {"type": "random", "user": self.user, "lang": "en"})
        task = decode(raw)
        if status == 503:
            self.stats.no_task += 1
            await asyncio.sleep(0.1)  # as a person would, rather than hammer the server
            return False
        kind = task["type"]
        self.stats.kinds[kind] += 1
        frontend_id = self.unique("fm")
        await self.post("ack", f"/api/v1/tasks/{task['id']}/ack", {"message_id": frontend_id})
        await self.post("interaction", "/api/v1/tasks/interaction", self.answer(task, frontend_id))
        return True

    def answer(self, task: dict, frontend_id: str) -> dict:
        kind = task["type"]
        if kind in TEXT_TASKS:
            return {
                "type": "text_reply_to_message",
                "user": self.user,
                "message_id": frontend_id,
                "user_message_id": self.unique("um"),
                "text": self.unique(f"{kind} text"),
                "lang": "en",
            }
        if kind.startswith("label_"):
            valid = task["valid_labels"]
            return {
                "type": "text_labels",
                "user": self.user,
                "message_id": task["message_id"],
                "task_id": task["id"],
                "text": "",
                "labels": {k: v for k, v in LABELS.items() if k in valid},
            }
        if kind.startswith("rank_"):
            ranking = list(range(len(task["reply_messages"])))
            random.shuffle(ranking)
            return {"type": "message_ranking", "user": self.user, "message_id": frontend_id, "ranking": ranking}
        self.stats.errors.append(("request", 200, f"unknown task type {kind!r}"))
        raise Failed

    async def loop(self, window_start: float, stop_at: float) -> None:
        while (start := time.perf_counter()) < stop_at:
            try:
                done = await self.interaction()
            except Failed:
                continue
            except OSError as exc:  # ConnectionError included
                self.stats.errors.append(("connection", 0, repr(exc)))
                self.conn = None
                await asyncio.sleep(0.05)  # a dead server should not turn into a busy loop
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. a task body we cannot read: an error, not a crash
                self.stats.errors.append(("client", 0, repr(exc)))
                continue
            end = time.perf_counter()
            self.stats.total += done
            if done and window_start <= end <= stop_at:
                self.stats.latencies.append(end - start)


async def load(port: int, server_pid: int, users: int, warmup: float, duration: float) -> Stats:
    """Closed loop: ``users`` concurrent users, each doing interactions back to back."""
    stats = Stats()
    tag = uuid.uuid4().hex[:8]
    sims = [User(port, tag, n, stats) for n in range(users)]
    now = time.perf_counter()
    window_start, stop_at = now + warmup, now + warmup + duration
    tasks = [asyncio.create_task(u.loop(window_start, stop_at)) for u in sims]
    await asyncio.sleep(warmup)
    cpu0 = cpu_snapshot(server_pid)
    await asyncio.gather(*tasks)
    cpu1 = cpu_snapshot(server_pid)
    for u in sims:
        if u.conn:
            u.conn.close()
    stats.window = duration
    wall = cpu1.pop("wall") - cpu0.pop("wall")
    stats.cpu = {k: (cpu1[k] - cpu0[k]) / wall for k in cpu0}
    return stats


def cpu_snapshot(server_pid: int) -> dict[str, float]:
    """CPU seconds so far of who shares the 2 cores: to see which one is the bottleneck."""
    return {
        "server": common.cpu_seconds(server_pid),
        "load generator": common.cpu_seconds(os.getpid()),
        "postgres": common.postgres_cpu_seconds(),
        "wall": time.perf_counter(),
    }


def summarize(stats: Stats) -> dict:
    lat = sorted(stats.latencies)
    return {
        "rate": len(lat) / stats.window if stats.window else 0.0,
        "p50": common.percentile(lat, 50) * 1000,
        "p99": common.percentile(lat, 99) * 1000,
        "count": len(lat),
    }


def report(name: str, stats: Stats, s: dict) -> None:
    console.print(
        f"[bold]{name}[/]: {s['count']} interactions in {stats.window:.0f}s = {s['rate']:.1f}/s, "
        f"p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms; no task available {stats.no_task}x; "
        f"errors {len(stats.errors)}; CPU (share of one core): "
        + ", ".join(f"{k} {v:.0%}" for k, v in stats.cpu.items())
    )
    if stats.kinds:
        console.print("  task types served: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.kinds.items())))
    for call, status, body in stats.errors[:5]:
        console.print(f"  [red]error[/] {call}: {status} {body}")


def measure(
    cmd: list[str], env: dict[str, str], port: int, log_name: str, name: str, users: int, warmup: float, duration: float
) -> tuple[Stats, dict]:
    with common.server(cmd, env, port, log_name) as proc:
        stats = asyncio.run(load(port, proc.pid, users, warmup, duration))
        if proc.poll() is not None:
            stats.errors.append(("server", proc.returncode, f"server exited; see var/bench/{log_name}"))
    s = summarize(stats)
    report(name, stats, s)
    return stats, s


def measure_noop(users: int, warmup: float, duration: float) -> tuple[Stats, dict]:
    """The baseline: the no-op server under the same load."""
    port = common.free_port()
    return measure(
        [sys.executable, "bench/noop_server.py", "--port", str(port)],
        {},
        port,
        "noop-server.log",
        "no-op server",
        users,
        warmup,
        duration,
    )


def run(quick: bool) -> list[dict]:
    users, warmup, duration = (32, 2.0, 10.0) if quick else (64, 5.0, 30.0)
    noop, n = measure_noop(users, warmup, duration)

    with common.postgres_database() as db_url, tempfile.TemporaryDirectory(prefix="bench-data-") as data_dir:
        port = common.free_port()
        env = {"OASST_DATABASE_URL": db_url, "OASST_BOOTSTRAP_API_KEY": API_KEY, "OASST_DATA_DIR": data_dir, **TREE_ENV}
        real, r = measure(
            [*common.OASST, "serve", "--port", str(port)],
            env,
            port,
            "ingest-server.log",
            "oasst server (PostgreSQL)",
            users,
            warmup,
            duration,
        )
    events = real.max_position
    console.print(
        f"  events appended (max X-Log-Position): {events} for {real.total} interactions "
        f"(warm-up included), {events / max(1, real.total):.1f} per interaction"
    )
    if real.errors:
        console.print(
            "  server log tail (var/bench/ingest-server.log):\n" + common.tail(common.OUT / "ingest-server.log")
        )

    return [
        row("ingest.interactions_per_s", r["rate"], "interactions/s (goal on ratio to noop)", ">= 0.5", n["rate"]),
        row("ingest.p50_ms", r["p50"], "ms", baseline=n["p50"]),
        row("ingest.p99_ms", r["p99"], "ms", "<= 50", n["p99"]),
        row("ingest.interactions", r["count"], "count"),
        row("ingest.errors", len(real.errors), "count", "<= 0"),
        row("ingest.no_task_503", real.no_task, "count"),
        row("ingest.task_kinds", len(real.kinds), "kinds seen"),
        row("ingest.events_appended", events, "events"),
        row("noop.interactions_per_s", n["rate"], "interactions/s"),
        row("noop.p50_ms", n["p50"], "ms"),
        row("noop.p99_ms", n["p99"], "ms"),
        row("noop.errors", len(noop.errors), "count", "<= 0"),
    ]
