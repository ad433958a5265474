"""Scale benchmark: ``oasst serve`` on PostgreSQL stores seeded empty, oa/20, oa/4 and oa
(``oasst seed --scale``), in one run. Per size:

- interactions/s, p50 and p99 under bench/ingest.py's load (its load generator, tree settings
  and API key; but the seeded stores' number of active trees and prompt lottery cap, SERVER_ENV),
  with the no-op server's rate measured in the same run as the baseline;
- start-up: from spawning ``oasst serve`` to its first HTTP answer (the write model and the
  views are loaded before uvicorn listens), with the write-model checkpoint the seeding left
  where the seeder writes one (infra/checkpoints.py), as a server restarted on its data dir;
- RSS (VmRSS of the server process itself, no children) right after start-up and after the load;
- each twice: the whole server (commands, views and queries) and ``--only commands`` (the write
  side alone, no views in the process);
- the seeding time, taken from when the size was seeded (cached, see below).

Goals (issue): on the largest size measured (meant for ``oa``) rate >= 0.9x the empty store's,
start-up <= 5 s, RSS after a minute of load <= 1.5 GB, seeding <= 600 s; on the empty store rate
>= 0.5x the no-op server's and p99 <= 50 ms.

Caching: seeding ``oa`` takes many minutes, so each size is seeded once (seed 0, with the API key
the load uses) into a database ``oasst_scale_<size>_<fingerprint>`` on the machine's PostgreSQL,
where the fingerprint hashes the files that decide the generated log (log_files()); a change there
re-seeds, and cached databases of the same size with another fingerprint are dropped. The views
are built in it too (``oasst project rebuild --all``), again when projections/ changes, then it is
vacuumed. The seed summary (events, seconds, date) goes to var/bench/scale-seeds.json, keyed by
database name. Cached databases are never dropped at the end: the load appends events, so every
measurement runs on a throwaway copy (CREATE DATABASE … TEMPLATE), dropped afterwards.

Sizes: quick: empty, oa/100 (2 s warm-up + 10 s of load); full: empty, oa/20, oa/4, oa (5 + 60 s).
``OASST_BENCH_SCALES=empty,oa/20`` overrides the list.

    .venv/bin/python -c "from bench import scale; scale.run(quick=True)"
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.table import Table

from bench import common
from bench.common import row
from bench.ingest import API_KEY, TREE_ENV, load, measure_noop, report, summarize
from devkit.simulator import PROMPTS_FILE, oa_scale, seed_history

console = common.console
ROOT = common.ROOT
SEEDS_FILE = common.OUT / "scale-seeds.json"
CHECKPOINTS = common.OUT / "scale-checkpoints"  # <database>/: the write-model checkpoint its seeding left
OASST = common.OASST
QUICK_SIZES, FULL_SIZES = ["empty", "oa/100"], ["empty", "oa/20", "oa/4", "oa"]
# bench/ingest.py's tree settings, except two taken from the rules the stores were seeded under
# (devkit.simulator.oa_scale), for every size: from oa/100 up a seeded store has 100 growing trees and more
# prompts in the lottery than the default cap (250); with ingest's 50 active trees no waiting tree
# would start and no prompt task be offered, and the load ran dry within seconds (measured).
_OA_RULES = oa_scale()[2]
SERVER_ENV = {
    **TREE_ENV,
    "OASST_TREE_MAX_ACTIVE_TREES": str(_OA_RULES.max_active_trees),
    "OASST_TREE_MAX_PROMPT_LOTTERY_WAITING": str(_OA_RULES.max_prompt_lottery_waiting),
}


def log_files() -> list[Path]:
    """What decides the generated log (and how it is stored): the seeder, the command side,
    the settings, the store, and the seeder's prompts."""
    files = [
        ROOT / "devkit" / "simulator.py",
        ROOT / "infra" / "settings.py",
        ROOT / "infra" / "store.py",
        *sorted((ROOT / "command_api").glob("*.py")),
        *sorted((ROOT / "domain").glob("*.py")),
    ]
    return files + [PROMPTS_FILE] * PROMPTS_FILE.exists()


def fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:8]


def fraction(size: str) -> float:
    """How much of Open-Assistant's size: 0 for empty, 1/N for oa/N."""
    if size == "empty":
        return 0.0
    match = re.fullmatch(r"oa(?:/([1-9]\d*))?", size)
    if not match:
        raise ValueError(f"unknown size {size!r}: 'empty', 'oa' or 'oa/N'")
    return 1 / int(match.group(1) or 1)


def sizes_wanted(quick: bool) -> list[str]:
    env = os.environ.get("OASST_BENCH_SCALES")
    sizes = [s.strip() for s in env.split(",") if s.strip()] if env else QUICK_SIZES if quick else FULL_SIZES
    return sorted(dict.fromkeys(sizes), key=fraction)


# --- the cache of seeded databases -------------------------------------------------------------


def records() -> dict:
    return json.loads(SEEDS_FILE.read_text()) if SEEDS_FILE.exists() else {}


def save(all_records: dict) -> None:
    SEEDS_FILE.parent.mkdir(parents=True, exist_ok=True)
    SEEDS_FILE.write_text(json.dumps(all_records, indent=2, sort_keys=True) + "\n")


def cached(size: str) -> tuple[str, dict]:
    """The cached database of ``size`` and its record, seeded (and its views built) first if need be."""
    tag = size.replace("/", "_")
    name = f"oasst_scale_{tag}_{fingerprint(log_files())}"
    known = records()
    present = {
        r[0]
        for r in common.admin_sql(
            "SELECT datname FROM pg_database WHERE datname ~ %s", [f"^oasst_scale_{tag}_[0-9a-f]{{8}}$"]
        )
    }
    stale = present - {name}  # other fingerprints
    if name in present and name not in known:
        stale.add(name)  # its seeding never finished
    for db in stale:
        console.print(f"dropping {db} ({'another fingerprint' if db != name else 'its seeding never finished'})")
        common.admin_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        shutil.rmtree(CHECKPOINTS / db, ignore_errors=True)
        known.pop(db, None)
    if name not in present or name not in known:
        console.print(f"[bold]seeding {size}[/] into {name} (once; cached afterwards)")
        common.admin_sql(f'CREATE DATABASE "{name}"')
        shutil.rmtree(CHECKPOINTS / name, ignore_errors=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            # In a child process: the generator's write model (millions of objects) dies with it.
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.scale",
                    common.database_url(name),
                    size,
                    out.name,
                    str(CHECKPOINTS / name),
                ],
                cwd=ROOT,
                check=True,
            )
            summary = json.loads(Path(out.name).read_text())
        known[name] = {
            "size": size,
            **summary,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "checkpoint": any((CHECKPOINTS / name).glob("*")),
        }
        save(known)
        console.print(f"  seeded {size}: {summary['events']:,} events in {summary['seconds']:.1f} s")
    record = known[name]
    views = fingerprint(sorted((ROOT / "projections").glob("*.py")))
    if record.get("views_fingerprint") != views:
        console.print(f"building the views of {name} (oasst project rebuild --all), then VACUUM ANALYZE")
        started = time.monotonic()
        subprocess.run(
            [*OASST, "project", "rebuild", "--all"],
            cwd=ROOT,
            check=True,
            env={**os.environ, "OASST_DATABASE_URL": common.database_url(name)},
        )
        common.admin_sql("VACUUM (ANALYZE)", database=name)
        record.update(views_fingerprint=views, views_seconds=round(time.monotonic() - started, 1))
        save(known)
        console.print(f"  views built and vacuumed in {record['views_seconds']:.0f} s")
    return name, record


def seed_child(url: str, size: str, out: str, checkpoint_dir: str) -> None:
    """``python -m bench.scale URL SIZE OUT DIR``: seed ``size`` into the empty database at URL,
    printing progress; write the summary's counts and time to OUT, and a checkpoint of the write
    model into DIR (infra/checkpoints.py), as ``oasst seed`` does."""
    started, last = time.monotonic(), [0.0, -1]  # when and at how many prompts we last printed

    def progress(done: int, total: int) -> None:
        now = time.monotonic() - started
        if (now - last[0] >= 15 or done == total) and done != last[1]:
            last[:] = now, done
            print(f"  seeding {size}: {done:,}/{total:,} prompts, {now:.0f} s", flush=True)

    s = seed_history(
        url,
        trees=1,
        users=1,
        seed=0,
        scale=size,
        progress=progress,
        api_key=API_KEY,
        checkpoint_dir=Path(checkpoint_dir),
    )
    Path(out).write_text(json.dumps({k: s[k] for k in ("events", "messages", "trees", "users", "seconds")}))


# --- measuring -------------------------------------------------------------------------------


# What is served: the whole server, and the command side alone (the write side: no views).
VARIANTS = {"serve": [], "commands only": ["--only", "commands"]}


def serve_and_load(
    size: str, variant: str, db_url: str, checkpoints: Path | None, users: int, warmup: float, duration: float
) -> dict:
    """Serve the store at ``db_url`` (its write-model checkpoints in ``checkpoints``, linked into a
    throwaway data dir: what the server writes there goes with it) and load it."""
    log_name = f"scale-server-{size.replace('/', '_')}-{variant.split()[0]}.log"
    with tempfile.TemporaryDirectory(prefix="scale-data-", dir=common.OUT) as data_dir:
        mine = Path(data_dir) / "checkpoints"
        mine.mkdir()
        for path in checkpoints.glob("*.pickle") if checkpoints else ():
            try:
                os.link(path, mine / path.name)
            except OSError:
                shutil.copy2(path, mine / path.name)
        port = common.free_port()
        env = {
            "OASST_DATABASE_URL": db_url,
            "OASST_BOOTSTRAP_API_KEY": API_KEY,
            "OASST_DATA_DIR": data_dir,
            "OASST_CHECKPOINT_DIR": str(mine),
            **SERVER_ENV,
        }
        with common.server(
            [*OASST, "serve", "--port", str(port), *VARIANTS[variant]], env, port, log_name, timeout=900
        ) as proc:
            startup, rss_start = proc.startup_s, common.rss_mb(proc.pid)
            stats = asyncio.run(load(port, proc.pid, users, warmup, duration))
            rss_load = common.rss_mb(proc.pid)
            if proc.poll() is not None:
                stats.errors.append(("server", proc.returncode, f"server exited; see var/bench/{log_name}"))
    s = summarize(stats)
    report(f"oasst {variant}, {size} store", stats, s)
    started = re.search(r"write model at position .*", common.tail(common.OUT / log_name, 1000))
    console.print(f"  start-up {startup:.2f} s; the server's log: {started.group(0) if started else '-'}")
    return {
        **{k: round(v, 1) for k, v in s.items()},
        "startup_s": round(startup, 2),
        "rss_start_mb": round(rss_start, 1),
        "rss_load_mb": round(rss_load, 1),
        "errors": len(stats.errors),
        "no_task": stats.no_task,
    }


def run(quick: bool) -> list[dict]:
    users, warmup, duration = (32, 2.0, 10.0) if quick else (64, 5.0, 60.0)
    sizes = sizes_wanted(quick)
    if not common.machine_postgres():
        console.print(f"[yellow]skipped: the cache of seeded stores needs the PostgreSQL at {common.MACHINE_PG}[/]")
        return []
    seeded = {size: cached(size) for size in sizes if size != "empty"}

    noop_stats, noop = measure_noop(users, warmup, duration)
    results = {}
    for size in sizes:
        for variant in VARIANTS:
            copy = (
                common.database_copy(seeded[size][0], "oasst_scale_copy")
                if size in seeded
                else common.postgres_database("oasst_scale_copy")
            )
            with copy as db_url:
                r = results[size, variant] = serve_and_load(
                    size,
                    variant,
                    db_url,
                    CHECKPOINTS / seeded[size][0] if size in seeded else None,
                    users,
                    warmup,
                    duration,
                )
            r["events"] = seeded[size][1]["events"] if size in seeded else 0
            r["seed_s"] = seeded[size][1]["seconds"] if size in seeded else None

    largest = next((size for size in reversed(sizes) if size != "empty"), None)
    table = Table(
        "size",
        "served",
        "events in store",
        "seed s",
        "start-up s",
        "RSS start MB",
        "RSS load MB",
        "interactions/s",
        "p50 ms",
        "p99 ms",
        "ratio to empty",
        "errors",
        title=f"oasst serve by store size ({users} users, {warmup:.0f} s + {duration:.0f} s of load; "
        f"no-op server {noop['rate']:.0f} interactions/s; goals on {largest or '-'})",
    )
    out = [
        row("scale.noop.interactions_per_s", noop["rate"], "interactions/s"),
        row("scale.noop.errors", len(noop_stats.errors), "count"),
    ]
    for (size, variant), r in results.items():
        empty_rate = results["empty", variant]["rate"] if ("empty", variant) in results else None
        ratio = r["rate"] / empty_rate if empty_rate else None
        table.add_row(
            size,
            variant,
            f"{r['events']:,}",
            fmt(r["seed_s"]),
            fmt(r["startup_s"]),
            fmt(r["rss_start_mb"]),
            fmt(r["rss_load_mb"]),
            fmt(r["rate"]),
            fmt(r["p50"]),
            fmt(r["p99"]),
            fmt(ratio),
            str(r["errors"]),
        )
        # The goals are for OA's size: they go on the largest size measured, labelled so.
        on = size == largest
        at = f"; goal for oa, at {size}" if on and size != "oa" else ""
        name = f"scale.{size}" + ("" if variant == "serve" else ".commands_only")
        if variant == "serve":
            out.append(row(f"{name}.events", r["events"], "events in store"))
        if r["seed_s"] is not None and variant == "serve":
            out.append(row(f"{name}.seed_s", r["seed_s"], f"s (when seeded{at})", "<= 600" if on else None))
        out += [
            row(f"{name}.startup_s", r["startup_s"], f"s (to the first answer{at})", "<= 5" if on else None),
            row(f"{name}.rss_after_start_mb", r["rss_start_mb"], "MB (server process, no children)"),
            row(
                f"{name}.rss_after_load_mb",
                r["rss_load_mb"],
                f"MB (server process, no children{at})",
                "<= 1536" if on else None,
            ),
        ]
        if size == "empty":
            out.append(
                row(
                    f"{name}.interactions_per_s",
                    r["rate"],
                    "interactions/s (goal on ratio to noop)",
                    ">= 0.5",
                    noop["rate"],
                )
            )
        elif on and empty_rate:
            out.append(
                row(
                    f"{name}.interactions_per_s",
                    r["rate"],
                    f"interactions/s (goal on ratio to empty{at})",
                    ">= 0.9",
                    empty_rate,
                )
            )
        else:
            out.append(
                row(f"{name}.interactions_per_s", r["rate"], "interactions/s (ratio to empty)", None, empty_rate)
            )
        out += [
            row(f"{name}.p50_ms", r["p50"], "ms"),
            row(f"{name}.p99_ms", r["p99"], "ms", "<= 50" if size == "empty" else None),
            row(f"{name}.errors", r["errors"], "count"),
            row(f"{name}.no_task_503", r["no_task"], "count (the load ran dry when high)"),
        ]
    console.print(table)
    return out


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 100 else f"{x:,.0f}"


if __name__ == "__main__":
    seed_child(*sys.argv[1:5])
