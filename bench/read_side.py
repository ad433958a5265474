"""Read side under write load, on PostgreSQL: query latency of tree and leaderboard
routes while commands are ingested at a fixed rate, and command-to-visible lag.

Commands come from simulated users (the same interactions as bench/ingest.py) paced
to a target rate of commands/s (one interaction = 3 commands). Meanwhile a prober asks
for trees and leaderboards; and after some commands it asks
``GET /api/v1/text_labels/report_labels?min_position=<that command's X-Log-Position>`` (a
cheap route, so the wait is what is measured), which the server
answers once its views have folded that position: the time from the command's answer to
that answer is the lag. Goals (issue #3): query p99 <= 10 ms at 500 commands/s; lag p99 <=
250 ms at 1,000 commands/s.

Read-your-writes without asking (issue #14): at 500 commands/s a client of its own API key
creates a frontend user and reads it back at once, without ``min_position``, 1,000 times
(200 in the quick run): goal 0 misses. The tree and leaderboard prober uses another API key
that writes nothing, so its p99 says what waiting for one's own writes costs everyone else.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time

import httpx
import msgspec

from bench import common
from bench.ingest import API_KEY, TREE_ENV, Connection, Failed, Stats, User

decode = msgspec.json.Decoder().decode
ROOT_TOKEN = "read-side-root"


async def paced_commands(
    port: int, rate: float, stop_at: float, positions: list[tuple[float, int]], stats: Stats, users: int = 64
) -> None:
    """Interactions at ``rate`` commands/s; remembers (answer time, position) of each."""
    tag = f"rs{int(rate)}"  # a phase's users and frontend ids are its own
    sims = [User(port, tag, n, stats) for n in range(users)]
    interval = 3 * users / rate  # each user does one interaction (3 commands) per interval

    async def one(u: User, offset: float) -> None:
        await asyncio.sleep(offset)
        next_at = time.perf_counter()
        while next_at < stop_at:
            try:
                done = await u.interaction()  # not `total += await ...`: that loses counts
                stats.total += done
                positions.append((time.perf_counter(), stats.max_position))
            except (Failed, OSError):
                pass
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    await asyncio.gather(*(one(u, i * interval / users) for i, u in enumerate(sims)))


async def probe_queries(port: int, stop_at: float, latencies: dict[str, list[float]], api_key: str) -> None:
    conn = await Connection.open(port, api_key)
    trees: list[str] = []
    refreshed = 0.0
    while time.perf_counter() < stop_at:
        if not trees or time.perf_counter() - refreshed > 2:  # the tree list is a costly scan
            refreshed = time.perf_counter()
            status, raw, _ = await conn.get("/api/v1/stats/tree_manager/message_counts?only_active=false")
            trees = [t["message_tree_id"] for t in decode(raw)] if status == 200 else []
        for name, path in (
            ("tree", f"/api/v1/messages/{random.choice(trees)}/tree" if trees else None),
            ("leaderboard", "/api/v1/leaderboards/week?max_count=20"),
        ):
            if path:
                t = time.perf_counter()
                status, _, _ = await conn.get(path)
                if status == 200:
                    latencies[name].append(time.perf_counter() - t)
        await asyncio.sleep(0.01)
    conn.close()


async def probe_lag(port: int, stop_at: float, positions: list[tuple[float, int]], lags: list[float]) -> None:
    conn = await Connection.open(port)
    seen = 0
    while time.perf_counter() < stop_at:
        await asyncio.sleep(0.02)
        if not positions or positions[-1][1] <= seen:
            continue
        answered_at, position = positions[-1]
        seen = position
        status, _, _ = await conn.get(f"/api/v1/text_labels/report_labels?min_position={position}")
        if status == 200:
            lags.append(time.perf_counter() - answered_at)
    conn.close()


async def probe_read_your_writes(port: int, stop_at: float, tries: int, api_key: str, out: dict) -> None:
    """Write (a new frontend user), then read it back at once; count reads that miss it."""
    conn = await Connection.open(port, api_key)
    done = misses = 0
    latencies = []
    while done < tries and time.perf_counter() < stop_at:
        name = f"ryw-{port}-{done}"
        status, _, _ = await conn.post(
            "/api/v1/frontend_users/", msgspec.json.encode({"id": name, "display_name": name, "auth_method": "local"})
        )
        if status != 200:
            out.setdefault("write_errors", 0)
            out["write_errors"] += 1
            continue
        t = time.perf_counter()
        status, _, _ = await conn.get(f"/api/v1/frontend_users/local/{name}")
        latencies.append(time.perf_counter() - t)
        done += 1
        misses += status != 200
        await asyncio.sleep(0.005)
    conn.close()
    latencies.sort()
    out.update(tries=done, misses=misses, read_p99=common.percentile(latencies, 99) * 1000)


async def phase(
    port: int, rate: float, warmup: float, duration: float, keys: dict[str, str], ryw_tries: int = 0
) -> dict:
    stats, positions = Stats(), []
    latencies: dict[str, list[float]] = {"tree": [], "leaderboard": []}
    lags: list[float] = []
    start = time.perf_counter()
    stop_at = start + warmup + duration
    commands = asyncio.create_task(paced_commands(port, rate, stop_at, positions, stats))
    await asyncio.sleep(warmup)
    probe_end = stop_at
    ryw: dict = {}
    await asyncio.gather(
        probe_queries(port, probe_end, latencies, keys["reader"]),
        probe_lag(port, probe_end, positions, lags),
        probe_read_your_writes(port, probe_end, ryw_tries, keys["writer"], ryw),
    )
    await commands
    achieved = 3 * stats.total / (time.perf_counter() - start)
    out = {"rate": achieved, "errors": len(stats.errors), "no_task": stats.no_task, "done": stats.total, "ryw": ryw}
    for call, status, body in stats.errors[:3]:
        common.console.print(f"  [red]error[/] {call}: {status} {body}")
    for name, values in (*latencies.items(), ("lag", lags)):
        values.sort()
        out[f"{name}_p50"] = common.percentile(values, 50) * 1000
        out[f"{name}_p99"] = common.percentile(values, 99) * 1000
        out[f"{name}_n"] = len(values)
    return out


def api_keys(port: int) -> dict[str, str]:
    """Two API clients besides the load's: one that only reads, one that reads its writes."""
    keys = {}
    for name in ("reader", "writer"):
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/admin/api_client",
            json={"description": f"read-side bench {name}", "frontend_type": "bench", "trusted": True},
            headers={"Authorization": f"Bearer {ROOT_TOKEN}"},
        )
        r.raise_for_status()
        keys[name] = r.json()
    return keys


def run(quick: bool) -> list[dict]:
    warmup, duration = (3.0, 8.0) if quick else (5.0, 30.0)
    ryw_tries = 200 if quick else 1000
    results = {}
    with common.postgres_database("oasst_bench_read") as db_url, tempfile.TemporaryDirectory() as data_dir:
        port = common.free_port()
        env = {
            "OASST_DATABASE_URL": db_url,
            "OASST_BOOTSTRAP_API_KEY": API_KEY,
            "OASST_DATA_DIR": data_dir,
            "OASST_ROOT_TOKEN": ROOT_TOKEN,
            **TREE_ENV,
        }
        with common.server([*common.OASST, "serve", "--port", str(port)], env, port, "read-side-server.log"):
            keys = api_keys(port)
            for rate in (500, 1000):
                r = asyncio.run(phase(port, rate, warmup, duration, keys, ryw_tries if rate == 500 else 0))
                results[rate] = r
                common.console.print(
                    f"[bold]{rate} commands/s target[/] (achieved {r['rate']:.0f}/s, {r['done']} interactions, no task {r['no_task']}x, errors {r['errors']}): "
                    f"tree p50/p99 {r['tree_p50']:.1f}/{r['tree_p99']:.1f} ms (n={r['tree_n']}), "
                    f"leaderboard {r['leaderboard_p50']:.1f}/{r['leaderboard_p99']:.1f} ms, "
                    f"lag {r['lag_p50']:.0f}/{r['lag_p99']:.0f} ms (n={r['lag_n']})"
                )
                if r["ryw"].get("tries"):
                    common.console.print(
                        f"  read-your-writes: {r['ryw']['misses']} misses in {r['ryw']['tries']} "
                        f"tries, read p99 {r['ryw']['read_p99']:.1f} ms"
                    )
    r500, r1000 = results[500], results[1000]

    def row(name, value, unit, goal=None):
        return {"name": name, "value": round(value, 2), "unit": unit, "goal": goal, "baseline": None, "ratio": None}

    return [
        row("read.tree_p99_ms_at_500cps", r500["tree_p99"], "ms", "<= 10"),
        row("read.leaderboard_p99_ms_at_500cps", r500["leaderboard_p99"], "ms", "<= 10"),
        row("read.commands_per_s_at_500_target", r500["rate"], "commands/s"),
        row("read.lag_p99_ms_at_1000cps", r1000["lag_p99"], "ms", "<= 250"),
        row("read.lag_p50_ms_at_1000cps", r1000["lag_p50"], "ms"),
        row("read.commands_per_s_at_1000_target", r1000["rate"], "commands/s"),
        row("read.errors", r500["errors"] + r1000["errors"], "count", "<= 0"),
        row("read.own_write_misses_at_500cps", r500["ryw"].get("misses", ryw_tries), "count", "<= 0"),
        row("read.own_write_tries_at_500cps", r500["ryw"].get("tries", 0), "count", f">= {ryw_tries}"),
        row("read.own_write_read_p99_ms_at_500cps", r500["ryw"].get("read_p99", 0.0), "ms"),
    ]
