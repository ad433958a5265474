"""Crash test (issue #9): simulated users run Open-Assistant flows against ``oasst serve``
on PostgreSQL while the server, the projection runner and the Kafka relay are killed with
SIGKILL at random moments and restarted. Clients retry with the same Idempotency-Key until
they get an answer, as a careful frontend would. Afterwards:

- every command that got a 2xx is in the log; no command is in it twice;
- the views the (killed, restarted) runner stored equal a clean fold of the log;
- the relay's topic holds every log position (no gaps).

Used by tests/test_crash.py and bench/crash.py (the longer run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from devkit.brokers import free_port
from devkit.servers import OASST, ROOT

API_KEY = "crash-key"


class Proc:
    """One restartable subprocess (its own process group, so SIGKILL takes all of it)."""

    def __init__(self, name: str, cmd: list[str], env: dict, log: Path):
        self.name, self.cmd, self.env, self.log = name, cmd, env, log
        self.proc: subprocess.Popen | None = None
        self.kills = 0

    def start(self) -> None:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            self.cmd,
            env={**os.environ, **self.env},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def stop(self) -> None:
        """A clean stop (SIGTERM: the runner flushes its views)."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Outcome:
    acknowledged: list = field(default_factory=list)  # (kind, task id, log position)
    commands: int = 0
    retries: int = 0
    gave_up: int = 0


async def _send(client, outcome: Outcome, method: str, url: str, body: dict, deadline: float):
    """One logical command: the same Idempotency-Key on every retry until an answer comes."""
    key = uuid.uuid4().hex
    while time.monotonic() < deadline + 60:  # after the load phase, retry until the server is back
        try:
            r = await client.request(method, url, json=body, headers={"Idempotency-Key": key}, timeout=10)
            if r.status_code < 500 or r.status_code == 503 and r.json().get("error_code") == 1006:
                outcome.commands += 1
                return r
        except Exception:  # noqa: BLE001 - connection refused or reset: the server was killed
            pass
        outcome.retries += 1
        await asyncio.sleep(0.2)
    outcome.gave_up += 1
    return None


async def _user(base: str, name: str, outcome: Outcome, deadline: float) -> None:
    import httpx

    from devkit.frontend import answer_for

    who = {"id": name, "display_name": name, "auth_method": "local"}
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": API_KEY}) as client:
        while time.monotonic() < deadline:
            r = await _send(
                client, outcome, "POST", "/api/v1/tasks/", {"type": "random", "user": who, "lang": "en"}, deadline
            )
            if r is None or r.status_code != 200:
                await asyncio.sleep(0.05)
                continue
            task = r.json()
            outcome.acknowledged.append(("task_assigned", task["id"], int(r.headers["X-Log-Position"])))
            fe = f"fe-{uuid.uuid4().hex[:12]}"
            r = await _send(client, outcome, "POST", f"/api/v1/tasks/{task['id']}/ack", {"message_id": fe}, deadline)
            if r is None or r.status_code != 204:
                continue
            outcome.acknowledged.append(("task_acked", task["id"], int(r.headers["X-Log-Position"])))
            body = answer_for(task, who, fe)
            if body.get("type") == "text_reply_to_message":
                body["text"] = f"{body['text']} {uuid.uuid4().hex[:6]}"
            r = await _send(client, outcome, "POST", "/api/v1/tasks/interaction", body, deadline)
            if r is not None and r.status_code == 200:
                outcome.acknowledged.append(("task_completed", task["id"], int(r.headers["X-Log-Position"])))


async def _killer(procs: list[Proc], deadline: float, rng: random.Random, every: tuple[float, float]) -> None:
    order: list[Proc] = []
    while time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(*every))
        if time.monotonic() >= deadline:
            break
        if not order:  # every process in turn, in a random order each round
            order = rng.sample(procs, len(procs))
        victim = order.pop()
        victim.kill()
        await asyncio.sleep(rng.uniform(0.1, 1.0))
        victim.start()


def _wait_http(base: str, timeout: float = 60) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(Exception):
            httpx.get(f"{base}/schema/openapi.json", timeout=1)
            return
        time.sleep(0.2)
    raise RuntimeError("the server did not come up")


def verify(store_url: str, outcome: Outcome, topic_positions: set[int] | None) -> dict:
    """What the log, the stored views and the topic say after the storm."""
    from domain import events as ev
    from infra.store import EventStore
    from projections.runner import ProjectionRunner, all_views

    store = EventStore(store_url)
    try:
        log, after = [], 0
        while page := store.read_stored(after, 20_000):
            log += page
            after = page[-1].id
        events = [ev.decode(n.state) for n in log]
        by_kind: dict[str, Counter] = {k: Counter() for k in ("task_assigned", "task_acked", "task_completed")}
        for e in events:
            if ev.topic(e) in by_kind:
                by_kind[ev.topic(e)][str(e.task_id)] += 1
        lost = [a for a in outcome.acknowledged if by_kind[a[0]][a[1]] == 0]
        duplicates = sum(n - 1 for c in by_kind.values() for n in c.values() if n > 1)
        texts = Counter(e.text for e in events if ev.topic(e) in ("initial_prompt_submitted", "reply_submitted"))
        duplicates += sum(n - 1 for n in texts.values() if n > 1)

        # the views as the killed-and-restarted runner stored them, against a clean fold
        stored = ProjectionRunner(store)
        stored.restore()
        fresh = ProjectionRunner(store, all_views())
        for start in range(0, len(log), 10_000):
            fresh.fold(log[start : start + 10_000])
        view_mismatches = []
        for a, b in zip(stored.views, fresh.views, strict=True):
            if a.position != b.position:
                view_mismatches.append(f"{a.key}: stored position {a.position} vs log {b.position}")
            for name, table in a.tables.items():
                mine, clean = table.rows, b.tables[name].rows  # rows are msgspec Structs: == compares fields
                differ = sum(1 for k in mine.keys() | clean.keys() if mine.get(k) != clean.get(k))
                if differ:
                    view_mismatches.append(f"{a.key}.{name}: {differ} rows differ")
        gaps = None
        if topic_positions is not None:
            gaps = len({n.id for n in log} - topic_positions)
        return {
            "events": len(log),
            "acknowledged": len(outcome.acknowledged),
            "lost": len(lost),
            "lost_examples": lost[:5],
            "duplicates": duplicates,
            "view_mismatches": view_mismatches,
            "topic_gaps": gaps,
        }
    finally:
        store.close()


def topic_positions(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> set[int]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    seen: set[int] = set()
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end and len(seen) < expected:
            for message in consumer:
                headers = dict(message.headers or [])
                seen.add(int(headers["position"]))
    finally:
        consumer.close()
    return seen


def storm(
    store_url: str,
    tmp: Path,
    seconds: float,
    users: int,
    relay_bootstrap: str | None,
    every: tuple[float, float] = (1.5, 4.0),
    seed: int = 0,
) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "OASST_DATABASE_URL": store_url,
        "OASST_DATA_DIR": str(tmp),
        "OASST_BOOTSTRAP_API_KEY": API_KEY,
        "OASST_RATE_LIMITS": "off",
        "OASST_TREE_GOAL_TREE_SIZE": "4",
        "OASST_TREE_NUM_REVIEWS_INITIAL_PROMPT": "2",
        "OASST_TREE_NUM_REVIEWS_REPLY": "2",
        "OASST_TREE_NUM_REQUIRED_RANKINGS": "2",
    }
    procs = [
        Proc("server", [*OASST, "serve", "--only", "commands", "--port", str(port)], env, tmp / "server.log"),
        Proc("runner", [*OASST, "project", "run", "--poll", "0.05"], env, tmp / "runner.log"),
    ]
    if relay_bootstrap:
        kenv = {
            **env,
            "OASST_KAFKA_BOOTSTRAP": relay_bootstrap,
            "OASST_KAFKA_EVENTS_TOPIC": "crash-events",
            "OASST_KAFKA_SNAPSHOTS_TOPIC": "crash-snapshots",
        }
        procs.append(Proc("relay", [*OASST, "relay"], kenv, tmp / "relay.log"))
    for p in procs:
        p.start()
    _wait_http(base)
    rng = random.Random(seed)
    outcome = Outcome()
    started = time.monotonic()
    deadline = started + seconds

    async def load() -> None:
        killer = asyncio.create_task(_killer(procs, deadline, rng, every))
        await asyncio.gather(*(_user(base, f"user{i}", outcome, deadline) for i in range(users)))
        await killer

    try:
        asyncio.run(load())
        _wait_http(base)
        time.sleep(3)  # let the runner and the relay catch up, then stop them cleanly
    finally:
        for p in procs:
            p.stop()
    positions = None
    if relay_bootstrap:
        from infra.store import EventStore

        store = EventStore(store_url)
        total = store.max_position()
        store.close()
        positions = topic_positions(relay_bootstrap, "crash-events", total)
    # a last run of the runner alone (then stopped cleanly) so its stored views reach the log's end
    runner = Proc("runner", [*OASST, "project", "run", "--poll", "0.05"], env, tmp / "runner.log")
    runner.start()
    time.sleep(5)
    runner.stop()
    result = verify(store_url, outcome, positions)
    result.update(
        seconds=round(time.monotonic() - started, 1),
        commands=outcome.commands,
        retries=outcome.retries,
        gave_up=outcome.gave_up,
        kills={p.name: p.kills for p in procs},
    )
    return result
